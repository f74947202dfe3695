"""The published ImageNet low-shot protocols on any labelled classification folder.

- ``dino_knn`` (DINO ``eval_knn.py``): cls after the final norm, L2-normalised; the k
  nearest training features vote ``exp(cos / T)``; top-1 and top-5 for each k.
- ``msn_lowshot`` (MSN ``logistic_eval.py``): cls of the last block before the final norm,
  centred and normalised per vector; logistic regression (``lowshot_logreg``) on each split
  file (1 / 2 / 5 images per class, 1 %); mean +- std over the split files.
- ``dinov2_logreg`` (DINOv2 ``eval/log_regression.py``): cls after the norm, raw; C chosen
  on 10 % of train, refit on all of it.

With ``data.split_files`` every protocol runs once per file on that subset of train.
Writes ``results.json`` and ``predictions.npz`` (predicted class index of every test image
per setting) into the run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from common.backbone import check_input_size
from common.config import Config, ConfigError
from common.datasets.classification import (
    LabelledImages,
    open_labelled,
    split_indices,
    spread_indices,
)
from common.distributed import detect_env, log_placement
from common.knn_chunked import knn_search, weighted_votes
from common.rundir import RunDir
from common.runtime import resolve_device
from fewshot.features import open_backbone
from fewshot.probe.cls_features import fill_own_shards, wait_and_read
from fewshot.probe.lowshot_logreg import center_normalize, dinov2_c_values, dinov2_sweep, msn_fit

log = logging.getLogger(__name__)

PROTOCOLS = ("dino_knn", "msn_lowshot", "dinov2_logreg")
CLS_POSITION = {
    "dino_knn": "after_norm",
    "msn_lowshot": "before_norm",
    "dinov2_logreg": "after_norm",
}


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the ``k`` highest scores (stable sort, ties to the
    lower class index)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def subsets(cfg: Config, train: LabelledImages) -> dict[str, np.ndarray]:
    """Train subsets to run on: one per split file, else all of train."""
    if not cfg.data.split_files:
        if cfg.protocol == "msn_lowshot":
            raise ConfigError(
                "msn_lowshot needs data.split_files (e.g. data.split_files=[1imgs_class.txt]); "
                "MSN's files are in its repository under imagenet_subsets*/"
            )
        return {"all": np.arange(len(train))}
    return {Path(f).stem: split_indices(train, f) for f in cfg.data.split_files}


def dino_knn(cfg: Config, bank: np.ndarray, bank_y, test: np.ndarray, test_y, n_cls) -> dict:
    p = cfg.dino_knn
    sims, idx = knn_search(
        bank, test, max(p.ks), p.memory_mb, resolve_device(cfg.device), normalize=True
    )
    out, preds = {}, {}
    for k in p.ks:
        votes = weighted_votes(sims, idx, bank_y, k, n_cls, p.temperature)
        preds[f"k{k}"] = np.argsort(-votes, axis=1, kind="stable")[:, 0]
        out[f"k={k}"] = {
            "top1": topk_accuracy(votes, test_y, 1),
            "top5": topk_accuracy(votes, test_y, min(5, k)),
        }
    return {"metrics": out, "predictions": preds}


def msn_lowshot(cfg: Config, x: np.ndarray, y, test: np.ndarray, test_y, n_cls) -> dict:
    p = cfg.msn_lowshot
    w, classes = msn_fit(x, y, p.lambd, p.tol, p.max_iter)
    scores = np.full((len(test), n_cls), -np.inf)
    scores[:, classes] = center_normalize(test) @ w.T
    return {
        "metrics": {"top1": topk_accuracy(scores, test_y, 1), "train_images": int(len(x))},
        "predictions": {"top1": scores.argmax(axis=1)},
    }


def dinov2_logreg(cfg: Config, x: np.ndarray, y, test: np.ndarray, test_y, n_cls) -> dict:
    p = cfg.dinov2_logreg
    try:
        fit = dinov2_sweep(x, y, dinov2_c_values(p.c_log10), p.holdout, p.max_iter, p.tol)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    scores = np.full((len(test), n_cls), -np.inf)
    scores[:, fit["model"].classes_] = fit["model"].predict_proba(np.asarray(test, np.float64))
    return {
        "metrics": {
            "top1": topk_accuracy(scores, test_y, 1),
            "top5": topk_accuracy(scores, test_y, 5),
            "best_C": fit["best_C"],
            "heldout_top1": fit["heldout_top1"],
        },
        "predictions": {"top1": scores.argmax(axis=1)},
    }


RUNNERS = {"dino_knn": dino_knn, "msn_lowshot": msn_lowshot, "dinov2_logreg": dinov2_logreg}


def summary(results: dict) -> dict:
    """Mean +- std over the subsets of each metric that every subset reports."""
    runs = list(results.values())
    out = {}
    for key in runs[0]:
        vals = [r[key] for r in runs]
        if isinstance(vals[0], dict):
            out[key] = summary({i: v for i, v in enumerate(vals)})
        elif isinstance(vals[0], float) and key != "best_C":
            out[key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
    return out


def run(cfg: Config, run_dir: RunDir) -> dict | None:
    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be fashion_scenes or one of {PROTOCOLS}")
    section = cfg[cfg.protocol]
    prep = {"resize": section.resize, "crop": section.crop, "interpolation": section.interpolation}
    d = cfg.data
    train = open_labelled(d.root, d.train_split, d.format, labels=d.labels)
    test = open_labelled(d.root, d.test_split, train.fmt, train.classes, d.labels)
    # CPU budgets: a subset spread over every class (split files index the full train list).
    if not cfg.data.split_files:
        train = train.subset(spread_indices(len(train), cfg.data.max_train_images))
    parts = subsets(cfg, train)
    test = test.subset(spread_indices(len(test), cfg.data.max_test_images))
    shared = len(set(train.paths) & set(test.paths))
    if shared:
        log.warning(
            "%d of %d test images are training images too: their scores are not held out",
            shared,
            len(test),
        )
    log.info(
        "%s: %d train / %d test images, %d classes",
        cfg.protocol,
        len(train),
        len(test),
        len(train.classes),
    )
    backbone = open_backbone(cfg.backbone, resolve_device(cfg.device), "fewshot.probe")
    check_input_size(backbone.info, section.crop, f"{cfg.protocol}.crop")
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir.root / "cache"
    denv = detect_env()
    if denv.world_size > 1:
        log_placement(denv)
    # Every rank writes its shards of both splits before rank 0 waits for all of them.
    stores = {
        name: fill_own_shards(
            images,
            backbone,
            prep,
            CLS_POSITION[cfg.protocol],
            cache,
            cfg.data.feature_batch_size,
            cfg.data.num_workers,
            cfg.store.dtype,
            cfg.store.shard_size,
        )
        for name, images in (("train", train), ("test", test))
    }
    if denv.rank != 0:
        log.info("rank %d: its feature shards are written; rank 0 runs the probe", denv.rank)
        return None
    feats = {name: wait_and_read(store) for name, store in stores.items()}
    n_cls = len(train.classes)
    per_subset, predictions = {}, {}
    for name, idx in parts.items():
        # All of train stays memory-mapped (k-NN reads it chunk by chunk).
        x = feats["train"] if len(idx) == len(train) else feats["train"][idx]
        out = RUNNERS[cfg.protocol](cfg, x, train.labels[idx], feats["test"], test.labels, n_cls)
        per_subset[name] = out["metrics"]
        predictions.update({f"{name}/{k}": v for k, v in out["predictions"].items()})
        log.info("%s %s: %s", cfg.protocol, name, json.dumps(out["metrics"])[:300])
    results = {
        "protocol": cfg.protocol,
        "backbone_hash": backbone.hash,
        "classes": n_cls,
        "class_names": train.names,
        "train_images": len(train),
        "test_images": len(test),
        "subsets": per_subset,
        "summary": summary(per_subset),
    }
    (run_dir.root / "results.json").write_text(json.dumps(results, indent=2))
    np.savez(run_dir.root / "predictions.npz", **predictions)
    print(json.dumps({"protocol": cfg.protocol, "summary": results["summary"]}, indent=1))
    return results
