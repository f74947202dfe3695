"""Class folds of FashionScenes-5i, Pascal-5i and COCO-20i."""

from __future__ import annotations

import pytest

from common.datasets.folds import fold_classes, num_folds, train_classes


def test_fashion_scenes_two_folds_of_five() -> None:
    assert num_folds("fashion_scenes") == 2
    assert fold_classes("FashionScenes-5i", 0) == [1, 2, 3, 4, 5]
    assert fold_classes("fashion_scenes", 1) == [6, 7, 8, 9, 10]
    assert train_classes("fashion_scenes", 1) == [1, 2, 3, 4, 5]


def test_pascal_four_folds_of_five() -> None:
    assert num_folds("Pascal-5i") == 4
    assert fold_classes("pascal", 2) == [11, 12, 13, 14, 15]
    assert train_classes("pascal", 0) == list(range(6, 21))


def test_coco_interleaved_folds_cover_all_classes_once() -> None:
    assert num_folds("COCO-20i") == 4
    assert fold_classes("coco", 0)[:3] == [1, 5, 9] and fold_classes("coco", 0)[-1] == 77
    assert fold_classes("coco", 3)[-1] == 80
    union = sorted(c for f in range(4) for c in fold_classes("coco", f))
    assert union == list(range(1, 81))
    assert len(train_classes("coco", 1)) == 60
    assert not set(train_classes("coco", 1)) & set(fold_classes("coco", 1))


def test_bad_fold_or_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"folds 0\.\.1"):
        fold_classes("fashion_scenes", 2)
    with pytest.raises(ValueError, match=r"folds 0\.\.3"):
        train_classes("pascal", -1)
    with pytest.raises(ValueError, match="unknown fold benchmark 'imagenet'"):
        num_folds("imagenet")
