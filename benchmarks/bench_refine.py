"""Refines compared on planted signal: SCD's VARM vs our PAR + variation (distill/refine.py).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_refine.py --images 200 --size 128

Generates a FashionScenes set (or reads ``--data``); for every val scene the planted soft
mask is its true foreground averaged over ``--patch`` px cells (what a ViT's patch grid
can say) plus Gaussian noise. Each refine gets the image and that map; its output is cut
at 0.5, and, as the distill pipeline does, through the dual threshold (ignore band 5% of
the range, disagreement ignored). Prints a markdown table (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks.record import record_printed
from common.datasets.fashion_scenes import generate_fashion_scenes
from common.datasets.voc import VOCSegmentation
from distill.refine import ParVariationRefine, dual_threshold
from distill.varm import VARM


def _ious(fg: torch.Tensor, gt: torch.Tensor) -> tuple[float, float, float, float]:
    """(intersection, union) of foreground and of background over pixels labelled 0/1."""
    keep = (gt != 255) & (fg != 255)
    p, t = fg[keep] == 1, gt[keep] == 1
    return (p & t).sum(), (p | t).sum(), (~p & ~t).sum(), (~p | ~t).sum()


def _planted(fg: torch.Tensor, patch: int, noise: float, seed: int) -> torch.Tensor:
    """[1, 1, H/patch, W/patch]: the foreground share of each cell plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    cells = F.avg_pool2d(fg[None, None].float(), patch)
    return cells + noise * torch.randn(cells.shape, generator=g)


def _upsample(m: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


def main(argv: list[str] | None = None) -> int:
    """Score no refine, par_variation and varm on planted maps; print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="a FashionScenes root (default: generate)")
    parser.add_argument("--size", type=int, default=128, help="scene size when generating")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.15)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    root = args.data or generate_fashion_scenes(
        tempfile.mkdtemp(),
        size=args.size,
        n_train=0,
        n_test=args.images,
        workers=1,
        progress=False,
    )
    ds = VOCSegmentation(root, "val")
    methods = {"none": None, "par_variation": ParVariationRefine(), "varm": VARM()}
    stats = {k: torch.zeros(2, 4) for k in methods}
    seconds = dict.fromkeys(methods, 0.0)
    ignored = dict.fromkeys(methods, 0.0)
    n = min(args.images, len(ds))
    for i in range(n):
        item = ds[i]
        gt = item["mask"].clone()
        gt[(gt != 0) & (gt != 255)] = 1
        raw = _planted(gt == 1, args.patch, args.noise, i)
        img = item["image"][None]
        raw_px = _upsample(raw, gt.shape)[:, 0]
        for name, refiner in methods.items():
            t0 = time.perf_counter()
            out = raw_px if refiner is None else refiner(img, raw)[:, 0]
            seconds[name] += time.perf_counter() - t0
            cut = (out >= 0.5).long()[0]
            dual = dual_threshold(raw_px, out, torch.tensor([0.5]), 0.05)[0]
            stats[name][0] += torch.tensor(_ious(cut, gt), dtype=torch.float)
            stats[name][1] += torch.tensor(_ious(dual, gt), dtype=torch.float)
            ignored[name] += (dual == 255).float().mean().item()
    print(f"{n} val scenes, {args.patch} px cells, noise {args.noise}")
    print(
        "| refine | fg-IoU @0.5 | FB-IoU @0.5 | FB-IoU dual threshold | ignored px | ms / image |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, s in stats.items():
        fg, bg = s[:, 0] / s[:, 1], s[:, 2] / s[:, 3]
        print(
            f"| {name} | {100 * fg[0]:.1f} | {50 * (fg[0] + bg[0]):.1f} | "
            f"{50 * (fg[1] + bg[1]):.1f} | {100 * ignored[name] / n:.1f}% | "
            f"{1000 * seconds[name] / n:.1f} |"
        )
    return 0


if __name__ == "__main__":
    with record_printed("refine", ["refine"]):
        status = main()
    raise SystemExit(status)
