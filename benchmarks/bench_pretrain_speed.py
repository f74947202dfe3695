"""Training-step throughput, peak memory and (on GPU) model-FLOP utilisation of pretraining.

Each recipe runs in its own subprocess (so peak memory is its own) and times the real
``pretrain.train.Trainer.train_step`` (schedules, autocast, grad scaler, finite checks,
clipping, AdamW, EMA) on three random multi-crop batches already on the device, in turn,
after warm-up steps. ``--compile`` adds rows with ``train.compile=true``. On CPU the
multi-crop + masking data pipeline is timed separately, for fashion_tiny on FashionScenes and
for the ViT-S/16 recipe on 500x375 JPEGs, each against torchvision's 2-D blur. On GPU
the step's FLOPs are counted with ``torch.utils.flop_counter`` (matmuls, convolutions and
attention, forward and backward) and divided by the step time and by the GPU's bf16 matmul
rate measured in the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pretrain_speed.py --steps 5
    PYTHONPATH=. python benchmarks/bench_pretrain_speed.py --device cuda --steps 20 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from benchmarks.record import record_printed


@dataclass(frozen=True)
class Recipe:
    preset: str
    overrides: list[str] = field(default_factory=list)
    batch: dict[str, int] = field(default_factory=dict)  # per-process batch by device type


VIT_S = ["crops.num_local=8", "model.drop_path_rate=0.1", "heads.cls.out_dim=65536"]
VIT_B = [*VIT_S, "model.arch=vit_base"]
RECIPES = {
    "fashion_tiny": Recipe("fashion_tiny", [], {"cpu": 64, "cuda": 256}),
    "ViT-S/16 224 dino": Recipe("dino", VIT_S, {"cpu": 4, "cuda": 128}),
    "ViT-S/16 224 maskcluster": Recipe("maskcluster", VIT_S, {"cuda": 128}),
    "ViT-B/16 224 dino": Recipe("dino", VIT_B, {"cuda": 64}),
}


def batch_for(cfg, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    c = cfg.crops
    grid = c.global_size // cfg.model.patch_size
    g = torch.randn(c.num_global, batch_size, 3, c.global_size, c.global_size)
    out = {"global_crops": g, "masks": torch.rand(c.num_global, batch_size, grid, grid) < 0.3}
    if c.num_local:
        out["local_crops"] = torch.randn(c.num_local, batch_size, 3, c.local_size, c.local_size)
    return {k: v.to(device) for k, v in out.items()}


def write_images(folder: Path, count: int) -> None:
    """A folder the Trainer can index; the timed batches are random tensors, not these."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(trainer, batch: dict[str, torch.Tensor]) -> float:
    """FLOPs of one training step (forward + backward of student, teacher forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch)
    return float(counter.get_total_flops())


def measure(
    name: str,
    device: str,
    precision: str,
    steps: int,
    threads: int,
    compile_: bool,
    profile: bool = False,
) -> dict:
    from common.config import load_config
    from common.rundir import RunDir
    from pretrain.train import Trainer

    recipe = RECIPES[name]
    dev = torch.device(device)
    batch_size = recipe.batch[dev.type]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp) / "images", batch_size)
        cfg = load_config(
            "pretrain",
            recipe.preset,
            [
                *recipe.overrides,
                f"train.batch_size={batch_size}",
                f"train.precision={precision}",
                f"train.num_threads={threads}",
                f"device={device}",
                f"data.root={tmp}/images",
                "eval.every=0",
                f"train.compile={str(compile_).lower()}",
            ],
        )
        trainer = Trainer(cfg, RunDir(Path(tmp) / "run").make())
        # Batches rotate so that the number of masked patches changes from step to step, as
        # in training (a compiled model must cope with it, not specialise to one batch).
        batches = [batch_for(cfg, batch_size, dev) for _ in range(3)]
        for i in range(5 if compile_ else 2):  # allocator, kernel selection, compilation
            trainer.train_step(batches[i % 3])
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        sync(dev)
        start = time.perf_counter()
        for i in range(steps):
            trainer.train_step(batches[i % 3])
        sync(dev)
        elapsed = time.perf_counter() - start
        flops = step_flops(trainer, batches[0]) if dev.type == "cuda" else float("nan")
        if profile:
            print_profile(trainer, batches[0])
    backbone = trainer.model.student.backbone
    return {
        "images_per_s": steps * batch_size / elapsed,
        "step_s": elapsed / steps,
        "flops_per_step": flops,
        "peak_mb": (
            torch.cuda.max_memory_allocated(dev) / 2**20
            if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ),
        "backbone_params_m": sum(p.numel() for p in backbone.parameters()) / 1e6,
        "crops": f"{cfg.crops.num_global}x{cfg.crops.global_size} + "
        f"{cfg.crops.num_local}x{cfg.crops.local_size}",
        "batch_size": batch_size,
    }


def print_profile(trainer, batch: dict[str, torch.Tensor], rows: int = 25) -> None:
    """The step's most expensive operators by device time (to stderr: where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities) as prof:
        trainer.train_step(batch)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows)
    print(table, file=sys.stderr)


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    """Median bf16 matmul rate (TFLOP/s) on random n x n x n products."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        begin.record()
        a @ b
        end.record()
        torch.cuda.synchronize(device)
        times.append(begin.elapsed_time(end) / 1e3)
    return 2 * n**3 / float(np.median(times)) / 1e12


def photo_folder(folder: Path, count: int = 16) -> Path:
    """``count`` 500x375 JPEGs (ImageNet-sized) made from FashionScenes scenes."""
    from common.datasets.fashion_scenes import ensure_fashion_scenes

    root = ensure_fashion_scenes(Path(__file__).resolve().parents[1] / "data" / "fashion_scenes")
    scenes = sorted((root / "JPEGImages").glob("*.jpg"))[:count]
    folder.mkdir(parents=True)
    for i, scene in enumerate(scenes):
        with Image.open(scene) as img:
            img.convert("RGB").resize((500, 375), Image.BICUBIC).save(folder / f"{i}.jpg")
    return folder


@contextlib.contextmanager
def torchvision_blur():
    """Build pipelines with torchvision's 2-D Gaussian blur, the baseline of our separable one."""
    import pretrain.augment as augment

    ours = augment.separable_gaussian_blur
    augment.separable_gaussian_blur = lambda image, k, sigma: v2.functional.gaussian_blur(
        image, [k, k], [sigma, sigma]
    )
    try:
        yield
    finally:
        augment.separable_gaussian_blur = ours


