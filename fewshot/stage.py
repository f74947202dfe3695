"""``python -m fewshot``: train the FS-CS head on a fold, evaluate it and its baselines.

Steps: features of the frozen backbone for the training and test splits (cached); a
correlation-transformer head trained on 1-way 1-shot episodes of the training classes
(supervised by pseudo-masks or ground truth); the same head on a randomly initialised
backbone, and the training-free prototype baseline; every model evaluated on the same fixed
test episodes of the held-out fold (1-way and ``way``-way, ``shot``-shot). Under
``supervision: cst_weak`` (CST's weak setting, ``fewshot.cst_weak``) no support mask reaches
any model and training / validation queries are scored against on-the-fly pseudo-masks.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from common.backbone import check_input_size, source_of
from common.config import Config, ConfigError
from common.datasets import folds
from common.datasets.errors import DatasetNotFoundError
from common.rundir import MetricsLogger, RunDir
from common.runtime import resolve_device
from fewshot.cst_weak import LastBlockKeys
from fewshot.data import (
    ImagePool,
    base_dataset,
    build_last_block_keys,
    build_pool,
    load_masks,
    open_split,
    split_ids,
)
from fewshot.episodes import CSTEpisodeSampler, Episode, EpisodeSampler
from fewshot.evaluate import assemble, score
from fewshot.features import FrozenBackbone, open_backbone, random_export
from fewshot.model import PROTOCOLS, FSCSModel, episode_probabilities
from fewshot.prototype import choose_thresholds, prototype_scores
from fewshot.train import TrainSettings, train_head
from fewshot.visualize import episode_grid

log = logging.getLogger(__name__)
# weak / mixed: stage-2 pseudo-masks; full: ground truth; cst_weak: CST's weak setting.
SUPERVISION = ("weak", "mixed", "full", "cst_weak")
PSEUDO_MASK_CHUNK = 64  # (query, support) pairs per backbone pass when making pseudo-masks


def resolve_pseudo_masks(path: str | None, kind: str) -> Path:
    """``<distill run>/pseudo_masks/<kind>`` from the run dir or its pseudo_masks folder."""
    if path is None:
        raise ConfigError(
            f"supervision={kind} needs pseudo-masks: pass pseudo_masks=<distill run dir> "
            "(or supervision=full to train on ground-truth masks, or supervision=cst_weak for "
            "CST's weak setting, which makes its pseudo-masks on the fly)"
        )
    root = Path(path)
    for cand in (root / kind, root / "pseudo_masks" / kind):
        if cand.is_dir():
            return cand
    raise ConfigError(
        f"no '{kind}' pseudo-masks under {root} (looked for {root / kind} and "
        f"{root / 'pseudo_masks' / kind}); run `python -m distill` first or fix pseudo_masks="
    )


def check_setting(cfg: Config) -> None:
    """Validate way / shot / supervision / protocol before any data is read."""
    if cfg.supervision not in SUPERVISION:
        raise ConfigError(f"supervision must be one of {SUPERVISION}, got {cfg.supervision!r}")
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {cfg.protocol!r}")
    if cfg.episodes.eval_support_masks not in ("gt", "train"):
        raise ConfigError(
            "episodes.eval_support_masks must be gt or train, got "
            f"{cfg.episodes.eval_support_masks!r}"
        )
    if cfg.shot < 1:
        raise ConfigError(f"shot must be >= 1, got {cfg.shot}")
    source_of(cfg.backbone, "fewshot")


def fold_split(cfg: Config, class_names: list[str]) -> tuple[list[int], list[int]]:
    """(test classes, train classes) of ``fold``: from data.folds or data.benchmark's scheme;
    classes no fold uses are named in one log line."""
    where = "data.folds" if cfg.data.folds is not None else cfg.data.benchmark
    try:
        plan, unused = folds.plan_folds(cfg.data.benchmark, cfg.data.folds, class_names)
        test_classes, train_classes = plan.test_classes(cfg.fold), plan.train_classes(cfg.fold)
    except ValueError as exc:
        raise ConfigError(f"{exc} (set fold=...)" if "fold " in str(exc) else str(exc)) from None
    if unused:
        log.warning("%s", unused)
    if not 1 <= cfg.way <= len(test_classes):
        raise ConfigError(
            f"way={cfg.way} but fold {cfg.fold} of {where} has "
            f"{len(test_classes)} test classes; use 1 <= way <= {len(test_classes)}"
        )
    return test_classes, train_classes


def check_no_shared_images(cfg: Config, train_ds, test_ds) -> None:
    """Your own folder may serve both splits: safe only while images that show a test class
    stay out of training (the PFENet protocol, the default)."""
    if cfg.data.format != "folder" or not cfg.episodes.train_on_test_class_images:
        return
    shared = set(split_ids(train_ds)) & set(split_ids(test_ds))
    if shared:
        raise ConfigError(
            f"{len(shared)} images are in both the training and the test split (e.g. "
            f"{sorted(shared)[0]}), and episodes.train_on_test_class_images=true would train "
            "on the test images; keep it false, or split them (images/train/ and images/val/, "
            "or train.txt and val.txt)"
        )


def _layers(cfg: Config, depth: int) -> list[int]:
    layers = list(range(depth)) if cfg.head.layers is None else list(cfg.head.layers)
    bad = [layer for layer in layers if not -depth <= layer < depth]
    if bad:
        raise ConfigError(f"head.layers {bad} out of range for a {depth}-block backbone")
    return [layer % depth for layer in layers]


@dataclass
class EpisodeSets:
    """Training sampler plus the fixed validation and test episodes of a run."""

    train: EpisodeSampler | CSTEpisodeSampler
    val: list[Episode]
    test: dict[int, list[Episode]]  # way -> episodes


def make_episodes(
    cfg: Config,
    train_pool: ImagePool,
    test_pool: ImagePool,
    test_classes: list[int],
    train_classes: list[int],
) -> EpisodeSets:
    """Split the training images into fit / validation and draw every episode set."""
    n = len(train_pool.ids)
    perm = np.random.default_rng(cfg.episodes.seed).permutation(n)
    n_val = int(round(cfg.data.val_fraction * n))
    val_idx, fit_idx = sorted(perm[:n_val].tolist()), sorted(perm[n_val:].tolist())
    # PFENet protocol (default): training drops every image that shows a test class.
    exclude = [] if cfg.episodes.train_on_test_class_images else test_classes
    common_kw = dict(
        labels=train_pool.labels, presence_prior=cfg.episodes.presence_prior, exclude=exclude
    )
    train = train_sampler(cfg, train_pool.labels, train_classes, fit_idx, exclude)
    val: list[Episode] = []
    n_val_queries = 0
    if n_val:
        val_sampler = EpisodeSampler(
            name="validation episodes",
            classes=train_classes,
            way=1,
            shot=1,
            images=val_idx,
            seed=cfg.episodes.seed,
            **common_kw,
        )
        val, n_val_queries = val_sampler.fixed(cfg.episodes.val_episodes), len(val_sampler)
    test = {}
    for way in sorted({1, cfg.way}):
        sampler = test_sampler(cfg, test_pool.labels, test_classes, way)
        test[way] = sampler.fixed(cfg.episodes.test_episodes)
    log.info(
        "fold %d: training classes %s on %d images (validation: %d of %d held-out images, "
        "classes %s); test classes %s on %d query images",
        cfg.fold,
        train.classes,
        len(train),
        n_val_queries,
        n_val,
        "none" if not n_val else sorted({e.classes[0] for e in val}),
        sampler.classes,
        len(sampler),
    )
    return EpisodeSets(train=train, val=val, test=test)


def train_sampler(
    cfg: Config, labels: list[list[int]], classes: list[int], images: list[int], exclude: list[int]
) -> EpisodeSampler | CSTEpisodeSampler:
    """The sampler of the 1-way 1-shot training episodes: CST's or ours, by ``protocol``."""
    name = "training episodes"
    if cfg.protocol == "cst":
        return CSTEpisodeSampler(labels, classes, 1, 1, images=images, exclude=exclude, name=name)
    return EpisodeSampler(
        name=name,
        labels=labels,
        classes=classes,
        way=1,
        shot=1,
        presence_prior=cfg.episodes.presence_prior,
        exclude=exclude,
        images=images,
        seed=cfg.seed,
    )


