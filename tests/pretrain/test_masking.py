"""Block-wise masks: ratio, shape, block aspect, share of masked crops."""

import numpy as np
import pytest
from scipy import ndimage

from pretrain.masking import BlockMaskGenerator, sample_masks


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_mask_ratio_and_shape(ratio):
    gen = BlockMaskGenerator((14, 14), min_patches=4, min_aspect=0.3)
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(50):
        m = gen(ratio, rng)
        assert m.shape == (14, 14) and m.dtype == bool
        assert m.sum() <= round(ratio * 196)
        ratios.append(m.mean())
    assert np.mean(ratios) == pytest.approx(ratio, abs=0.04)


def test_single_blocks_respect_the_aspect_range():
    gen = BlockMaskGenerator((20, 20), min_patches=16, min_aspect=0.3)
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(200):
        labels, n = ndimage.label(gen(0.08, rng))
        for comp in range(1, n + 1):
            rows, cols = np.nonzero(labels == comp)
            h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
            if h * w != len(rows) or h * w < 9:
                continue  # overlapping blocks, or one too small for rounding to keep its aspect
            checked += 1
            assert 0.3 / 1.5 <= h / w <= 1.5 / 0.3
    assert checked > 50


def test_sample_masks_share_of_crops():
    gen = BlockMaskGenerator((8, 8))
    rng = np.random.default_rng(2)
    masks = sample_masks(gen, 1000, share=0.3, ratio_range=(0.1, 0.5), rng=rng)
    masked = masks.reshape(1000, -1).any(axis=1)
    assert masked.mean() == pytest.approx(0.3, abs=0.05)
    ratios = masks.reshape(1000, -1)[masked].mean(axis=1)
    assert ratios.min() >= 0.05 and ratios.max() <= 0.5


def test_bad_aspect_is_an_error():
    with pytest.raises(ValueError, match="min_aspect"):
        BlockMaskGenerator((8, 8), min_aspect=2.0)
