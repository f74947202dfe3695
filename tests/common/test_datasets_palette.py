"""Palette PNG masks: exact round trip, VOC colours, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.palette import read_mask, voc_palette, write_mask


def test_round_trip_is_exact_and_uses_the_voc_palette(tmp_path: Path) -> None:
    mask = np.random.default_rng(0).choice([0, 1, 5, 20, 255], size=(17, 23)).astype(np.uint8)
    path = write_mask(tmp_path / "sub" / "m.png", mask)
    assert np.array_equal(read_mask(path), mask)
    with Image.open(path) as image:
        assert image.mode == "P"
        value = int(mask[0, 0])
        assert image.convert("RGB").getpixel((0, 0)) == tuple(
            voc_palette()[3 * value : 3 * value + 3]
        )
    assert voc_palette()[3:6] == [128, 0, 0]  # VOC class 1 (aeroplane) is dark red
    assert voc_palette()[45:48] == [192, 128, 128]  # VOC class 15 (person)


def test_bad_masks_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D"):
        write_mask(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(CorruptDataError, match="mode 'RGB'"):
        read_mask(tmp_path / "rgb.png")
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(CorruptDataError, match="junk.png"):
        read_mask(tmp_path / "junk.png")
    with pytest.raises(DatasetNotFoundError, match="missing.png"):
        read_mask(tmp_path / "missing.png")
