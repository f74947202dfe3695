"""The pipeline's closing results table and ``report.md`` with every stage's figures."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from common.rundir import read_metrics

log = logging.getLogger(__name__)


def flat_numbers(summary: Mapping, prefix: str = "", depth: int = 4) -> dict[str, float]:
    """Numeric scalars of a summary dict as dotted keys (nested up to ``depth`` levels)."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
        elif isinstance(value, Mapping) and depth > 1:
            out.update(flat_numbers(value, name + ".", depth - 1))
    return out


def read_summary(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _pct(value: object) -> str:
    """A fraction in 0..1 as the stage tables show it: percent, one decimal."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{100 * value:.1f} %"
    return "-"


def _get(tree: Mapping, dotted: str) -> object:
    node: object = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _pretrain(summary: Mapping) -> tuple[str, str]:
    steps = summary.get("steps")
    done = "" if summary.get("completed", True) else " (stopped early)"
    result = f"{steps} steps{done}" if steps is not None else "-"
    if "knn_top1" in summary:
        result = f"k-NN top-1 {_pct(summary['knn_top1'])}, {result}"
    return result, "-"


def _distill(summary: Mapping) -> tuple[str, str]:
    rows = summary.get("rows") or _get(summary, "quality.rows") or []
    miou = {r["method"]: r.get("miou") for r in rows if isinstance(r, Mapping)}
    enhanced = [m for m in miou if m.startswith("+ enhancer")]
    result = f"weak pseudo-labels mIoU {_pct(miou.get('attention + refine'))}"
    if enhanced:
        result += f", {enhanced[-1][2:]} {_pct(miou[enhanced[-1]])}"
    saliency = next((m for m in miou if m.startswith("colour saliency")), None)
    baseline = [f"colour saliency {_pct(miou[saliency])}"] if saliency else []
    if "random-init ViT + refine" in miou:
        baseline.append(f"random ViT {_pct(miou['random-init ViT + refine'])}")
    return result, ", ".join(baseline) or "-"


def _segment(summary: Mapping) -> tuple[str, str]:
    result = f"mIoU {_pct(_get(summary, 'pseudo.miou'))} (trained on pseudo-masks)"
    gt = _get(summary, "gt.miou")
    return result, f"trained on GT {_pct(gt)}" if gt is not None else "-"


def _fewshot(summary: Mapping) -> tuple[str, str]:
    test = summary.get("test") or {}
    ways = sorted((w for w in test if w.endswith("way")), key=lambda w: int(w[:-3]))
    if not ways:
        return "-", "-"
    way = ways[-1]

    def cell(model: str) -> str:
        er, miou = _get(test, f"{way}.{model}.exact_ratio"), _get(test, f"{way}.{model}.miou")
        return f"ER {_pct(er)}, mIoU {_pct(miou)}"

    baseline = [
        f"{label} {cell(model)}"
        for model, label in (("random_head", "random ViT"), ("prototype", "prototype"))
        if model in test[way]
    ]
    return f"{way} {cell('head')}", "; ".join(baseline) or "-"


def _probe(summary: Mapping) -> tuple[str, str]:
    def cell(model: str) -> str:
        res = _get(summary, f"models.{model}")
        if not isinstance(res, Mapping):
            return "-"
        logreg = res.get("logreg") or {}
        first = next(iter(logreg), None)
        parts = [f"logreg {first} {_pct(logreg[first].get('mean'))}"] if first else []
        knn = res.get("knn") or {}
        share = next(iter(knn), None)
        if share and knn[share]:
            k, acc = list(knn[share].items())[-1]  # the largest k (DINO's k=20)
            parts.append(f"k-NN {share} {k} {_pct(acc)}")
        return ", ".join(parts) or "-"

    baseline = cell("random_backbone")
    return cell("backbone"), "-" if baseline == "-" else f"random ViT {baseline}"


HEADLINES = {
    "pretrain": _pretrain,
    "distill": _distill,
    "distill/segment": _segment,
    "fewshot": _fewshot,
    "fewshot/probe": _probe,
}


def headline(stage: str, summary: Mapping) -> tuple[str, str]:
    """The numbers that matter of a stage's results: (its headline metric, its baseline)."""
    if not summary or stage not in HEADLINES:
        return "-", "-"
    return HEADLINES[stage](summary)


def results_table(rows: list[tuple[str, str, str, Mapping]]) -> str:
    """A markdown table, one row per (name, stage, state, summary): headline and baseline, %."""
    lines = ["| stage | state | result | baseline |", "| --- | --- | --- | --- |"]
    for name, stage, state, summary in rows:
        result, baseline = headline(stage, summary)
        lines.append(f"| {name} | {state} | {result} | {baseline} |")
    return "\n".join(lines)


def plot_losses(metrics_path: Path, out_path: Path) -> Path | None:
    """Plot every ``*loss*`` series of a metrics.jsonl against step; None when there is none."""
    records = read_metrics(metrics_path)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for rec in records:
        for key, value in rec.items():
            if "loss" in key and isinstance(value, (int, float)) and math.isfinite(value):
                xs, ys = series.setdefault(key, ([], []))
                xs.append(rec["step"])
                ys.append(value)
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, label=key, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(metrics_path.parent.name)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def write_report(pipeline_dir: Path, stages: list[dict]) -> tuple[str, Path]:
    """Write ``report.md`` (table, loss curves, each stage's figures); returns (table, path).

    ``stages``: dicts with ``name``, ``stage``, ``state`` and ``run_dir``.
    """
    rows = []
    sections = []
    figures_dir = pipeline_dir / "figures"
    for entry in stages:
        run_dir = Path(entry["run_dir"])
        summary = read_summary(run_dir)
        rows.append((entry["name"], entry["stage"], entry["state"], summary))
        parts = [f"## {entry['name']} (`{entry['stage']}`, {entry['state']})", ""]
        parts.append(f"Run directory: `{run_dir}`")
        loss = plot_losses(run_dir / "metrics.jsonl", figures_dir / f"{entry['name']}_loss.png")
        if loss is not None:
            parts += ["", f"![{entry['name']} loss]({os.path.relpath(loss, pipeline_dir)})"]
        for png in sorted((run_dir / "figures").glob("*.png")):
            rel = os.path.relpath(png, pipeline_dir)
            parts += ["", f"**{png.stem}**", "", f"![{png.stem}]({rel})"]
        sections.append("\n".join(parts))
    table = results_table(rows)
    text = "\n\n".join([f"# Pipeline report: {pipeline_dir.name}", table, *sections]) + "\n"
    path = pipeline_dir / "report.md"
    path.write_text(text)
    return table, path
