"""Per-iteration schedules (lr, weight decay, teacher momentum, teacher temperature).

Each schedule is a NumPy array with one value per training iteration, so resuming at step
``s`` is a lookup of index ``s`` rather than a replay, and a straight run and a resumed run
see identical values. The formulas are those of DINO's ``cosine_scheduler`` and teacher
temperature (also used by iBOT), so a preset steps through the same values as the
published code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cosine_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``start``, then cosine from ``start`` to ``end``.

    DINO's ``cosine_scheduler``: the warm-up is ``linspace(warmup_start, start, W)`` with its
    endpoint (its last step already sits at ``start``); after it, step ``i`` takes
    ``end + (start - end) * (1 + cos(pi * t / T)) / 2`` with ``t = i - W`` and
    ``T = total_steps - W``, so the last step stops one step short of ``end``.
    """
    if total_steps <= 0:
        raise ValueError(f"a schedule needs at least one step, got total_steps={total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warm-up of {warmup_steps} steps does not fit in {total_steps} steps; "
            "lower the warm-up epochs or train longer"
        )
    warmup = np.linspace(warmup_start, start, warmup_steps)
    n = total_steps - warmup_steps
    cosine = end + 0.5 * (start - end) * (1.0 + np.cos(np.pi * np.arange(n) / max(n, 1)))
    return np.concatenate([warmup, cosine])


def per_epoch_warmup(
    start: float, end: float, epochs: int, steps_per_epoch: int, warmup_epochs: int
) -> np.ndarray:
    """DINO's teacher temperature: ``linspace(start, end, W)`` over the first ``W`` epochs
    (endpoint included), then ``end``; constant within an epoch, one value per iteration."""
    per_epoch = np.concatenate(
        [np.linspace(start, end, warmup_epochs), np.full(max(epochs - warmup_epochs, 0), end)]
    )[:epochs]
    return np.repeat(per_epoch, steps_per_epoch)


@dataclass(frozen=True)
class Schedules:
    """All per-iteration values of a run; ``at(step)`` gives the values for one step."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    patch_temp: np.ndarray

    def __len__(self) -> int:
        return len(self.lr)

    def at(self, step: int) -> dict[str, float]:
        i = min(step, len(self) - 1)
        return {
            "lr": float(self.lr[i]),
            "wd": float(self.weight_decay[i]),
            "momentum": float(self.momentum[i]),
            "teacher_temp": float(self.teacher_temp[i]),
            "patch_temp": float(self.patch_temp[i]),
        }


def patch_temperature(loss_cfg, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """iBOT's patch temperature: its own warm-up, held at its start value before
    ``loss.ibot.start_epoch`` (iBOT's ``pred_start_epoch``); ``null`` temps follow the cls ones."""
    ibot = loss_cfg.ibot
    warm = ibot.warmup_teacher_temp
    final = ibot.teacher_temp
    warm = float(loss_cfg.warmup_teacher_temp if warm is None else warm)
    final = float(loss_cfg.teacher_temp if final is None else final)
    start = int(ibot.start_epoch)
    warmup = int(loss_cfg.warmup_teacher_temp_epochs)
    held = np.full(min(start, epochs) * steps_per_epoch, warm)
    rest = per_epoch_warmup(warm, final, max(epochs - start, 0), steps_per_epoch, warmup)
    return np.concatenate([held, rest])


def build_schedules(train_cfg, loss_cfg, steps_per_epoch: int, global_batch: int) -> Schedules:
    """The run's schedules from the ``train`` and ``loss`` config sections.

    The peak learning rate follows the linear scaling rule: ``train.lr * global_batch / 256``.
    """
    epochs = int(train_cfg.epochs)
    total = epochs * steps_per_epoch
    peak_lr = float(train_cfg.lr) * global_batch / 256.0
    warmup = int(round(float(train_cfg.warmup_epochs) * steps_per_epoch))
    temp_warmup = int(loss_cfg.warmup_teacher_temp_epochs)  # whole epochs (config type)
    return Schedules(
        lr=cosine_schedule(peak_lr, float(train_cfg.min_lr), total, warmup),
        weight_decay=cosine_schedule(
            float(train_cfg.weight_decay), float(train_cfg.weight_decay_end), total
        ),
        momentum=cosine_schedule(
            float(train_cfg.momentum_teacher), float(train_cfg.momentum_teacher_end), total
        ),
        teacher_temp=per_epoch_warmup(
            float(loss_cfg.warmup_teacher_temp),
            float(loss_cfg.teacher_temp),
            epochs,
            steps_per_epoch,
            temp_warmup,
        ),
        patch_temp=patch_temperature(loss_cfg, epochs, steps_per_epoch),
    )
