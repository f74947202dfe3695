"""``python -m fewshot.probe``: low-shot probes of a frozen backbone (and a random baseline).

Features (cls token and mean patch token, L2-normalised; patch grids for segmentation) are
extracted once per backbone and split, cached under the backbone's hash. Single-label
probes (logistic regression, k-NN) use the single-object scenes; the multi-label probe and
the segmentation probe use every scene with at least one object.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.backbone import check_input_size, source_of
from common.config import Config, ConfigError
from common.datasets.classification import detect_format
from common.datasets.errors import DatasetNotFoundError
from common.datasets.voc import labels_of_mask
from common.rundir import RunDir
from common.runtime import resolve_device
from fewshot.data import base_dataset, cache_key, open_split, read_gt_masks, split_ids
from fewshot.features import FrozenBackbone, cached, extract, open_backbone, random_export
from fewshot.probe.knn import knn_accuracy
from fewshot.probe.logreg import logreg_probe
from fewshot.probe.multilabel import label_matrix, multilabel_probe
from fewshot.probe.protocols import run as run_protocol
from fewshot.probe.report import accuracy_plot, format_table, summarise
from fewshot.probe.segmentation import segmentation_probe
from fewshot.probe.splits import draw_split, load_or_draw, setting_counts

log = logging.getLogger(__name__)
FEATURE_PARTS = ("cls", "patch_mean")


def image_features(tensors: dict[str, torch.Tensor], parts: list[str]) -> np.ndarray:
    """Concatenation of the L2-normalised ``parts``, L2-normalised again."""
    bad = [p for p in parts if p not in FEATURE_PARTS]
    if bad or not parts:
        raise ConfigError(f"features must be a non-empty subset of {FEATURE_PARTS}, got {parts}")
    cols = {
        "cls": tensors["cls"].float(),
        "patch_mean": tensors["patch"].float().mean(dim=(1, 2)),
    }
    x = torch.cat([F.normalize(cols[p], dim=-1) for p in parts], dim=-1)
    return F.normalize(x, dim=-1).numpy()


def split_features(ds, backbone: FrozenBackbone, cache_dir: Path, batch_size: int) -> dict:
    """cls [N, C] and patch grid [N, h, w, C] of a split (cached under the backbone hash)."""
    name, record = cache_key(ds, "global_tokens")
    desc = f"features {base_dataset(ds).split}"
    return cached(
        cache_dir,
        backbone.hash,
        name,
        record,
        lambda: extract(ds, backbone.global_features, batch_size, desc),
    )


@dataclass
class ProbeData:
    """Labels of both splits (keys 'train', 'test') and the image subsets each probe uses."""

    ids: dict[str, list[str]]
    masks: dict[str, torch.Tensor]
    labels: dict[str, list[list[int]]]
    single: dict[str, np.ndarray]  # indices of single-object images
    single_y: dict[str, np.ndarray]  # their class
    scenes: dict[str, np.ndarray]  # indices of images with at least one object
    classes: list[int]


def probe_data(train_ds, test_ds, size: int) -> ProbeData:
    ids = {"train": split_ids(train_ds), "test": split_ids(test_ds)}
    masks = {"train": read_gt_masks(train_ds, size), "test": read_gt_masks(test_ds, size)}
    labels = {k: [labels_of_mask(m) for m in v.numpy()] for k, v in masks.items()}
    single = {
        k: np.array([i for i, ls in enumerate(v) if len(ls) == 1], dtype=np.int64)
        for k, v in labels.items()
    }
    data = ProbeData(
        ids=ids,
        masks=masks,
        labels=labels,
        single=single,
        single_y={
            k: np.array([labels[k][i][0] for i in v], dtype=np.int64) for k, v in single.items()
        },
        scenes={
            k: np.array([i for i, ls in enumerate(v) if ls], dtype=np.int64)
            for k, v in labels.items()
        },
        classes=list(range(1, base_dataset(train_ds).num_classes)),
    )
    for k in ("train", "test"):
        if len(data.single[k]) == 0 or len(data.scenes[k]) == 0:
            raise ConfigError(
                f"the {k} split has {len(data.single[k])} single-object and "
                f"{len(data.scenes[k])} labelled scenes; the probes need both (use more images: "
                "data.max_train_images / data.max_test_images)"
            )
    return data


def refuse_classification_folder(root: str, split: str) -> None:
    """The FashionScenes protocol reads VOC scenes; a class-folder or CSV dataset is meant
    for the classification protocols: say so instead of the VOC reader's hint."""
    try:
        found = detect_format(root, split)
    except DatasetNotFoundError:
        return  # not a labelled folder at all: the VOC reader says what it misses
    if found != "voc":
        raise ConfigError(
            f"data.root={root} is a classification dataset ({found} format) and the default "
            "protocol reads VOC-layout scenes; run a classification protocol: --config "
            "dino_knn | msn_lowshot | dinov2_logreg (docs/lowshot.md)"
        )


