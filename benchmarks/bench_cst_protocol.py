"""FS-CS on FashionScenes: `protocol: ours` vs `cst`, and CST's model on our episodes.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cst_protocol.py --backbone EXPORT \
        --data SCENES --out runs/bench_cst --seeds 0 1 -- data.max_train_images=2000

Three runs per seed, same backbone, data and schedule (the `fashion_tiny` preset, full
supervision, fold 0, 2-way 1-shot): ours; CST's support tokens and head tested on our
episodes (separates the model from the episode sampling); CST's protocol whole. Prints a
markdown table of the heads' and the prototype baseline's scores.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from unittest import mock

from common.cli import stage_main
from fewshot import stage


def _ours_episodes(name: str, labels, classes, way: int, shot: int):
    """Our test episodes where `protocol: cst` would take CST's (same seeds as `ours`)."""
    kw = dict(labels=labels, classes=classes, way=way, shot=shot, presence_prior=0.5)
    return stage._sampler(name, seed=way, **kw)


def main(argv: list[str] | None = None) -> int:
    """Run the three variants per seed and print one markdown row per run, way and model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("overrides", nargs="*", help="fewshot config overrides key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    variants = {
        "ours": ("ours", False),
        "cst model, our episodes": ("cst", True),
        "cst": ("cst", False),
    }
    print("| variant | seed | way | model | ER | mIoU | FB-IoU |")
    print("| --- | ---: | --- | --- | ---: | ---: | ---: |")
    for seed in args.seeds:
        for name, (protocol, patch) in variants.items():
            overrides = [
                f"backbone={args.backbone}",
                f"data.root={args.data}",
                f"protocol={protocol}",
                f"seed={seed}",
                "supervision=full",
                "fold=0",
                "way=2",
                "baselines.random_backbone=false",
                "eval.visualize=0",
                f"data.cache_dir={args.out / 'cache'}",
                *args.overrides,
            ]
            out = args.out / f"{protocol}{'_our_episodes' if patch else ''}_seed{seed}"
            argv = ["--config", "fashion_tiny", "--output-dir", str(out), *overrides]
            sampler = _ours_episodes if patch else stage._cst_sampler
            with mock.patch.object(stage, "_cst_sampler", sampler):
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
    raise SystemExit(main())
