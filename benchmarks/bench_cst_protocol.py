"""FS-CS on FashionScenes: `protocol: ours` vs `cst`, CST's model on our episodes, and
CST's weak setting against our weak and full supervision.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cst_protocol.py --backbone EXPORT \
        --data SCENES --out runs/bench_cst --seeds 0 1 -- data.max_train_images=2000
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cst_protocol.py --study supervision \
        --backbone EXPORT --data SCENES --pseudo-masks DISTILL_RUN --out runs/bench_cst_sup
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cst_protocol.py --study training \
        --backbone EXPORT --data SCENES --out runs/bench_cst_train
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cst_protocol.py --study pseudo_masks \
        --backbone EXPORT --data SCENES --pseudo-masks DISTILL_RUN --out runs/bench_cst_sup

`--study protocol` (default), three runs per seed with the same backbone, data and schedule
(the `fashion_tiny` preset, full supervision, fold 0, 2-way 1-shot): ours; CST's support
tokens and head tested on our episodes (separates the model from the episode sampling);
CST's protocol whole. `--study training`, `protocol: cst` and full supervision throughout:
our cosine lr decay and our training episodes; CST's constant lr with our training
episodes; CST's training whole (constant lr, its training episodes). `--study supervision`,
`protocol: cst` throughout: `full`, our `weak`
(stage-2 pseudo-masks for training, ground-truth support masks at test) and `cst_weak`
(no support mask anywhere, query pseudo-masks made on the fly). Prints a markdown table of
the heads' and the prototype baseline's scores. `--study pseudo_masks` scores the training
targets themselves against ground truth: CST's on-the-fly query pseudo-masks on random
(query, support of a class the query shows) pairs of the first `--images` training images,
and the stage-2 pseudo-masks of the same queries.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from benchmarks.record import record_printed
from common.cli import stage_main
from common.config import to_config, to_dict
from common.datasets.palette import read_mask
from common.datasets.voc import labels_of_mask
from fewshot import stage
from fewshot.data import build_last_block_keys, open_split, read_gt_masks, split_ids
from fewshot.features import FrozenBackbone

TRAIN_SETTINGS = stage.train_settings
PAIRS = 400  # (query, support) pairs scored by --study pseudo_masks
# Each study is its own record (benchmarks/results/<name>.json) and table.
STUDY_RECORDS = {
    "protocol": "cst_protocol",
    "supervision": "cst_weak",
    "pseudo_masks": "cst_weak_targets",
    "training": "cst_training",
}
STUDY_KEYS = {
    "protocol": "protocol",
    "supervision": "supervision",
    "pseudo_masks": "pseudo_masks",
    "training": "training",
}


def _study(argv: list[str]) -> str:
    return argv[argv.index("--study") + 1] if "--study" in argv[:-1] else "protocol"


SIZE = 64  # FashionScenes' own size, the fashion_tiny preset's data.image_size


def _ours_episodes(cfg, labels, classes, way):
    """Our test episodes where `protocol: cst` would take CST's (same seeds as `ours`)."""
    return stage.test_sampler(to_config({**to_dict(cfg), "protocol": "ours"}), labels, classes, way)


def _cosine_settings(cfg):
    """`protocol: cst`'s training settings with our cosine decay instead of CST's constant lr."""
    return dataclasses.replace(TRAIN_SETTINGS(cfg), constant_lr=False)


def _ours_training(cfg, labels, classes, images, exclude):
    """Our training episodes where `protocol: cst` would take CST's (same seed as `ours`)."""
    ours = to_config({**to_dict(cfg), "protocol": "ours"})
    return stage.train_sampler(ours, labels, classes, images, exclude)


def _variants(args) -> dict[str, tuple[list[str], dict]]:
    """Variant name -> (overrides, stage functions replaced for that run)."""
    full = ["protocol=cst", "supervision=full"]
    if args.study == "protocol":
        return {
            "ours": (["protocol=ours", "supervision=full"], {}),
            "cst model, our episodes": (full, {"test_sampler": _ours_episodes}),
            "cst": (full, {}),
        }
    if args.study == "training":
        ours_sampler = {"train_sampler": _ours_training}
        return {
            "cst, cosine lr, our training episodes": (
                full,
                {**ours_sampler, "train_settings": _cosine_settings},
            ),
            "cst, our training episodes": (full, ours_sampler),
            "cst": (full, {}),
        }
    if args.pseudo_masks is None:
        raise SystemExit("--study supervision needs --pseudo-masks (a distill run) for `weak`")
    weak = ["supervision=weak", f"pseudo_masks={args.pseudo_masks}"]
    return {
        "full": (full, {}),
        "weak (ours)": (["protocol=cst", *weak], {}),
        "cst_weak": (["protocol=cst", "supervision=cst_weak"], {}),
    }


