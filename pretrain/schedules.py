"""Per-iteration schedules (lr, weight decay, teacher momentum, teacher temperature).

Each schedule is a NumPy array with one value per training iteration, so resuming at step
``s`` is a lookup of index ``s`` rather than a replay, and a straight run and a resumed run
see identical values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cosine_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``start``, then cosine from ``start`` to ``end``.

    Value at step ``i`` after warm-up: ``end + (start - end) * (1 + cos(pi * t / T)) / 2``
    with ``t = i - warmup_steps`` and ``T = total_steps - warmup_steps``; the last step
    lands exactly on ``end``.
    """
    if total_steps <= 0:
        raise ValueError(f"a schedule needs at least one step, got total_steps={total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warm-up of {warmup_steps} steps does not fit in {total_steps} steps; "
            "lower the warm-up epochs or train longer"
        )
    warmup = np.linspace(warmup_start, start, warmup_steps, endpoint=False)
    n = total_steps - warmup_steps
    if n == 1:
        cosine = np.array([start])
    else:
        t = np.arange(n) / (n - 1)
        cosine = end + 0.5 * (start - end) * (1.0 + np.cos(np.pi * t))
    return np.concatenate([warmup, cosine])


def warmup_then_constant(
    start: float, end: float, total_steps: int, warmup_steps: int
) -> np.ndarray:
    """Linear ramp from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (teacher temp)."""
    warmup_steps = min(warmup_steps, total_steps)
    ramp = np.linspace(start, end, warmup_steps, endpoint=False)
    return np.concatenate([ramp, np.full(total_steps - warmup_steps, end)])


@dataclass(frozen=True)
class Schedules:
    """All per-iteration values of a run; ``at(step)`` gives the values for one step."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    def __len__(self) -> int:
        return len(self.lr)

    def at(self, step: int) -> dict[str, float]:
        i = min(step, len(self) - 1)
        return {
            "lr": float(self.lr[i]),
            "wd": float(self.weight_decay[i]),
            "momentum": float(self.momentum[i]),
            "teacher_temp": float(self.teacher_temp[i]),
        }


def build_schedules(train_cfg, loss_cfg, steps_per_epoch: int, global_batch: int) -> Schedules:
    """The run's schedules from the ``train`` and ``loss`` config sections.

    The peak learning rate follows the linear scaling rule: ``train.lr * global_batch / 256``.
    """
    total = int(train_cfg.epochs) * steps_per_epoch
    peak_lr = float(train_cfg.lr) * global_batch / 256.0
    warmup = int(round(float(train_cfg.warmup_epochs) * steps_per_epoch))
    temp_warmup = int(round(float(loss_cfg.warmup_teacher_temp_epochs) * steps_per_epoch))
    return Schedules(
        lr=cosine_schedule(peak_lr, float(train_cfg.min_lr), total, warmup),
        weight_decay=cosine_schedule(
            float(train_cfg.weight_decay), float(train_cfg.weight_decay_end), total
        ),
        momentum=cosine_schedule(
            float(train_cfg.momentum_teacher), float(train_cfg.momentum_teacher_end), total
        ),
        teacher_temp=warmup_then_constant(
            float(loss_cfg.warmup_teacher_temp), float(loss_cfg.teacher_temp), total, temp_warmup
        ),
    )
