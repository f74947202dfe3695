"""Image-level labels from a CSV, a JSON or class folders; a labelled folder with masks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets.errors import CorruptDataError, DatasetNotFoundError, DatasetSettingsError
from common.datasets.labelled_folder import LabelledFolder
from common.datasets.labels import read_image_labels
from common.datasets.palette import write_mask

IDS = ["shop/a/photo1", "shop/b/photo1", "street/img2"]


def test_csv_with_several_labels_paths_and_file_names(tmp_path: Path, caplog) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "image,labels\nshop/a/photo1.jpg,cat;dog\nshop/b/photo1.png,dog\nimg2.jpg,\nghost.jpg,cat\n"
    )
    with caplog.at_level(logging.WARNING):
        read = read_image_labels(csv, IDS)
    assert read.class_names == ["background", "cat", "dog"]
    assert read.labels == {"shop/a/photo1": [1, 2], "shop/b/photo1": [2], "street/img2": []}
    assert "1 of 4 rows" in caplog.text and "ghost.jpg" in caplog.text
    given = read_image_labels(csv, IDS, classes=["dog", "cat"])
    assert given.class_names == ["background", "dog", "cat"]
    assert given.labels["shop/a/photo1"] == [1, 2]


def test_json_and_class_folders(tmp_path: Path) -> None:
    js = tmp_path / "labels.json"
    js.write_text(json.dumps({"shop/a/photo1": ["cat"], "img2": ["cat", "bird"]}))
    assert read_image_labels(js, IDS).labels == {"shop/a/photo1": [2], "street/img2": [1, 2]}
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"labels": {"img2": [3]}, "classes": ["background", "a", "b", "c"]}))
    read = read_image_labels(meta, IDS)
    assert read.class_names == ["background", "a", "b", "c"] and read.labels["street/img2"] == [3]
    read = read_image_labels("folders", ["cat/x", "dog/y", "cat/deep/z"])
    assert read.labels == {"cat/x": [1], "dog/y": [2], "cat/deep/z": [1]}


def test_label_file_mistakes_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nx.jpg,cat\n")
    with pytest.raises(CorruptDataError, match="needs a header with columns image,labels"):
        read_image_labels(bad, IDS)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        read_image_labels(tmp_path / "none.csv", IDS)
    nomatch = tmp_path / "nomatch.csv"
    nomatch.write_text("image,labels\nother.jpg,cat\n")
    with pytest.raises(CorruptDataError, match="no row of .* names an image"):
        read_image_labels(nomatch, IDS)
    with pytest.raises(CorruptDataError, match="sits at the top of the image folder"):
        read_image_labels("folders", ["loose"])


def _folder(tmp_path: Path) -> tuple[Path, Path, Path]:
    photos, masks = tmp_path / "photos", tmp_path / "masks"
    sizes = {
        "shop/a/photo1.jpg": (40, 30),
        "shop/b/photo1.png": (20, 50),
        "street/img2.jpg": (33, 33),
    }
    for rel, (h, w) in sizes.items():
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(photos / rel)
    mask = np.zeros((20, 50), np.uint8)
    mask[5:10, 10:20] = 1
    write_mask(masks / "shop/b/photo1.png", mask)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,labels\nshop/a/photo1.jpg,cat\nshop/b/photo1.png,cat\n")
    return photos, csv, masks


def test_labelled_folder_reads_at_a_working_size_and_keeps_each_size(tmp_path: Path) -> None:
    photos, csv, masks = _folder(tmp_path)
    ds = LabelledFolder(photos, csv, masks=masks, short_side=10)
    assert ds.ids == ["shop/a/photo1", "shop/b/photo1"]  # street/img2 has no label
    a, b = ds[0], ds[1]
    assert a["size"] == (40, 30) and tuple(a["image"].shape) == (3, 13, 10)
    assert b["size"] == (20, 50) and tuple(b["image"].shape) == (3, 10, 25)
    assert (a["mask"] == 255).all() and not ds.has_mask(0)  # no mask: all ignore
    assert ds.has_mask(1) and set(b["mask"].unique().tolist()) == {0, 1}
    fixed = LabelledFolder(photos, csv, masks=masks, image_size=16)
    assert tuple(fixed[1]["image"].shape) == (3, 16, 16)


def test_a_mask_of_another_size_is_one_line(tmp_path: Path) -> None:
    photos, csv, masks = _folder(tmp_path)
    write_mask(masks / "shop/b/photo1.png", np.zeros((64, 64), np.uint8))
    ds = LabelledFolder(photos, csv, masks=masks)
    with pytest.raises(DatasetSettingsError, match="is 64x64 but image .*photo1.png is 50x20"):
        ds[1]


def test_unreadable_images_are_left_out_with_skip(tmp_path: Path, caplog) -> None:
    photos, csv, masks = _folder(tmp_path)
    (photos / "shop/a/photo1.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with caplog.at_level(logging.WARNING):
        ds = LabelledFolder(photos, csv, masks=masks, on_corrupt="skip")
    assert ds.ids == ["shop/b/photo1"]
    assert "skipping unreadable image" in caplog.text and "photo1.jpg" in caplog.text
