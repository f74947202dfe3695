"""One optimisation step shared by the stages' training loops, with the NaN/inf guard."""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.errors import UserError


class NonFiniteLossError(UserError, RuntimeError):
    """The loss (or gradient) became NaN/inf; raised before any parameter is updated."""


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    where: str,
    fix: str,
    before_raise: Callable[[], None] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> None:
    """Backward and step; a non-finite loss raises :class:`NonFiniteLossError` instead.

    The check comes first, so the weights stay those of the last finite step; the error
    names ``where`` it happened and the ``fix`` to try. ``before_raise`` runs first (e.g. to
    write a checkpoint of the intact state).
    """
    if not torch.isfinite(loss):
        if before_raise is not None:
            before_raise()
        raise NonFiniteLossError(f"{where}: loss is {float(loss.detach())}; {fix}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
