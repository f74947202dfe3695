"""Collapse avoidance: Sinkhorn marginals, centering EMA, ME-MAX value."""

import math

import numpy as np
import pytest
import torch

from pretrain.collapse import TeacherTargets, memax_term, sinkhorn_knopp


def test_sinkhorn_rows_sum_to_one_and_prototypes_are_balanced():
    torch.manual_seed(0)
    b, k = 64, 8
    logits = torch.randn(b, k) * 3 + torch.linspace(0, 4, k)  # strongly unbalanced input
    q = sinkhorn_knopp(logits, temp=1.0, iters=50)
    assert torch.allclose(q.sum(dim=1), torch.ones(b), atol=1e-5)
    assert torch.allclose(q.sum(dim=0), torch.full((k,), b / k), rtol=1e-3)
    # 3 iterations already move the prototype usage far towards uniform.
    q3 = sinkhorn_knopp(logits, temp=1.0, iters=3)
    plain = torch.softmax(logits, dim=1).sum(dim=0)
    assert (q3.sum(0) - b / k).abs().max() < 0.5 * (plain - b / k).abs().max()


def test_sinkhorn_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        sinkhorn_knopp(torch.randn(1, 4), 0.1)


def test_centering_applies_old_centre_then_updates_with_ema():
    torch.manual_seed(1)
    targets = TeacherTargets("centering", out_dim=5, center_momentum=0.9)
    c0 = torch.randn(1, 5)
    targets.center.copy_(c0)
    logits = torch.randn(6, 5)
    probs = targets(logits, temp=0.5)
    expected = np.exp((logits - c0).double().numpy() / 0.5)
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.allclose(probs.numpy(), expected, atol=1e-6)
    new = 0.9 * c0.double() + 0.1 * logits.double().mean(0, keepdim=True)
    assert torch.allclose(targets.center.double(), new, atol=1e-6)


def test_memax_is_log_k_minus_entropy_of_mean():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(6), size=10)
    mean = p.mean(axis=0)
    expected = math.log(6) + (mean * np.log(mean)).sum()
    assert memax_term(torch.tensor(p)).item() == pytest.approx(expected, rel=1e-5)
    uniform = torch.full((4, 6), 1 / 6)
    assert memax_term(uniform).item() == pytest.approx(0.0, abs=1e-6)


def test_memax_targets_are_plain_sharpened_softmax():
    logits = torch.randn(3, 4)
    probs = TeacherTargets("memax", 4)(logits, temp=0.25)
    assert torch.allclose(probs, torch.softmax(logits / 0.25, dim=1))


def test_unknown_collapse_method_is_named():
    with pytest.raises(ValueError, match="centring"):
        TeacherTargets("centring", 4)
