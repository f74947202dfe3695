"""Memory of pretraining with ``train.parallel=ddp`` against ``fsdp`` + activation checkpointing.

For each backbone of a ladder (ViT-B/14, ViT-L/14, ViT-g/14 with the DINOv2 crops: 2 x 224
+ 8 x 98) and each mode, ``--nproc`` processes run the real ``pretrain.train.Trainer`` for
one warm-up and two measured steps at ``--batch-size`` images per process, each setting in
fresh processes so that peak memory is its own. Reported per rank: the peak accelerator
memory (``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set, which
includes the Python runtime), that peak per image, and the bytes of model state the rank
holds (student + teacher parameters, gradients and AdamW state: what sharding divides by the
number of processes). A setting that runs out of memory is reported as OOM; the largest
backbone that trains in each mode closes the report. With one process fsdp has nothing to
shard: the difference is activation checkpointing alone.

    PYTHONPATH=. python benchmarks/bench_sharded_memory.py --device cuda --nproc 1
    PYTHONPATH=. python benchmarks/bench_sharded_memory.py --device cuda --nproc 8
    PYTHONPATH=. .venv/bin/python benchmarks/bench_sharded_memory.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.record import record_printed

log = logging.getLogger("bench_sharded_memory")

MODES = {
    "ddp": ["train.parallel=ddp", "train.activation_checkpointing=false"],
    "fsdp+ac": ["train.parallel=fsdp", "train.activation_checkpointing=true"],
}
# The DINOv2 recipe (configs/pretrain/vit_large.yaml) at three backbone sizes.
LADDER = {
    "ViT-B/14": ("vit_large", ["model.arch=vit_base"]),
    "ViT-L/14": ("vit_large", []),
    "ViT-g/14": ("vit_giant", []),
}
# CPU check of the script itself: two tiny backbones, DINO + iBOT heads.
TINY_HEADS = [
    "model.arch=custom",
    "model.patch_size=8",
    "model.num_heads=2",
    "crops.global_size=32",
    "crops.local_size=16",
    "crops.num_local=2",
    "heads.cls.out_dim=256",
    "heads.cls.hidden_dim=64",
    "heads.cls.bottleneck_dim=32",
    "train.precision=fp32",
]
TINY_LADDER = {
    "tiny-64x2": ("vit_large", [*TINY_HEADS, "model.embed_dim=64", "model.depth=2"]),
    "tiny-128x4": ("vit_large", [*TINY_HEADS, "model.embed_dim=128", "model.depth=4"]),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _images(folder: Path, count: int) -> None:
    """A folder the Trainer can index; the measured batches are random tensors, not these."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _batch(cfg, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    c = cfg.crops
    grid = c.global_size // cfg.model.patch_size
    return {
        "global_crops": torch.randn(c.num_global, batch_size, 3, c.global_size, c.global_size),
        "masks": torch.rand(c.num_global, batch_size, grid, grid) < 0.3,
        "local_crops": torch.randn(c.num_local, batch_size, 3, c.local_size, c.local_size),
    }


def _state_bytes(trainer) -> int:
    """Bytes of parameters, gradients and optimizer state this rank holds (local shards)."""
    from pretrain.sharding import local_shards

    tensors = [*trainer.model.student.parameters(), *trainer.model.teacher.parameters()]
    tensors += [p.grad for p in trainer.model.student.parameters() if p.grad is not None]
    for state in trainer.optimizer.state.values():
        tensors += [t for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in local_shards(tensors))


