"""Metrics shared by every stage, each implemented once.

Segmentation IoU is accumulated over a whole evaluation (intersection and union summed per
class across images/episodes, then divided), as in Pascal-5i / COCO-20i practice, not
averaged per image.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


class SegmentationMeter:
    """Accumulates per-class intersection/union for class-index masks.

    ``num_classes`` counts background (index 0). ``ignore_index`` pixels of the target
    are skipped. mIoU averages over classes that occurred (union > 0), excluding
    background when ``exclude_background`` is set. FB-IoU averages the IoU of
    "background" and "any foreground".
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        exclude_background: bool = True,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.exclude_background = exclude_background
        self.intersection = np.zeros(num_classes, dtype=np.int64)
        self.union = np.zeros(num_classes, dtype=np.int64)
        self.fb_intersection = np.zeros(2, dtype=np.int64)
        self.fb_union = np.zeros(2, dtype=np.int64)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        pred = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred).ravel()
        target = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target).ravel()
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction and target differ in size: {pred.shape} vs {target.shape}"
            )
        keep = target != self.ignore_index
        pred, target = pred[keep].astype(np.int64), target[keep].astype(np.int64)
        if pred.size and (pred.max() >= self.num_classes or target.max() >= self.num_classes):
            raise ValueError(
                f"class index out of range: max pred {pred.max()}, max target {target.max()}, "
                f"num_classes {self.num_classes}"
            )
        n = self.num_classes
        inter = np.bincount(target[pred == target], minlength=n)
        area_p = np.bincount(pred, minlength=n)
        area_t = np.bincount(target, minlength=n)
        self.intersection += inter
        self.union += area_p + area_t - inter
        fp, ft = (pred > 0).astype(np.int64), (target > 0).astype(np.int64)
        fb_inter = np.bincount(ft[fp == ft], minlength=2)
        self.fb_intersection += fb_inter
        self.fb_union += np.bincount(fp, minlength=2) + np.bincount(ft, minlength=2) - fb_inter

    def iou_per_class(self) -> np.ndarray:
        """IoU per class index (NaN where the class never occurred)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), np.nan)

    def miou(self) -> float:
        ious = self.iou_per_class()
        if self.exclude_background:
            ious = ious[1:]
        valid = ious[~np.isnan(ious)]
        return float(valid.mean()) if valid.size else float("nan")

    def fb_iou(self) -> float:
        ious = self.fb_intersection / np.maximum(self.fb_union, 1)
        return float(ious[self.fb_union > 0].mean()) if (self.fb_union > 0).any() else float("nan")

    def summary(self) -> dict:
        return {"miou": self.miou(), "fb_iou": self.fb_iou()}


class ClassificationMeter:
    """Multi-label presence predictions: 0/1 exact ratio (all N right) and per-class accuracy."""

    def __init__(self) -> None:
        self.exact = 0
        self.count = 0
        self.correct = 0
        self.elements = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred`` and ``target``: [B, N] booleans (class present in the query)."""
        pred, target = torch.as_tensor(pred).bool(), torch.as_tensor(target).bool()
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction and target differ in shape: {pred.shape} vs {target.shape}"
            )
        if pred.dim() == 1:
            pred, target = pred[:, None], target[:, None]
        match = pred == target
        self.exact += int(match.all(dim=1).sum())
        self.count += pred.shape[0]
        self.correct += int(match.sum())
        self.elements += match.numel()

    def exact_ratio(self) -> float:
        return self.exact / self.count if self.count else float("nan")

    def accuracy(self) -> float:
        return self.correct / self.elements if self.elements else float("nan")

    def summary(self) -> dict:
        return {"exact_ratio": self.exact_ratio(), "accuracy": self.accuracy()}


def top1_accuracy(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    pred, target = np.asarray(pred), np.asarray(target)
    return float((pred == target).mean()) if target.size else float("nan")


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes (with at least one positive) of average precision, as in VOC mAP."""
    from sklearn.metrics import average_precision_score

    scores, targets = np.asarray(scores), np.asarray(targets).astype(bool)
    aps = [
        average_precision_score(targets[:, c], scores[:, c])
        for c in range(targets.shape[1])
        if targets[:, c].any()
    ]
    return float(np.mean(aps)) if aps else float("nan")
