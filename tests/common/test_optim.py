"""optimizer_step: a finite loss updates the weights, a NaN/inf one raises before any update;
cosine_decay follows its formula."""

from __future__ import annotations

import math

import pytest
import torch

from common.optim import NonFiniteLossError, cosine_decay, optimizer_step


def _setup() -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 1)
    return layer, torch.optim.SGD(layer.parameters(), lr=0.5)


def test_finite_loss_takes_one_sgd_step() -> None:
    layer, opt = _setup()
    x = torch.ones(2, 3)
    before = layer.weight.detach().clone()
    optimizer_step(layer(x).sum(), opt, "test", "n/a")
    # d(sum of outputs)/dW = sum of inputs = 2 per weight; SGD at lr 0.5 subtracts 1.
    torch.testing.assert_close(layer.weight.detach(), before - 1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises_before_updating(bad: float) -> None:
    layer, opt = _setup()
    before = [p.detach().clone() for p in layer.parameters()]
    saved = []
    loss = layer(torch.ones(2, 3)).sum() * bad
    with pytest.raises(NonFiniteLossError, match=r"head at step 7: loss is (nan|-?inf); lower lr"):
        optimizer_step(loss, opt, "head at step 7", "lower lr", lambda: saved.append(1))
    assert saved == [1]
    for p, q in zip(layer.parameters(), before, strict=True):
        assert torch.equal(p.detach(), q)
        assert p.grad is None


def test_cosine_decay_starts_at_one_halves_midway_and_ends_at_zero() -> None:
    assert cosine_decay(0, 10) == 1.0
    assert cosine_decay(5, 10) == pytest.approx(0.5)
    assert cosine_decay(3, 10) == pytest.approx((1 + math.cos(math.pi * 0.3)) / 2)
    assert cosine_decay(10, 10) == pytest.approx(0.0) and cosine_decay(12, 10) == cosine_decay(
        10, 10
    )
    with pytest.raises(ValueError, match="at least one step"):
        cosine_decay(0, 0)
