"""Train and evaluate the WSSS model: frozen ViT + light decoder on pseudo-masks (+ SCD).

Supervision comes from a pseudo-mask folder (``pseudo_masks=<distill run>/pseudo_masks/weak``)
read through ``VOCSegmentation(mask_dir=...)``; with ``compare_gt`` the same model is also
trained on ground-truth masks as the upper bound. Evaluation is over all classes,
background included (the VOC WSSS convention), on ``data.eval_split``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from common.backbone import check_input_size, load_backbone, source_of
from common.config import Config, ConfigError
from common.datasets.errors import DatasetNotFoundError
from common.datasets.voc import VOCSegmentation
from common.metrics import IGNORE_INDEX, SegmentationMeter
from common.optim import cosine_decay
from common.rundir import MetricsLogger, RunDir
from common.runtime import resolve_device
from common.train_loop import Checkpointing, TrainLoop
from distill.data import check_data_config, open_folder
from distill.figures import save_grid
from distill.losses.scd import SCDLoss
from distill.segment.model import SegmentationModel

log = logging.getLogger(__name__)


def _collate(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked images and masks; a batch of several sizes (no data.image_size) is resized to
    its first image's size (bilinear images, nearest masks) instead of failing."""
    h, w = items[0]["image"].shape[-2:]
    images, masks = [], []
    for it in items:
        image, mask = it["image"], it["mask"]
        if image.shape[-2:] != (h, w):
            image = F.interpolate(image[None], size=(h, w), mode="bilinear")[0]
            mask = F.interpolate(mask[None, None].float(), size=(h, w))[0, 0].long()
        images.append(image)
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)


