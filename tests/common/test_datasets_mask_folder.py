"""images/ + masks/ segmentation folders: splits as folders, id lists or every masked image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets.errors import DatasetNotFoundError
from common.datasets.mask_folder import MaskFolderSegmentation
from common.datasets.palette import write_mask


def _set(root: Path, rels: dict[str, int]) -> Path:
    """Images ``rels`` (relative path: class id) of assorted sizes with masks."""
    for n, (rel, cls) in enumerate(rels.items()):
        h, w = 20 + 4 * n, 30 - 2 * n
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 60 * n % 255, np.uint8)).save(root / "images" / rel)
        mask = np.zeros((h, w), np.uint8)
        mask[2:8, 3:9] = cls
        write_mask(root / "masks" / Path(rel).with_suffix(".png"), mask)
    return root


def test_split_folders_any_extension_and_classes_txt(tmp_path: Path) -> None:
    root = _set(
        tmp_path,
        {"train/k/0001.jpg": 1, "train/k/0002.png": 2, "val/0003.jpeg": 2, "val/0004.JPG": 1},
    )
    (root / "classes.txt").write_text("background\ncup\nplate\n")
    train = MaskFolderSegmentation(root, "train", image_size=16)
    assert train.ids == ["train/k/0001", "train/k/0002"]
    assert train.class_names == ["background", "cup", "plate"]
    item = train[1]
    assert tuple(item["image"].shape) == (3, 16, 16) and item["labels"] == [2]
    assert item["size"] == (24, 28)
    val = MaskFolderSegmentation(root, "val")
    assert val.ids == ["val/0003", "val/0004"] and val.image_labels(0) == [2]


def test_id_lists_or_every_masked_image_and_pseudo_masks(tmp_path: Path) -> None:
    root = _set(tmp_path, {"a.jpg": 1, "b/c.png": 3, "d.jpeg": 2})
    (root / "masks" / "d.png").unlink()  # an image without a mask is left out
    everything = MaskFolderSegmentation(root, "train")
    assert everything.ids == ["a", "b/c"] and everything.num_classes == 4  # class_1..class_3
    (root / "val.txt").write_text("b/c.png\n")
    assert MaskFolderSegmentation(root, "val").ids == ["b/c"]
    pseudo = tmp_path / "pseudo"
    write_mask(pseudo / "d.png", np.zeros((28, 26), np.uint8))
    assert MaskFolderSegmentation(root, "train", mask_dir=pseudo).ids == ["d"]
    (root / "bad.txt").write_text("nope\n")
    with pytest.raises(DatasetNotFoundError, match="1 ids of .*bad.txt have no image"):
        MaskFolderSegmentation(root, "bad")
