"""FS-CS positive control: the `fewshot` stage as it runs, on tokens that carry the classes.

Every token the head correlates is replaced by an oracle code: a patch token is the one-hot
code of the class covering most of its patch in the ground truth (background included), plus
Gaussian noise, in every attention head's channel slice; the cls token is the mean of its
image's patch codes. Episodes, training, validation, test and the prototype baseline are the
stage's own. High ER and mIoU here show that the head learns the class match between support
and query when the features carry class identity; a real backbone's numbers are then what
its features give.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fewshot_oracle.py \
        --backbone runs/demo/pretrain/export --out runs/bench_oracle -- train.max_steps=300

The backbone only sets the token shape (patch size, channels, heads); its features are not
used. Prints a markdown row per way and model.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from benchmarks.record import record_printed
from common.cli import stage_main
from fewshot import stage
from fewshot.data import ImagePool, build_pool


def oracle_tokens(
    gt: torch.Tensor, grid: int, layers: int, heads: int, channels: int, noise: float
) -> torch.Tensor:
    """[N, layers, 1 + grid*grid, channels] fp16 oracle tokens from GT masks [N, H, W]."""
    labels = gt.long().clone()
    labels[labels == 255] = 0
    classes = int(labels.max()) + 1
    dim = channels // heads
    if classes > dim:
        raise SystemExit(f"{classes} classes need >= {classes} channels per head, got {dim}")
    share = F.adaptive_avg_pool2d(F.one_hot(labels, classes).permute(0, 3, 1, 2).float(), grid)
    major = share.flatten(2).argmax(1)  # [N, grid*grid]: the class covering most of each patch
    codes = F.pad(F.one_hot(major, classes).float(), (0, dim - classes))
    codes = torch.cat([codes.mean(1, keepdim=True), codes], 1)  # cls token first
    generator = torch.Generator().manual_seed(0)
    shape = (codes.shape[0], layers, codes.shape[1], heads, dim)
    toks = codes[:, None, :, None, :].expand(shape)
    toks = toks + noise * torch.randn(shape, generator=generator)
    return F.normalize(toks, dim=-1).reshape(*shape[:3], channels).half()


def oracle_pools(noise: float):
    """``build_pool`` with the backbone's tokens replaced by oracle tokens."""

    def build(ds, backbone, layers, cache_dir, mask_dir, batch_size, keep=True) -> ImagePool:
        pool = build_pool(ds, backbone, layers, cache_dir, mask_dir, batch_size, keep)
        grid = pool.gt.shape[-1] // backbone.patch_size
        channels = pool.tokens.shape[-1]
        toks = oracle_tokens(pool.gt, grid, len(layers), backbone.num_heads, channels, noise)
        return replace(pool, tokens=toks)

    return build


def main(argv: list[str] | None = None) -> int:
    """Run the stage once on oracle tokens and print its test scores."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="export that sets the token shape")
    parser.add_argument("--data", default="data/fashion_scenes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--noise", type=float, default=0.1, help="std of the noise on the codes")
    parser.add_argument("overrides", nargs="*", help="fewshot config overrides key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    overrides = [
        f"backbone={args.backbone}",
        f"data.root={args.data}",
        "supervision=full",
        "fold=0",
        "way=2",
        "baselines.random_backbone=false",
        "eval.visualize=0",
        *args.overrides,
    ]
    run_argv = ["--config", "fashion_tiny", "--output-dir", str(args.out), "--force", *overrides]
    with mock.patch.object(stage, "build_pool", oracle_pools(args.noise)):
        results = stage_main("fewshot", stage.run, "bench", run_argv)
    print("| way | model | ER | mIoU | FB-IoU |")
    print("| --- | --- | ---: | ---: | ---: |")
    for way, by_model in results["test"].items():
        for model, m in by_model.items():
            print(
                f"| {way} | {model} | {100 * m['exact_ratio']:.1f} | {100 * m['miou']:.1f} | "
                f"{100 * m['fb_iou']:.1f} |"
            )
    return 0


if __name__ == "__main__":
    with record_printed("fewshot_oracle", ["oracle"]):
        status = main()
    raise SystemExit(status)
