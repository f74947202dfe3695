"""Turning per-class scores into FS-CS predictions, and scoring them with ``common.metrics``.

Classification: class n is predicted present when its presence score exceeds a threshold;
the 0/1 exact ratio counts episodes whose N decisions are all right. Segmentation: each
pixel takes the class of the highest foreground score, or background where that score is
below a threshold; mIoU is accumulated per dataset class over all episodes (background
excluded, ignore pixels skipped) and FB-IoU over foreground-vs-background.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from common.metrics import IGNORE_INDEX, ClassificationMeter, SegmentationMeter
from fewshot.episodes import Episode


def assemble(
    presence: torch.Tensor, fg: torch.Tensor, cls_threshold: float, seg_threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Presence scores [N] and foreground scores [N, H, W] -> (present [N] bool,
    label map [H, W] with 0 = background and n + 1 = the episode's n-th class)."""
    best, idx = fg.max(dim=0)
    labels = torch.where(best >= seg_threshold, idx + 1, torch.zeros_like(idx))
    return presence > cls_threshold, labels


def episode_target(gt: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Ground truth [H, W] in dataset ids with non-episode classes set to background."""
    keep = torch.zeros(256, dtype=torch.bool)
    keep[list(classes)] = True
    keep[IGNORE_INDEX] = True
    gt = gt.long()
    return torch.where(keep[gt], gt, torch.zeros_like(gt))


def score(
    episodes: Sequence[Episode],
    scores: Sequence[tuple[torch.Tensor, torch.Tensor]],
    gt_masks: torch.Tensor,
    num_classes: int,
    cls_threshold: float = 0.5,
    seg_threshold: float = 0.5,
) -> dict[str, float]:
    """Exact ratio, accuracy, mIoU and FB-IoU of per-episode (presence, foreground) scores.

    ``num_classes`` counts background; ``gt_masks`` are the query pool's ground truths.
    """
    cls_meter = ClassificationMeter()
    seg_meter = SegmentationMeter(num_classes)
    for ep, (presence, fg) in zip(episodes, scores, strict=True):
        present, labels = assemble(presence, fg, cls_threshold, seg_threshold)
        cls_meter.update(present[None], torch.tensor(ep.presence)[None])
        to_dataset = torch.tensor([0, *ep.classes])
        seg_meter.update(to_dataset[labels], episode_target(gt_masks[ep.query], ep.classes))
    return {**cls_meter.summary(), **seg_meter.summary()}
