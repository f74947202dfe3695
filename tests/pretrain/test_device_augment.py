"""The batched device path against the per-image torchvision v2 reference, op by op and end to
end; per-sample independence; the drawn parameters' distributions; training and resume."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from common.checkpoint import load_torch_file
from common.cli import run_stage
from common.config import ConfigError, load_config
from pretrain.augment import (
    IDENTITY_FACTORS,
    IMAGENET_STD,
    CropParams,
    MultiCrop,
    apply_params_v2,
    blur_sigma_range,
    color_jitter_v2,
    separable_gaussian_blur,
)
from pretrain.data import (
    MultiCropDataset,
    augment_on_device,
    collate_multicrop,
    load_unlabeled,
    stack_params,
)
from pretrain.device_augment import (
    BatchedMultiCrop,
    adjust_hue,
    color_jitter,
    gaussian_blur,
    hue_rows,
    luma,
    resized_crops,
)
from pretrain.stage import run

# Ops computed with the same formulas agree to float rounding.
EXACT = 1e-5
# End to end, in [0, 1] pixel units: only the resized crop's kernel differs (roi_align's
# bin average against v2's antialiased triangle filter, and v2 clamps at the crop edge where
# roi_align reads one pixel beyond). Measured on the 64 px fixture scenes with the
# fashion_tiny recipe: mean 0.0038 per crop, worst crop 0.009. A flip toggled gives 0.12,
# a box moved by 1/8 of its side 0.055, grayscale toggled 0.096, the jitter order reversed
# 0.021 on average: each is well above these bounds.
MEAN_BOUND = 0.006
CROP_BOUND = 0.015


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _params(**changes) -> CropParams:
    base = CropParams((0, 0, 1, 1), False, (0, 1, 2, 3), IDENTITY_FACTORS, False, 0.0, False)
    return dataclasses.replace(base, **changes)


def test_luma_and_hue_match_v2():
    x = _rand(6, 3, 20, 24)
    torch.testing.assert_close(luma(x), TF.rgb_to_grayscale(x), rtol=0, atol=EXACT)
    hue = torch.tensor([0.1, -0.3, 0.5, -0.5, 0.02, 0.25])
    theirs = torch.stack([TF.adjust_hue(x[i], float(hue[i])) for i in range(6)])
    torch.testing.assert_close(adjust_hue(x, hue), theirs, rtol=0, atol=EXACT)


def test_color_jitter_matches_v2_for_every_order():
    # Hue and saturation do not commute, nor does anything with clamping: every order counts.
    orders = list(itertools.permutations(range(4)))
    x = _rand(len(orders), 3, 12, 12, seed=1)
    ranges = [(0.2, 1.8), (0.2, 1.8), (0.0, 2.0), (-0.5, 0.5)]
    factors = torch.stack([torch.empty(len(orders)).uniform_(*r) for r in ranges], dim=1)
    factors[3] = torch.tensor(IDENTITY_FACTORS)  # jitter off for one image
    order = torch.tensor(orders)
    ours = color_jitter(x, order, factors, hue_rows(order, factors))
    for i, o in enumerate(orders):
        p = _params(order=o, factors=tuple(factors[i].tolist()))
        torch.testing.assert_close(ours[i], color_jitter_v2(x[i], p), rtol=0, atol=EXACT)
    assert torch.equal(ours[3], x[3])


def test_blur_with_one_kernel_per_image_matches_v2():
    x = _rand(4, 3, 32, 32, seed=2)
    sigma = torch.tensor([0.0, 0.1, 0.9, 2.0], dtype=torch.float64)
    ours = gaussian_blur(x, sigma, 5)
    assert torch.equal(ours[0], x[0])  # sigma 0: no blur
    for i in range(1, 4):
        s = float(sigma[i])
        torch.testing.assert_close(
            ours[i], TF.gaussian_blur(x[i], [5, 5], [s, s]), atol=EXACT, rtol=0
        )
        torch.testing.assert_close(ours[i], separable_gaussian_blur(x[i], 5, s), atol=EXACT, rtol=0)


def test_resized_crop_places_the_box():
    # On an affine image every symmetric filter returns the value at the output pixel's
    # centre, so roi_align must give it exactly: a swapped or shifted box would not.
    height, width = 40, 50
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([0.01 * xs, 0.015 * ys, 0.3 + 0.004 * xs + 0.006 * ys]).float()[None]
    boxes = torch.tensor([[5.0, 7.0, 24.0, 30.0], [10.0, 3.0, 9.0, 6.0], [0.0, 0.0, 40.0, 50.0]])
    out = resized_crops(image, torch.zeros(3, dtype=torch.long), boxes, 12)
    for crop, (top, left, h, w) in zip(out, boxes.tolist(), strict=True):
        cy = top + (torch.arange(12) + 0.5) * h / 12 - 0.5
        cx = left + (torch.arange(12) + 0.5) * w / 12 - 0.5
        cy, cx = cy[:, None].expand(12, 12), cx[None].expand(12, 12)
        expected = torch.stack([0.01 * cx, 0.015 * cy, 0.3 + 0.004 * cx + 0.006 * cy])
        inner = (slice(None), slice(1, -1), slice(1, -1))  # the border may clamp
        torch.testing.assert_close(crop[inner], expected[inner], rtol=0, atol=EXACT)
    # The whole image at its own size is the identity, as v2's resize at the same size.
    square = image[..., :40]
    whole = torch.tensor([[0.0, 0.0, 40.0, 40.0]])
    full = resized_crops(square, torch.zeros(1, dtype=torch.long), whole, 40)
    torch.testing.assert_close(full, square, rtol=0, atol=EXACT)


def _batch(images, draws):
    """The collated device batch of ``images`` and their (global, local) parameter lists."""
    views = [[d[i][v] for v in range(len(draws[0][i])) for d in draws] for i in (0, 1)]
    return {
        "images": torch.stack(images),
        "global_params": stack_params(views[0]),
        "local_params": stack_params(views[1]),
    }


def test_every_op_but_the_resize_matches_v2():
    # Boxes covering the whole image at the output size make the resize the identity in
    # both paths, so flip, jitter, grayscale, blur, solarize and normalisation must agree.
    cfg = load_config("pretrain", "dino", ["crops.global_size=32", "crops.local_size=32"]).crops
    images = [(_rand(3, 32, 32, seed=s) * 255).round().to(torch.uint8) for s in range(12)]
    mc = MultiCrop(cfg)
    torch.manual_seed(0)
    draws = []
    for image in images:
        global_params, local_params = mc.draw(image)
        full = [
            [dataclasses.replace(p, box=(0, 0, 32, 32)) for p in ps]
            for ps in (global_params, local_params)
        ]
        draws.append(full)
    out = BatchedMultiCrop(cfg)(_batch(images, draws))
    for b, image in enumerate(images):
        for kind, params in zip(("global", "local"), draws[b], strict=True):
            for v, p in enumerate(params):
                ref = apply_params_v2(image.float() / 255, p, 32)
                torch.testing.assert_close(out[f"{kind}_crops"][v, b], ref, rtol=0, atol=EXACT)
    # The draws did exercise every op.
    flat = [p for pair in draws for ps in pair for p in ps]
    assert any(p.flip for p in flat) and any(p.gray for p in flat)
    assert any(p.solarize for p in flat) and any(p.blur_sigma > 0 for p in flat)
    assert any(p.factors[3] != 0 for p in flat)


def _crop_errors(crops_cfg, dataset, keys, mutate=None) -> np.ndarray:
    """Per crop mean |device - v2| in [0, 1] units, for the dataset items at ``keys``."""
    items = [dataset[k] for k in keys]
    out = BatchedMultiCrop(crops_cfg)(collate_multicrop(items))
    global_specs, local_specs = MultiCrop(crops_cfg).view_specs()
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    errors = []
    for b, item in enumerate(items):
        image = item["image"].float() / 255
        for kind, specs in (("global", global_specs), ("local", local_specs)):
            for v, spec in enumerate(specs):
                p = item[f"{kind}_params"][v]
                ref = apply_params_v2(image, mutate(p) if mutate else p, spec.size)
                errors.append(float(((out[f"{kind}_crops"][v, b] - ref).abs() * std).mean()))
    return np.array(errors)


@pytest.fixture
def fashion_tiny(tiny_config):
    """(crops config, device-path dataset) of the fashion_tiny recipe on the fixture scenes."""
    cfg = tiny_config("fashion_tiny", "crops.global_size=32", "crops.local_size=16")
    data = MultiCropDataset(load_unlabeled(cfg.data), cfg.crops, cfg.masking, 8, 0, on_device=True)
    return cfg.crops, data


def test_device_path_matches_v2_within_the_interpolation_tolerance(fashion_tiny):
    keys = [(0, i) for i in range(16)]
    errors = _crop_errors(*fashion_tiny, keys)
    assert errors.mean() < MEAN_BOUND and errors.max() < CROP_BOUND, errors
    # The bound catches real bugs: a flipped flip or a moved box is far outside it.
    flipped = _crop_errors(*fashion_tiny, keys, lambda p: dataclasses.replace(p, flip=not p.flip))
    assert flipped.mean() > 5 * MEAN_BOUND

    def move(p):
        top, left, h, w = p.box
        step = max(1, h // 8)
        return dataclasses.replace(
            p, box=(top + step if top + step + h <= 64 else top - step, left, h, w)
        )

    assert _crop_errors(*fashion_tiny, keys, move).mean() > 3 * MEAN_BOUND


def test_worker_and_device_items_share_draws_and_masks(tiny_config):
    cfg = tiny_config("maskcluster")
    base = load_unlabeled(cfg.data)
    worker = MultiCropDataset(base, cfg.crops, cfg.masking, 8, 0)
    device = MultiCropDataset(base, cfg.crops, cfg.masking, 8, 0, on_device=True)
    a, b = worker[(1, 5)], device[(1, 5)]
    assert torch.equal(a["masks"], b["masks"])
    image = b["image"].float() / 255
    for v, p in enumerate(b["global_params"]):
        assert torch.equal(a["global_crops"][v], apply_params_v2(image, p, 16))


def test_samples_are_independent(fashion_tiny):
    # Two items of the same image (two epochs) draw differently; a crop depends only on its
    # own image and parameters: reversing the batch reverses the crops, nothing leaks across.
    crops_cfg, dataset = fashion_tiny
    a, b = dataset[(0, 3)], dataset[(1, 3)]
    assert torch.equal(a["image"], b["image"])
    assert a["global_params"] != b["global_params"] and a["local_params"] != b["local_params"]
    items = [dataset[(0, i)] for i in range(6)]
    module = BatchedMultiCrop(crops_cfg)
    forward = module(collate_multicrop(items))
    backward = module(collate_multicrop(items[::-1]))
    for key in ("global_crops", "local_crops"):
        torch.testing.assert_close(backward[key], forward[key].flip(1), rtol=0, atol=1e-6)


def _rrc_means(scale, height, width, n=200_000) -> tuple[float, float]:
    """Mean area share and mean log aspect (w/h) of RandomResizedCrop's rule, simulated: area
    uniform in ``scale``, log aspect uniform in log(3/4)..log(4/3), redrawn while the box
    does not fit (10 tries, then the whole image, for a 4:3 image)."""
    rng = np.random.default_rng(0)
    boxes = np.tile([float(height), float(width)], (n, 1))  # the fallback
    todo = np.ones(n, dtype=bool)
    for _ in range(10):
        area = rng.uniform(*scale, n) * height * width
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), n))
        w, h = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
        fits = todo & (w <= width) & (h <= height)
        boxes[fits] = np.stack([h, w], axis=1)[fits]
        todo &= ~fits
    share = boxes[:, 0] * boxes[:, 1] / (height * width)
    return float(share.mean()), float(np.log(boxes[:, 1] / boxes[:, 0]).mean())


def _uniform(values, lo: float, hi: float) -> None:
    """``values`` lie in [lo, hi] with the mean of a uniform draw (within 4 standard errors)."""
    values = np.asarray(values)
    assert lo <= values.min() and values.max() <= hi
    error = (hi - lo) / 12**0.5 / len(values) ** 0.5
    assert abs(values.mean() - (lo + hi) / 2) < 4 * error, (values.mean(), lo, hi)


def test_drawn_parameters_follow_the_recipe():
    cfg = load_config("pretrain", "dino", ["crops.num_local=4"]).crops
    mc = MultiCrop(cfg)
    image = torch.zeros(3, 375, 500)
    torch.manual_seed(0)
    n = 1500
    draws = [mc.draw(image) for _ in range(n)]
    first = [d[0][0] for d in draws]
    second = [d[0][1] for d in draws]
    local = [p for d in draws for p in d[1]]

    def rate(params, f, expected):
        values = [bool(f(p)) for p in params]
        tol = 4 * (expected * (1 - expected) / len(values)) ** 0.5 + 1e-9
        assert abs(np.mean(values) - expected) <= tol, (np.mean(values), expected)

    everything = first + second + local
    rate(everything, lambda p: p.flip, 0.5)
    rate(everything, lambda p: p.factors != IDENTITY_FACTORS, 0.8)
    rate(everything, lambda p: p.gray, 0.2)
    rate(first, lambda p: p.blur_sigma > 0, 1.0)
    rate(second, lambda p: p.blur_sigma > 0, 0.1)
    rate(local, lambda p: p.blur_sigma > 0, 0.5)
    rate(second, lambda p: p.solarize, 0.2)
    assert not any(p.solarize for p in first + local)
    for params, size, (lo, hi) in ((first, 224, cfg.global_scale), (local, 96, cfg.local_scale)):
        area = np.array([p.box[2] * p.box[3] for p in params]) / (375 * 500)
        assert lo - 0.01 <= area.min() and area.max() <= hi + 0.01
        aspect = np.log([p.box[3] / p.box[2] for p in params])
        for values, expected in zip((area, aspect), _rrc_means((lo, hi), 375, 500), strict=True):
            assert abs(values.mean() - expected) < 4 * values.std() / len(values) ** 0.5
        assert np.abs(aspect).max() < np.log(4 / 3) + 0.05
        _uniform([p.blur_sigma for p in params if p.blur_sigma > 0], *blur_sigma_range(size))
    jittered = [p for p in everything if p.factors != IDENTITY_FACTORS]
    factors = np.array([p.factors for p in jittered])
    for i, (amount, centre) in enumerate(zip(cfg.color_jitter, (1, 1, 1, 0), strict=True)):
        _uniform(factors[:, i], centre - amount, centre + amount)
    orders = np.array([p.order for p in jittered])
    for op in range(4):  # every op at every position 1/4 of the time
        shares = (orders == op).mean(axis=0)
        assert np.abs(shares - 0.25).max() < 4 * (0.25 * 0.75 / len(orders)) ** 0.5


def test_augment_on_resolves_and_rejects():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not augment_on_device("auto", cpu) and augment_on_device("auto", cuda)
    assert augment_on_device("device", cpu) and not augment_on_device("worker", cuda)
    with pytest.raises(ConfigError, match="worker, device, auto"):
        augment_on_device("gpu", cpu)


def _weights(path):
    state = load_torch_file(path / "checkpoints" / "last.pt")["model"]
    return {k: v for k, v in state.items() if k.startswith(("teacher.", "student."))}


def test_device_path_trains_and_resumes_exactly(tiny_config, tmp_path):
    def cfg(steps):
        return tiny_config("maskcluster", "data.augment_on=device", f"train.max_steps={steps}")

    run_stage("pretrain", run, cfg(4), tmp_path / "straight")
    run_stage("pretrain", run, cfg(2), tmp_path / "resumed")
    assert run_stage("pretrain", run, cfg(4), tmp_path / "resumed")["steps"] == 4
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # It is the device path that trained: the worker path gives other weights.
    run_stage("pretrain", run, tiny_config("maskcluster", "train.max_steps=4"), tmp_path / "w")
    w = _weights(tmp_path / "w")
    assert not all(torch.equal(a[k], w[k]) for k in a)
