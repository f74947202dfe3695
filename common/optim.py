"""One optimisation step with the NaN/inf guard, and the stages' cosine learning-rate decay."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from common.errors import UserError


class NonFiniteLossError(UserError, RuntimeError):
    """The loss (or gradient) became NaN/inf; raised before any parameter is updated."""


def cosine_decay(step: int, total_steps: int) -> float:
    """The learning-rate factor at ``step``: ``(1 + cos(pi * min(step, T) / T)) / 2``, T = total.

    1 at step 0, falling to 0 at step T; indexed by step, so resuming is a lookup.
    """
    if total_steps <= 0:
        raise ValueError(f"a schedule needs at least one step, got total_steps={total_steps}")
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    where: str,
    fix: str,
    before_raise: Callable[[], None] | None = None,
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
