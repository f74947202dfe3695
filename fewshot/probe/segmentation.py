"""Patch-level linear segmentation probe: a linear layer on frozen patch tokens.

Each training patch is labelled with the majority class of its pixels (ignore pixels left
out); logits on the test patch grid are bilinearly upsampled to pixels and the argmax is
scored with ``common.metrics.SegmentationMeter`` (mIoU over foreground classes).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.metrics import IGNORE_INDEX, SegmentationMeter
from common.optim import optimizer_step


def patch_labels(masks: torch.Tensor, patch: int, num_classes: int) -> torch.Tensor:
    """[N, H, W] class masks -> [N, H/p, W/p] majority labels (255 where all pixels ignore)."""
    m = masks.long()
    valid = m != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid, m, 0), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None]
    counts = F.avg_pool2d(onehot, patch)
    labels = counts.argmax(1)
    return torch.where(counts.sum(1) > 0, labels, torch.full_like(labels, IGNORE_INDEX))


def train_linear(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> torch.nn.Linear:
    """Fit ``Linear(C, num_classes)`` on [M, C] features with labels [M] (255 skipped)."""
    keep = labels != IGNORE_INDEX
    x, y = feats[keep].float(), labels[keep]
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)
        loss = F.cross_entropy(layer(x[idx]), y[idx])
        optimizer_step(loss, opt, "segmentation probe", "lower train.lr of the probe config")
    return layer


@torch.no_grad()
def segmentation_probe(
    train_patches: torch.Tensor,
    train_masks: torch.Tensor,
    test_patches: torch.Tensor,
    test_masks: torch.Tensor,
    num_classes: int,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> dict:
    """Train on patch grids [N, h, w, C] + masks [N, H, W]; mIoU / FB-IoU on the test set."""
    patch = train_masks.shape[-1] // train_patches.shape[2]
    labels = patch_labels(train_masks, patch, num_classes)
    with torch.enable_grad():
        layer = train_linear(
            train_patches.flatten(0, 2),
            labels.flatten(),
            num_classes,
            steps,
            batch_size,
            lr,
            weight_decay,
            seed,
        )
    meter = SegmentationMeter(num_classes)
    size = test_masks.shape[-2:]
    for start in range(0, len(test_patches), 256):
        logits = layer(test_patches[start : start + 256].float()).permute(0, 3, 1, 2)
        pred = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
        meter.update(pred, test_masks[start : start + 256])
    per_class = meter.iou_per_class()[1:]
    return {
        **meter.summary(),
        "iou_per_class": [None if np.isnan(v) else float(v) for v in per_class],
    }
