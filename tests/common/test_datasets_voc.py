"""VOC-layout reader on the generated FashionScenes set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.items import collate_segmentation
from common.datasets.palette import read_mask, write_mask
from common.datasets.voc import VOCSegmentation


def test_items_on_fashion_scenes(fashion_scenes_root: Path) -> None:
    data = VOCSegmentation(fashion_scenes_root, "train")
    assert len(data) == 120 and data.num_classes == 11
    assert data.class_names[0] == "background" and data.class_names[1] == "T-shirt/top"
    item = data[5]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
    assert item["mask"].shape == (64, 64) and item["mask"].dtype == torch.int64
    assert item["id"] == "train_000005"
    assert item["labels"] == data.image_labels(5)
    assert all(data[i]["labels"] == data.image_labels(i) for i in range(len(data)))


def test_resize_keeps_mask_values(fashion_scenes_root: Path) -> None:
    data = VOCSegmentation(fashion_scenes_root, "val", image_size=(32, 48))
    item = data[0]
    assert item["image"].shape == (3, 32, 48) and item["mask"].shape == (32, 48)
    original = set(np.unique(data.read_mask(0)).tolist())
    assert set(item["mask"].unique().tolist()) <= original


def test_mask_dir_replaces_ground_truth(fashion_scenes_root: Path, tmp_path: Path) -> None:
    data = VOCSegmentation(fashion_scenes_root, "val")
    for name in data.ids:
        write_mask(tmp_path / f"{name}.png", np.full((64, 64), 3, np.uint8))
    pseudo = VOCSegmentation(fashion_scenes_root, "val", mask_dir=tmp_path)
    assert pseudo[0]["labels"] == [3]
    assert pseudo.image_labels(0) == data.image_labels(0)  # image-level labels stay GT
    (tmp_path / f"{data.ids[7]}.png").unlink()
    (tmp_path / f"{data.ids[9]}.png").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"2 of 60 ids.*test_000007\.png"):
        VOCSegmentation(fashion_scenes_root, "val", mask_dir=tmp_path)


def test_bad_inputs_name_the_file(fashion_scenes_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(fashion_scenes_root, root)
    data = VOCSegmentation(root, "train")
    write_mask(data.mask_path(1), np.zeros((10, 12), np.uint8))
    with pytest.raises(CorruptDataError, match=r"12x10 but image .*64x64"):
        data[1]
    data.image_path(2).write_bytes(b"not a jpeg")
    with pytest.raises(CorruptDataError, match="train_000002.jpg"):
        data[2]
    with pytest.raises(DatasetNotFoundError, match=r"available splits: \['train', 'val'\]"):
        VOCSegmentation(root, "trainaug")
    with pytest.raises(DatasetNotFoundError, match="ImageSets/Segmentation"):
        VOCSegmentation(tmp_path / "nowhere", "train")


def test_accepts_parent_with_voc2012(fashion_scenes_root: Path, tmp_path: Path) -> None:
    (tmp_path / "VOC2012").symlink_to(fashion_scenes_root, target_is_directory=True)
    assert len(VOCSegmentation(tmp_path, "val")) == 60
    assert read_mask(VOCSegmentation(tmp_path, "val").mask_path(0)).dtype == np.uint8


def test_pascal_voc_tree(voc_root: Path) -> None:
    data = VOCSegmentation(voc_root, "val")
    assert data.root == voc_root / "VOC2012"
    assert data.num_classes == 21 and data.class_names[15] == "person"
    assert data.ids == ["2007_000039", "2010_000001"]
    item = data[0]
    assert item["image"].shape == (3, 36, 28)
    assert item["labels"] == [12, 15] == data.image_labels(0)
    assert (item["mask"] == 255).any()  # VOC's ignore borders survive
    aug = VOCSegmentation(voc_root, "trainaug", image_size=20)
    assert len(aug) == 4 and aug[2]["labels"] == []
    assert aug[3]["mask"].shape == (20, 20) and aug[3]["labels"] == [7, 15]


def test_dataloader_batches_with_collate(fashion_scenes_root: Path) -> None:
    data = VOCSegmentation(fashion_scenes_root, "train", image_size=32)
    loader = DataLoader(data, batch_size=8, collate_fn=collate_segmentation)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["mask"].shape == (8, 32, 32)
    assert batch["labels"] == [data.image_labels(i) for i in range(8)]
    assert batch["id"][7] == "train_000007"