def _one_hot(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[B, H, W] class ids (255 ignore) -> [B, K, H, W] one-hot; ignore pixels are all zero."""
    valid = masks != IGNORE_INDEX
    out = F.one_hot(torch.where(valid, masks, 0), num_classes).permute(0, 3, 1, 2).float()
    return out * valid[:, None]


def _flip(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator):
    flip = torch.rand(images.shape[0], generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images, torch.where(flip[:, None, None], masks.flip(-1), masks)


def train_model(
    cfg: Config,
    model: SegmentationModel,
    dataset: VOCSegmentation,
    ckpt_dir: Path,
    metrics: MetricsLogger,
    tag: str,
    device: torch.device,
) -> dict:
    """Cross-entropy on the given masks (+ SCD between the image and a rescaled view)."""
    t = cfg.train
    # On the device before the optimizer exists: a restored optimizer state follows the
    # parameters' device at load time, and model.to() later would not move it.
    model.to(device)
    params = [{"params": model.decoder.parameters(), "lr": t.lr}]
    if not cfg.model.freeze_backbone:
        params.append(
            {"params": model.backbone.parameters(), "lr": t.lr * cfg.model.backbone_lr_scale}
        )
    max_steps = t.max_steps or t.epochs * max(1, len(dataset) // t.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    scd = SCDLoss(cfg.scd.num_points) if cfg.scd.weight > 0 else None

    def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:  # one shuffled pass per epoch, drawn from ``gen`` (saved with the run)
            order = torch.randperm(len(dataset), generator=gen).tolist()
            yield from DataLoader(
                torch.utils.data.Subset(dataset, order),
                batch_size=t.batch_size,
                num_workers=cfg.data.num_workers,
                collate_fn=_collate,
                drop_last=len(dataset) >= t.batch_size,
            )

    def step_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        images, masks = _flip(*batch, gen)
        images, masks = images.to(device), masks.to(device)
        logits = model(images)
        ce = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        loss, terms = ce, {"ce": ce.item()}
        if scd is not None:
            size = [max(8, round(s * cfg.scd.scale)) for s in images.shape[-2:]]
            patch = model.backbone.patch_embed.patch_size
            size = [s - s % p for s, p in zip(size, patch, strict=True)]
            small = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            small_masks = F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0]
            nc = logits.shape[1]
            term = scd(_one_hot(masks, nc), _one_hot(small_masks.long(), nc), logits, model(small))
            loss = loss + cfg.scd.weight * term
            terms["scd"] = term.item()
        return loss, terms

    loop = TrainLoop(
        model=model,
        optimizer=torch.optim.AdamW(params, weight_decay=t.weight_decay),
        step_fn=step_fn,
        batches=batches,
        total_steps=max_steps,
        name=f"decoder on {tag} masks",
        fix="lower train.lr",
        lr_scale=lambda step: cosine_decay(step, max_steps),
        # One step copy beside last.pt: resume falls back to it if last.pt is damaged.
        checkpoint=Checkpointing(ckpt_dir / "last.pt", t.checkpoint_every, keep=1),
        generator=gen,
        identity={"tag": tag},
        metrics=metrics,
        log_every=t.log_every,
        labels={"model": tag},
    )
    return {"steps": loop.run().steps}


@torch.no_grad()
def evaluate(
    model: SegmentationModel, dataset: VOCSegmentation, cfg: Config, device: torch.device
) -> tuple[SegmentationMeter, np.ndarray, tuple]:
    """Meter (all classes), confusion matrix, and the first batch (images, preds, GT)."""
    nc = dataset.num_classes
    meter = SegmentationMeter(nc, exclude_background=False)
    confusion = np.zeros((nc, nc), dtype=np.int64)
    model.to(device).eval()
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        num_workers=cfg.data.num_workers,
        collate_fn=_collate,
    )
    first = None
    for images, masks in tqdm(loader, desc="evaluate", leave=False):
        pred = model(images.to(device)).argmax(1).cpu()
        meter.update(pred, masks)
        keep = masks != IGNORE_INDEX
        confusion += np.bincount(
            masks[keep].numpy() * nc + pred[keep].numpy(), minlength=nc * nc
        ).reshape(nc, nc)
        if first is None:
            first = (images, pred, masks)
    return meter, confusion, first


def mask_quality(pseudo, gt, indices: list[int] | None = None) -> dict:
    """The pseudo-masks' own mIoU (all classes, ignore counted as background) vs ground truth,
    on the items ``indices`` of both (all by default)."""
    meter = SegmentationMeter(gt.num_classes, exclude_background=False)
    for i in indices if indices is not None else range(len(gt)):
        p = torch.from_numpy(pseudo.read_mask(i).astype(np.int64))
        g = torch.from_numpy(gt.read_mask(i).astype(np.int64))
        if p.shape != g.shape:
            raise ValueError(
                f"pseudo-mask {pseudo.mask_path(i)} is {p.shape[1]}x{p.shape[0]} but the image "
                f"and its GT are {g.shape[1]}x{g.shape[0]}; masks must match their image "
                "(re-run `python -m distill` to rewrite the pseudo-masks)"
            )
        meter.update(torch.where(p == IGNORE_INDEX, 0, p), g)
    return {"miou": meter.miou(), "fb_iou": meter.fb_iou()}


def plot_confusion(confusion: np.ndarray, names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (rows: ground truth) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.45 * len(names) + 2, 0.45 * len(names) + 1.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _train_and_eval(cfg, run, tag, train_ds, eval_ds, device, metrics) -> dict:
    source, weights = source_of(cfg.backbone, "distill.segment")
    backbone, info = load_backbone(source, device, weights)
    check_input_size(info, cfg.data.image_size, "data.image_size")
    torch.manual_seed(cfg.seed)
    model = SegmentationModel(
        backbone, train_ds.num_classes, cfg.model.channels, cfg.model.freeze_backbone
    )
    t0 = time.perf_counter()
    ckpt_dir = run.checkpoints if tag == "pseudo" else run.checkpoints / tag
    info = train_model(cfg, model, train_ds, ckpt_dir, metrics, tag, device)
    meter, confusion, (images, pred, gt) = evaluate(model, eval_ds, cfg, device)
    names = eval_ds.class_names
    plot_confusion(confusion, names, run.figures / f"confusion_{tag}.png")
    k = min(cfg.figures.num_images, images.shape[0])
    save_grid(
        run.figures / f"predictions_{tag}.png",
        images[:k],
        None,
        {"prediction": pred[:k], "ground truth": gt[:k]},
    )
    ious = meter.iou_per_class()
    return {
        "miou": meter.miou(),
        "fb_iou": meter.fb_iou(),
        "iou_per_class": {
            n: (None if v != v else float(v)) for n, v in zip(names, ious, strict=True)
        },
        "train_seconds": round(time.perf_counter() - t0, 1),
        **info,
    }


def run(cfg: Config, run: RunDir) -> dict:
    """Train on pseudo-masks (and on GT with ``compare_gt``), evaluate, write the report."""
    source_of(cfg.backbone, "distill.segment")
    if not cfg.pseudo_masks:
        raise ConfigError(
            "distill.segment needs pseudo_masks=<distill run>/pseudo_masks/weak (or mixed)"
        )
    if cfg.data.format == "folder":
        return _run_folder(cfg, run)
    device = resolve_device(cfg.device)
    size = cfg.data.image_size
    pseudo_ds = VOCSegmentation(
        cfg.data.root, cfg.data.train_split, mask_dir=cfg.pseudo_masks, image_size=size
    )
    eval_ds = VOCSegmentation(cfg.data.root, cfg.data.eval_split, image_size=size)
    metrics = MetricsLogger(run.metrics)
    results = {"pseudo_masks": str(cfg.pseudo_masks)}
    gt_train = VOCSegmentation(cfg.data.root, cfg.data.train_split, image_size=size)
    results["pseudo_mask_quality_train"] = mask_quality(pseudo_ds, gt_train)
    results["pseudo"] = _train_and_eval(cfg, run, "pseudo", pseudo_ds, eval_ds, device, metrics)
    if cfg.compare_gt:
        results["gt"] = _train_and_eval(cfg, run, "gt", gt_train, eval_ds, device, metrics)
    return _report(cfg, run, results)


def _run_folder(cfg: Config, run: RunDir) -> dict:
    """Your own folder: train on the pseudo-masks of every labelled image; score on the
    images with a real mask in data.masks (the pseudo-masks of those are mostly their own
    ground truth with mixed supervision, so the score is an optimistic one)."""
    check_data_config(cfg.data)
    device = resolve_device(cfg.device)
    pseudo_ds = open_folder(cfg, masks=cfg.pseudo_masks)
    missing = [pseudo_ds.ids[i] for i in range(len(pseudo_ds)) if not pseudo_ds.has_mask(i)]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of {len(pseudo_ds)} labelled images have no pseudo-mask in "
            f"{cfg.pseudo_masks} (e.g. {missing[0]}.png); point pseudo_masks at the distill run "
            "made from this folder and labels"
        )
    metrics = MetricsLogger(run.metrics)
    results: dict = {"pseudo_masks": str(cfg.pseudo_masks)}
    gt_ds = open_folder(cfg) if cfg.data.masks else None
    scored = [i for i in range(len(gt_ds)) if gt_ds.has_mask(i)] if gt_ds is not None else []
    if not scored:
        log.info(
            "WSSS evaluation: nothing to score against (no masks in data.masks); the model is "
            "trained and saved, unscored"
        )
        torch.manual_seed(cfg.seed)
        results["pseudo"] = _train_only(cfg, run, pseudo_ds, device, metrics)
        (run.root / "summary.json").write_text(json.dumps(results, indent=2))
        return results
    results["pseudo_mask_quality_train"] = mask_quality(pseudo_ds, gt_ds, scored)
    eval_ds = Subset(gt_ds, scored)
    eval_ds.num_classes, eval_ds.class_names = gt_ds.num_classes, gt_ds.class_names
    results["pseudo"] = _train_and_eval(cfg, run, "pseudo", pseudo_ds, eval_ds, device, metrics)
    return _report(cfg, run, results, eval_name=f"{len(scored)} images with masks")


def _train_only(cfg, run, train_ds, device, metrics) -> dict:
    source, weights = source_of(cfg.backbone, "distill.segment")
    backbone, _ = load_backbone(source, device, weights)
    model = SegmentationModel(
        backbone, train_ds.num_classes, cfg.model.channels, cfg.model.freeze_backbone
    )
    return train_model(cfg, model, train_ds, run.checkpoints, metrics, "pseudo", device)


def _report(cfg: Config, run: RunDir, results: dict, eval_name: str | None = None) -> dict:
    """The results table (markdown and log) and summary.json."""
    eval_name = eval_name or cfg.data.eval_split
    quality_on = "train split" if cfg.data.format != "folder" else eval_name
    compare = "gt" in results
    lines = [
        "| model | mIoU (all classes) | FB-IoU |",
        "| --- | ---: | ---: |",
        f"| pseudo-masks themselves ({quality_on} vs GT) | "
        f"{100 * results['pseudo_mask_quality_train']['miou']:.1f} | "
        f"{100 * results['pseudo_mask_quality_train']['fb_iou']:.1f} |",
        f"| decoder trained on pseudo-masks ({eval_name}) | "
        f"{100 * results['pseudo']['miou']:.1f} | {100 * results['pseudo']['fb_iou']:.1f} |",
    ]
    if compare:
        lines.append(
            f"| decoder trained on GT masks, upper bound ({eval_name}) | "
            f"{100 * results['gt']['miou']:.1f} | {100 * results['gt']['fb_iou']:.1f} |"
        )
    table = "\n".join(lines)
    (run.root / "segmentation.md").write_text(f"# WSSS results\n\n{table}\n")
    (run.root / "summary.json").write_text(json.dumps(results, indent=2))
    log.info("WSSS results:\n%s", table)
    print(table)
    return results
