"""Unlabeled image folders: listing, corrupt images skipped with a warning or raised."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.folder import ImageFolderUnlabeled


def _tree(root: Path) -> Path:
    (root / "a" / "deep").mkdir(parents=True)
    for i, rel in enumerate(["a/x.jpg", "a/deep/y.PNG", "b.jpeg", "c.jpg"]):
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(root / rel)
    (root / "notes.txt").write_text("not an image")
    (root / "b_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return root


def test_lists_images_recursively_sorted(tmp_path: Path) -> None:
    data = ImageFolderUnlabeled(_tree(tmp_path), on_corrupt="error")
    names = [p.relative_to(tmp_path).as_posix() for p in data.paths]
    assert names == ["a/deep/y.PNG", "a/x.jpg", "b.jpeg", "b_broken.jpg", "c.jpg"]
    assert data[0]["image"].size == (8, 8)


def test_corrupt_image_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = ImageFolderUnlabeled(_tree(tmp_path), transform=np.asarray, on_corrupt="skip")
    with caplog.at_level(logging.WARNING):
        items = [data[i] for i in range(len(data))] + [data[3]]
    warnings = [r.getMessage() for r in caplog.records if "b_broken.jpg" in r.getMessage()]
    assert len(warnings) == 1 and "1 skipped so far" in warnings[0]  # each path once
    assert data.skipped == [tmp_path / "b_broken.jpg"]
    assert items[3]["path"] == str(tmp_path / "c.jpg")  # the next readable image instead
    assert items[3]["image"].shape == (8, 8, 3)


def test_corrupt_image_raises_naming_it(tmp_path: Path) -> None:
    data = ImageFolderUnlabeled(_tree(tmp_path), on_corrupt="error")
    with pytest.raises(CorruptDataError, match="b_broken.jpg"):
        data[3]


def test_empty_or_missing_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "only.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="no images under"):
        ImageFolderUnlabeled(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolderUnlabeled(tmp_path / "missing")
    with pytest.raises(ValueError, match="data.on_corrupt"):
        ImageFolderUnlabeled(tmp_path, on_corrupt="ignore")