def _iou(pred: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> float:
    union = ((pred | truth) & valid).sum().item()
    return ((pred & truth) & valid).sum().item() / max(union, 1)


def pseudo_mask_quality(args) -> None:
    """Foreground share and IoU with the query's ground truth of each training target."""
    ds = open_split(args.data, "train", SIZE, args.images)
    bb = FrozenBackbone(args.backbone, torch.device("cpu"))
    keys = build_last_block_keys(ds, bb, args.out / "cache", 64)
    gt = read_gt_masks(ds, SIZE)
    labels = [labels_of_mask(m) for m in gt.numpy()]
    by_class: dict[int, list[int]] = {}
    for i, classes in enumerate(labels):
        for c in classes:
            by_class.setdefault(c, []).append(i)
    weak_dir = stage.resolve_pseudo_masks(args.pseudo_masks, "weak")
    ids = split_ids(ds)
    rng = np.random.default_rng(0)
    rows: dict[str, list[tuple[float, float]]] = {"cst_weak": [], "weak (ours)": []}
    truth_share = []
    while len(truth_share) < PAIRS:
        q = int(rng.integers(len(labels)))
        if not labels[q] or all(len(by_class[c]) < 2 for c in labels[q]):
            continue
        c = int(rng.choice([c for c in labels[q] if len(by_class[c]) > 1]))
        s = int(rng.choice([i for i in by_class[c] if i != q]))
        truth, valid = gt[q].long() == c, gt[q] != 255
        present = torch.tensor([True])
        cst = keys.query_masks(torch.tensor([q]), torch.tensor([s]), present, SIZE)[0]
        weak = torch.from_numpy(read_mask(weak_dir / f"{ids[q]}.png")).long() == c
        for name, pred in (("cst_weak", cst), ("weak (ours)", weak)):
            rows[name].append((pred.float().mean().item(), _iou(pred, truth, valid)))
        truth_share.append(truth.float().mean().item())
    print(f"{PAIRS} pairs; the class covers {100 * np.mean(truth_share):.1f} % of a query")
    print("| training target | foreground % | IoU with ground truth % |")
    print("| --- | ---: | ---: |")
    for name, vals in rows.items():
        share, iou = np.mean(vals, axis=0)
        print(f"| {name} | {100 * share:.1f} | {100 * iou:.1f} |")


def main(argv: list[str] | None = None) -> int:
    """Run the variants per seed and print one markdown row per run, way and model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--study",
        choices=["protocol", "training", "supervision", "pseudo_masks"],
        default="protocol",
    )
    parser.add_argument("--pseudo-masks", help="distill run dir (the `weak` variant)")
    parser.add_argument("--images", type=int, default=1000, help="training images (pseudo_masks)")
    parser.add_argument("overrides", nargs="*", help="fewshot config overrides key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.study == "pseudo_masks":
        if args.pseudo_masks is None:
            raise SystemExit("--study pseudo_masks needs --pseudo-masks (a distill run)")
        pseudo_mask_quality(args)
        return 0
    print("| variant | seed | way | model | ER | mIoU | FB-IoU |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    for seed in args.seeds:
        for name, (variant, replaced) in _variants(args).items():
            overrides = [
                f"backbone={args.backbone}",
                f"data.root={args.data}",
                *variant,
                f"seed={seed}",
                "fold=0",
                "way=2",
                "baselines.random_backbone=false",
                "eval.visualize=0",
                f"data.cache_dir={args.out / 'cache'}",
                *args.overrides,
            ]
            slug = name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            out = args.out / f"{slug}_seed{seed}"
            argv = ["--config", "fashion_tiny", "--output-dir", str(out), "--force", *overrides]
            with contextlib.ExitStack() as stack:
                for attr, fn in replaced.items():
                    stack.enter_context(mock.patch.object(stage, attr, fn))
                results = stage_main("fewshot", stage.run, "bench", argv)
            for way, by_model in results["test"].items():
                for model, m in by_model.items():
                    print(
                        f"| {name} | {seed} | {way} | {model} | {100 * m['exact_ratio']:.1f} | "
                        f"{100 * m['miou']:.1f} | {100 * m['fb_iou']:.1f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    with record_printed(STUDY_RECORDS[_study(sys.argv)], [STUDY_KEYS[_study(sys.argv)]]):
        status = main()
    raise SystemExit(status)
