"""Training loop of the FS-CS head: 1-way 1-shot episodes, resumable, best by validation mIoU.

Step ``t`` draws its episodes from an RNG seeded by ``(seed, t)``, so a resumed run sees
exactly the episodes an uninterrupted one would. ``<ckpt_dir>/last.pt`` holds model,
optimiser, step and the best validation score; ``best.pt`` the best model weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.checkpoint import (
    atomic_torch_save,
    load_resume_checkpoint,
    load_state_dict_strict,
    load_torch_file,
    save_checkpoint,
)
from common.optim import optimizer_step
from common.preemption import Preempted, stop_requested
from common.rundir import MetricsLogger
from fewshot.data import ImagePool
from fewshot.episodes import EpisodeSampler
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


def train_head(
    model: FSCSModel,
    pool: ImagePool,
    sampler: EpisodeSampler,
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
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    # Cosine decay indexed by step, so resuming is a lookup.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda t: 0.5 * (1 + math.cos(math.pi * min(t, settings.max_steps) / settings.max_steps)),
    )
    step, best, best_step, seconds = 0, -1.0, 0, 0.0
    found = load_resume_checkpoint(last)
    if found is not None:
        state, path = found
        load_state_dict_strict(model, state["model"], f"{tag} head checkpoint {path}")
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, best, best_step = state["step"], state["best"], state["best_step"]
        seconds = state.get("seconds", 0.0)
        log.info("%s: resumed from %s at step %d", tag, path, step)

    def save() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "best": best,
            "best_step": best_step,
            "seconds": seconds,
        }
        # One step copy beside last.pt: resume falls back to it if last.pt is damaged.
        save_checkpoint(state, ckpt_dir, step, keep=1)

    bar = tqdm(total=settings.max_steps, initial=step, desc=f"train {tag}", leave=False)
    start = time.perf_counter() - seconds
    while step < settings.max_steps:
        if stop_requested():
            seconds = time.perf_counter() - start
            save()
            raise Preempted(step)
        model.train()
        rng = np.random.default_rng([settings.seed, step])
        eps = [sampler.sample(rng) for _ in range(settings.batch_size)]
        batch = one_way_batch(
            pool, [(e.query, e.supports[0][0], e.classes[0]) for e in eps], device
        )
        presence, seg = model(batch["query"], batch["support"], batch["support_mask"])
        loss, parts = loss_fn(
            presence, seg, batch, settings.cls_weight, settings.seg_weight, settings.fg_weight
        )
        optimizer_step(
            loss,
            opt,
            f"{tag} at step {step}",
            f"the last checkpoint ({last}) is intact. Lower train.lr and resume.",
            scheduler=sched,
        )
        step += 1
        bar.update(1)
        record = {"loss": float(loss.detach()), **parts, "lr": sched.get_last_lr()[0]}
        if validate is not None and (step % settings.eval_every == 0 or step == settings.max_steps):
            val = validate(model)
            record["val_miou"] = val
            if val > best:
                best, best_step = val, step
                atomic_torch_save(model.state_dict(), best_path)
            log.info("%s step %d loss %.4f val mIoU %.4f", tag, step, float(loss.detach()), val)
        metrics.log(step, head=tag, **record)
        if step % settings.ckpt_every == 0 or step == settings.max_steps:
            seconds = time.perf_counter() - start
            save()
    bar.close()
    seconds = time.perf_counter() - start
    if validate is None:
        return {"best_val_miou": None, "best_step": step, "steps": step, "seconds": seconds}
    if best_path.is_file():
        load_state_dict_strict(model, load_torch_file(best_path), str(best_path))
    return {"best_val_miou": best, "best_step": best_step, "steps": step, "seconds": seconds}
