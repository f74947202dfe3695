"""optimizer_step: a finite loss updates the weights, a NaN/inf one raises before any update."""

from __future__ import annotations

import pytest
import torch

from common.optim import NonFiniteLossError, optimizer_step


def _setup() -> tuple[torch.nn.Linear, torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    return layer, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)


def test_finite_loss_takes_one_sgd_step_and_advances_the_schedule() -> None:
    layer, opt, sched = _setup()
    x = torch.ones(2, 3)
    before = layer.weight.detach().clone()
    optimizer_step(layer(x).sum(), opt, "test", "n/a", scheduler=sched)
    # d(sum of outputs)/dW = sum of inputs = 2 per weight; SGD at lr 0.5 subtracts 1.
    torch.testing.assert_close(layer.weight.detach(), before - 1.0)
    assert sched.get_last_lr() == [pytest.approx(0.05)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_raises_before_updating(bad: float) -> None:
    layer, opt, sched = _setup()
    before = [p.detach().clone() for p in layer.parameters()]
    saved = []
    loss = layer(torch.ones(2, 3)).sum() * bad
    with pytest.raises(NonFiniteLossError, match=r"head at step 7: loss is (nan|-?inf); lower lr"):
        optimizer_step(loss, opt, "head at step 7", "lower lr", lambda: saved.append(1), sched)
    assert saved == [1]
    for p, q in zip(layer.parameters(), before, strict=True):
        assert torch.equal(p.detach(), q)
        assert p.grad is None
    assert sched.get_last_lr() == [pytest.approx(0.5)]
