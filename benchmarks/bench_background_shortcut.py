"""Do features encode the item's class or the scene's background? A shortcut check.

Two crops of one FashionScenes scene share its background (smooth colour noise or stripes at
a random angle), so a self-supervised objective can match them by the background alone. For
each exported backbone, and for raw pixels and a randomly initialised ViT measured in the
same process, this reports weighted 20-NN accuracy on the single-object test scenes (bank:
the single-object train scenes) of three targets: the item class (10 classes), the
background kind (smooth or stripes) and the stripe angle in 4 bins (stripe scenes only);
on ``--background mosaic`` sets only the item class is meaningful.
Features that retrieve backgrounds far better than items have learnt the shortcut. The
backgrounds are re-derived from each scene's seeded RNG, so any set written by
``common.datasets.fashion_scenes`` works.

    python benchmarks/bench_background_shortcut.py --data data/fashion_scenes --runs runs/pt
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from bench_pretrain_quality import pixel_features, run_name  # the script's own directory

from benchmarks.record import record_printed
from common.backbone import build_backbone, load_backbone
from common.datasets.fashion_scenes import scene_background
from common.datasets.voc import VOCSegmentation
from pretrain.probe import extract_features, knn_predict, single_object_images

log = logging.getLogger("bench_background_shortcut")
ANGLE_BINS = 4


def single_object_targets(root: Path, split: str) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Images of the single-object scenes and their class, background kind and angle bin."""
    meta = json.loads((root / "meta.json").read_text())
    seed, style = meta["seed"], meta["params"].get("background", "texture")
    images, cls = single_object_images(root, split)
    ds = VOCSegmentation(root, split)  # the same scenes, in the same order, for their ids
    ids = [ds.ids[i] for i in range(len(ds)) if len(ds.image_labels(i)) == 1]
    kind, angle = [], []
    for scene in ids:
        pattern = scene_background(seed, scene, style)
        kind.append(int(pattern.kind == "stripes"))
        bins = -1 if pattern.angle is None else int(pattern.angle / np.pi * ANGLE_BINS)
        angle.append(min(bins, ANGLE_BINS - 1))
    targets = {"item class": cls, "background kind": kind, "stripe angle": angle}
    return images, {k: np.asarray(v) for k, v in targets.items()}


def knn_scores(bank: np.ndarray, queries: np.ndarray, train: dict, test: dict) -> list[str]:
    """20-NN accuracy (%) per target; the angle only among stripe scenes ("–" if no classes)."""
    scores = []
    for key in train:
        keep_b = train[key] >= 0
        keep_q = test[key] >= 0
        if len(np.unique(train[key][keep_b])) < 2 or not keep_q.any():
            scores.append("–")  # e.g. mosaic backgrounds: one kind, no stripes
            continue
        pred = knn_predict(bank[keep_b], train[key][keep_b], queries[keep_q], 20, 0.07)
        scores.append(f"{(pred == test[key][keep_q]).mean() * 100:.1f}")
    return scores


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/fashion_scenes", help="FashionScenes root")
    parser.add_argument("--runs", nargs="+", required=True, help="run dirs or export folders")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    root = Path(args.data)
    train_x, train_t = single_object_targets(root, "train")
    test_x, test_t = single_object_targets(root, "val")
    runs = [(run_name(Path(r)), *load_backbone(r)) for r in args.runs]
    size = int(runs[0][2]["timm_kwargs"]["img_size"])
    pixels = (pixel_features(train_x, size), pixel_features(test_x, size))
    feats = [(f"raw pixels ({size} px)", *pixels)]
    torch.manual_seed(0)  # the same random baseline on every call
    random_vit = build_backbone(runs[0][2]["timm_kwargs"]).eval()
    for name, model in [("random-init ViT (kwargs of the first run)", random_vit)] + [
        (name, model) for name, model, _ in runs
    ]:
        feats.append(
            (name, extract_features(model, train_x, size), extract_features(model, test_x, size))
        )
    stripes = test_t["background kind"].mean()
    chance = "item class 10 %"
    if 0 < stripes < 1:
        majority = 100 * max(stripes, 1 - stripes)
        chance += f", background kind {majority:.0f} %, stripe angle {100 / ANGLE_BINS:.0f} %"
    lines = [
        f"Single-object scenes: {len(train_x)} bank / {len(test_x)} queries; chance: {chance}.",
        "",
        "| features | 20-NN item class | 20-NN background kind | 20-NN stripe angle |",
        "|---|---:|---:|---:|",
    ]
    for name, bank, queries in feats:
        scores = knn_scores(bank, queries, train_t, test_t)
        lines.append(f"| {name} | " + " | ".join(scores) + " |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    with record_printed("background_shortcut", ["shortcut"]):
        main()