def measure_data(preset: str, overrides: list[str], samples: int) -> float:
    """Multi-crop + mask samples per second of the data pipeline in one process, one thread."""
    from common.config import load_config
    from pretrain.data import MultiCropDataset, load_unlabeled

    torch.set_num_threads(1)
    cfg = load_config("pretrain", preset, overrides)
    ds = MultiCropDataset(load_unlabeled(cfg.data), cfg.crops, cfg.masking, cfg.model.patch_size, 0)
    ds[(0, 0)]
    start = time.perf_counter()
    for i in range(samples):
        ds[(0, i % len(ds))]
    return samples / (time.perf_counter() - start)


def data_rates(samples: int) -> dict[str, tuple[float, float]]:
    """(ours, torchvision blur) pipeline rates of the fashion_tiny and ViT-S/16 recipes."""
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        photos = photo_folder(Path(tmp) / "photos")
        recipes = {
            "fashion_tiny (FashionScenes, 64 px)": ("fashion_tiny", [], samples),
            "ViT-S/16 224 maskcluster (500x375 JPEGs)": (
                "maskcluster",
                [*VIT_S, f"data.root={photos}"],
                max(samples // 8, 8),
            ),
        }
        for name, (preset, overrides, n) in recipes.items():
            ours = measure_data(preset, overrides, n)
            with torchvision_blur():
                rates[name] = (ours, measure_data(preset, overrides, n))
    return rates


def run_one(args: argparse.Namespace, name: str, compile_: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--one",
        name,
        *("--device", args.device, "--precision", args.precision),
        *("--steps", str(args.steps), "--threads", str(args.threads)),
        *(["--compile"] if compile_ else []),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def print_cpu(
    args: argparse.Namespace, rows: dict[str, dict], data: dict[str, tuple[float, float]]
) -> None:
    base = next(iter(rows.values()))
    print(f"CPU, {args.threads} torch threads, {args.steps} timed steps after 2 warm-up steps\n")
    print(
        "| recipe | crops | batch | backbone params | step (s) | images/s | ratio "
        "| peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['crops']} | {r['batch_size']} | {r['backbone_params_m']:.2f} M | "
            f"{r['step_s']:.3f} | {r['images_per_s']:.1f} | "
            f"{r['images_per_s'] / base['images_per_s']:.4f} | {r['peak_mb']:.0f} |"
        )
    print("\nData pipeline (multi-crop + masks), 1 thread, 1 process, images/s:\n")
    print("| recipe | ours (separable blur) | torchvision 2-D blur | ratio |")
    print("|---|---|---|---|")
    for name, (ours, theirs) in data.items():
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")


def print_gpu(args: argparse.Namespace, rows: dict[str, dict], peak: float) -> None:
    name = torch.cuda.get_device_name()
    print(
        f"{name}, {args.precision} autocast, {args.steps} timed steps after warm-up; "
        f"measured bf16 matmul rate (8192^3, median of 20): {peak:.0f} TFLOP/s\n"
    )
    print(
        "| recipe | crops | batch | backbone params | step (ms) | images/s | "
        "TFLOP/step | TFLOP/s | MFU | peak memory (GiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        achieved = r["flops_per_step"] / r["step_s"] / 1e12
        print(
            f"| {label} | {r['crops']} | {r['batch_size']} | {r['backbone_params_m']:.2f} M | "
            f"{1e3 * r['step_s']:.1f} | {r['images_per_s']:.0f} | "
            f"{r['flops_per_step'] / 1e12:.2f} | {achieved:.0f} | {achieved / peak:.3f} | "
            f"{r['peak_mb'] / 1024:.1f} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--precision", default=None, help="fp32 | bf16 | fp16 (default: fp32 on CPU, bf16 on GPU)"
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per recipe")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile'd models (GPU)"
    )
    parser.add_argument(
        "--recipes", nargs="+", choices=list(RECIPES), help="a subset (default: all)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="with --one on GPU: top operators by device time"
    )
    parser.add_argument(
        "--data-samples", type=int, default=200, help="CPU: samples of the data pipeline timed"
    )
    parser.add_argument("--one", default=None, help="time this one recipe in this process")
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    args.precision = args.precision or ("bf16" if dev.type == "cuda" else "fp32")
    if args.one is not None:
        logging.disable(logging.INFO)
        res = measure(
            args.one,
            args.device,
            args.precision,
            args.steps,
            args.threads,
            args.compile,
            args.profile,
        )
        print(json.dumps(res))
        return
    names = [n for n in args.recipes or RECIPES if dev.type in RECIPES[n].batch]
    rows = {name: run_one(args, name, False) for name in names}
    if dev.type == "cpu":
        print_cpu(args, rows, data_rates(args.data_samples))
        return
    if args.compile:
        rows |= {f"{n}, compiled": run_one(args, n, True) for n in names if n != "fashion_tiny"}
    print_gpu(args, rows, matmul_tflops(dev))


if __name__ == "__main__":
    if "--worker" in sys.argv:  # a measuring subprocess: its parent records
        main()
    else:
        with record_printed(
            "gpu_pretrain_speed" if "cuda" in sys.argv else "pretrain_speed",
            ["step", "data_pipeline"],
        ):
            main()
