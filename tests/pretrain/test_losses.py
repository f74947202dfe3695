"""Each loss against an independent float64 formula on small random inputs."""

import math

import numpy as np
import pytest
import torch

from pretrain.losses.dino import DINOLoss
from pretrain.losses.ibot import IBOTPatchLoss
from pretrain.losses.koleo import KoLeoLoss
from pretrain.losses.reconstruction import PixelReconstructionLoss, patchify


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_dino_loss_matches_pairwise_cross_entropy():
    rng = np.random.default_rng(0)
    views, globals_, b, k, tau = 4, 2, 5, 7, 0.1
    s = rng.normal(size=(views, b, k))
    t = _softmax(rng.normal(size=(globals_, b, k)) / 0.04)
    expected, pairs = 0.0, 0
    for ti in range(globals_):
        for si in range(views):
            if si == ti:
                continue
            log_p = np.log(_softmax(s[si] / tau))
            expected += -(t[ti] * log_p).sum(axis=1).mean()
            pairs += 1
    expected /= pairs
    got = DINOLoss(tau)([torch.tensor(x) for x in s], [torch.tensor(x) for x in t])
    assert pairs == 6
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_dino_loss_needs_two_views():
    with pytest.raises(ValueError, match="at least 2 crops"):
        DINOLoss()([torch.zeros(2, 3)], [torch.zeros(2, 3)])


def test_ibot_loss_normalisations_on_a_planted_mask_pattern():
    rng = np.random.default_rng(1)
    # 4 global crops: crop 0 has 1 masked patch, crop 1 has 3, crops 2 and 3 none.
    crop = np.array([0, 1, 1, 1])
    s = rng.normal(size=(4, 6))
    t = _softmax(rng.normal(size=(4, 6)))
    ce = -(t * np.log(_softmax(s / 0.1))).sum(axis=1)
    per_crop = [ce[0], ce[1:].mean()]
    args = (torch.tensor(s), torch.tensor(t), torch.tensor(crop))
    # masked_crops: each masked crop weighs the same, unmasked crops do not count.
    got = IBOTPatchLoss(0.1, "masked_crops")(*args, num_crops=4)
    assert got.item() == pytest.approx(sum(per_crop) / 2, rel=1e-6)
    # all_crops (iBOT): every crop counts, the unmasked ones as 0: the masked share (2/4)
    # scales the term.
    got = IBOTPatchLoss(0.1, "all_crops")(*args, num_crops=4)
    assert got.item() == pytest.approx(sum(per_crop) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="loss.ibot.normalise"):
        IBOTPatchLoss(0.1, "patches")


def test_pixel_loss_l1_on_normalised_patches():
    rng = np.random.default_rng(2)
    pred, target = rng.normal(size=(3, 12)), rng.normal(size=(3, 12)) * 3 + 1
    crop = np.array([0, 0, 1])
    norm = (target - target.mean(1, keepdims=True)) / np.sqrt(
        target.var(1, ddof=1, keepdims=True) + 1e-6
    )
    per = np.abs(pred - norm).mean(axis=1)
    expected = (per[:2].mean() + per[2]) / 2
    loss = PixelReconstructionLoss(norm_pix=True)
    got = loss(torch.tensor(pred), torch.tensor(target), torch.tensor(crop), 2)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    raw = PixelReconstructionLoss(norm_pix=False)(
        torch.tensor(pred), torch.tensor(target), torch.tensor(crop), 2
    )
    per_raw = np.abs(pred - target).mean(axis=1)
    assert raw.item() == pytest.approx((per_raw[:2].mean() + per_raw[2]) / 2, rel=1e-5)


def test_patchify_orders_patches_row_major():
    img = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    patches = patchify(img, 2)
    assert patches.shape == (2, 6, 12)
    # Patch (row 1, col 2) of image 1, channel 0, pixel (0, 0) is img[1, 0, 2, 4].
    assert patches[1, 1 * 3 + 2, 0] == img[1, 0, 2, 4]
    assert patches[1, 5, 2 * 0 + 1] == img[1, 1, 2, 4]


def test_koleo_matches_nearest_neighbour_formula():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 4))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.linalg.norm(xn[:, None] - xn[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    expected = -np.log(d.min(axis=1) + 1e-8).mean()
    got = KoLeoLoss()(torch.tensor(x))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_koleo_is_finite_with_duplicates_and_rejects_batch_of_one():
    x = torch.randn(4, 8, requires_grad=True)
    dup = torch.cat([x, x[:1]])
    loss = KoLeoLoss()(dup)
    loss.backward()
    assert math.isfinite(loss.item())
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="at least 2 samples"):
        KoLeoLoss()(torch.randn(1, 8))
