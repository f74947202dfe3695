"""common.metrics against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.metrics import (
    ClassificationMeter,
    SegmentationMeter,
    mean_average_precision,
    top1_accuracy,
)

# One 2x3 image; the last pixel is ignore (255).
TARGET = np.array([[0, 1, 1], [2, 2, 255]])
PRED = np.array([[0, 1, 2], [2, 0, 1]])


def test_segmentation_iou_per_class_by_hand():
    meter = SegmentationMeter(num_classes=3)
    meter.update(PRED, TARGET)
    # class 0: inter 1, union {px0, px4} = 2; class 1: inter 1, union {px1, px2} = 2;
    # class 2: inter 1 (px3), union {px2, px3, px4} = 3. The ignored pixel counts nowhere.
    np.testing.assert_allclose(meter.iou_per_class(), [0.5, 0.5, 1 / 3])
    assert meter.miou() == pytest.approx((0.5 + 1 / 3) / 2)
    # background: inter {px0}, union {px0, px4}; foreground: inter {1,2,3}, union {1,2,3,4}.
    assert meter.fb_iou() == pytest.approx((0.5 + 0.75) / 2)


def test_segmentation_accumulates_over_updates_not_per_image_mean():
    meter = SegmentationMeter(num_classes=3)
    meter.update(torch.from_numpy(PRED), torch.from_numpy(TARGET))
    meter.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
    # class 1 sums to inter 3 / union 4 (a per-image mean would give (0.5 + 1) / 2).
    assert meter.iou_per_class()[1] == pytest.approx(0.75)
    assert meter.miou() == pytest.approx((0.75 + 1 / 3) / 2)


def test_segmentation_background_inclusion_and_absent_classes():
    meter = SegmentationMeter(num_classes=5, exclude_background=False)
    meter.update(PRED, TARGET)
    assert math.isnan(meter.iou_per_class()[4])  # never predicted nor present
    assert meter.miou() == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)


def test_segmentation_all_ignored_and_bad_input():
    meter = SegmentationMeter(num_classes=3)
    meter.update(np.array([1, 2]), np.array([255, 255]))
    assert math.isnan(meter.miou()) and math.isnan(meter.fb_iou())
    with pytest.raises(ValueError, match="differ in size"):
        meter.update(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="out of range"):
        meter.update(np.array([3]), np.array([1]))


def test_classification_exact_ratio_and_accuracy():
    meter = ClassificationMeter()
    pred = torch.tensor([[1, 0], [1, 1], [0, 0]])
    target = torch.tensor([[1, 0], [0, 1], [0, 1]])
    meter.update(pred, target)
    assert meter.exact_ratio() == pytest.approx(1 / 3)
    assert meter.accuracy() == pytest.approx(4 / 6)
    meter.update(torch.tensor([True]), torch.tensor([True]))  # a 1-way batch of one
    assert meter.summary() == pytest.approx({"exact_ratio": 2 / 4, "accuracy": 5 / 7})


def test_mean_average_precision_by_hand():
    scores = np.array([[0.9, 0.5, 0.2], [0.8, 0.5, 0.7], [0.1, 0.5, 0.4]])
    targets = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0]])
    # class 0 ranks pos, neg, pos: AP = (1/1 + 2/3) / 2; class 1 has no positive (skipped);
    # class 2's positive is ranked first: AP = 1.
    assert mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 1) / 2)


def test_top1_accuracy():
    assert top1_accuracy(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == 0.5
    assert math.isnan(top1_accuracy(np.array([]), np.array([])))
