"""Reading images and building the item dict that every segmentation dataset returns."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from common.datasets.decode import to_rgb
from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.palette import IGNORE_INDEX


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB; a missing or undecodable file is an error naming the path."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise CorruptDataError(f"cannot decode image {path}: {err}; replace or remove it") from err


def check_masks_exist(mask_dir: Path, ids: Sequence[str], what: str, fix: str) -> None:
    """Every id needs ``<id>.png`` in ``mask_dir``; the error counts and names a few missing."""
    if not mask_dir.is_dir():
        raise DatasetNotFoundError(f"mask folder {mask_dir} does not exist")
    present = {p.name for p in mask_dir.iterdir()}
    # Ids with folders (your own data: shop/a/img1) name masks in the same subfolders.
    missing = [
        i
        for i in ids
        if f"{i}.png" not in present and not ("/" in i and (mask_dir / f"{i}.png").is_file())
    ]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of {len(ids)} {what} have no mask in {mask_dir} "
            f"(e.g. {', '.join(f'{m}.png' for m in missing[:5])}); {fix}"
        )


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [0, 1]."""
    array = np.array(image, dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def labels_of_mask(mask: np.ndarray) -> list[int]:
    """Sorted class ids present in a mask, without background (0) and ignore (255)."""
    return [int(v) for v in np.unique(mask) if v not in (0, IGNORE_INDEX)]


def as_hw(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``image_size`` (int or (height, width)) as a (height, width) pair, or None."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    if len(image_size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    return (int(image_size[0]), int(image_size[1]))


def segmentation_item(
    image: Image.Image,
    mask: np.ndarray,
    name: str,
    image_size: tuple[int, int] | None,
    image_path: Path,
    mask_source: str,
) -> dict:
    """``{"image", "mask", "labels", "id", "size"}`` after checking sizes, optionally resized.

    Images are resized bilinearly, masks by nearest neighbour so class ids stay exact.
    """
    if mask.shape != (image.height, image.width):
        raise CorruptDataError(
            f"mask {mask_source} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
            f"{image.width}x{image.height}; masks must match their image (regenerate the mask "
            "at the image's size)"
        )
    size = (image.height, image.width)
    if image_size is not None:
        height, width = image_size
        image = image.resize((width, height), Image.BILINEAR)
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    return {
        "image": image_to_tensor(image),
        "mask": torch.from_numpy(mask.astype(np.int64)),
        "labels": labels_of_mask(mask),
        "id": name,
        "size": size,  # the file's own (height, width): outputs are written back at it
    }


def collate_segmentation(batch: list[dict]) -> dict:
    """DataLoader collate: stacks ``image`` and ``mask``, keeps ``labels`` and ``id`` as lists.

    torch's default collate fails on ``labels`` (lists of different lengths per image).
    """
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "mask": torch.stack([item["mask"] for item in batch]),
        "labels": [item["labels"] for item in batch],
        "id": [item["id"] for item in batch],
    }
