"""The resumable training loop the stages share.

A stage gives the model, its optimizer, ``batches(start)`` (the batches from step ``start``
on) and ``step_fn(batch) -> (loss, stats)``; the loop owns the step counter and does the
rest once: resume from the last checkpoint (a damaged ``last.pt`` falls back to its step
copy), the learning-rate schedule indexed by step, the non-finite-loss guard, periodic and
pre-emption checkpoints at step boundaries, a progress bar and the metrics records.

A checkpoint holds model, optimizer, step, training seconds, the global RNG state, the
stage's data generator, its ``identity`` (what the inputs were; a checkpoint of other inputs
is refused) and whatever the stage's ``extra`` adds. When the batches depend only on the
step or on those RNG states, a resumed run's weights are bit-identical to an uninterrupted
run's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from common.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_resume_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
)
from common.optim import optimizer_step
from common.preemption import Preempted, stop_requested
from common.rundir import MetricsLogger
from common.runtime import rng_state, set_rng_state

log = logging.getLogger(__name__)

# What every checkpoint of this loop holds; a file without them was written by something else.
LOOP_KEYS = ("model", "optimizer", "step", "seconds", "rng", "identity")


class Resumable(Protocol):
    """Stage state saved with the loop's checkpoint (e.g. the best score so far)."""

    def checkpoint_state(self) -> dict:
        """Entries added to the checkpoint (names other than the loop's own)."""
        ...

    def restore(self, state: dict, path: Path) -> None:
        """Take the entries back on resume."""
        ...


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often the loop saves.

    ``path`` is the file resumed from; named ``last.pt``, it keeps ``keep`` rolling
    ``step_*.pt`` copies beside it for the damaged-file fallback. ``every`` is the number of
    steps between periodic saves (0: only at the end, on a stop request and before a
    non-finite-loss error).
    """

    path: Path
    every: int
    keep: int

    def __post_init__(self) -> None:
        if self.keep > 0 and self.path.name != "last.pt":
            raise ValueError(f"step copies are kept beside a last.pt, not beside {self.path}")


@dataclass(frozen=True)
class LoopResult:
    steps: int
    seconds: float  # training wall-clock, summed over resumes


@dataclass
class TrainLoop:
    """One resumable run of ``total_steps`` optimizer steps; :meth:`run` trains.

    ``name`` labels the progress bar, the log and errors; ``fix`` says what to change when
    the loss turns NaN/inf. ``lr_scale(step)`` multiplies each parameter group's initial
    learning rate at that step (None: constant). ``generator`` (the stage's data RNG) and
    ``identity`` (what the inputs were) are saved with the checkpoint; a checkpoint of another
    identity is refused on resume. ``after_step(step, record)`` runs after
    every step with its metrics record (e.g. to validate and add the score); ``finished()``
    ends the run early (e.g. patience spent). Records are written to ``metrics`` every
    ``log_every`` steps and at the last step, with ``labels`` added.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]]
    batches: Callable[[int], Iterator[Any]]
    total_steps: int
    name: str
    fix: str
    lr_scale: Callable[[int], float] | None = None
    checkpoint: Checkpointing | None = None
    generator: torch.Generator | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    extra: Resumable | None = None
    after_step: Callable[[int, dict], None] | None = None
    finished: Callable[[], bool] | None = None
    metrics: MetricsLogger | None = None
    log_every: int = 1
    labels: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.step = 0
        self._seconds = 0.0
        self._started = time.perf_counter()
        self._saved_step = -1
        # Captured before a resume overwrites the groups: the schedule scales these.
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]

    def run(self) -> LoopResult:
        """Resume if a checkpoint exists, train to ``total_steps`` (or ``finished()``), save."""
        self._resume()
        self._started = time.perf_counter()
        data = self.batches(self.step)
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc=f"train {self.name}", leave=False
        )
        try:
            while self.step < self.total_steps and not (self.finished and self.finished()):
                if stop_requested():
                    self.save()
                    raise Preempted(self.step)
                self._one_step(next(data))
                bar.update(1)
        finally:
            bar.close()
        if self._saved_step != self.step:
            self.save()
        return LoopResult(self.step, self.seconds)

    @property
    def seconds(self) -> float:
        return self._seconds + time.perf_counter() - self._started

    def _one_step(self, batch: Any) -> None:
        self.model.train()
        if self.lr_scale is not None:
            scale = self.lr_scale(self.step)
            for group, base in zip(self.optimizer.param_groups, self._base_lrs, strict=True):
                group["lr"] = base * scale
        loss, stats = self.step_fn(batch)
        fix = self.fix
        if self.checkpoint is not None:
            fix = f"{self.checkpoint.path} holds the weights before this step; {fix}"
        optimizer_step(loss, self.optimizer, f"{self.name} at step {self.step}", fix, self.save)
        self.step += 1
        record = {**self.labels, "loss": float(loss.detach()), **stats}
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.after_step is not None:
            self.after_step(self.step, record)
        if self.metrics is not None and (
            self.step % self.log_every == 0 or self.step == self.total_steps
        ):
            self.metrics.log(self.step, **record)
        every = self.checkpoint.every if self.checkpoint is not None else 0
        if every and self.step % every == 0:
            self.save()

    def save(self) -> None:
        """Write the checkpoint of the current step (nothing without ``checkpoint``)."""
        if self.checkpoint is None:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "seconds": self.seconds,
            "rng": rng_state(),
            "identity": self.identity,
        }
        if self.generator is not None:
            state["gen"] = self.generator.get_state()
        if self.extra is not None:
            state.update(self.extra.checkpoint_state())
        if self.checkpoint.keep > 0:
            save_checkpoint(state, self.checkpoint.path.parent, self.step, self.checkpoint.keep)
        else:
            atomic_torch_save(state, self.checkpoint.path)
        self._saved_step = self.step

    def _resume(self) -> None:
        found = load_resume_checkpoint(self.checkpoint.path) if self.checkpoint else None
        if found is None:
            return
        state, path = found
        missing = [k for k in LOOP_KEYS if k not in state]
        if missing:
            raise CheckpointError(
                f"{path} lacks {missing}: it is not a checkpoint of this training loop; "
                "delete it or use another --output-dir"
            )
        saved = state["identity"]
        changed = sorted(
            k for k in {*saved, *self.identity} if saved.get(k) != self.identity.get(k)
        )
        if changed:
            was = ", ".join(f"{k}={saved.get(k)!r}" for k in changed)
            now = ", ".join(f"{k}={self.identity.get(k)!r}" for k in changed)
            raise CheckpointError(
                f"{self.name} checkpoint {path} was written with {was}; this run has {now}. "
                "Delete it or use another --output-dir."
            )
        if self.extra is not None:
            self.extra.restore(state, path)
        load_state_dict_strict(self.model, state["model"], f"{self.name} checkpoint {path}")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise CheckpointError(f"optimizer state in {path} does not fit: {exc}") from None
        if self.generator is not None:
            self.generator.set_state(state["gen"])
        set_rng_state(state["rng"])
        self.step, self._seconds = int(state["step"]), float(state["seconds"])
        self._saved_step = self.step
        log.info("%s: resumed from %s at step %d", self.name, path, self.step)
