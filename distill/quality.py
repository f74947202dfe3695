"""Pseudo-label quality against ground truth: mIoU / FB-IoU tables and a plot.

Scores use :class:`common.metrics.SegmentationMeter` accumulated over the evaluated images:
mIoU over the foreground classes (background excluded, as in few-shot segmentation) and
FB-IoU (mean IoU of background and any-foreground). Ignore pixels (255) of a pseudo-mask
count as background here: a pseudo-label earns nothing for pixels it declines to label.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from common.metrics import IGNORE_INDEX, SegmentationMeter
from distill.class_assign import assign_classes

log = logging.getLogger(__name__)


def score_masks(
    preds: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], num_classes: int
) -> dict:
    """mIoU (foreground classes), FB-IoU, per-class IoU and the share of ignored pixels."""
    meter = SegmentationMeter(num_classes, exclude_background=True)
    ignored = total = 0
    for pred, target in zip(preds, targets, strict=True):
        if pred.shape != target.shape:
            raise ValueError(
                f"pseudo-mask {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ "
                "in size; masks must have their image's size"
            )
        ignored += int((pred == IGNORE_INDEX).sum())
        total += pred.numel()
        meter.update(torch.where(pred == IGNORE_INDEX, 0, pred), target)
    out = meter.summary()
    out["ignore_fraction"] = ignored / max(total, 1)
    out["iou_per_class"] = [None if v != v else float(v) for v in meter.iou_per_class()]
    return out


def assignment_accuracy(
    targets: Sequence[torch.Tensor],
    labels: Sequence[Sequence[int]],
    scores: Sequence[torch.Tensor | None],
    rule: str,
) -> dict:
    """How well ``rule`` splits the true foreground of multi-label images among their labels.

    The rule is applied to the ground-truth foreground, so the number measures class
    assignment alone; returns the pixel accuracy and the number of images it covers.
    """
    correct = count = images = 0
    for target, labs, sc in zip(targets, labels, scores, strict=True):
        if len(set(labs)) < 2:
            continue
        fg = ((target > 0) & (target != IGNORE_INDEX)).long()
        pred = assign_classes(fg[None], [labs], None if sc is None else sc[None], rule)[0]
        keep = fg.bool()
        correct += int((pred[keep] == target[keep]).sum())
        count += int(keep.sum())
        images += 1
    return {"pixel_accuracy": correct / count if count else float("nan"), "images": images}


def format_table(rows: Sequence[dict]) -> str:
    """A markdown table of method rows (``method``, ``gt_images``, ``miou``, ``fb_iou`` ...)."""
    lines = [
        "| method | GT masks used | mIoU (fg classes) | FB-IoU | ignored px |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['gt_images']} | {100 * r['miou']:.1f} | "
            f"{100 * r['fb_iou']:.1f} | {100 * r['ignore_fraction']:.1f}% |"
        )
    return "\n".join(lines)


def plot_quality(rows: Sequence[dict], path: Path, title: str) -> Path:
    """Bar chart of mIoU and FB-IoU per method, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    ax.bar([i - 0.2 for i in x], [100 * r["miou"] for r in rows], 0.4, label="mIoU (fg classes)")
    ax.bar([i + 0.2 for i in x], [100 * r["fb_iou"] for r in rows], 0.4, label="FB-IoU")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(rows: Sequence[dict], extra: dict, out_dir: Path, title: str) -> dict:
    """Write ``quality.md``, ``quality.json`` and ``figures/quality.png`` under ``out_dir``."""
    table = format_table(rows)
    (out_dir / "quality.md").write_text(f"# {title}\n\n{table}\n")
    (out_dir / "quality.json").write_text(json.dumps({"rows": list(rows), **extra}, indent=2))
    plot_quality(rows, out_dir / "figures" / "quality.png", title)
    log.info("%s:\n%s", title, table)
    return {"table": table}
