"""The pipeline's closing results table and ``report.md`` with every stage's figures."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.rundir import read_metrics
from launch.bars import bars_table

log = logging.getLogger(__name__)
# Logged by common.distributed on every rank at start (again after each requeue).
RANK_HOST = re.compile(r"rank (\d+) runs on host (\S+), address (\S+)")
RANK_LOG = re.compile(r"log(?:\.rank(\d+))?\.txt")


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


SALIENCY_REFERENCE = (
    "Colour saliency thresholds each pixel's colour distance to the image border, with no "
    "learning. It is a reference row here, not a bar: on dark backgrounds colour alone finds "
    "the items (a probe fitted on ground-truth patches of this backbone only ties it)."
)
SALIENCY_BAR = (
    "Colour saliency thresholds each pixel's colour distance to the image border, with no "
    "learning; on these scenes colour does not find the items, so the weak pseudo-masks must "
    "beat it."
)
MEANING = {
    "pretrain": "k-NN top-1 is the teacher's 20-NN accuracy on single-object val scenes "
    "(chance 10 %). The probe stage compares the same backbone with a random-init one of the "
    "same shape: the gap is what pretraining learnt.",
    "distill": "The weak pseudo-masks use the image-level labels only. The random-init row runs "
    "the same pipeline on an untrained backbone of the same shape, so the gap between the two "
    "is what the pretrained features give stage 2. Each enhancer row adds the number of "
    "ground-truth masks it names.",
    "fewshot": "Each FS-CS head learns from the weak pseudo-masks. The random-backbone head is "
    "the same head trained the same way on an untrained backbone: where the two tie, the head "
    "learns foreground from contrast, which random features carry too, and not the class "
    "match between support and query. The prototype baseline needs no training. ER is the "
    "exact ratio of the presence decisions (1-way chance: about 50 %).",
    "distill/segment": "The WSSS decoder is scored on the val split; its pseudo-masks are scored "
    "on the train split they label. The masks take their class names from each image's "
    "labels, the decoder has to recognise them, so it can stay below them while its backbone "
    "cannot name the items (the GT-trained row is its upper bound).",
}
# Positive controls: the heads, the refine and the enhancer where the input carries the
# signal. None runs in seconds, so the report quotes them from the results records that the
# results page is rendered from (benchmarks/results/), with the record's date.
RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _record(name: str, results_dir: Path) -> dict:
    try:
        return json.loads((results_dir / f"{name}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _cell(rec: Mapping, table: str, row: str, column: str) -> str | None:
    """The cell of ``column`` in the first row of ``table`` whose first cell starts with ``row``."""
    t = (rec.get("tables") or {}).get(table) or {}
    cols = t.get("columns") or []
    for r in t.get("rows") or []:
        if str(r[0]).strip("*").startswith(row) and column in cols:
            return str(r[cols.index(column)]).strip("*")
    return None


def _controls(results_dir: Path) -> list[tuple[str, str, str, str | None]]:
    """(stage, control, record name, the recorded figure or None)."""
    sig, ref, demo, fs, orc, seg = (
        _record(n, results_dir)
        for n in ("patch_signal", "refine", "demo", "fewshot", "fewshot_oracle", "segment")
    )

    def text(template: str, *cells: str | None) -> str | None:
        return None if any(c is None for c in cells) else template.format(*cells)

    auc = "fg probe AUC (blocks 0-3)"
    dual = "FB-IoU dual threshold"
    fs_miou = "1-way mIoU: head / random head / prototype"
    demo_values = demo.get("values") or {}
    return [
        (
            "distill",
            "linear foreground probe on the `fashion_tiny` patch tokens, fitted on "
            "ground-truth patches",
            "patch_signal",
            text(
                "AUC {} per block (random-init ViT {})",
                _cell(sig, "signal", "`fashion_tiny`", auc),
                _cell(sig, "signal", "random-init", auc),
            ),
        ),
        (
            "distill",
            "refine fed ground-truth-derived maps (true foreground over 16 px cells + noise 0.3)",
            "refine",
            text(
                "FB-IoU {} -> {} (VARM)",
                _cell(ref, "refine", "none", dual),
                _cell(ref, "refine", "varm", dual),
            ),
        ),
        (
            "distill",
            "enhancer with 10 ground-truth masks (embedded chain)",
            "demo",
            text(
                "{} mIoU / FB-IoU against weak {}",
                demo_values.get("enhancer_10"),
                demo_values.get("weak"),
            ),
        ),
        (
            "fewshot",
            "FS-CS head trained on ground-truth masks (fold 0, 1-way)",
            "fewshot",
            text(
                "{} mIoU (head / random head / prototype) against {} from weak masks",
                _row_for(fs, "full", fs_miou),
                _row_for(fs, "weak", fs_miou),
            ),
        ),
        (
            "fewshot",
            "FS-CS head on oracle tokens (each patch: the one-hot code of its "
            "ground-truth class; fold 0, full supervision)",
            "fewshot_oracle",
            text(
                "1-way ER {} %, mIoU {} % (prototype on the same tokens {} %, {} %)",
                _cell(orc, "oracle", "oracle: head", "1-way ER"),
                _cell(orc, "oracle", "oracle: head", "1-way mIoU"),
                _cell(orc, "oracle", "oracle: prototype", "1-way ER"),
                _cell(orc, "oracle", "oracle: prototype", "1-way mIoU"),
            ),
        ),
        (
            "distill/segment",
            "decoder with a fine-tuned `fashion_tiny` backbone trained on ground-truth masks",
            "segment",
            text(
                "{} mIoU / FB-IoU", _cell(seg, "wsss", "fine-tuned", "trained on GT (upper bound)")
            ),
        ),
    ]


def _row_for(rec: Mapping, supervision: str, column: str) -> str | None:
    """The fold-0 row of the FS-CS table with this supervision."""
    t = (rec.get("tables") or {}).get("fscs") or {}
    cols = t.get("columns") or []
    for r in t.get("rows") or []:
        if str(r[0]) == "0" and str(r[1]) == supervision and column in cols:
            return str(r[cols.index(column)]).replace("*", "")
    return None


def positive_controls(results_dir: Path = RESULTS_DIR) -> str:
    """The positive controls as recorded in the results records, each with its source."""
    lines = [
        "| stage | control: the signal is given | recorded | source |",
        "| --- | --- | --- | --- |",
    ]
    for stage, control, name, figure in _controls(results_dir):
        rec = _record(name, results_dir)
        source = f"`benchmarks/results/{name}.json`, {rec['date']}" if rec else "no record"
        lines.append(f"| {stage} | {control} | {figure or 'not recorded'} | {source} |")
    lines.append("")
    lines.append(
        "Not measured: the enhancer fed ground-truth-derived input maps instead of attention."
    )
    return "\n".join(lines)


def _meaning(stages: list[str], bars: list[str]) -> str:
    """One short paragraph per stage that ran: what its numbers mean."""
    parts = []
    for stage in ("pretrain", "distill", "fewshot", "distill/segment"):
        if stage not in stages:
            continue
        text = MEANING[stage]
        if stage == "distill":
            saliency = "weak_beats_saliency" in bars
            text += " " + (SALIENCY_BAR if saliency else SALIENCY_REFERENCE)
        parts.append(f"**{stage}.** {text}")
    return "\n\n".join(parts)


@dataclass(frozen=True)
class RankLog:
    """Where one rank of a distributed run ran and its log file."""

    rank: int
    host: str
    address: str
    log: Path


def _last_rank_host(path: Path) -> tuple[str, str, str] | None:
    found = None
    with path.open(errors="replace") as fh:
        for line in fh:
            if "runs on host" in line:
                found = RANK_HOST.search(line) or found
    return found.groups() if found else None


def rank_logs(run_dir: Path) -> list[RankLog]:
    """Every rank's host, address and log (``log.txt``, ``log.rank<N>.txt``); the last start in
    each log wins, as a requeued job may land on other nodes."""
    out = []
    for path in run_dir.glob("log*.txt"):
        if not RANK_LOG.fullmatch(path.name):
            continue
        found = _last_rank_host(path)
        if found:
            out.append(RankLog(int(found[0]), found[1], found[2], path))
    return sorted(out, key=lambda r: r.rank)


def node_log_lines(run_dir: Path, task_logs: Path | None = None) -> list[str]:
    """One line per node of a distributed run: host, address, its ranks and their logs.

    ``task_logs``: submitit's folder plus job id prefix (``.../submitit/12``): each rank's
    stderr ``<prefix>_<rank>_log.err`` is listed too. Empty for single-process runs.
    """
    ranks = rank_logs(run_dir)
    if len(ranks) < 2:
        return []
    lines = []
    for host in dict.fromkeys(r.host for r in ranks):
        on_host = [r for r in ranks if r.host == host]
        files = []
        for r in on_host:
            files.append(os.path.relpath(r.log, run_dir))
            err = task_logs and Path(f"{task_logs}_{r.rank}_log.err")
            if err and err.is_file():
                files.append(os.path.relpath(err, run_dir))
        which = ",".join(str(r.rank) for r in on_host)
        lines.append(f"{host} ({on_host[0].address}) rank {which}: {', '.join(files)}")
    return lines


def write_report(
    pipeline_dir: Path, stages: list[dict], bars: list[str] | None = None
) -> tuple[str, Path]:
    """Write ``report.md`` (tables, what they mean, positive controls, loss curves, each
    stage's figures); returns (the tables to print, the report's path).

    ``stages``: dicts with ``name``, ``stage``, ``state`` and ``run_dir``; ``bars``: the
    comparisons that are bars for this pipeline (the others are reference rows).
    """
    bars = list(bars or [])
    rows = []
    sections = []
    figures_dir = pipeline_dir / "figures"
    for entry in stages:
        run_dir = Path(entry["run_dir"])
        summary = read_summary(run_dir)
        rows.append((entry["name"], entry["stage"], entry["state"], summary))
        parts = [f"## {entry['name']} (`{entry['stage']}`, {entry['state']})", ""]
        parts.append(f"Run directory: `{run_dir}`")
        nodes = node_log_lines(run_dir)
        if nodes:
            parts += ["", "Logs per node (paths in the run directory):", ""]
            parts += [f"- `{line}`" for line in nodes]
        loss = plot_losses(run_dir / "metrics.jsonl", figures_dir / f"{entry['name']}_loss.png")
        if loss is not None:
            parts += ["", f"![{entry['name']} loss]({os.path.relpath(loss, pipeline_dir)})"]
        for png in sorted((run_dir / "figures").glob("*.png")):
            rel = os.path.relpath(png, pipeline_dir)
            parts += ["", f"**{png.stem}**", "", f"![{png.stem}]({rel})"]
        sections.append("\n".join(parts))
    table = results_table(rows)
    comparisons = bars_table([(n, st, s) for n, st, _, s in rows], bars)
    ran = [st for _, st, _, _ in rows]
    text = "\n\n".join(
        [
            f"# Pipeline report: {pipeline_dir.name}",
            table,
            "## Bars and reference rows",
            "A bar must hold for this chain; a reference row is reported without one.",
            comparisons,
            "## What the numbers mean",
            _meaning(ran, bars),
            "## Positive controls (recorded, not re-measured)",
            "What the heads, the refine and the enhancer do when their input carries the "
            "signal, next to what this run's backbone gives (the rows above).",
            positive_controls(),
            *sections,
        ]
    )
    path = pipeline_dir / "report.md"
    path.write_text(text + "\n")
    return f"{table}\n\n{comparisons}", path
