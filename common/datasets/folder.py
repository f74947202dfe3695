"""Unlabeled image folders (ImageNet-style trees or a folder of your own images)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from common.config import ConfigError
from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.items import load_rgb

log = logging.getLogger(__name__)

ON_CORRUPT = ("error", "skip")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def list_images(root: str | Path) -> list[Path]:
    """Image files under ``root`` (recursive, by extension, case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist or is not a folder")
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DatasetNotFoundError(
            f"no images under {root} (looked recursively for {', '.join(IMAGE_EXTENSIONS)}); "
            "point data.root at a folder that holds images"
        )
    return files


def check_on_corrupt(value: str) -> None:
    """``data.on_corrupt`` must be ``error`` or ``skip``."""
    if value not in ON_CORRUPT:
        raise ConfigError(f"data.on_corrupt must be one of {ON_CORRUPT}, got {value!r}")


class ImageFolderUnlabeled(Dataset):
    """Every image under ``root``; items are ``{"image": transform(PIL RGB), "path": str}``.

    A corrupt or unreadable image is never silent: ``on_corrupt='error'`` raises
    CorruptDataError naming it; ``'skip'`` logs its path once (per process) with the count
    skipped so far, and returns the next readable image instead.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        on_corrupt: str = "error",
    ) -> None:
        check_on_corrupt(on_corrupt)
        self.root = Path(root)
        self.paths = list_images(self.root)
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.skipped: list[Path] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        # Try at most every image once, so a folder of only bad files fails instead of looping.
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                image = load_rgb(path)
            except (CorruptDataError, DatasetNotFoundError):
                if self.on_corrupt == "error":
                    raise
                self._note_skipped(path)
                continue
            return {
                "image": self.transform(image) if self.transform is not None else image,
                "path": str(path),
            }
        raise CorruptDataError(
            f"none of the {len(self.paths)} images under {self.root} can be read"
        )

    def _note_skipped(self, path: Path) -> None:
        if path in self.skipped:
            return
        self.skipped.append(path)
        log.warning(
            "skipping unreadable image %s (data.on_corrupt=skip; %d skipped so far)",
            path,
            len(self.skipped),
        )
