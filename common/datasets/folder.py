"""Image folders as users have them: the one reader every stage lists images with.

Symlinked files and folders are followed (a link back to a folder already walked is not
walked twice, so a loop cannot hang the listing), hidden files and folders (``.name``,
including macOS ``._name`` resource forks) are skipped and counted, and the count of images
found and skipped is logged once per listing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
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
SKIP_HINT = "or set data.on_corrupt=skip to leave unreadable images out"


@dataclass
class Listing:
    """Image files under a root and what was passed over, by reason."""

    images: list[Path]
    hidden: int = 0  # .name files and everything under .name folders
    resource_forks: int = 0  # macOS ._name files
    not_images: int = 0  # files without an image extension
    loops: list[Path] = field(default_factory=list)  # linked folders already walked

    def summary(self, root: Path) -> str:
        skipped = [
            f"{self.resource_forks} macOS ._ files" if self.resource_forks else "",
            f"{self.hidden} hidden files" if self.hidden else "",
            f"{self.not_images} files that are not images" if self.not_images else "",
            f"{len(self.loops)} linked folders already walked" if self.loops else "",
        ]
        skipped = [s for s in skipped if s]
        return f"{len(self.images)} images under {root}" + (
            f"; skipped {', '.join(skipped)}" if skipped else ""
        )


def _count_hidden(folder: Path) -> int:
    """Files under a hidden folder (not followed into links: only a count for the log)."""
    return sum(len(files) for _, _, files in os.walk(folder))


def walk_images(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> Listing:
    """Image files under ``root`` (recursive, following symlinks once, by extension,
    case-insensitive), sorted by path, with the counts of what was skipped."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist or is not a folder")
    listing = Listing(images=[])
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            listing.loops.append(Path(folder))
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        for d in [d for d in dirs if d.startswith(".")]:
            listing.hidden += _count_hidden(Path(folder) / d)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(folder) / name
            if name.startswith("._"):
                listing.resource_forks += 1
            elif name.startswith("."):
                listing.hidden += 1
            elif path.suffix.lower() not in extensions or not path.is_file():
                listing.not_images += 1
            else:
                listing.images.append(path)
    listing.images.sort()
    return listing


def list_images(
    root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, quiet: bool = False
) -> list[Path]:
    """Image files under ``root`` (see :func:`walk_images`), sorted; the counts are logged."""
    root = Path(root)
    listing = walk_images(root, extensions)
    if not listing.images:
        raise DatasetNotFoundError(
            f"no images under {root} (looked recursively for {', '.join(extensions)}); "
            "point data.root at a folder that holds images"
        )
    if not quiet:
        log.info("found %s", listing.summary(root))
    return listing.images


def check_on_corrupt(value: str) -> None:
    """``data.on_corrupt`` must be ``error`` or ``skip``."""
    if value not in ON_CORRUPT:
        raise ConfigError(f"data.on_corrupt must be one of {ON_CORRUPT}, got {value!r}")


def load_image(path: Path) -> Image.Image:
    """:func:`load_rgb` whose error also names ``data.on_corrupt=skip``."""
    try:
        return load_rgb(path)
    except CorruptDataError as err:
        raise CorruptDataError(f"{err}, {SKIP_HINT}") from err


class ImageFolderUnlabeled(Dataset):
    """Every image under ``root``; items are ``{"image": transform(PIL RGB), "path": str}``.

    A corrupt or unreadable image is never silent: ``on_corrupt='error'`` raises
    CorruptDataError naming it and ``data.on_corrupt=skip``; ``'skip'`` logs its path once
    (per process) with the count skipped so far, and returns the next readable image instead.
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
                image = load_image(path)
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
