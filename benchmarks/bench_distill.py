"""Distill ablations on one eval set: mask rules x refine, and the cost of each step.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_distill.py --backbone RUN/export \
        --data data/fashion_scenes --images 400

Scores weak pseudo-labels (no enhancer) of ``--images`` eval-split images for every mask
rule with and without the variation-aware refine, for the trained backbone and a
random-init copy, and times attention extraction and the refine per image in the same
process. Prints markdown tables (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from benchmarks.record import record_printed
from common.backbone import build_backbone, load_backbone
from common.config import load_config
from common.datasets.voc import VOCSegmentation
from distill.pseudo_labels import PseudoLabeler, iter_batches
from distill.stage import _eval_cache, _score, _subset


def _rule_rows(labeler: PseudoLabeler, fit, cache: list, nc: int, name: str) -> list[str]:
    rows = []
    for rule in ("value", "otsu"):
        labeler.cfg.mask.rule = rule
        for refine in (False, True):
            preds = [p for b, a in cache for p in labeler.label(b, fit, a, refine=refine)[0]]
            s = _score(preds, cache, nc)
            rows.append(
                f"| {name} | {rule} | {'yes' if refine else 'no'} | {100 * s['miou']:.1f} | "
                f"{100 * s['fb_iou']:.1f} | {100 * s['ignore_fraction']:.1f}% |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the ablation and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="export folder or pretrain run dir")
    parser.add_argument("--data", default="data/fashion_scenes")
    parser.add_argument("--images", type=int, default=400, help="eval-split images scored")
    parser.add_argument("--config", default="fashion_tiny", help="distill config (preset/path)")
    parser.add_argument("overrides", nargs="*", help="distill config overrides key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(
        "distill",
        args.config,
        [f"backbone={args.backbone}", f"data.root={args.data}", "device=cpu"] + args.overrides,
    )
    train_ds = VOCSegmentation(cfg.data.root, cfg.data.train_split)
    eval_ds = VOCSegmentation(cfg.data.root, cfg.data.eval_split)
    proto_idx = _subset(len(train_ds), cfg.assign.max_images, cfg.seed + 2)
    model, info = load_backbone(args.backbone)
    torch.manual_seed(cfg.seed + 1)
    models = {"trained": model, "random-init": build_backbone(info["timm_kwargs"]).eval()}
    lines = [
        "| backbone | mask rule | refine | mIoU (fg) | FB-IoU | ignored px |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    timing = []
    for name, m in models.items():
        labeler = PseudoLabeler(m, cfg, torch.device("cpu"))
        fit = labeler.fit(
            iter_batches(train_ds, proto_idx, cfg.attention.batch_size, cfg.data.empty_labels),
            train_ds.num_classes,
        )
        idx = _subset(len(eval_ds), args.images, cfg.seed)
        t0 = time.perf_counter()
        cache = _eval_cache(labeler, fit, eval_ds, idx, cfg)
        t_load_att = time.perf_counter() - t0
        lines += _rule_rows(labeler, fit, cache, eval_ds.num_classes, name)
        if name == "trained":
            t0 = time.perf_counter()
            for b, a in cache:
                labeler.label(b, fit, a, refine=False)
            t_raw = time.perf_counter() - t0
            t0 = time.perf_counter()
            for b, a in cache:
                labeler.label(b, fit, a, refine=True)
            t_ref = time.perf_counter() - t0
            n = len(idx)
            timing = [
                "| step | ms / image |",
                "| --- | ---: |",
                f"| load + attention | {1000 * t_load_att / n:.2f} |",
                f"| threshold + class assignment | {1000 * t_raw / n:.2f} |",
                f"| + variation-aware refine | {1000 * (t_ref - t_raw) / n:.2f} |",
            ]
    print("\n".join(lines))
    print()
    print("\n".join(timing))
    return 0


if __name__ == "__main__":
    with record_printed("distill_ablation", ["rules", "timing"]):
        status = main()
    raise SystemExit(status)
