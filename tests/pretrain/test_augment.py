"""Multi-crop augmentation: the separable blur, crop shapes, per-sample determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2

from common.config import load_config
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCrop, SeparableGaussianBlur
from pretrain.data import MultiCropDataset, load_unlabeled


@pytest.mark.parametrize(("size", "kernel", "sigma"), [(224, 23, (0.1, 2.0)), (32, 5, (0.1, 0.3))])
def test_blur_equals_torchvision_with_the_same_draw(size, kernel, sigma):
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(size))
    for seed in range(3):
        torch.manual_seed(seed)
        ours = SeparableGaussianBlur(kernel, sigma)(image)
        ours_rng = torch.get_rng_state()
        torch.manual_seed(seed)
        theirs = v2.GaussianBlur(kernel, sigma=sigma)(image)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        # The same draws: a seeded pipeline stays the same after swapping the blur.
        assert torch.equal(ours_rng, torch.get_rng_state())


def test_blur_of_a_point_is_the_gaussian():
    image = torch.zeros(1, 21, 21)
    image[0, 10, 10] = 1.0
    sigma = 1.5
    out = SeparableGaussianBlur(9, (sigma, sigma))(image)[0]
    norm = sum(math.exp(-(d**2) / (2 * sigma**2)) for d in range(-4, 5))
    for dy, dx in [(0, 0), (1, 2), (4, 4), (3, -2)]:
        expected = math.exp(-(dy**2 + dx**2) / (2 * sigma**2)) / norm**2
        assert float(out[10 + dy, 10 + dx]) == pytest.approx(expected, rel=1e-5)
    assert float(out[10, 15]) == 0.0  # outside the 9-tap support
    assert float(out.sum()) == pytest.approx(1.0, rel=1e-6)


def test_blur_rejects_an_even_kernel_and_non_float_images():
    with pytest.raises(ValueError, match="odd"):
        SeparableGaussianBlur(4, (0.1, 1.0))
    with pytest.raises(ValueError, match="float"):
        SeparableGaussianBlur(3, (0.1, 1.0))(torch.zeros(3, 8, 8, dtype=torch.uint8))


def test_crops_have_the_recipe_shapes_and_normalisation():
    cfg = load_config("pretrain", "dino", ["crops.num_local=3"]).crops
    image = torch.rand(3, 80, 100)
    torch.manual_seed(0)
    globals_, locals_ = MultiCrop(cfg)(image)
    assert [g.shape for g in globals_] == [(3, 224, 224)] * 2
    assert [c.shape for c in locals_] == [(3, 96, 96)] * 3
    # Normalised with ImageNet statistics: a [0, 1] image maps inside these bounds.
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    for crop in [*globals_, *locals_]:
        assert crop.dtype == torch.float32
        assert low - 1e-4 <= float(crop.min()) and float(crop.max()) <= high + 1e-4


def test_a_sample_depends_on_its_key_not_on_the_global_rng(tiny_config):
    cfg = tiny_config("maskcluster")
    ds = MultiCropDataset(load_unlabeled(cfg.data), cfg.crops, cfg.masking, 8, seed=0)
    torch.manual_seed(1)
    a = ds[(0, 3)]
    torch.manual_seed(2)
    b = ds[(0, 3)]
    assert torch.equal(a["masks"], b["masks"])
    for key in ("global_crops", "local_crops"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True)), key
    other_epoch = ds[(1, 3)]
    assert not torch.equal(a["global_crops"][0], other_epoch["global_crops"][0])
