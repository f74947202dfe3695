"""Training of the FS-CS head: 1-way 1-shot episodes, resumable, best by validation mIoU.

The lr decays (cosine) or, with ``constant_lr`` (CST's Adam at a fixed lr), stays constant.

Step ``t`` draws its episodes from an RNG seeded by ``(seed, t)``, so a resumed run sees
exactly the episodes an uninterrupted one would. ``<ckpt_dir>/last.pt`` holds model,
optimiser, step and the best validation score (:class:`common.train_loop.TrainLoop`);
``best.pt`` the best model weights.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.checkpoint import atomic_torch_save, load_state_dict_strict, load_torch_file
from common.optim import cosine_decay
from common.rundir import MetricsLogger
from common.train_loop import Checkpointing, TrainLoop
from fewshot.data import ImagePool
from fewshot.episodes import CSTEpisodeSampler, EpisodeSampler
from fewshot.model import FSCSModel, loss_fn, one_way_batch

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """Optimisation settings (from the ``train`` section of the config)."""

    max_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    cls_weight: float
    seg_weight: float
    fg_weight: float
    eval_every: int
    ckpt_every: int
    seed: int
    # True: CST's constant lr (set by ``protocol: cst``, not a config key); False: cosine.
    constant_lr: bool


class _Best:
    """The best validation mIoU so far and its step; saved with the checkpoint."""

    def __init__(self) -> None:
        self.score, self.step = -1.0, 0

    def checkpoint_state(self) -> dict:
        return {"best": self.score, "best_step": self.step}

    def restore(self, state: dict, path: Path) -> None:
        self.score, self.step = state["best"], state["best_step"]


def train_head(
    model: FSCSModel,
    pool: ImagePool,
    sampler: EpisodeSampler | CSTEpisodeSampler,
    validate: Callable[[FSCSModel], float] | None,
    settings: TrainSettings,
    ckpt_dir: Path,
    metrics: MetricsLogger,
    device: torch.device,
    tag: str,
) -> dict:
    """Train (or resume) and leave the best validation weights in ``model``.

    ``validate(model) -> mIoU`` scores the model on fixed validation episodes; None keeps
    the last weights.
    Returns ``{"best_val_miou", "best_step", "steps", "seconds"}``.
    """
    best_path = ckpt_dir / "best.pt"
    best = _Best()

    def batches(start: int) -> Iterator[dict]:
        for step in itertools.count(start):
            rng = np.random.default_rng([settings.seed, step])
            eps = [sampler.sample(rng) for _ in range(settings.batch_size)]
            yield one_way_batch(
                pool, [(e.query, e.supports[0][0], e.classes[0]) for e in eps], device
            )

    def step_fn(batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        presence, seg = model(batch["query"], batch["support"], batch["support_mask"])
        return loss_fn(
            presence, seg, batch, settings.cls_weight, settings.seg_weight, settings.fg_weight
        )

    def after_step(step: int, record: dict) -> None:
        if validate is None or (step % settings.eval_every and step != settings.max_steps):
            return
        record["val_miou"] = val = validate(model)
        if val > best.score:
            best.score, best.step = val, step
            atomic_torch_save(model.state_dict(), best_path)
        log.info("%s step %d loss %.4f val mIoU %.4f", tag, step, record["loss"], val)

    loop = TrainLoop(
        model=model,
        optimizer=torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        ),
        step_fn=step_fn,
        batches=batches,
        total_steps=settings.max_steps,
        name=tag,
        fix="lower train.lr and resume",
        lr_scale=None
        if settings.constant_lr
        else lambda step: cosine_decay(step, settings.max_steps),
        # One step copy beside last.pt: resume falls back to it if last.pt is damaged.
        checkpoint=Checkpointing(ckpt_dir / "last.pt", settings.ckpt_every, keep=1),
        extra=best,
        after_step=after_step,
        metrics=metrics,
        labels={"head": tag},
    )
    result = loop.run()
    if validate is not None and best_path.is_file():
        load_state_dict_strict(model, load_torch_file(best_path), str(best_path))
    return {
        "best_val_miou": None if validate is None else best.score,
        "best_step": result.steps if validate is None else best.step,
        "steps": result.steps,
        "seconds": result.seconds,
    }
