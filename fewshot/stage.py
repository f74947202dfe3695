"""``python -m fewshot``: train the FS-CS head on a fold, evaluate it and its baselines.

Steps: features of the frozen backbone for the training and test splits (cached); a
correlation-transformer head trained on 1-way 1-shot episodes of the training classes
(supervised by pseudo-masks or ground truth); the same head on a randomly initialised
backbone, and the training-free prototype baseline; every model evaluated on the same fixed
test episodes of the held-out fold (1-way and ``way``-way, ``shot``-shot).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from common.backbone import build_backbone, export_backbone
from common.config import Config, ConfigError
from common.datasets import folds
from common.rundir import MetricsLogger, RunDir
from common.runtime import resolve_device
from fewshot.data import ImagePool, build_pool, load_masks, open_split
from fewshot.episodes import EpisodeError, EpisodeSampler
from fewshot.evaluate import assemble, score
from fewshot.features import FrozenBackbone
from fewshot.model import FSCSModel, episode_probabilities
from fewshot.prototype import choose_thresholds, prototype_scores
from fewshot.train import TrainSettings, train_head
from fewshot.visualize import episode_grid

log = logging.getLogger(__name__)
SUPERVISION = ("weak", "mixed", "full")


def resolve_pseudo_masks(path: str | None, kind: str) -> Path:
    """``<distill run>/pseudo_masks/<kind>`` from the run dir or its pseudo_masks folder."""
    if path is None:
        raise ConfigError(
            f"supervision={kind} needs pseudo-masks: pass pseudo_masks=<distill run dir> "
            "(or supervision=full to train on ground-truth masks)"
        )
    root = Path(path)
    for cand in (root / kind, root / "pseudo_masks" / kind):
        if cand.is_dir():
            return cand
    raise ConfigError(
        f"no '{kind}' pseudo-masks under {root} (looked for {root / kind} and "
        f"{root / 'pseudo_masks' / kind}); run `python -m distill` first or fix pseudo_masks="
    )


def check_setting(cfg: Config) -> tuple[list[int], list[int]]:
    """Validate fold / way / shot / supervision early; returns (test classes, train classes)."""
    if cfg.supervision not in SUPERVISION:
        raise ConfigError(f"supervision must be one of {SUPERVISION}, got {cfg.supervision!r}")
    if cfg.episodes.eval_support_masks not in ("gt", "train"):
        raise ConfigError(
            "episodes.eval_support_masks must be gt or train, got "
            f"{cfg.episodes.eval_support_masks!r}"
        )
    try:
        test_classes = folds.fold_classes(cfg.data.benchmark, cfg.fold)
        train_classes = folds.train_classes(cfg.data.benchmark, cfg.fold)
    except ValueError as exc:
        raise ConfigError(f"{exc} (set fold=...)") from None
    if not 1 <= cfg.way <= len(test_classes):
        raise ConfigError(
            f"way={cfg.way} but fold {cfg.fold} of {cfg.data.benchmark} has "
            f"{len(test_classes)} test classes; use 1 <= way <= {len(test_classes)}"
        )
    if cfg.shot < 1:
        raise ConfigError(f"shot must be >= 1, got {cfg.shot}")
    if cfg.backbone is None:
        raise ConfigError("backbone=<pretrain run dir or export dir> is required")
    return test_classes, train_classes


def random_export(like: FrozenBackbone, out: Path, seed: int) -> Path:
    """A randomly initialised backbone of the same shape, exported for the baseline."""
    torch.manual_seed(seed)
    model = build_backbone(like.info["timm_kwargs"])
    meta = {**like.info.get("meta", {}), "note": "random init (fewshot baseline)", "seed": seed}
    return export_backbone(model, like.info["timm_kwargs"], out, meta)


def _sampler(name: str, **kwargs) -> EpisodeSampler:
    try:
        return EpisodeSampler(name=name, **kwargs)
    except EpisodeError as exc:
        raise ConfigError(str(exc)) from None


def _layers(cfg: Config, depth: int) -> list[int]:
    layers = list(range(depth)) if cfg.head.layers is None else list(cfg.head.layers)
    bad = [layer for layer in layers if not -depth <= layer < depth]
    if bad:
        raise ConfigError(f"head.layers {bad} out of range for a {depth}-block backbone")
    return [layer % depth for layer in layers]


def run(cfg: Config, run: RunDir) -> dict:
    test_classes, train_classes = check_setting(cfg)
    device = resolve_device(cfg.device)
    mask_dir = (
        None
        if cfg.supervision == "full"
        else resolve_pseudo_masks(cfg.pseudo_masks, cfg.supervision)
    )
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run.root / "cache"
    train_ds = open_split(
        cfg.data.root, cfg.data.train_split, cfg.data.image_size, cfg.data.max_train_images
    )
    test_ds = open_split(
        cfg.data.root, cfg.data.test_split, cfg.data.image_size, cfg.data.max_test_images
    )
    num_classes = len(getattr(train_ds, "dataset", train_ds).class_names)
    class_names = getattr(train_ds, "dataset", train_ds).class_names
    metrics = MetricsLogger(run.metrics)

    backbones = {"head": FrozenBackbone(cfg.backbone, device)}
    if cfg.baselines.random_backbone:
        rand_dir = random_export(backbones["head"], run.root / "random_backbone", cfg.seed)
        backbones["random_head"] = FrozenBackbone(rand_dir, device)
    layers = _layers(cfg, backbones["head"].depth)

    # Held-out validation images of the training split (fixed by episodes.seed).
    n_train = len(train_ds)
    perm = np.random.default_rng(cfg.episodes.seed).permutation(n_train)
    n_val = max(1, int(round(cfg.data.val_fraction * n_train)))
    val_idx, fit_idx = sorted(perm[:n_val].tolist()), sorted(perm[n_val:].tolist())

    results: dict = {
        "setting": {
            "fold": cfg.fold,
            "way": cfg.way,
            "shot": cfg.shot,
            "supervision": cfg.supervision,
            "test_classes": test_classes,
            "train_classes": train_classes,
            "backbone_hash": backbones["head"].hash,
        },
        "train": {},
        "test": {},
    }
    ways = sorted({1, cfg.way})
    test_sets: dict[int, list] = {}
    val_eps = None
    all_scores: dict[str, dict[int, list]] = {}
    pools: dict[str, tuple[ImagePool, ImagePool, ImagePool]] = {}
    for tag, bb in backbones.items():
        bs = cfg.data.feature_batch_size
        train_pool = build_pool(train_ds, bb, layers, cache_dir, mask_dir, bs)
        test_pool = build_pool(test_ds, bb, layers, cache_dir, None, bs)
        support_pool = test_pool
        if cfg.episodes.eval_support_masks == "train" and mask_dir is not None:
            support_pool = ImagePool(
                **{
                    **vars(test_pool),
                    "masks": load_masks(
                        test_pool.ids, mask_dir, cfg.data.image_size, "pseudo-mask"
                    ),
                }
            )
        pools[tag] = (train_pool, test_pool, support_pool)
        if val_eps is None:
            common_kw = dict(
                labels=train_pool.labels,
                classes=train_classes,
                presence_prior=cfg.episodes.presence_prior,
                exclude=test_classes,
            )
            train_sampler = _sampler(
                "training episodes", way=1, shot=1, images=fit_idx, seed=cfg.seed, **common_kw
            )
            val_sampler = _sampler(
                "validation episodes",
                way=1,
                shot=1,
                images=val_idx,
                seed=cfg.episodes.seed,
                **common_kw,
            )
            val_eps = val_sampler.fixed(cfg.episodes.val_episodes)
            for way in ways:
                test_sets[way] = _sampler(
                    f"{way}-way {cfg.shot}-shot test episodes",
                    labels=test_pool.labels,
                    classes=test_classes,
                    way=way,
                    shot=cfg.shot,
                    presence_prior=cfg.episodes.presence_prior,
                    seed=cfg.episodes.seed + way,
                ).fixed(cfg.episodes.test_episodes)
            log.info(
                "fold %d: train classes %s (%d images, %d held out for validation), test "
                "classes %s (%d query images)",
                cfg.fold,
                train_classes,
                len(train_sampler),
                len(val_sampler),
                test_classes,
                len(test_sets[ways[0]]),
            )

        torch.manual_seed(cfg.seed)
        model = FSCSModel(
            num_layers=len(layers),
            num_heads=bb.num_heads,
            patch_size=bb.patch_size,
            image_size=cfg.data.image_size,
            channels=cfg.head.channels,
            pool_sizes=cfg.head.pool_sizes,
            attn_heads=cfg.head.attn_heads,
        ).to(device)

        def validate(m: FSCSModel, _pool: ImagePool = train_pool, _eps: list = val_eps) -> float:
            probs = episode_probabilities(m, _pool, _eps, device, cfg.eval.batch_size)
            return score(_eps, probs, _pool.masks, num_classes)["miou"]

        settings = TrainSettings(
            max_steps=int(cfg.train.max_steps),
            batch_size=cfg.train.batch_size,
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            cls_weight=cfg.train.cls_weight,
            seg_weight=cfg.train.seg_weight,
            eval_every=cfg.train.eval_every,
            ckpt_every=cfg.train.ckpt_every,
            seed=cfg.seed,
        )
        results["train"][tag] = train_head(
            model,
            train_pool,
            train_sampler,
            validate,
            settings,
            run.checkpoints / tag,
            metrics,
            device,
            tag,
        )
        all_scores[tag] = {
            way: episode_probabilities(
                model, test_pool, eps, device, cfg.eval.batch_size, support_pool
            )
            for way, eps in test_sets.items()
        }
        for way, eps in test_sets.items():
            results["test"].setdefault(f"{way}way", {})[tag] = score(
                eps, all_scores[tag][way], test_pool.gt, num_classes
            )

    if cfg.baselines.prototype:
        train_pool, test_pool, support_pool = pools["head"]
        ps = backbones["head"].patch_size
        val_scores = prototype_scores(train_pool, val_eps, ps)
        t_cls, t_seg = choose_thresholds(val_eps, val_scores, train_pool.masks, num_classes)
        results["train"]["prototype"] = {"cls_threshold": t_cls, "seg_threshold": t_seg}
        for way, eps in test_sets.items():
            s = prototype_scores(test_pool, eps, ps, support_pool)
            results["test"][f"{way}way"]["prototype"] = score(
                eps, s, test_pool.gt, num_classes, t_cls, t_seg
            )

    if cfg.eval.visualize:
        _, test_pool, support_pool = pools["head"]
        for way, eps in test_sets.items():
            k = min(cfg.eval.visualize, len(eps))
            preds, pres = [], []
            for ep, (p, fg) in zip(eps[:k], all_scores["head"][way][:k], strict=True):
                present, labels = assemble(p, fg, 0.5, 0.5)
                preds.append(torch.tensor([0, *ep.classes])[labels])
                pres.append(present)
            episode_grid(
                run.figures / f"episodes_{way}way.png",
                test_pool,
                support_pool,
                eps[:k],
                preds,
                pres,
                class_names,
            )

    (run.root / "results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    return results


def format_table(results: dict) -> str:
    """Plain-text table: one row per (way, model)."""
    s = results["setting"]
    lines = [
        f"FS-CS fold {s['fold']}, {s['shot']}-shot, supervision={s['supervision']}",
        f"{'setting':<8} {'model':<14} {'ER':>6} {'acc':>6} {'mIoU':>6} {'FB-IoU':>7}",
    ]
    for way_key, by_model in results["test"].items():
        for name, m in by_model.items():
            lines.append(
                f"{way_key:<8} {name:<14} {100 * m['exact_ratio']:6.1f} {100 * m['accuracy']:6.1f} "
                f"{100 * m['miou']:6.1f} {100 * m['fb_iou']:7.1f}"
            )
    return "\n".join(lines)
