"""Multi-crop augmentation: the separable blur, the draw against v2, crop shapes, per-sample
determinism."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from common.config import load_config
from pretrain.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCrop,
    blur_kernel_size,
    blur_sigma_range,
    separable_gaussian_blur,
)
from pretrain.data import MultiCropDataset, load_unlabeled


@pytest.mark.parametrize(("size", "kernel", "sigma"), [(224, 23, 1.3), (32, 5, 0.2), (16, 3, 0.1)])
def test_blur_equals_torchvision(size, kernel, sigma):
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    ours = separable_gaussian_blur(image, kernel, sigma)
    theirs = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_blur_of_a_point_is_the_gaussian():
    image = torch.zeros(1, 21, 21)
    image[0, 10, 10] = 1.0
    sigma = 1.5
    out = separable_gaussian_blur(image, 9, sigma)[0]
    norm = sum(math.exp(-(d**2) / (2 * sigma**2)) for d in range(-4, 5))
    for dy, dx in [(0, 0), (1, 2), (4, 4), (3, -2)]:
        expected = math.exp(-(dy**2 + dx**2) / (2 * sigma**2)) / norm**2
        assert float(out[10 + dy, 10 + dx]) == pytest.approx(expected, rel=1e-5)
    assert float(out[10, 15]) == 0.0  # outside the 9-tap support
    assert float(out.sum()) == pytest.approx(1.0, rel=1e-6)


def test_blur_rejects_an_even_kernel_and_non_float_images():
    with pytest.raises(ValueError, match="odd"):
        separable_gaussian_blur(torch.zeros(3, 8, 8), 4, 1.0)
    with pytest.raises(ValueError, match="float"):
        separable_gaussian_blur(torch.zeros(3, 8, 8, dtype=torch.uint8), 3, 1.0)


def _v2_pipeline(c):
    """The recipe as plain torchvision v2 transforms (torchvision's own 2-D blur)."""
    colour = [
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(*c.color_jitter)], p=c.color_jitter_p),
        v2.RandomGrayscale(c.grayscale_p),
    ]
    norm = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def view(size, scale, blur_p, *extra):
        blur = v2.GaussianBlur(blur_kernel_size(size), blur_sigma_range(size))
        rrc = v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True)
        return v2.Compose([rrc, *colour, v2.RandomApply([blur], p=blur_p), *extra, norm])

    solarize = v2.RandomSolarize(0.5, p=c.solarize_p)
    first = view(c.global_size, c.global_scale, c.blur_p[0])
    second = view(c.global_size, c.global_scale, c.blur_p[1], solarize)
    local = view(c.local_size, c.local_scale, c.blur_p[2])
    return lambda image: [
        *[(first, second)[i % 2](image) for i in range(c.num_global)],
        *[local(image) for _ in range(c.num_local)],
    ]


@pytest.mark.parametrize("preset", ["dino", "fashion_tiny"])
def test_draw_and_apply_is_the_v2_pipeline_with_the_same_seed(preset):
    # The parameter draw consumes torch's RNG exactly as v2's transforms do, so a seeded
    # MultiCrop gives the crops of the v2.Compose recipe: same boxes, coins, factors, order.
    c = load_config("pretrain", preset, []).crops
    image = torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(0))
    crops, reference = MultiCrop(c), _v2_pipeline(c)
    for seed in range(12):
        torch.manual_seed(seed)
        ours = [*sum(crops(image), [])]
        torch.manual_seed(seed)
        theirs = reference(image)
        for a, b in zip(ours, theirs, strict=True):
            # Only the blur differs: shifted sums against a 2-D convolution (float rounding).
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


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
