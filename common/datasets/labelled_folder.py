"""A folder of your own images with image-level labels and, for some of them, masks.

Image ids are paths relative to the image folder without the extension (``shop/a/img1``),
so two ``img1.jpg`` in different folders stay two images, and every output named after an
image keeps that relative path. Masks live in their own folder as ``<id>.png`` (or
``<name>.png`` when the file name is unique), at the image's own size, holding class ids
(0 background, 255 ignore); any subset of the images may have one.

Items follow the VOC sets' contract (``image``, ``mask``, ``labels``, ``id``) plus ``size``,
the image's own (height, width): images are read at a working resolution (``image_size``,
a fixed size, or ``short_side``), and what is written back is resized to ``size``. An image
without a mask gets an all-ignore (255) mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from common.datasets.errors import DatasetNotFoundError, DatasetSettingsError
from common.datasets.folder import check_on_corrupt, list_images, load_image, walk_images
from common.datasets.items import as_hw, image_to_tensor, labels_of_mask
from common.datasets.labels import IdMatcher, image_key, read_image_labels
from common.datasets.palette import IGNORE_INDEX, read_mask

log = logging.getLogger(__name__)


def working_size(
    height: int, width: int, image_size: tuple[int, int] | None, short_side: int | None
) -> tuple[int, int]:
    """(height, width) an image is read at: fixed, short side scaled, or its own."""
    if image_size is not None:
        return image_size
    if short_side:
        scale = short_side / min(height, width)
        return (max(1, round(height * scale)), max(1, round(width * scale)))
    return (height, width)


def _relative_ids(paths: Sequence[Path], root: Path) -> list[str]:
    ids = [image_key(p.relative_to(root).as_posix()) for p in paths]
    seen: dict[str, Path] = {}
    for i, p in zip(ids, paths, strict=True):
        if i in seen:
            raise DatasetSettingsError(
                f"{seen[i]} and {p} would both be image {i!r}; rename one (ids are paths "
                "without the extension)"
            )
        seen[i] = p
    return ids


def find_masks(mask_dir: Path, ids: Sequence[str]) -> dict[str, Path]:
    """``{image id: mask path}`` for the ``.png`` files of ``mask_dir`` that name an image."""
    if not mask_dir.is_dir():
        raise DatasetNotFoundError(
            f"mask folder {mask_dir} does not exist; data.masks is a folder of <image>.png"
        )
    files = walk_images(mask_dir, (".png",)).images
    matcher = IdMatcher(ids)
    found, unmatched = {}, []
    for f in files:
        i = matcher.find(f.relative_to(mask_dir).as_posix())
        if i is None:
            unmatched.append(f.name)
        else:
            found[i] = f
    if unmatched:
        log.warning(
            "%d masks in %s name no labelled image (e.g. %s); they are not used",
            len(unmatched),
            mask_dir,
            ", ".join(unmatched[:3]),
        )
    return found


class LabelledFolder(Dataset):
    """Labelled images under ``root`` (labels from ``labels``), masks for some of them."""

    def __init__(
        self,
        root: str | Path,
        labels: str | Path,
        masks: str | Path | None = None,
        image_size: int | Sequence[int] | None = None,
        short_side: int | None = None,
        classes: Sequence[str] | None = None,
        on_corrupt: str = "error",
        split: str = "images",
    ) -> None:
        check_on_corrupt(on_corrupt)
        self.root, self.split = Path(root), split
        mask_dir = Path(masks) if masks else None
        paths = [p for p in list_images(self.root) if not inside(p, mask_dir)]
        if on_corrupt == "skip":
            paths = readable(paths)
        all_ids = _relative_ids(paths, self.root)
        read = read_image_labels(labels, all_ids, classes)
        keep = [n for n, i in enumerate(all_ids) if i in read.labels]
        if len(keep) < len(all_ids):
            log.info(
                "%d of %d images have no image-level label in %s and are left out",
                len(all_ids) - len(keep),
                len(all_ids),
                labels,
            )
        self.ids = [all_ids[n] for n in keep]
        self.paths = [paths[n] for n in keep]
        self._labels = [read.labels[i] for i in self.ids]
        self.class_names = read.class_names
        self.num_classes = len(self.class_names)
        self.image_size = as_hw(image_size)
        self.short_side = short_side
        self.mask_dir = mask_dir
        self.masks = find_masks(mask_dir, self.ids) if mask_dir is not None else {}
        self._check_mask_classes()
        log.info(
            "%d labelled images, %d classes (%s), %d with a mask",
            len(self.ids),
            self.num_classes - 1,
            ", ".join(self.class_names[1:]),
            len(self.masks),
        )

    def _check_mask_classes(self) -> None:
        """Warn when masks show other classes than their image's labels: mask values are
        class ids in the order of ``classes`` (or the sorted label names)."""
        differ = [
            i
            for i, name in enumerate(self.ids)
            if name in self.masks and set(labels_of_mask(self.read_mask(i))) - set(self._labels[i])
        ]
        if differ:
            i = differ[0]
            shown = [
                self.class_names[c] if c < self.num_classes else str(c)
                for c in labels_of_mask(self.read_mask(i))
            ]
            log.warning(
                "%d of %d masks show classes their image is not labelled with (e.g. %s shows "
                "%s, labelled %s); mask values are class ids 1, 2, ... in the order of "
                "data.classes (now: %s): set data.classes in your masks' order",
                len(differ),
                len(self.masks),
                self.mask_path(i),
                shown,
                [self.class_names[c] for c in self._labels[i]],
                ", ".join(self.class_names[1:]),
            )

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.paths[index]

    def image_labels(self, index: int) -> list[int]:
        return list(self._labels[index])

    def has_mask(self, index: int) -> bool:
        return self.ids[index] in self.masks

    def mask_path(self, index: int) -> Path:
        return self.masks[self.ids[index]]

    def read_mask(self, index: int) -> np.ndarray:
        """The mask of item ``index`` at its stored size, ``uint8 [H, W]``."""
        return read_mask(self.mask_path(index))

    def __getitem__(self, index: int) -> dict:
        image = load_image(self.paths[index])
        height, width = image.height, image.width
        h, w = working_size(height, width, self.image_size, self.short_side)
        if self.has_mask(index):
            mask = self.read_mask(index)
            if mask.shape != (height, width):
                raise DatasetSettingsError(
                    f"mask {self.mask_path(index)} is {mask.shape[1]}x{mask.shape[0]} but image "
                    f"{self.paths[index]} is {width}x{height}; a mask must have its image's size"
                )
            mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        else:
            mask = np.full((h, w), IGNORE_INDEX, np.uint8)
        if (h, w) != (height, width):
            image = image.resize((w, h), Image.BILINEAR)
        return {
            "image": image_to_tensor(image),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "labels": labels_of_mask(mask) if self.has_mask(index) else self.image_labels(index),
            "id": self.ids[index],
            "size": (height, width),
        }


def readable(paths: list[Path]) -> list[Path]:
    """``paths`` without the files PIL cannot identify (``data.on_corrupt=skip``), each
    logged once: a header check, so it costs no full decode."""
    keep = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
            keep.append(path)
        except (OSError, SyntaxError, ValueError) as err:
            log.warning("skipping unreadable image %s (data.on_corrupt=skip): %s", path, err)
    return keep


def inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def mask_file(root: Path, image_id: str) -> Path:
    """Where the mask of ``image_id`` goes under ``root``: its relative path, ``.png``."""
    return root / PurePosixPath(f"{image_id}.png")
