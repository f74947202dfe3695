"""COCO 2014 reader on a tiny tree in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.datasets.coco import COCOSegmentation, convert_masks
from common.datasets.errors import DatasetNotFoundError


def test_masks_from_polygons_rle_and_crowds(coco_root: Path) -> None:
    data = COCOSegmentation(coco_root, "val")
    assert data.num_classes == 81 and data.class_names[80] == "category_90"
    assert data.ids[0] == "COCO_val2014_000000000101"
    item = data[0]
    mask = item["mask"].numpy()
    assert item["image"].shape == (3, 32, 48) and mask.shape == (32, 48)
    assert mask[0, 0] == 0
    assert mask[17, 25] == 1  # polygon (person)
    assert mask[10, 10] == 80  # compressed RLE (toothbrush, COCO id 90), drawn over the person
    assert mask[30, 3] == 3  # uncompressed crowd RLE (car)
    assert (mask == 80).sum() == 6 * 8
    assert item["labels"] == [1, 3, 80] == data.image_labels(0)
    empty = data[2]
    assert empty["labels"] == [] and data.image_labels(2) == []
    assert int(empty["mask"].max()) == 0


def test_preconverted_masks_read_like_annotations(coco_root: Path, tmp_path: Path) -> None:
    convert_masks(coco_root, "train", tmp_path / "masks")
    direct = COCOSegmentation(coco_root, "train", image_size=16)
    converted = COCOSegmentation(coco_root, "train", mask_dir=tmp_path / "masks", image_size=16)
    for index in range(len(direct)):
        assert np.array_equal(direct[index]["mask"], converted[index]["mask"])
        assert direct[index]["mask"].shape == (16, 16)
    (tmp_path / "masks" / f"{direct.ids[1]}.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"1 of 3 COCO train images have no mask"):
        COCOSegmentation(coco_root, "train", mask_dir=tmp_path / "masks")


def test_missing_parts_are_named(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="val2014"):
        COCOSegmentation(tmp_path, "val")
    with pytest.raises(ValueError, match="split"):
        COCOSegmentation(coco_root, "test")
