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
MAX_COLUMNS = 8
METRIC_WORDS = ("iou", "acc", "top1", "exact", "map", "knn", "f1")


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


def _is_metric(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1].lower()
    return any(word in leaf for word in METRIC_WORDS)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def results_table(rows: list[tuple[str, str, dict]]) -> str:
    """A markdown table: one row per stage (name, state) with its first headline numbers."""
    lines = ["| stage | state | results |", "| --- | --- | --- |"]
    for name, state, summary in rows:
        numbers = flat_numbers(summary)
        # Quality numbers first (mIoU, accuracy, ...), book-keeping (steps, seconds) after.
        shown = sorted(numbers.items(), key=lambda kv: not _is_metric(kv[0]))[:MAX_COLUMNS]
        text = ", ".join(f"{k}={_fmt(v)}" for k, v in shown) or "-"
        if len(numbers) > MAX_COLUMNS:
            text += f", ... ({len(numbers) - MAX_COLUMNS} more in results.json)"
        lines.append(f"| {name} | {state} | {text} |")
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
        rows.append((entry["name"], entry["state"], summary))
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