def train_settings(cfg: Config) -> TrainSettings:
    """Optimisation settings of the ``train`` section; ``protocol: cst`` keeps the lr constant
    (CST's Adam at a fixed lr), ours decays it (cosine)."""
    return TrainSettings(
        max_steps=int(cfg.train.max_steps),
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        cls_weight=cfg.train.cls_weight,
        seg_weight=cfg.train.seg_weight,
        fg_weight=cfg.train.fg_weight,
        eval_every=cfg.train.eval_every,
        ckpt_every=cfg.train.ckpt_every,
        seed=cfg.seed,
        constant_lr=cfg.protocol == "cst",
    )


def test_sampler(
    cfg: Config, labels: list[list[int]], classes: list[int], way: int
) -> EpisodeSampler | CSTEpisodeSampler:
    """The sampler of the ``way``-way test episodes: CST's or ours, by ``protocol``."""
    name = f"{way}-way {cfg.shot}-shot test episodes"
    if cfg.protocol == "cst":
        return CSTEpisodeSampler(labels, classes, way, cfg.shot, name=name)
    return EpisodeSampler(
        name=name,
        labels=labels,
        classes=classes,
        way=way,
        shot=cfg.shot,
        presence_prior=cfg.episodes.presence_prior,
        seed=cfg.episodes.seed + way,
    )


