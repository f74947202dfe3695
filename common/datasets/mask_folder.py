"""Segmentation data as ``images/`` + ``masks/``: any nesting, .jpg / .jpeg / .png images.

Layout (``root``; without ``images/`` the images are ``root`` itself, and ``gt_masks``
names the mask folder)::

    images/<id>.jpg|.jpeg|.png    (nested folders allowed: the id is the relative path)
    masks/<id>.png                class ids (0 background, 255 ignore), the image's own size
    classes.txt                   optional: background, then one class name per line
    <split>.txt                   optional: the ids of a split, one per line

A split is ``images/<split>/`` when that folder exists, else the ids listed in
``<split>.txt``, else every image that has a mask. ``mask_dir`` replaces ``masks/`` (e.g. a
distill run's ``pseudo_masks/mixed``, written with the same relative paths). Items follow
the VOC sets' contract.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.folder import list_images, load_image
from common.datasets.items import as_hw, labels_of_mask, segmentation_item
from common.datasets.labelled_folder import find_masks, inside
from common.datasets.labels import image_key
from common.datasets.palette import read_mask

log = logging.getLogger(__name__)
EXTENSIONS = (".jpg", ".jpeg", ".png")


def is_mask_folder_layout(root: str | Path) -> bool:
    return (Path(root) / "images").is_dir()


def _class_names(root: Path, masks: dict[str, Path]) -> list[str]:
    path = root / "classes.txt"
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) < 2 or names[0] != "background":
            raise CorruptDataError(f"{path} must list background first, then the classes")
        return names
    top = max((max(labels_of_mask(read_mask(p)), default=0) for p in masks.values()), default=0)
    return ["background", *(f"class_{i}" for i in range(1, top + 1))]


class MaskFolderSegmentation(Dataset):
    """The images of one split of an ``images/`` + ``masks/`` folder that have a mask."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        mask_dir: str | Path | None = None,
        image_size: int | Sequence[int] | None = None,
        transform: Callable[[dict], dict] | None = None,
        gt_masks: str | Path | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"data.root {self.root} does not exist")
        image_root = self.root / "images" if is_mask_folder_layout(self.root) else self.root
        self.gt_mask_dir = Path(gt_masks) if gt_masks else self.root / "masks"
        paths = [p for p in list_images(image_root, EXTENSIONS) if not inside(p, self.gt_mask_dir)]
        ids = [image_key(p.relative_to(image_root).as_posix()) for p in paths]
        by_id = dict(zip(ids, paths, strict=True))
        self.image_root = image_root
        self.mask_dir = Path(mask_dir) if mask_dir is not None else self.gt_mask_dir
        masks = find_masks(self.mask_dir, ids)
        wanted = self._split_ids(ids)
        self.ids = [i for i in wanted if i in masks]
        if len(self.ids) < len(wanted):
            log.info(
                "split %r: %d of %d images have no mask in %s and are left out",
                split,
                len(wanted) - len(self.ids),
                len(wanted),
                self.mask_dir,
            )
        if not self.ids:
            raise DatasetNotFoundError(
                f"split {split!r} of {self.root}: no image has a mask in {self.mask_dir}"
            )
        self.paths = [by_id[i] for i in self.ids]
        self.masks = [masks[i] for i in self.ids]
        gt = find_masks(self.gt_mask_dir, ids) if self.gt_mask_dir.is_dir() else masks
        self.class_names = (
            ["background", *(c for c in class_names if c != "background")]
            if class_names
            else _class_names(self.root, gt)
        )
        self.num_classes = len(self.class_names)
        self.image_size = as_hw(image_size)
        self.transform = transform
        self._gt = gt

    def _split_ids(self, ids: list[str]) -> list[str]:
        prefix = f"{self.split}/"
        if (self.image_root / self.split).is_dir():
            return [i for i in ids if i.startswith(prefix)]
        listed = self.root / f"{self.split}.txt"
        if listed.is_file():
            known = set(ids)
            names = [image_key(x.split()[0]) for x in listed.read_text().splitlines() if x.strip()]
            missing = [n for n in names if n not in known]
            if missing:
                raise DatasetNotFoundError(
                    f"{len(missing)} ids of {listed} have no image under {self.image_root} "
                    f"(e.g. {missing[0]})"
                )
            return names
        log.info(
            "split %r: no images/%s/ folder or %s.txt in %s; using every image with a mask",
            self.split,
            self.split,
            self.split,
            self.root,
        )
        return ids

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.paths[index]

    def mask_path(self, index: int) -> Path:
        return self.masks[index]

    def read_mask(self, index: int) -> np.ndarray:
        return read_mask(self.masks[index])

    def image_labels(self, index: int) -> list[int]:
        gt = self._gt.get(self.ids[index], self.masks[index])
        return labels_of_mask(read_mask(gt))

    def __getitem__(self, index: int) -> dict:
        item = segmentation_item(
            load_image(self.paths[index]),
            self.read_mask(index),
            self.ids[index],
            self.image_size,
            self.paths[index],
            str(self.masks[index]),
        )
        return self.transform(item) if self.transform is not None else item
