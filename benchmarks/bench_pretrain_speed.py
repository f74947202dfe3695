"""Training-step throughput and peak memory of pretraining recipes (model step and data).

Each recipe runs in its own subprocess (so peak memory is its own): a few warm-up steps,
then timed optimisation steps (forward, backward, AdamW, EMA) on fixed random multi-crop
batches, and separately the multi-crop + masking data pipeline on real FashionScenes
images. Reported as source images per second and as ratios to the first recipe.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pretrain_speed.py --steps 5
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

RECIPES = {
    "fashion_tiny": ("fashion_tiny", []),
    "ViT-S/16 224 (2x224 + 8x96)": (
        "dino",
        ["crops.num_local=8", "model.drop_path_rate=0.1", "heads.cls.out_dim=65536"],
    ),
}


def batch_for(cfg, batch_size: int) -> dict[str, torch.Tensor]:
    c = cfg.crops
    grid = c.global_size // cfg.model.patch_size
    g = torch.randn(c.num_global, batch_size, 3, c.global_size, c.global_size)
    out = {"global_crops": g, "masks": torch.rand(c.num_global, batch_size, grid, grid) < 0.3}
    if c.num_local:
        out["local_crops"] = torch.randn(c.num_local, batch_size, 3, c.local_size, c.local_size)
    return out


def measure(preset: str, overrides: list[str], batch_size: int, steps: int, threads: int) -> dict:
    from common.config import load_config
    from pretrain.model import MetaArch
    from pretrain.train import param_groups

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = load_config("pretrain", preset, [*overrides, f"train.batch_size={batch_size}"])
    model = MetaArch(cfg)
    opt = torch.optim.AdamW(param_groups(model.student), lr=1e-4)
    batch = batch_for(cfg, batch_size)

    def step() -> None:
        loss, _ = model(batch, 0.04)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_teacher(0.996)

    step()  # warm-up: allocator, kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in model.student.backbone.parameters())
    return {
        "preset": preset,
        "images_per_s": steps * batch_size / elapsed,
        "step_s": elapsed / steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "backbone_params_m": params / 1e6,
        "crops": f"{cfg.crops.num_global}x{cfg.crops.global_size} + "
        f"{cfg.crops.num_local}x{cfg.crops.local_size}",
        "batch_size": batch_size,
    }


def measure_data(preset: str, samples: int) -> float:
    """Multi-crop samples per second of the data pipeline in one process, one thread."""
    from common.config import load_config
    from pretrain.data import MultiCropDataset, load_unlabeled

    torch.set_num_threads(1)
    cfg = load_config("pretrain", preset)
    ds = MultiCropDataset(load_unlabeled(cfg.data), cfg.crops, cfg.masking, cfg.model.patch_size, 0)
    ds[(0, 0)]
    start = time.perf_counter()
    for i in range(samples):
        ds[(0, i)]
    return samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--tiny-batch", type=int, default=64)
    parser.add_argument("--vits-batch", type=int, default=4)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        preset, overrides = RECIPES[args.one]
        bs = args.tiny_batch if preset == "fashion_tiny" else args.vits_batch
        res = measure(preset, overrides, bs, args.steps, args.threads)
        if preset == "fashion_tiny":
            res["data_samples_per_s"] = measure_data(preset, 200)
        print(json.dumps(res))
        return
    rows = {}
    for name in RECIPES:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
                "--tiny-batch",
                str(args.tiny_batch),
                "--vits-batch",
                str(args.vits_batch),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
    base = next(iter(rows.values()))
    print(f"CPU, {args.threads} torch threads, {args.steps} timed steps after 1 warm-up step\n")
    print(
        "| recipe | crops | batch | backbone params | step (s) | images/s | ratio "
        "| peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['crops']} | {r['batch_size']} | {r['backbone_params_m']:.2f} M | "
            f"{r['step_s']:.3f} | {r['images_per_s']:.1f} | "
            f"{r['images_per_s'] / base['images_per_s']:.4f} | {r['peak_rss_mb']:.0f} |"
        )
    if "data_samples_per_s" in base:
        print(
            f"\nfashion_tiny data pipeline (multi-crop + masks, 1 thread, 1 process): "
            f"{base['data_samples_per_s']:.1f} images/s"
        )


if __name__ == "__main__":
    main()
