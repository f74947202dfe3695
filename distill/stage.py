"""`python -m distill`: pseudo-masks for every train image, the enhancer, the quality report."""

from __future__ import annotations

import json
import logging
import time
from functools import partial

import torch
import torch.nn.functional as F

from common.backbone import build_backbone, check_input_size, load_backbone, source_of
from common.config import Config, ConfigError
from common.metrics import IGNORE_INDEX
from common.preemption import Preempted, stop_requested
from common.rundir import MetricsLogger, RunDir
from common.runtime import resolve_device
from distill.attention_maps import check_attention_access, upsample
from distill.baselines import border_contrast_saliency
from distill.class_assign import class_scores
from distill.data import DistillData, check_data_config, open_distill_data
from distill.enhancer import Enhancer, EnhancerTrainConfig, train_enhancer
from distill.figures import save_grid
from distill.mask_rules import otsu_threshold
from distill.pseudo_labels import Batch, Fit, PseudoLabeler, iter_batches, write_pseudo_masks
from distill.quality import assignment_accuracy, score_masks, write_report
from distill.token_probe import SEED_SHARE

log = logging.getLogger(__name__)


def _subset(n: int, k: int | None, seed: int) -> list[int]:
    """A seeded random subset of ``range(n)`` of size ``k`` (all of it when k is None)."""
    if k is None or k >= n:
        return list(range(n))
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:k].tolist())


def _enhancer_cfg(cfg: Config) -> EnhancerTrainConfig:
    e = cfg.enhancer
    return EnhancerTrainConfig(
        max_steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        lr=e.lr,
        weight_decay=e.weight_decay,
        val_fraction=e.val_fraction,
        eval_every=e.eval_every,
        patience=e.patience,
        channels=e.channels,
        depth=e.depth,
    )


class EnhancerPool:
    """Trains (and caches) enhancers on nested prefixes of one seeded order of GT images."""

    def __init__(
        self, labeler: PseudoLabeler, fit: Fit, dataset, order: list[int], cfg: Config, run: RunDir
    ):
        self.labeler, self.fit, self.dataset, self.order, self.cfg, self.run = (
            labeler,
            fit,
            dataset,
            order,
            cfg,
            run,
        )
        self.models: dict[int, Enhancer] = {}
        self.summaries: dict[int, dict] = {}

    def get(self, n: int, ckpt_name: str | None = None) -> Enhancer:
        if n <= 0:
            raise ValueError(
                "the enhancer was asked for with 0 ground-truth images; set "
                "mixed.num_gt_images > 0, or mixed.enabled=false for weak pseudo-masks only"
            )
        if n > len(self.order):
            raise ValueError(
                f"mixed.num_gt_images={n} but split {self.dataset.split!r} has only "
                f"{len(self.order)} images with masks; lower it"
            )
        if n in self.models:
            return self.models[n]
        inputs, targets = [], []
        for batch in iter_batches(
            self.dataset, self.order[:n], self.cfg.attention.batch_size, self.cfg.data.empty_labels
        ):
            att = self.labeler.attend(batch.images, self.fit)
            _, weak_fg = self.labeler.label(batch, self.fit, att)
            inputs.append(self.labeler.enhancer_inputs(batch, att, weak_fg).cpu())
            fg = (batch.masks > 0).long()
            fg[batch.masks == IGNORE_INDEX] = IGNORE_INDEX
            targets.extend(fg)
        ckpt = self.run.checkpoints / (ckpt_name or f"enhancer_gt{n}.pt")
        t0 = time.perf_counter()
        signs = self.fit.head_signs
        model, summary = train_enhancer(
            torch.cat(inputs),
            _one_size(targets, 4 * self.cfg.enhancer.resolution),
            _enhancer_cfg(self.cfg),
            ckpt,
            self.cfg.seed,
            context={
                "head_signs": None if signs is None else signs.tolist(),
                "token_probe": self.cfg.mask.token_probe,
                "probe_seed_share": SEED_SHARE,
            },
        )
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        log.info(
            "enhancer on %d GT images: %d steps on %d images; validation fg IoU %.1f%% -> %.1f%% "
            "(%d held-out images), %.1f s",
            n,
            summary["steps"],
            summary["train_images"],
            100 * summary["val_fg_iou_initial"],
            100 * summary["val_fg_iou_best"],
            summary["val_images"],
            summary["seconds"],
        )
        self.models[n], self.summaries[n] = model, summary
        return model


