"""The mixed-supervision enhancer: a small conv net that maps (image, attention maps of all
heads, coarse mask) to a better foreground mask, trained on the few images that have
ground-truth masks and applied to every weakly-labelled image (Kang et al. 2023, CST).

The net works at a reduced resolution (``resolution`` pixels a side) because its inputs
are smooth (attention is a patch grid upsampled) and it must train in seconds on a CPU.
Its output is a residual on the coarse mask's logit with a zero-initialised last layer, so
an untrained enhancer reproduces the coarse mask and few labels only have to learn the
correction. It predicts foreground vs background; classes come from
:mod:`distill.class_assign`, which keeps the enhancer class-agnostic and data-frugal.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.metrics import IGNORE_INDEX
from common.train_loop import Checkpointing, TrainLoop

log = logging.getLogger(__name__)


def enhancer_inputs(
    images: torch.Tensor, heads: torch.Tensor, coarse: torch.Tensor, resolution: int
) -> torch.Tensor:
    """Stack [image (3), head maps (K), coarse mask (1)] at ``resolution``: [B, 4 + K, r, r]."""
    size = (resolution, resolution)

    def rs(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)

    return torch.cat([rs(images), rs(heads), rs(coarse[:, None])], dim=1)


class Enhancer(nn.Module):
    """Dilated conv stack; output = coarse-mask logit + learned correction (logits [B, r, r])."""

    def __init__(self, in_channels: int, channels: int, depth: int) -> None:
        super().__init__()
        if in_channels < 5:
            raise ValueError(
                f"enhancer needs image (3) + at least one head map + coarse mask, got "
                f"{in_channels} input channels"
            )
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            d = 2 ** (i % 3)  # dilations 1, 2, 4, 1, ... widen the view at no cost
            layers += [nn.Conv2d(c, channels, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            c = channels
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = x[:, -1].clamp(1e-3, 1 - 1e-3)
        return torch.logit(coarse) + self.head(self.body(x))[:, 0]


def predict_foreground(
    model: Enhancer, inputs: torch.Tensor, size: tuple[int, int], batch_size: int = 256
) -> torch.Tensor:
    """Foreground probability [B, H, W] at pixel ``size`` from enhancer inputs."""
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            logits = model(inputs[start : start + batch_size])
            up = F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)
            outs.append(up[:, 0].sigmoid())
    return torch.cat(outs) if outs else inputs.new_zeros((0, *size))


def _loss(model: Enhancer, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.interpolate(model(inputs)[:, None], size=targets.shape[-2:], mode="bilinear")[:, 0]
    valid = targets != IGNORE_INDEX
    return F.binary_cross_entropy_with_logits(logits[valid], targets[valid].float())


def _fg_iou(model: Enhancer, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    prob = predict_foreground(model, inputs, tuple(targets.shape[-2:]))
    valid = targets != IGNORE_INDEX
    pred, gt = (prob >= 0.5) & valid, (targets == 1) & valid
    union = (pred | gt).sum().item()
    return (pred & gt).sum().item() / union if union else 1.0


@dataclass
class EnhancerTrainConfig:
    """Optimisation settings of :func:`train_enhancer`: the config's ``enhancer`` and ``train``
    keys of the same names, which hold the defaults (configs/distill/default.yaml)."""

    max_steps: int
    batch_size: int
    lr: float
    weight_decay: float
    val_fraction: float
    eval_every: int
    patience: int
    channels: int
    depth: int


class _EarlyStopping:
    """The best validation fg-IoU, its weights and the checks without gain; resumable."""

    def __init__(self, model: Enhancer, initial_iou: float) -> None:
        self.model = model
        self.initial_iou = self.best_iou = initial_iou
        self.best_model = copy.deepcopy(model.state_dict())
        self.bad_evals = 0

    def update(self, iou: float) -> None:
        if iou > self.best_iou:
            self.best_iou, self.bad_evals = iou, 0
            self.best_model = copy.deepcopy(self.model.state_dict())
        else:
            self.bad_evals += 1

    def checkpoint_state(self) -> dict:
        keys = ("initial_iou", "best_iou", "best_model", "bad_evals")
        return {k: getattr(self, k) for k in keys}

    def restore(self, state: dict, path: Path) -> None:
        self.initial_iou, self.best_iou = state["initial_iou"], state["best_iou"]
        self.best_model, self.bad_evals = state["best_model"], state["bad_evals"]


def train_enhancer(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cfg: EnhancerTrainConfig,
    ckpt_path: str | Path | None = None,
    seed: int = 0,
    context: dict | None = None,
) -> tuple[Enhancer, dict]:
    """Train on GT images; early stopping on held-out foreground IoU; resumable from ``ckpt_path``.

    ``inputs`` [N, 4 + K, r, r] from :func:`enhancer_inputs`; ``targets`` [N, H, W] with 1
    foreground, 0 background, 255 ignore. Returns the best model (by validation IoU) and
    a summary. The learning rate is constant; the run stops at ``cfg.max_steps`` or after
    ``cfg.patience`` validations without gain, and checkpoints at each validation (and on a
    pre-emption request). ``context`` (e.g. the head signs that shaped the inputs) is saved
    with the checkpoint; resuming with another context is refused, since the inputs would
    no longer mean the same.
    """
    context = context or {}
    n = inputs.shape[0]
    if n == 0:
        raise ValueError(
            "the enhancer needs ground-truth masks, but 0 images with masks were given; set "
            "mixed.num_gt_images > 0 (and make sure those images have masks) or mixed.enabled=false"
        )
    if targets.shape[0] != n:
        raise ValueError(f"{n} enhancer inputs but {targets.shape[0]} target masks")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, round(n * cfg.val_fraction)) if n > 1 else 0
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if n_val == 0:  # one GT image: train on it and validate on it
        val_idx = train_idx
    model = Enhancer(inputs.shape[1], cfg.channels, cfg.depth)
    early = _EarlyStopping(model, _fg_iou(model, inputs[val_idx], targets[val_idx]))

    def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:  # batches come from ``gen``, whose state the checkpoint holds
            batch = train_idx[torch.randint(len(train_idx), (cfg.batch_size,), generator=gen)]
            x, y = inputs[batch], targets[batch]
            flip = torch.rand(len(batch), generator=gen) < 0.5  # horizontal flips: free data
            yield (
                torch.where(flip[:, None, None, None], x.flip(-1), x),
                torch.where(flip[:, None, None], y.flip(-1), y),
            )

    def after_step(step: int, record: dict) -> None:
        if step % cfg.eval_every and step != cfg.max_steps:
            return
        iou = _fg_iou(model, inputs[val_idx], targets[val_idx])
        early.update(iou)
        log.debug("enhancer step %d loss %.4f val fg-IoU %.4f", step, record["loss"], iou)

    loop = TrainLoop(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        step_fn=lambda batch: (_loss(model, *batch), {}),
        batches=batches,
        total_steps=cfg.max_steps,
        name="enhancer",
        fix="lower enhancer.lr",
        checkpoint=Checkpointing(Path(ckpt_path), cfg.eval_every, keep=0) if ckpt_path else None,
        generator=gen,
        # Another image count, channel count or context (the backbone, its head signs or
        # the token probe) would make the inputs mean something else: such a checkpoint is refused.
        identity={"in_channels": inputs.shape[1], "num_images": n, "context": context},
        extra=early,
        after_step=after_step,
        finished=lambda: early.bad_evals >= cfg.patience,
    )
    steps = loop.run().steps
    model.load_state_dict(early.best_model)
    model.eval()
    summary = {
        "steps": steps,
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "val_fg_iou_initial": early.initial_iou,
        "val_fg_iou_best": early.best_iou,
    }
    return model, summary