def scoring_targets(pool: ImagePool, episodes: list[Episode]) -> tuple[list[Episode], torch.Tensor]:
    """Episodes and the masks they are scored against on training-class images: the pool's
    supervision masks, or (CST's weak setting, no masks) each 1-way 1-shot episode's query
    pseudo-mask for its support, as class ids, the episode re-indexed to its own row."""
    if pool.masks is not None:
        return episodes, pool.masks
    rows = []
    for start in range(0, len(episodes), PSEUDO_MASK_CHUNK):
        chunk = episodes[start : start + PSEUDO_MASK_CHUNK]
        q = torch.tensor([e.query for e in chunk])
        s = torch.tensor([e.supports[0][0] for e in chunk])
        c = torch.tensor([e.classes[0] for e in chunk]).view(-1, 1, 1)
        present = torch.tensor([e.presence[0] for e in chunk])
        rows.append(pool.pseudo.query_masks(q, s, present, pool.gt.shape[-1]).long() * c)
    targets = torch.cat(rows).to(torch.uint8) if rows else pool.gt[:0]
    return [replace(e, query=i) for i, e in enumerate(episodes)], targets


def fit_head(
    cfg: Config,
    bb: FrozenBackbone,
    layers: list[int],
    pool: ImagePool,
    episodes: EpisodeSets,
    run: RunDir,
    tag: str,
    num_classes: int,
) -> tuple[FSCSModel, dict]:
    """Build the head for backbone ``bb`` and train it (resuming from its last.pt)."""
    torch.manual_seed(cfg.seed)
    model = FSCSModel(
        num_layers=len(layers),
        num_heads=bb.num_heads,
        patch_size=bb.patch_size,
        image_size=cfg.data.image_size,
        channels=cfg.head.channels,
        pool_sizes=cfg.head.pool_sizes,
        attn_heads=cfg.head.attn_heads,
        protocol=cfg.protocol,
    ).to(bb.device)

    val_scored, val_targets = scoring_targets(pool, episodes.val)

    def validate(m: FSCSModel) -> float:
        probs = episode_probabilities(m, pool, episodes.val, bb.device, cfg.eval.batch_size)
        return score(val_scored, probs, val_targets, num_classes)["miou"]

    if not episodes.val:
        log.info("%s: data.val_fraction=0, no validation: the last weights are kept", tag)

    info = train_head(
        model,
        pool,
        episodes.train,
        validate if episodes.val else None,
        train_settings(cfg),
        run.checkpoints / tag,
        MetricsLogger(run.metrics),
        bb.device,
        tag,
    )
    return model, info