def _one_size(masks: list[torch.Tensor], side: int) -> torch.Tensor:
    """Target masks [N, H, W]; images of several sizes are resized (nearest) to side x side,
    still 4x finer than the enhancer's own grid."""
    if len({tuple(m.shape) for m in masks}) == 1:
        return torch.stack(masks)
    resized = [F.interpolate(m[None, None].float(), size=(side, side)) for m in masks]
    return torch.cat(resized)[:, 0].long()


def _eval_cache(labeler: PseudoLabeler, fit: Fit, dataset, indices: list[int], cfg: Config) -> list:
    """(batch, attention) pairs of the scored eval images, computed once."""
    return [
        (batch, labeler.attend(batch.images, fit))
        for batch in iter_batches(
            dataset, indices, cfg.attention.batch_size, cfg.data.empty_labels, "eval attention"
        )
    ]


def _score(preds: list[torch.Tensor], cache: list, num_classes: int) -> dict:
    targets = [m for batch, _ in cache for m in batch.masks]
    return score_masks([p.cpu() for p in preds], targets, num_classes)


def _quality(
    cfg: Config,
    run: RunDir,
    labeler: PseudoLabeler,
    fit: Fit,
    info: dict,
    data: DistillData,
    proto_idx: list[int],
    pool: EnhancerPool | None,
) -> dict:
    """Score every method on held-out eval images; write the table, JSON and plot."""
    train_ds, eval_ds = data.train, data.eval
    nc = eval_ds.num_classes
    pick = _subset(len(data.eval_indices), cfg.quality.max_images, cfg.seed)
    eval_idx = [data.eval_indices[i] for i in pick]
    cache = _eval_cache(labeler, fit, eval_ds, eval_idx, cfg)
    rows: list[dict] = []

    def add(method: str, gt_images: int, preds: list[torch.Tensor]) -> None:
        s = _score([p for b in preds for p in b], cache, nc)
        rows.append({"method": method, "gt_images": gt_images, **s})

    if cfg.quality.saliency_baseline:
        preds = []
        for batch, att in cache:
            sal = border_contrast_saliency(batch.images)
            fg = (sal >= otsu_threshold(sal)[:, None, None]).long()
            preds.append(labeler.classes(fg, batch.labels, att, fit, rule="first_label"))
        add("colour saliency (no learning)", 0, preds)
    if cfg.quality.random_backbone:
        torch.manual_seed(cfg.seed + 1)
        random_labeler = PseudoLabeler(
            build_backbone(info["timm_kwargs"]), cfg, labeler.device, "random-init ViT baseline"
        )
        random_fit = random_labeler.fit(
            iter_batches(train_ds, proto_idx, cfg.attention.batch_size, cfg.data.empty_labels),
            train_ds.num_classes,
        )
        preds = [random_labeler.label(b, random_fit)[0] for b, _ in cache]
        add("random-init ViT + refine", 0, preds)
    add("attention (raw)", 0, [labeler.label(b, fit, a, refine=False)[0] for b, a in cache])
    add("attention + refine", 0, [labeler.label(b, fit, a, refine=True)[0] for b, a in cache])
    if pool is not None:
        for n in cfg.quality.gt_counts:
            if n <= 0 or n > len(pool.order):
                continue
            enhancer = pool.get(n)
            preds = [labeler.enhanced(b, fit, enhancer, a) for b, a in cache]
            add(f"+ enhancer ({n} GT)", n, preds)
    # Class assignment alone, on the GT foreground of multi-label eval images.
    targets = [m for b, _ in cache for m in b.masks]
    labels = [lab for b, _ in cache for lab in b.labels]
    scores = [
        s
        for _, a in cache
        for s in class_scores(
            a.tokens, fit.centre.to(a.tokens.device), fit.prototypes.to(a.tokens.device)
        )
    ]
    assign = {
        rule: assignment_accuracy(targets, labels, scores, rule)
        for rule in ("prototype", "first_label")
    }
    extra = {
        "eval_split": eval_ds.split,
        "eval_images": len(eval_idx),
        "class_assignment": assign,
        "enhancers": pool.summaries if pool is not None else {},
    }
    what = f"{eval_ds.split} images" if data.benchmark else "images with a mask in data.masks"
    write_report(rows, extra, run.root, f"Pseudo-label quality on {len(eval_idx)} {what}")
    _figures(cfg, run, labeler, fit, cache, pool)
    return {"rows": rows, **extra}


