"""The pretraining loop: AdamW with per-iteration schedules, mixed precision, DDP or FSDP2,
NaN guard, metrics, periodic k-NN probe, checkpoints with exact resume, and the final export."""

from __future__ import annotations

import json
import logging
import resource
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common import distributed as dist
from common.backbone import build_backbone, export_backbone
from common.checkpoint import (
    CheckpointError,
    find_sharded_checkpoint,
    load_resume_checkpoint,
    load_sharded_checkpoint,
    load_state_dict_strict,
    save_checkpoint,
    save_sharded_checkpoint,
    sharded_keys,
)
from common.config import ConfigError, to_dict
from common.optim import NonFiniteLossError
from common.preemption import Preempted, stop_requested
from common.rundir import MetricsLogger, RunDir
from common.runtime import resolve_device, rng_state, set_rng_state
from pretrain.clipping import check_clip_mode, clip_gradients
from pretrain.data import (
    MultiCropDataset,
    augment_on_device,
    epoch_loader,
    load_unlabeled,
    steps_per_epoch,
)
from pretrain.device_augment import BatchedMultiCrop
from pretrain.init import load_init
from pretrain.masking import token_keep
from pretrain.model import MetaArch
from pretrain.schedules import build_schedules
from pretrain.sharding import (
    check_parallel,
    checkpoint_blocks,
    drop_unsaved_optimizer_state,
    full_state_dict,
    load_training_state,
    shard_meta_arch,
    training_state,
)
from pretrain.sync_batch_norm import sync_batch_norm

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def param_groups(module: torch.nn.Module, exclude: set | frozenset = frozenset()) -> list[dict]:
    """Weight decay on weight matrices only: biases, norm scales (1-D) and ``exclude`` are not
    decayed."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or p in exclude
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False}]


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory, or the process's peak resident set on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def weights_checksum(module: torch.nn.Module) -> float:
    """Sum of all parameters and float buffers weighted by position: a cheap fingerprint."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return float(sum((t.double().flatten() * (1 + i % 7)).sum() for i, t in enumerate(tensors)))