def worker(spec: dict) -> None:
    """One rank of one setting: two measured steps; rank 0 writes the result to spec['out']."""
    from common.config import load_config
    from common.rundir import RunDir
    from pretrain.train import Trainer

    dev = torch.device(spec["device"])
    rank = int(os.environ.get("RANK", 0))
    result: dict = {"status": "ok"}
    with tempfile.TemporaryDirectory() as tmp:
        _images(Path(tmp) / "images", 2 * spec["batch_size"] * spec["nproc"])
        cfg = load_config(
            "pretrain", spec["preset"], spec["overrides"] + [f"data.root={tmp}/images"]
        )
        torch.manual_seed(0)
        try:
            trainer = Trainer(cfg, RunDir(Path(tmp) / "run").make())
            batch = _batch(cfg, spec["batch_size"], dev)
            trainer.train_step(batch)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            start = time.perf_counter()
            for _ in range(2):
                trainer.train_step(batch)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            result["step_s"] = (time.perf_counter() - start) / 2
            result["peak_mib"] = (
                torch.cuda.max_memory_allocated(dev) / 2**20
                if dev.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            )
            result["state_mib"] = _state_bytes(trainer) / 2**20
            backbone = trainer.model.student.backbone
            result["backbone_params_m"] = sum(p.numel() for p in backbone.parameters()) / 1e6
        except torch.OutOfMemoryError:
            result = {"status": "OOM"}
    if rank == 0:
        Path(spec["out"]).write_text(json.dumps(result))


def run_setting(preset: str, overrides: list[str], args: argparse.Namespace) -> dict:
    """Launch ``args.nproc`` fresh processes for one setting; rank 0's measurements."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        spec = {
            "preset": preset,
            "overrides": [
                *overrides,
                f"device={args.device}",
                f"train.batch_size={args.batch_size}",
                "train.num_threads=1",
                "data.num_workers=0",
                "eval.every=0",
                "eval.attention_images=0",
            ],
            "device": args.device,
            "batch_size": args.batch_size,
            "nproc": args.nproc,
            "out": str(out),
        }
        port = _free_port()
        procs = []
        for rank in range(args.nproc):
            env = dict(os.environ, OMP_NUM_THREADS="1")
            if args.nproc > 1:
                env.update(
                    RANK=str(rank),
                    LOCAL_RANK=str(rank),
                    WORLD_SIZE=str(args.nproc),
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port),
                )
            cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
            procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
        errors = [p.communicate()[1] for p in procs]
        if not out.is_file():
            raise RuntimeError(f"setting {overrides} failed:\n{errors[0][-3000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--nproc", type=int, default=None, help="processes (default 1; 2 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="per process (default 32)")
    parser.add_argument("--tiny", action="store_true", help="tiny backbones (checks the script)")
    parser.add_argument("--backbones", nargs="+", default=None, help="a subset of the ladder")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.nproc = args.nproc or (2 if args.device == "cpu" else 1)
    args.batch_size = args.batch_size or (4 if args.tiny else 32)
    ladder = TINY_LADDER if args.tiny else LADDER
    unknown = sorted(set(args.backbones or ()) - set(ladder))
    if unknown:
        parser.error(f"unknown --backbones {unknown}; choose from {sorted(ladder)}")
    ladder = {k: v for k, v in ladder.items() if args.backbones is None or k in args.backbones}
    extra = [] if args.device == "cuda" else ["train.precision=fp32"]
    rows = []
    for name, (preset, overrides) in ladder.items():
        for mode, mode_overrides in MODES.items():
            result = run_setting(preset, [*overrides, *extra, *mode_overrides], args)
            rows.append({"backbone": name, "mode": mode, **result})
            log.info("%s %s: %s", name, mode, result)
    print(
        f"\n{args.nproc} process(es) on {args.device}, batch {args.batch_size} per process\n\n"
        "| backbone | params (M) | mode | peak MiB | MiB / image | state MiB / rank | step s |\n"
        "|---|---|---|---|---|---|---|"
    )
    for r in rows:
        if r["status"] != "ok":
            print(f"| {r['backbone']} | | {r['mode']} | OOM | | | |")
            continue
        print(
            f"| {r['backbone']} | {r['backbone_params_m']:.1f} | {r['mode']} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] / args.batch_size:.1f} | "
            f"{r['state_mib']:.1f} | {r['step_s']:.3f} |"
        )
    for mode in MODES:
        fits = [r["backbone"] for r in rows if r["mode"] == mode and r["status"] == "ok"]
        print(f"\nlargest backbone that trains with {mode}: {fits[-1] if fits else 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    if "--worker" in sys.argv:  # a measuring subprocess: its parent records
        main()
    else:
        with record_printed(
            "sharded_memory" if "cuda" not in sys.argv else "gpu_sharded_memory",
            ["cpu"] if "cuda" not in sys.argv else ["cuda"],
        ):
            main()
