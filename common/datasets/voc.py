"""Pascal VOC-layout segmentation sets: Pascal VOC 2012 (+ SBD aug), FashionScenes, pseudo-masks.

Layout: ``JPEGImages/<id>.jpg`` (``.jpeg`` and ``.png`` are read too),
``SegmentationClassAug/<id>.png`` (falls back to VOC's own ``SegmentationClass/``),
``ImageSets/Segmentation/<split>.txt``, optional ``classes.txt`` (background first) and,
for FashionScenes, ``meta.json`` with per-image labels. Pascal-5i with the SBD augmentation
lists its 10,582 training ids in ``trainaug.txt`` (some distributions call it
``train_aug.txt``; both names are accepted for split 'trainaug').
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.items import (
    as_hw,
    check_masks_exist,
    labels_of_mask,
    load_rgb,
    segmentation_item,
)
from common.datasets.palette import read_mask

VOC_CLASS_NAMES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_SPLIT_ALIASES = {"trainaug": ("trainaug", "train_aug")}


def resolve_voc_root(root: str | Path) -> Path:
    """The folder with ``ImageSets/``: ``root``, ``root/VOC2012`` or ``root/VOCdevkit/VOC2012``."""
    root = Path(root)
    for folder in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (folder / "ImageSets" / "Segmentation").is_dir():
            return folder
    raise DatasetNotFoundError(
        f"no VOC-layout dataset at {root}: expected ImageSets/Segmentation/ in it or in "
        f"{root / 'VOC2012'}; for Pascal see docs/datasets.md, for FashionScenes run "
        f"`python -m common.datasets.fashion_scenes --out {root}`"
    )


def read_split_ids(voc_root: Path, split: str) -> list[str]:
    """Image ids listed in ``ImageSets/Segmentation/<split>.txt`` (first column of each line)."""
    folder = voc_root / "ImageSets" / "Segmentation"
    for name in _SPLIT_ALIASES.get(split, (split,)):
        path = folder / f"{name}.txt"
        if path.is_file():
            ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
            if not ids:
                raise CorruptDataError(f"split list {path} is empty; regenerate or fix it")
            return ids
    available = sorted(p.stem for p in folder.glob("*.txt"))
    raise DatasetNotFoundError(
        f"split {split!r} not found in {folder} (no {split}.txt); available splits: {available}"
    )


def read_class_names(voc_root: Path) -> list[str]:
    """Names from ``classes.txt`` (background first), else the 21 Pascal VOC names."""
    path = voc_root / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) < 2:
            raise CorruptDataError(f"{path} lists {len(names)} names; need background + classes")
        return names
    return list(VOC_CLASS_NAMES)


class VOCSegmentation(Dataset):
    """Images, class-index masks and image-level labels of one split of a VOC-layout folder.

    Items are dicts ``{"image": float [3, H, W] in [0, 1], "mask": int64 [H, W],
    "labels": sorted class ids present in the mask (0 and 255 excluded), "id": str}``.
    ``mask_dir`` replaces ``SegmentationClassAug`` by a folder of ``<id>.png`` (pseudo-masks).
    ``image_size`` resizes images (bilinear) and masks (nearest); ``transform(item) -> item``
    runs last.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        mask_dir: str | Path | None = None,
        image_size: int | Sequence[int] | None = None,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        self.root = resolve_voc_root(root)
        self.split = split
        self.ids = read_split_ids(self.root, split)
        self.class_names = read_class_names(self.root)
        self.num_classes = len(self.class_names)
        self.image_size = as_hw(image_size)
        self.transform = transform
        self.image_dir = self.root / "JPEGImages"
        if not self.image_dir.is_dir():
            raise DatasetNotFoundError(f"{self.image_dir} is missing; the VOC layout needs it")
        # Image-level labels come from ground truth even when pseudo-masks replace it.
        self.gt_mask_dir = self._default_mask_dir(required=mask_dir is None)
        self.mask_dir = self.gt_mask_dir if mask_dir is None else Path(mask_dir)
        self._check_masks_exist()
        self._labels: dict[int, list[int]] = {}
        self._meta_labels = self._read_meta_labels()
        self._other_images = self._non_jpg_images()

    def _non_jpg_images(self) -> dict[str, str]:
        """``{id: file name}`` of the images stored as .jpeg or .png (VOC's own are .jpg)."""
        return {
            name.rsplit(".", 1)[0]: name
            for name in os.listdir(self.image_dir)
            if name.lower().endswith((".jpeg", ".png")) and not name.startswith(".")
        }

    def _default_mask_dir(self, required: bool) -> Path | None:
        for name in ("SegmentationClassAug", "SegmentationClass"):
            if (self.root / name).is_dir():
                return self.root / name
        if not required:
            return None
        raise DatasetNotFoundError(
            f"no mask folder in {self.root} (SegmentationClassAug/ or SegmentationClass/); "
            "for Pascal-5i unpack the SBD-augmented masks there (docs/datasets.md)"
        )

    def _check_masks_exist(self) -> None:
        check_masks_exist(
            self.mask_dir,
            self.ids,
            f"ids of split {self.split!r}",
            "regenerate the masks for this split or point mask_dir at the right folder",
        )

    def _read_meta_labels(self) -> dict[str, list[int]]:
        path = self.root / "meta.json"
        if not path.is_file():
            return {}
        return json.loads(path.read_text()).get("labels", {})

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        name = self.ids[index]
        return self.image_dir / self._other_images.get(name, f"{name}.jpg")

    def mask_path(self, index: int) -> Path:
        return self.mask_dir / f"{self.ids[index]}.png"

    def read_mask(self, index: int) -> np.ndarray:
        """The mask of item ``index`` at its stored size, ``uint8 [H, W]``."""
        return read_mask(self.mask_path(index))

    def image_labels(self, index: int) -> list[int]:
        """Image-level labels of item ``index`` (ground truth), read once and cached.

        From ``meta.json`` when present, else from the ground-truth mask; with ``mask_dir``
        set they still come from ground truth (weak supervision starts from them), unless the
        dataset has no ground-truth masks, then from ``mask_dir``.
        """
        name = self.ids[index]
        if name in self._meta_labels:
            return list(self._meta_labels[name])
        if index not in self._labels:
            folder = self.gt_mask_dir or self.mask_dir
            self._labels[index] = labels_of_mask(read_mask(folder / f"{name}.png"))
        return list(self._labels[index])

    def __getitem__(self, index: int) -> dict:
        image_path = self.image_path(index)
        item = segmentation_item(
            load_rgb(image_path),
            self.read_mask(index),
            self.ids[index],
            self.image_size,
            image_path,
            str(self.mask_path(index)),
        )
        return self.transform(item) if self.transform is not None else item
