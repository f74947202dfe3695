"""End-to-end pretraining throughput: the real DataLoader + training step, against the step alone.

For each augmentation path (``data.augment_on=worker | device``) and DataLoader worker
count, the real ``pretrain.train.Trainer`` trains on real images (FashionScenes for the
fashion_tiny recipe, a folder of 500x375 JPEGs made from its scenes for the ViT recipes):
images/s of ``epoch_loader`` + ``train_step``, divided by the
images/s of ``train_step`` on crop batches already on the device, timed in the same process
(the ratio is the share of the model's speed the data pipeline lets through; 1.0 = never
data-bound).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pretrain_e2e.py --workers 0 2
    PYTHONPATH=. python benchmarks/bench_pretrain_e2e.py --device cuda \
        --recipe "ViT-S/16 224 dino" --workers 2 4 8 --steps 30 --images 4000
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrain_speed import RECIPES, batch_for, photo_folder, sync  # noqa: E402

from benchmarks.record import record_result  # noqa: E402
from common.config import load_config  # noqa: E402
from common.datasets.fashion_scenes import ensure_fashion_scenes  # noqa: E402
from common.rundir import RunDir  # noqa: E402
from pretrain.data import epoch_loader  # noqa: E402
from pretrain.train import Trainer  # noqa: E402

log = logging.getLogger("bench_pretrain_e2e")
REPO = Path(__file__).resolve().parents[1]


def trainer_for(args, recipe: str, folder: Path, augment_on: str, workers: int, tmp: Path):
    spec = RECIPES[recipe]
    dev = torch.device(args.device)
    overrides = [
        *spec.overrides,
        f"train.batch_size={spec.batch[dev.type]}",
        f"train.precision={args.precision}",
        f"train.num_threads={args.threads}",
        f"device={args.device}",
        f"data.root={folder}",
        f"data.augment_on={augment_on}",
        f"data.num_workers={workers}",
        "eval.every=0",
        "eval.attention_images=0",
    ]
    cfg = load_config("pretrain", spec.preset, overrides)
    return Trainer(cfg, RunDir(tmp / f"run_{augment_on}_{workers}").make())


def model_only(trainer: Trainer, steps: int) -> float:
    """images/s of the step on random crop batches already on the device."""
    dev = trainer.device
    batches = [batch_for(trainer.cfg, trainer.batch_size, dev) for _ in range(3)]
    for i in range(2):
        trainer.train_step(batches[i % 3])
    sync(dev)
    start = time.perf_counter()
    for i in range(steps):
        trainer.train_step(batches[i % 3])
    sync(dev)
    return steps * trainer.batch_size / (time.perf_counter() - start)


def end_to_end(trainer: Trainer, steps: int, warmup: int = 2) -> float:
    """images/s of the real loader + step (worker start-up excluded by the warm-up steps)."""
    loader = epoch_loader(
        trainer.dataset,
        trainer.batch_size,
        0,
        int(trainer.cfg.seed),
        int(trainer.cfg.data.num_workers),
        pin_memory=trainer.pin_memory,
    )
    it = iter(loader)
    for _ in range(warmup):
        trainer.train_step(next(it))
    sync(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(it))
    sync(trainer.device)
    return steps * trainer.batch_size / (time.perf_counter() - start)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fashion_tiny", choices=sorted(RECIPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--augment", nargs="+", default=["worker", "device"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--images", type=int, default=0, help="JPEGs to write (0 = enough)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batch = RECIPES[args.recipe].batch[torch.device(args.device).type]
        count = args.images or batch * (args.steps + 4)
        if args.recipe == "fashion_tiny":
            folder, what = ensure_fashion_scenes(REPO / "data" / "fashion_scenes"), "FashionScenes"
        else:
            folder, what = photo_folder(tmp / "photos", count), f"{count} JPEGs 500x375"
        rows = []
        for augment_on in args.augment:
            for workers in args.workers:
                trainer = trainer_for(args, args.recipe, folder, augment_on, workers, tmp)
                step_rate = model_only(trainer, args.steps)
                e2e_rate = end_to_end(trainer, args.steps)
                rows.append((augment_on, workers, e2e_rate, step_rate))
    print(f"recipe {args.recipe}, device {args.device}, {args.precision}, {what}")
    print("| augmentation | workers | end to end (img/s) | step only (img/s) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for augment_on, workers, e2e, step in rows:
        print(f"| {augment_on} | {workers} | {e2e:.1f} | {step:.1f} | {e2e / step:.2f} |")
    record(args, what, rows)


def record(args: argparse.Namespace, what: str, rows: list[tuple]) -> None:
    """Record the table and, per worker count, how much faster the device path runs end to end."""
    e2e = {(a, w): rate for a, w, rate, _ in rows}
    values = {
        f"device_over_worker_{w}_workers": round(e2e[("device", w)] / e2e[("worker", w)], 2)
        for w in args.workers
        if ("device", w) in e2e and ("worker", w) in e2e
    }
    table = [[a, w, round(r, 1), round(s, 1), round(r / s, 2)] for a, w, r, s in rows]
    columns = ["augmentation", "workers", "end to end (img/s)", "step only (img/s)", "ratio"]
    name = "pretrain_e2e" if args.recipe == "fashion_tiny" else f"pretrain_e2e_{args.recipe}"
    values["data"] = what
    record_result(name, tables={"e2e": {"columns": columns, "rows": table}}, values=values)


if __name__ == "__main__":
    main()
