"""Image folders: listing (links, hidden files, counts), decoding, corrupt images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.folder import ImageFolderUnlabeled, list_images, load_image, walk_images


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


def test_symlinks_followed_once_hidden_files_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, outside = tmp_path / "photos", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    for path in (root / "a" / "x.jpg", outside / "y.png"):
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(path)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # would walk forever
    (root / "a" / "._x.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (root / ".cache").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / ".cache" / "thumb.jpg")
    (root / "a" / "notes.txt").write_text("x")
    with caplog.at_level(logging.INFO):
        paths = list_images(root)
    assert [p.relative_to(root).as_posix() for p in paths] == ["a/x.jpg", "linked/y.png"]
    listing = walk_images(root)
    assert (listing.resource_forks, listing.hidden, listing.not_images) == (1, 1, 1)
    assert [p.name for p in listing.loops] == ["loop"]
    assert (
        f"found 2 images under {root}; skipped 1 macOS ._ files, 1 hidden files, 1 files that "
        "are not images, 1 linked folders already walked"
    ) in caplog.text


def test_16_bit_and_palette_images_decode_to_their_real_colours(tmp_path: Path) -> None:
    grey16 = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # what a 16-bit PNG opens as
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    assert rgb[..., 0].tolist() == [[0, 64], [128, 255]]  # not clipped to white
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "pal.png", transparency=0)
    rgb = np.asarray(load_image(tmp_path / "pal.png"))
    assert rgb[0, 1].tolist() == [200, 100, 50] and rgb[0, 0].tolist() == [10, 20, 30]


def test_corrupt_image_error_names_the_skip_setting(tmp_path: Path) -> None:
    data = ImageFolderUnlabeled(_tree(tmp_path), on_corrupt="error")
    with pytest.raises(CorruptDataError, match="data.on_corrupt=skip"):
        data[3]