def _figures(cfg: Config, run: RunDir, labeler: PseudoLabeler, fit: Fit, cache: list, pool) -> None:
    """Overlay grid of the first eval images: heads, weak / mixed pseudo-masks, GT."""
    k = cfg.figures.num_images
    if k <= 0 or not cache:
        return
    batch, att = cache[0]
    sl = slice(0, min(k, len(batch.ids)))
    sub = Batch(batch.images[sl], batch.labels[sl], batch.ids[sl], batch.masks[sl])
    size = tuple(sub.images.shape[-2:])
    heads = upsample(att.heads[sl], size).cpu()
    sub_att = type(att)(att.heads[sl], att.saliency[sl], att.tokens[sl])
    masks = {"weak": labeler.label(sub, fit, sub_att)[0].cpu()}
    n = cfg.mixed.num_gt_images
    if pool is not None and n in pool.models:
        masks["mixed"] = labeler.enhanced(sub, fit, pool.models[n], sub_att).cpu()
    masks["ground truth"] = sub.masks
    save_grid(run.figures / "pseudo_masks_eval.png", sub.images, heads, masks, sub.ids)


def _num_gt_images(cfg: Config, data: DistillData) -> int:
    """How many masked images train the enhancer; logs where they come from."""
    if not data.benchmark:
        if not data.masked:
            raise ConfigError(
                "mixed supervision needs a few real masks: set data.masks to a folder of "
                "<image id>.png masks, or mixed.enabled=false for weak pseudo-masks only"
            )
        log.info(
            "mixed supervision: the %d images with a mask in %s train the enhancer",
            len(data.masked),
            cfg.data.masks,
        )
        return len(data.masked)
    n = cfg.mixed.num_gt_images
    log.info(
        "mixed supervision: %d images of split %r drawn at random as ground truth (benchmark "
        "mode: every image of the split has a mask; on your own data set data.format=folder "
        "and data.masks)",
        n,
        data.train.split,
    )
    return n


def run(cfg: Config, run: RunDir) -> dict:
    """Write pseudo-masks (weak, and mixed with the enhancer) for the train split and report."""
    source, weights = source_of(cfg.backbone, "distill")
    check_data_config(cfg.data)
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    model, info = load_backbone(source, device, weights)
    check_input_size(info, cfg.data.image_size, "data.image_size")
    check_input_size(info, cfg.attention.image_size, "attention.image_size")
    check_attention_access(model)
    data = open_distill_data(cfg)
    n_gt = _num_gt_images(cfg, data) if cfg.mixed.enabled else 0  # before any backbone pass
    train_ds = data.train
    metrics = MetricsLogger(run.metrics)
    labeler = PseudoLabeler(model, cfg, device)
    train_idx = list(range(len(train_ds)))
    proto_idx = _subset(len(train_idx), cfg.assign.max_images, cfg.seed + 2)
    proto_idx = [train_idx[i] for i in proto_idx]
    bs, empty = cfg.attention.batch_size, cfg.data.empty_labels
    fit = labeler.fit(
        iter_batches(train_ds, proto_idx, bs, empty, "fit on labels"),
        train_ds.num_classes,
    )
    # One seeded order of the GT pool: enhancers on 10, 50, 200 images use nested prefixes.
    perm = torch.randperm(len(data.masked), generator=torch.Generator().manual_seed(cfg.seed + 3))
    order = [data.masked[i] for i in perm.tolist()]
    pool = EnhancerPool(labeler, fit, train_ds, order, cfg, run)
    enhancer, gt_idx = None, []
    if cfg.mixed.enabled:
        enhancer = pool.get(n_gt, ckpt_name="last.pt")
        gt_idx = order[:n_gt]
    if stop_requested():
        raise Preempted(0)
    out = run.root / "pseudo_masks"
    batches = iter_batches(train_ds, train_idx, bs, empty, "pseudo-masks")
    gt_masks = {train_ds.ids[i]: partial(train_ds.read_mask, i) for i in gt_idx}
    stats = write_pseudo_masks(labeler, fit, batches, out, enhancer, gt_masks)
    log.info("wrote %d pseudo-masks to %s, at each image's own size", stats["images"], out)
    summary: dict = {"pseudo_masks": str(out), **stats}
    if cfg.mixed.enabled:
        summary["enhancer"] = pool.summaries[len(gt_idx)]
        summary["gt_images"] = sorted(gt_masks)
    if cfg.quality.enabled and data.eval is None:
        log.info(
            "quality report: nothing to score against (no masks for an evaluation split; "
            "give data.masks, or a VOC/COCO eval_split with masks)"
        )
    elif cfg.quality.enabled:
        # On your own folder the masked images also train the enhancer: no enhancer rows.
        summary["quality"] = _quality(
            cfg, run, labeler, fit, info, data, proto_idx, pool if data.benchmark else None
        )
    if fit.head_signs is not None:
        summary["head_signs"] = fit.head_signs.tolist()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    metrics.log(0, **{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    (run.root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