def load_pools(
    cfg: Config,
    bb: FrozenBackbone,
    layers: list[int],
    train_ds,
    test_ds,
    mask_dir,
    cache_dir,
    pseudo: LastBlockKeys | None = None,
) -> tuple[ImagePool, ImagePool, ImagePool]:
    """(training pool, test pool, pool the test supports' masks come from).

    With ``pseudo`` (CST's weak setting) no pool holds masks: training targets come from
    ``pseudo``, and test supports have none.
    """
    bs = cfg.data.feature_batch_size
    try:
        keep = cfg.data.cache_features
        train_pool = build_pool(train_ds, bb, layers, cache_dir, mask_dir, bs, keep)
        test_pool = build_pool(test_ds, bb, layers, cache_dir, None, bs, keep)
        if pseudo is not None:
            train_pool = replace(train_pool, masks=None, pseudo=pseudo)
            test_pool = replace(test_pool, masks=None)
        support_pool = test_pool
        if cfg.episodes.eval_support_masks == "train" and mask_dir is not None:
            masks = load_masks(test_pool.ids, mask_dir, cfg.data.image_size, "pseudo-mask")
            support_pool = replace(test_pool, masks=masks)
    except DatasetNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    return train_pool, test_pool, support_pool


def run(cfg: Config, run: RunDir) -> dict:
    check_setting(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    cst_weak = cfg.supervision == "cst_weak"
    mask_dir = (
        None
        if cfg.supervision in ("full", "cst_weak")
        else resolve_pseudo_masks(cfg.pseudo_masks, cfg.supervision)
    )
    if cst_weak and cfg.pseudo_masks is not None:
        log.warning(
            "supervision=cst_weak makes its pseudo-masks on the fly: pseudo_masks=%s is unused",
            cfg.pseudo_masks,
        )
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run.root / "cache"
    size = cfg.data.image_size
    # Your own folder: the training split is every image with a supervision mask (the
    # pseudo-masks under weak / mixed), the test split every image with a real one.
    folder_kw = {"gt_masks": cfg.data.masks, "class_names": cfg.data.classes}
    try:
        train_ds = open_split(
            cfg.data.root,
            cfg.data.train_split,
            size,
            cfg.data.max_train_images,
            cfg.data.format,
            mask_dir=mask_dir,
            **folder_kw,
        )
        test_ds = open_split(
            cfg.data.root,
            cfg.data.test_split,
            size,
            cfg.data.max_test_images,
            cfg.data.format,
            **folder_kw,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    class_names = base_dataset(train_ds).class_names
    num_classes = len(class_names)
    test_classes, train_classes = fold_split(cfg, class_names)
    check_no_shared_images(cfg, train_ds, test_ds)

    backbones = {"head": open_backbone(cfg.backbone, device, "fewshot")}
    check_input_size(backbones["head"].info, cfg.data.image_size, "data.image_size")
    if cfg.baselines.random_backbone:
        rand_dir = random_export(backbones["head"], run.root / "random_backbone", cfg.seed)
        backbones["random_head"] = FrozenBackbone(rand_dir, device)
    layers = _layers(cfg, backbones["head"].depth)
    results: dict = {
        "setting": {
            "fold": cfg.fold,
            "way": cfg.way,
            "shot": cfg.shot,
            "supervision": cfg.supervision,
            "support_masks_at_test": "none" if cst_weak else cfg.episodes.eval_support_masks,
            "protocol": cfg.protocol,
            "test_classes": test_classes,
            "train_classes": train_classes,
            "backbone_hash": backbones["head"].hash,
        },
        "train": {},
        "test": {},
    }
    # Every head of a cst_weak run learns from the pseudo-masks of the backbone under test,
    # as every head of a weak run learns from the same stage-2 pseudo-masks.
    pseudo = None
    if cst_weak:
        try:
            pseudo = build_last_block_keys(
                train_ds,
                backbones["head"],
                cache_dir,
                cfg.data.feature_batch_size,
                cfg.data.cache_features,
            )
        except DatasetNotFoundError as exc:
            raise ConfigError(str(exc)) from None
    episodes: EpisodeSets | None = None
    pools, scores = {}, {}
    for tag, bb in backbones.items():
        pools[tag] = load_pools(cfg, bb, layers, train_ds, test_ds, mask_dir, cache_dir, pseudo)
        train_pool, test_pool, support_pool = pools[tag]
        if episodes is None:
            episodes = make_episodes(cfg, train_pool, test_pool, test_classes, train_classes)
        model, results["train"][tag] = fit_head(
            cfg, bb, layers, train_pool, episodes, run, tag, num_classes
        )
        scores[tag] = {}
        for way, eps in episodes.test.items():
            scores[tag][way] = episode_probabilities(
                model, test_pool, eps, device, cfg.eval.batch_size, support_pool
            )
            results["test"].setdefault(f"{way}way", {})[tag] = score(
                eps, scores[tag][way], test_pool.gt, num_classes
            )

    if cfg.baselines.prototype:
        results["train"]["prototype"] = prototype_baseline(
            episodes, pools["head"], backbones["head"].patch_size, num_classes, results["test"]
        )
    if cfg.eval.visualize:
        draw_episodes(cfg, run, episodes, pools["head"], scores["head"], class_names)
    (run.root / "results.json").write_text(json.dumps(results, indent=2))
    print(format_table(results))
    return results


def prototype_baseline(
    episodes: EpisodeSets,
    pools: tuple[ImagePool, ImagePool, ImagePool],
    patch_size: int,
    num_classes: int,
    test_results: dict,
) -> dict:
    """Thresholds from the validation episodes, then test scores into ``test_results``."""
    train_pool, test_pool, support_pool = pools
    # Without held-out images, thresholds come from training episodes (never the test).
    val = episodes.val or episodes.train.fixed(100)
    val_scores = prototype_scores(train_pool, val, patch_size)
    val_scored, val_targets = scoring_targets(train_pool, val)
    t_cls, t_seg = choose_thresholds(val_scored, val_scores, val_targets, num_classes)
    for way, eps in episodes.test.items():
        s = prototype_scores(test_pool, eps, patch_size, support_pool)
        test_results[f"{way}way"]["prototype"] = score(
            eps, s, test_pool.gt, num_classes, t_cls, t_seg
        )
    return {"cls_threshold": t_cls, "seg_threshold": t_seg}


def draw_episodes(
    cfg: Config,
    run: RunDir,
    episodes: EpisodeSets,
    pools: tuple[ImagePool, ImagePool, ImagePool],
    scores: dict,
    class_names: list[str],
) -> None:
    """figures/episodes_<way>way.png for the first ``eval.visualize`` test episodes."""
    _, test_pool, support_pool = pools
    if support_pool.masks is None:  # CST's weak setting: supports drawn without a mask
        support_pool = replace(support_pool, masks=torch.zeros_like(support_pool.gt))
    for way, eps in episodes.test.items():
        k = min(cfg.eval.visualize, len(eps))
        preds, pres = [], []
        for ep, (p, fg) in zip(eps[:k], scores[way][:k], strict=True):
            present, labels = assemble(p, fg, 0.5, 0.5)
            preds.append(torch.tensor([0, *ep.classes])[labels])
            pres.append(present)
        path = run.figures / f"episodes_{way}way.png"
        episode_grid(path, test_pool, support_pool, eps[:k], preds, pres, class_names)


def format_table(results: dict) -> str:
    """Plain-text table: one row per (way, model)."""
    s = results["setting"]
    lines = [
        # weak is not CST's weak setting (cst_weak): name the test supports' masks.
        f"FS-CS fold {s['fold']}, {s['shot']}-shot, supervision={s['supervision']} "
        f"(test support masks: {s['support_masks_at_test']}), protocol={s['protocol']}",
        f"{'setting':<8} {'model':<14} {'ER':>6} {'acc':>6} {'mIoU':>6} {'FB-IoU':>7}",
    ]
    for way_key, by_model in results["test"].items():
        for name, m in by_model.items():
            lines.append(
                f"{way_key:<8} {name:<14} {100 * m['exact_ratio']:6.1f} {100 * m['accuracy']:6.1f} "
                f"{100 * m['miou']:6.1f} {100 * m['fb_iou']:7.1f}"
            )
    return "\n".join(lines)
