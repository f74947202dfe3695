"""VOC-style palette PNG masks: one byte per pixel, 0 background, 1..C classes, 255 ignore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.datasets.errors import CorruptDataError, DatasetNotFoundError

IGNORE_INDEX = 255


def voc_palette() -> list[int]:
    """The 256-colour Pascal VOC palette (bit-interleaved), flattened to 768 ints; 255 is cream."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette.extend((r, g, b))
    # VOC draws the ignore label as a light border colour.
    palette[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3] = [224, 224, 192]
    return palette


_PALETTE = voc_palette()


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """A ``uint8 [H, W]`` class-index mask as a palette ('P' mode) PIL image."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D [H, W], got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask values must be in 0..255, got {mask.min()}..{mask.max()}")
    height, width = mask.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(mask, np.uint8).tobytes())
    image.putpalette(_PALETTE)
    return image


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Save a class-index mask as a palette PNG (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask_to_image(mask).save(path, format="PNG", optimize=False)
    return path


def read_mask(path: str | Path) -> np.ndarray:
    """Load a palette (or greyscale) PNG mask as ``uint8 [H, W]`` class indices."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"mask file {path} does not exist")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise CorruptDataError(
                    f"mask {path} has mode {image.mode!r}; masks must be palette ('P') or "
                    "greyscale ('L') PNGs of class indices, not colour renderings"
                )
            return np.array(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise CorruptDataError(f"cannot read mask {path}: {err}; re-create the file") from err
