"""Multi-crop augmentation throughput: the per-image worker path against the batched device
path (``data.augment_on``), in one process, on the same images and the same random draws.

Worker path: ``MultiCropDataset`` items (decode, draw, torchvision v2 crops, masks) and the
collate, as a DataLoader worker runs them. Device path: the items (decode, draw, masks) and
the collate, then ``BatchedMultiCrop`` on ``--device``. Rounds alternate the two paths and
the median round is reported. Recipes: ``fashion_tiny`` on FashionScenes (64 px) and DINO's
ViT-S/16 crops (2x224 + 8x96) on 500x375 JPEGs, both written into a temporary folder.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_augment.py --threads 1
    PYTHONPATH=. python benchmarks/bench_augment.py --device cuda --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from benchmarks.record import record_printed
from common.config import load_config
from common.datasets.fashion_scenes import generate_fashion_scenes
from pretrain.data import MultiCropDataset, collate_multicrop, load_unlabeled
from pretrain.device_augment import BatchedMultiCrop


def photo_folder(scenes: Path, folder: Path, count: int) -> Path:
    """``count`` 500x375 JPEGs (ImageNet-sized) resized from FashionScenes scenes."""
    folder.mkdir(parents=True)
    for i, scene in enumerate(sorted((scenes / "JPEGImages").glob("*.jpg"))[:count]):
        with Image.open(scene) as img:
            img.convert("RGB").resize((500, 375), Image.BICUBIC).save(folder / f"{i}.jpg")
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker_seconds(ds: MultiCropDataset, keys: list) -> float:
    start = time.perf_counter()
    collate_multicrop([ds[k] for k in keys])
    return time.perf_counter() - start


def device_seconds(
    ds: MultiCropDataset, module: BatchedMultiCrop, keys: list, device: torch.device
) -> tuple[float, float]:
    """(decode + draw + masks + collate, batched crops) seconds of one batch."""
    start = time.perf_counter()
    batch = collate_multicrop([ds[k] for k in keys])
    if device.type == "cuda":
        batch["images"] = batch["images"].pin_memory()
    middle = time.perf_counter()
    module(batch)
    sync(device)
    return middle - start, time.perf_counter() - middle


def measure(cfg, batch: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Median images/s of each path (and of the device path's two halves)."""
    args = (load_unlabeled(cfg.data), cfg.crops, cfg.masking, int(cfg.model.patch_size), 0)
    worker = MultiCropDataset(*args)
    on_device = MultiCropDataset(*args, on_device=True)
    module = BatchedMultiCrop(cfg.crops).to(device)
    keys = [(0, i % len(worker)) for i in range(batch)]
    worker_seconds(worker, keys[:2])  # warm-up
    device_seconds(on_device, module, keys, device)
    w, d_items, d_crops = [], [], []
    for r in range(rounds):
        keys = [(r + 1, i % len(worker)) for i in range(batch)]
        w.append(worker_seconds(worker, keys))
        items, crops = device_seconds(on_device, module, keys, device)
        d_items.append(items)
        d_crops.append(crops)
    rate = {
        "worker": batch / statistics.median(w),
        "device": batch / statistics.median([a + b for a, b in zip(d_items, d_crops, strict=True)]),
        "device: items": batch / statistics.median(d_items),
        "device: crops": batch / statistics.median(d_crops),
    }
    return {**rate, "ratio": rate["device"] / rate["worker"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="where the batched path runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker has 1)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        scenes = generate_fashion_scenes(
            Path(tmp) / "scenes", n_train=256, n_test=8, workers=1, progress=False
        )
        photos = photo_folder(scenes, Path(tmp) / "photos", 64)
        recipes = {
            "fashion_tiny (64 px scenes), batch 64": (
                load_config("pretrain", "fashion_tiny", [f"data.root={scenes}"]),
                64,
            ),
            "DINO ViT-S/16 2x224 + 8x96 (500x375 JPEGs), batch 32": (
                load_config("pretrain", "dino", ["crops.num_local=8", f"data.root={photos}"]),
                32,
            ),
        }
        print(f"device {device}, {args.threads} thread(s), median of {args.rounds} rounds")
        print("| recipe | worker path | device path | its items | its crops | device / worker |")
        print("|---|---|---|---|---|---|")
        for name, (cfg, batch) in recipes.items():
            r = measure(cfg, batch, args.rounds, device)
            print(
                f"| {name} | {r['worker']:.1f} | {r['device']:.1f} | {r['device: items']:.1f} | "
                f"{r['device: crops']:.1f} | {r['ratio']:.2f} |"
            )


if __name__ == "__main__":
    with record_printed("augment", ["throughput"]):
        main()
