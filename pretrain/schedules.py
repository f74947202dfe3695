"""Per-iteration schedules (lr, weight decay, teacher momentum, teacher temperature).

Each schedule is a NumPy array with one value per training iteration, so resuming at step
``s`` is a lookup of index ``s`` rather than a replay, and a straight run and a resumed run
see identical values. The formulas are those of DINO's ``cosine_scheduler`` and teacher
temperature (also used by iBOT), or with ``train.schedule=msn`` those of MSN's
``WarmupCosineSchedule``, ``CosineWDSchedule`` and linear momentum, so a preset steps through
the same values as the published code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import ConfigError


def check_steps(total_steps: int, warmup_steps: int = 0) -> None:
    """One line for a schedule without steps or a warm-up longer than the run."""
    if total_steps <= 0:
        raise ValueError(f"a schedule needs at least one step, got total_steps={total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warm-up of {warmup_steps} steps does not fit in {total_steps} steps; "
            "lower the warm-up epochs or train longer"
        )


def cosine_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``start``, then cosine from ``start`` to ``end``.

    DINO's ``cosine_scheduler``: the warm-up is ``linspace(warmup_start, start, W)`` with its
    endpoint (its last step already sits at ``start``); after it, step ``i`` takes
    ``end + (start - end) * (1 + cos(pi * t / T)) / 2`` with ``t = i - W`` and
    ``T = total_steps - W``, so the last step stops one step short of ``end``.
    """
    check_steps(total_steps, warmup_steps)
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


SCHEDULES = ("dino", "msn")  # ``train.schedule`` values

# MSN's cosines and momentum ramp span 1.25x the run, which therefore ends before them.
MSN_HORIZON = 1.25


def msn_lr(
    start: float, peak: float, end: float, total_steps: int, warmup_steps: int, horizon: int
) -> np.ndarray:
    """MSN's ``WarmupCosineSchedule``: step ``i`` takes the value after the increment to
    ``s = i + 1``: ``start + s / W * (peak - start)`` while ``s < W``, then a cosine from
    ``peak`` to ``end`` over ``horizon - W`` steps, floored at ``end``."""
    s = np.arange(1, total_steps + 1, dtype=np.float64)
    warm = start + s / max(1, warmup_steps) * (peak - start)
    progress = (s - warmup_steps) / max(1, horizon - warmup_steps)
    cosine = np.maximum(end, end + (peak - end) * 0.5 * (1.0 + np.cos(np.pi * progress)))
    return np.where(s < warmup_steps, warm, cosine)


def msn_weight_decay(start: float, end: float, total_steps: int, horizon: int) -> np.ndarray:
    """MSN's ``CosineWDSchedule``: a cosine over ``horizon`` steps at ``s = i + 1``, clamped
    so that it never passes ``end``."""
    s = np.arange(1, total_steps + 1, dtype=np.float64)
    wd = end + (start - end) * 0.5 * (1.0 + np.cos(np.pi * s / horizon))
    return np.maximum(end, wd) if end <= start else np.minimum(end, wd)


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


def optimiser_schedules(
    train_cfg, total: int, steps_per_epoch: int, global_batch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lr, weight decay and teacher momentum per step, by ``train.schedule``."""
    kind = str(train_cfg.schedule)
    if kind not in SCHEDULES:
        raise ConfigError(f"train.schedule must be one of {list(SCHEDULES)}, got {kind!r}")
    scale = global_batch / 256.0
    peak, start = float(train_cfg.lr) * scale, float(train_cfg.start_lr) * scale
    wd, wd_end = float(train_cfg.weight_decay), float(train_cfg.weight_decay_end)
    m, m_end = float(train_cfg.momentum_teacher), float(train_cfg.momentum_teacher_end)
    warmup_epochs = float(train_cfg.warmup_epochs)
    if kind == "dino":
        warmup = int(round(warmup_epochs * steps_per_epoch))
        return (
            cosine_schedule(peak, float(train_cfg.min_lr), total, warmup, start),
            cosine_schedule(wd, wd_end, total),
            cosine_schedule(m, m_end, total),
        )
    horizon = MSN_HORIZON * total
    warmup = int(warmup_epochs * steps_per_epoch)
    check_steps(total, warmup)
    return (
        msn_lr(start, peak, float(train_cfg.min_lr), total, warmup, int(horizon)),
        msn_weight_decay(wd, wd_end, total, int(horizon)),
        m + np.arange(total) * (m_end - m) / horizon,
    )


def build_schedules(train_cfg, loss_cfg, steps_per_epoch: int, global_batch: int) -> Schedules:
    """The run's schedules from the ``train`` and ``loss`` config sections.

    The learning rates follow the linear scaling rule: ``train.lr * global_batch / 256``
    (and ``train.start_lr`` alike).
    """
    epochs = int(train_cfg.epochs)
    total = epochs * steps_per_epoch
    check_steps(total)
    lr, weight_decay, momentum = optimiser_schedules(
        train_cfg, total, steps_per_epoch, global_batch
    )
    temp_warmup = int(loss_cfg.warmup_teacher_temp_epochs)  # whole epochs (config type)
    return Schedules(
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        teacher_temp=per_epoch_warmup(
            float(loss_cfg.warmup_teacher_temp),
            float(loss_cfg.teacher_temp),
            epochs,
            steps_per_epoch,
            temp_warmup,
        ),
        patch_temp=patch_temperature(loss_cfg, epochs, steps_per_epoch),
    )