def run(cfg: Config, run: RunDir) -> dict | None:
    if cfg.protocol != "fashion_scenes":
        return run_protocol(cfg, run)
    if cfg.data.format == "folder":
        raise ConfigError(
            "data.format=folder (your images + data.labels) is read by the classification "
            "protocols: add --config dino_knn | dinov2_logreg (docs/your_data.md)"
        )
    refuse_classification_folder(cfg.data.root, cfg.data.train_split)
    source_of(cfg.backbone, "fewshot.probe")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run.root / "cache"
    size = cfg.data.image_size
    train_ds = open_split(cfg.data.root, cfg.data.train_split, size, cfg.data.max_train_images)
    test_ds = open_split(cfg.data.root, cfg.data.test_split, size, cfg.data.max_test_images)
    data = probe_data(train_ds, test_ds, size)
    log.info(
        "probe data: %d/%d single-object and %d/%d labelled scenes (train/test)",
        len(data.single["train"]),
        len(data.single["test"]),
        len(data.scenes["train"]),
        len(data.scenes["test"]),
    )
    backbones = {"backbone": open_backbone(cfg.backbone, device, "fewshot.probe")}
    check_input_size(backbones["backbone"].info, size, "data.image_size")
    if cfg.baselines.random_backbone:
        rand = random_export(backbones["backbone"], run.root / "random_backbone", cfg.seed)
        backbones["random_backbone"] = FrozenBackbone(rand, device)

    results: dict = {"backbone_hash": backbones["backbone"].hash, "models": {}}
    for tag, bb in backbones.items():
        feats = {
            k: split_features(ds, bb, cache_dir, cfg.data.feature_batch_size)
            for k, ds in (("train", train_ds), ("test", test_ds))
        }
        x = {k: image_features(v, list(cfg.features)) for k, v in feats.items()}
        results["models"][tag] = {
            "logreg": logreg_all(cfg, run.root / "splits", x, data),
            "knn": knn_all(cfg, x, data),
            "multilabel": multilabel_all(cfg, x, data),
            "segmentation": segmentation_probe(
                feats["train"]["patch"][data.scenes["train"][: cfg.segmentation.train_images]],
                data.masks["train"][data.scenes["train"][: cfg.segmentation.train_images]],
                feats["test"]["patch"],
                data.masks["test"],
                len(data.classes) + 1,
                cfg.train.max_steps,
                cfg.train.batch_size,
                cfg.train.lr,
                cfg.train.weight_decay,
                cfg.seed,
            ),
        }
        log.info("%s: %s", tag, json.dumps(summarise(results["models"][tag])))

    (run.root / "results.json").write_text(json.dumps(results, indent=2))
    accuracy_plot(results, run.figures / "accuracy_vs_labels.png")
    print(format_table(results))
    return results


def logreg_all(cfg: Config, split_dir: Path, x: dict, data: ProbeData) -> dict:
    """Logistic regression per setting (shot<k>, pct<p>), mean +- std over seeded splits."""
    xs_train, xs_test = x["train"][data.single["train"]], x["test"][data.single["test"]]
    y_train, y_test = data.single_y["train"], data.single_y["test"]
    ids = [data.ids["train"][i] for i in data.single["train"]]
    settings = [f"shot{k}" for k in cfg.logreg.shots] + [f"pct{p:g}" for p in cfg.logreg.percents]
    out = {}
    for setting in settings:
        runs = []
        for seed in range(cfg.seed, cfg.seed + cfg.logreg.num_splits):
            path = split_dir / f"{setting}_seed{seed}.json"
            try:
                idx = load_or_draw(path, setting, seed, y_train, ids, len(data.ids["train"]))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            fit = logreg_probe(
                xs_train[idx],
                y_train[idx],
                xs_test,
                y_test,
                cfg.logreg.c_grid,
                cfg.logreg.default_c,
                cfg.logreg.cv_folds,
                seed,
                cfg.logreg.max_iter,
            )
            runs.append({"seed": seed, "labels": int(len(idx)), **fit})
        accs = np.array([r["accuracy"] for r in runs])
        out[setting] = {
            "mean": float(accs.mean()),
            "std": float(accs.std()),
            "labels_per_class": float(np.mean([r["labels"] for r in runs])) / len(data.classes),
            "splits": runs,
        }
    return out


def knn_all(cfg: Config, x: dict, data: ProbeData) -> dict:
    """Weighted k-NN accuracy per labelled share of the single-object pool."""
    xs_train, xs_test = x["train"][data.single["train"]], x["test"][data.single["test"]]
    y_train, y_test = data.single_y["train"], data.single_y["test"]
    out = {}
    for pct in cfg.knn.percents:
        idx = (
            np.arange(len(y_train))
            if pct >= 100
            else draw_split(
                y_train, setting_counts(f"pct{pct:g}", y_train, len(data.ids["train"])), cfg.seed
            )
        )
        out[f"pct{pct:g}"] = knn_accuracy(
            xs_train[idx], y_train[idx], xs_test, y_test, cfg.knn.ks, cfg.knn.temperature
        )
    return out


def multilabel_all(cfg: Config, x: dict, data: ProbeData) -> dict:
    """One-vs-rest probe on ``multilabel.percent`` % of the training scenes (seeded)."""
    scenes = data.scenes
    y = {k: label_matrix([data.labels[k][i] for i in scenes[k]], data.classes) for k in scenes}
    n = max(2, int(round(cfg.multilabel.percent / 100 * len(scenes["train"]))))
    idx = np.sort(np.random.default_rng(cfg.seed).permutation(len(scenes["train"]))[:n])
    return multilabel_probe(
        x["train"][scenes["train"]][idx],
        y["train"][idx],
        x["test"][scenes["test"]],
        y["test"],
        cfg.multilabel.c,
        cfg.multilabel.max_iter,
    )