class Trainer:
    """Holds one run's model, optimiser and state; :meth:`fit` trains until done or stopped."""

    def __init__(self, cfg, run: RunDir) -> None:
        if float(cfg.loss.koleo_weight) > 0 and int(cfg.train.batch_size) < 2:
            # KoLeo measures each cls token's distance to its nearest neighbour in the batch.
            raise ConfigError(
                f"loss.koleo_weight={cfg.loss.koleo_weight} needs train.batch_size >= 2 per "
                f"process (got {cfg.train.batch_size}); raise train.batch_size or set "
                "loss.koleo_weight=0"
            )
        self.cfg = cfg
        self.run = run
        self.init = load_init(cfg)  # before anything reads cfg.model: it sets the architecture
        self.device = resolve_device(cfg.device)
        if int(cfg.train.num_threads) > 0:
            torch.set_num_threads(int(cfg.train.num_threads))
        dist.init_distributed(self.device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        t = cfg.train
        if t.precision not in PRECISIONS:
            raise ValueError(
                f"train.precision must be one of {list(PRECISIONS)}, got {t.precision!r}"
            )
        if t.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"train.on_nonfinite must be 'stop' or 'skip', got {t.on_nonfinite!r}")
        self.parallel = check_parallel(t)
        self.clip = check_clip_mode(t.clip)
        on_device = augment_on_device(cfg.data.augment_on, self.device)
        self.dataset = MultiCropDataset(
            load_unlabeled(cfg.data),
            cfg.crops,
            cfg.masking,
            int(cfg.model.patch_size),
            int(cfg.seed),
            on_device=on_device,
        )
        self.pin_memory = on_device and self.device.type == "cuda"
        self.augment = BatchedMultiCrop(cfg.crops).to(self.device)
        log.info("multi-crop augmentation on the %s", "device" if on_device else "workers")
        self.batch_size = int(t.batch_size)
        self.steps_per_epoch = steps_per_epoch(len(self.dataset), self.batch_size, self.world)
        self.schedules = build_schedules(
            t, cfg.loss, self.steps_per_epoch, self.batch_size * self.world
        )
        self.model = MetaArch(cfg, self.init).to(self.device)
        if self.world > 1:
            sync_batch_norm(self.model)  # global-batch statistics, as one process computes
        self.mask_start = int(cfg.loss.ibot.start_epoch) * self.steps_per_epoch
        if t.activation_checkpointing:
            checkpoint_blocks(self.model.student.backbone)
        if t.compile:
            self.model.compile_encoders()
        self.student: torch.nn.Module = self.model.student
        # One process has nothing to shard: fsdp then trains plainly, with sharded checkpoints.
        self.sharded = self.parallel == "fsdp" and self.world > 1
        if self.sharded:
            shard_meta_arch(self.model, self.device, t.precision)
        elif self.world > 1:
            # Without the cls loss (pixel-only runs) the cls head gets no gradient.
            self.student = DistributedDataParallel(
                self.model.student, find_unused_parameters=not self.model.use_dino
            )
            # DDP broadcast rank 0's student; the teacher starts as that same copy everywhere.
            self.model.teacher.load_state_dict(self.model.student.state_dict())
        # MSN neither decays nor clips its prototypes (the cls head's last layer).
        self.prototypes = set()
        if self.model.use_msn:
            self.prototypes = set(self.model.student.cls_head.last_layer.parameters())
        self.optimizer = torch.optim.AdamW(param_groups(self.model.student, self.prototypes))
        self.clipped = [p for p in self.model.student.parameters() if p not in self.prototypes]
        self.autocast_dtype = PRECISIONS[t.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.last_layer_params = {
            p for layer in self.model.student.last_layers for p in layer.parameters()
        }
        self.step = 0
        self.skipped = 0
        self.train_seconds = 0.0  # wall-clock spent training, summed over resumes
        self.metrics = MetricsLogger(run.metrics, enabled=self.rank == 0, **cfg.logging)
        self.probe = None
        if cfg.eval.every and self.rank == 0:
            from pretrain.probe import make_knn_probe

            self.probe = make_knn_probe(cfg.eval, cfg.data.root, int(cfg.crops.global_size))

    @property
    def total_steps(self) -> int:
        limit = self.cfg.train.max_steps
        return len(self.schedules) if limit is None else min(int(limit), len(self.schedules))

    # -- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything but model and optimizer: small, written whole by rank 0."""
        rng = [rng_state()]
        if dist.is_dist():
            rng = [None] * self.world
            torch.distributed.all_gather_object(rng, rng_state())
        return {
            "step": self.step,
            "skipped": self.skipped,
            "train_seconds": self.train_seconds + time.perf_counter() - self._start,
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "world_size": self.world,
            "parallel": self.parallel,
            "config": to_dict(self.cfg),
            "backbone_kwargs": self.model.student.kwargs,
        }

    def save(self) -> None:
        state = self.state()  # every rank joins the RNG gather
        keep = int(self.cfg.train.keep_checkpoints)
        if self.parallel == "fsdp":
            tensors = training_state(self.model, self.optimizer)
            save_sharded_checkpoint(tensors, state, self.run.checkpoints, self.step, keep)
            return
        if self.rank == 0:
            state.update(model=self.model.state_dict(), optimizer=self.optimizer.state_dict())
            save_checkpoint(state, self.run.checkpoints, self.step, keep)
        dist.barrier()

    def _other_layout(self) -> str | None:
        """The checkpoint this run cannot resume from: one of the other train.parallel mode."""
        ckpt = self.run.root / "checkpoints"
        if self.parallel == "fsdp" and self.run.last_checkpoint.is_file():
            return f"{self.run.last_checkpoint} (train.parallel=ddp)"
        if self.parallel == "ddp" and find_sharded_checkpoint(ckpt) is not None:
            return f"{ckpt / 'last'} (train.parallel=fsdp)"
        return None

    def _load(self) -> tuple[dict, str] | None:
        """The saved state with model and optimizer restored, and where it came from."""
        other = self._other_layout()
        if other is not None:
            raise CheckpointError(
                f"this run resumes with train.parallel={self.parallel} but its checkpoint is "
                f"{other}; resume with the train.parallel it was written with"
            )
        if self.parallel == "fsdp":
            path = find_sharded_checkpoint(self.run.root / "checkpoints")
            if path is None:
                return None
            tensors = training_state(self.model, self.optimizer)
            drop_unsaved_optimizer_state(tensors, sharded_keys(path))
            state = load_sharded_checkpoint(tensors, path)
            load_training_state(self.model, self.optimizer, tensors)
            return state, str(path)
        # To CPU: load_state_dict copies onto each parameter's device, while AdamW's step
        # counters must stay on the CPU (on the GPU each step would sync on them).
        found = load_resume_checkpoint(self.run.last_checkpoint)
        if found is None:
            return None
        state, path = found
        load_state_dict_strict(self.model, state["model"], f"checkpoint {path}")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise CheckpointError(
                f"optimizer state in {path} does not fit this model: {exc}"
            ) from None
        return state, str(path)

    def resume(self) -> bool:
        found = self._load()
        if found is None:
            return False
        state, path = found
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        self.train_seconds = float(state["train_seconds"])
        if state["world_size"] == self.world:
            set_rng_state(state["rng"][self.rank])
        else:
            log.warning(
                "checkpoint was written by %d processes, resuming with %d: the data order "
                "after this point differs from an uninterrupted run",
                state["world_size"],
                self.world,
            )
        log.info("resumed from %s at step %d", path, self.step)
        return True

    # -- one step ----------------------------------------------------------------------------

    def _set_hparams(self, values: dict[str, float]) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = values["lr"]
            group["weight_decay"] = values["wd"] if group["apply_wd"] else 0.0

    def token_keep(self, step: int) -> torch.Tensor:
        """The patch tokens MSN's student keeps of its global crop at ``step``."""
        grid = int(self.cfg.crops.global_size) // int(self.cfg.model.patch_size)
        drop = float(self.cfg.loss.msn.token_drop)
        return token_keep(grid * grid, drop, int(self.cfg.seed), step).to(self.device)

    def _all_finite(self, *values: torch.Tensor) -> bool:
        flag = torch.tensor(
            [float(all(torch.isfinite(v).all() for v in values))], device=self.device
        )
        return bool(dist.all_reduce_sum(flag).item() == self.world)

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """One optimisation step; returns its stats, or None when a non-finite step was skipped."""
        values = self.schedules.at(self.step)
        self._set_hparams(values)
        if "images" in batch:  # data.augment_on=device: uint8 images + drawn crop parameters
            batch = self.augment(batch)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        if self.step < self.mask_start:
            # iBOT's pred_start_epoch: the student sees unmasked crops until then.
            batch["masks"] = torch.zeros_like(batch["masks"])
        if self.model.use_msn:
            batch["keep"] = self.token_keep(self.step)
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        ):
            loss, stats = self.model(
                batch, values["teacher_temp"], self.student, patch_temp=values["patch_temp"]
            )
        self.optimizer.zero_grad(set_to_none=True)
        grad_norm = torch.zeros((), device=self.device)
        finite = self._all_finite(loss.detach())
        if finite:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = clip_gradients(self.clipped, float(self.cfg.train.clip_grad), self.clip)
            # With fp16 an inf gradient is routine: the grad scaler skips that step itself.
            finite = self.scaler.is_enabled() or self._all_finite(grad_norm)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            message = (
                f"non-finite loss or gradient at step {self.step} (loss "
                f"{float(loss.detach()):.4g}, grad norm {float(grad_norm):.4g})"
            )
            if self.cfg.train.on_nonfinite == "stop":
                raise NonFiniteLossError(
                    f"{message}. Training stopped; {self.run.last_checkpoint} holds the last good "
                    "state. Lower train.lr, raise loss.warmup_teacher_temp_epochs, use "
                    "train.precision=fp32, or set train.on_nonfinite=skip."
                )
            log.warning("%s: skipping the step (train.on_nonfinite=skip)", message)
            self.skipped += 1
            self.step += 1
            return None
        if self.step < int(self.cfg.train.freeze_last_layer_epochs) * self.steps_per_epoch:
            # DINO: the prototypes stay fixed while the rest of the network settles.
            for p in self.last_layer_params:
                p.grad = None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.model.update_teacher(values["momentum"])
        self.step += 1
        return {**stats, **values, "loss": float(loss.detach()), "grad_norm": float(grad_norm)}

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> dict:
        self.resume()
        self._start = time.perf_counter()
        cfg, t = self.cfg, self.cfg.train
        log.info(
            "training %d steps (%d per epoch, global batch %d, peak lr %.3g) on %s x %d",
            self.total_steps,
            self.steps_per_epoch,
            self.batch_size * self.world,
            float(self.schedules.lr.max()),
            self.device,
            self.world,
        )
        if self.total_steps < len(self.schedules):
            # The schedules span train.epochs; max_steps only stops early, so the lr at the
            # stop is not the schedule's end (resume with a larger max_steps to continue).
            log.info(
                "train.max_steps=%d stops early: the schedules span train.epochs=%s "
                "(%d steps); the lr at step %d will be %.3g, not the final %.3g",
                self.total_steps,
                t.epochs,
                len(self.schedules),
                self.total_steps,
                float(self.schedules.lr[self.total_steps - 1]),
                float(self.schedules.lr[-1]),
            )
        self.model.train()
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=self.rank != 0,
            desc="pretrain",
            unit="step",
        )
        last_time, last_step = time.perf_counter(), self.step
        stats: dict[str, float] = {}
        while self.step < self.total_steps:
            epoch, start_batch = divmod(self.step, self.steps_per_epoch)
            loader = epoch_loader(
                self.dataset,
                self.batch_size,
                epoch,
                int(cfg.seed),
                int(cfg.data.num_workers),
                self.rank,
                self.world,
                start_batch,
                pin_memory=self.pin_memory,
            )
            for batch in loader:
                out = self.train_step(batch)
                stats = out or stats
                bar.update(1)
                if out is not None:
                    bar.set_postfix(loss=f"{out['loss']:.3f}")
                if self.step % int(t.log_every) == 0 or self.step == self.total_steps:
                    now = time.perf_counter()
                    imgs = (self.step - last_step) * self.batch_size * self.world
                    self._log(stats, epoch, imgs / max(now - last_time, 1e-9))
                    last_time, last_step = now, self.step
                if cfg.eval.every and self.step % int(cfg.eval.every) == 0:
                    backbone = self.teacher_backbone()  # every rank joins an fsdp gather
                    if self.probe is not None:
                        self.metrics.log(self.step, **self.probe(backbone.to(self.device)))
                if self.step % int(t.checkpoint_every) == 0 or self.step == self.total_steps:
                    self.save()
                # Every rank stops at the same step, whichever node the signal reached first.
                if dist.any_rank(stop_requested()):
                    self.save()
                    raise Preempted(self.step)
                if self.step >= self.total_steps:
                    break
        bar.close()
        return self.finish()

    def _log(self, stats: dict[str, float], epoch: int, images_per_s: float) -> None:
        record = {
            **stats,
            "epoch": epoch,
            "images_per_s": images_per_s,
            "peak_memory_mb": peak_memory_mb(self.device),
            "skipped_steps": self.skipped,
        }
        self.metrics.log(self.step, **record)
        if self.rank == 0:
            terms = " ".join(f"{k}={v:.4f}" for k, v in stats.items() if k.startswith("loss"))
            log.info(
                "step %d/%d %s lr=%.3g teacher_entropy=%.3f head_agreement=%.3f %.1f img/s",
                self.step,
                self.total_steps,
                terms,
                stats.get("lr", float("nan")),
                stats.get("teacher_entropy", float("nan")),
                stats.get("teacher_head_agreement", float("nan")),
                images_per_s,
            )

    def teacher_backbone(self) -> torch.nn.Module | None:
        """The teacher backbone as a plain module on rank 0 (None on the others under fsdp).

        Under fsdp every rank must call it: the shards are gathered into a copy on rank 0's
        CPU, which leaves the device's memory to training.
        """
        if not self.sharded:
            return self.model.teacher.backbone
        state = full_state_dict(self.model.teacher)
        if self.rank != 0:
            return None
        prefix = "backbone."
        with torch.device("meta"):
            backbone = build_backbone(self.model.teacher.kwargs)
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        backbone.load_state_dict(weights, strict=True, assign=True)
        return backbone.eval()

    def finish(self) -> dict:
        """Export the teacher backbone and return the run summary."""
        summary: dict = {
            "steps": self.step,
            "skipped_steps": self.skipped,
            # False when train.max_steps stopped before the end of the train.epochs schedules.
            "completed": self.step >= len(self.schedules),
            "schedule_steps": len(self.schedules),
            "train_seconds": self.train_seconds + time.perf_counter() - self._start,
            "export": str(self.run.export),
        }
        backbone = self.teacher_backbone()
        if self.rank == 0:
            export_backbone(
                backbone,
                self.model.student.kwargs,
                self.run.export,
                meta={
                    "stage": "pretrain",
                    "step": self.step,
                    "config": to_dict(self.cfg),
                    **(self.init.meta if self.init else {}),
                },
            )
            log.info("exported the teacher backbone to %s", self.run.export)
            if self.probe is not None:
                summary.update(self.probe(backbone.to(self.device)))
                self.metrics.log(self.step, **{k: summary[k] for k in ("knn_top1",)})
            (self.run.root / "summary.json").write_text(json.dumps(summary, indent=2))
            self.metrics.close()
        if not self.sharded:
            # Every rank logs it: equal values show the replicas stayed in sync (DDP). A
            # single process has nothing to compare it with, and fsdp holds no replicas.
            log.log(
                logging.INFO if self.world > 1 else logging.DEBUG,
                "rank %d teacher checksum %.10e (the same on every rank when replicas stayed "
                "in sync)",
                self.rank,
                weights_checksum(self.model.teacher),
            )
        dist.barrier()
        return summary


def train(cfg, run: RunDir) -> dict:
    """Train (or resume) the run in ``run`` and export the teacher; returns the summary."""
    return Trainer(cfg, run).fit()
