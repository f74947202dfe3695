"""Time per pretrain step with two ranks on two SLURM nodes against two ranks on one node.

Starts the local two-node cluster (``launch/testing/slurm_cluster.sh``: each node a network
namespace with its own address, traffic over veth pairs and a bridge), runs the tiny
pretrain config of the launch tests as DDP with gloo, world size 2, once as 2 nodes x 1 task
and once as 1 node x 2 tasks, alternating, and compares the median step time (from each
step's logged images/s, after the first steps). Both layouts share this machine's cores, so
the ratio shows what crossing nodes costs in rendezvous and gradient all-reduce over a
network device, not what a real interconnect does. Then it checks the two exports are equal.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_multinode.py --steps 12 --repeats 2
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.record import record_result
from common.datasets.fashion_scenes import generate_fashion_scenes
from common.rundir import read_metrics
from launch.__main__ import main
from launch.testing.cluster import LocalSlurm, namespace_reason, unavailable_reason

CONFIG = Path(__file__).resolve().parents[1] / "tests" / "launch" / "pretrain_tiny.yaml"
LAYOUTS = {
    "2 nodes x 1 rank": ["slurm.nodes=2", "slurm.cpus_per_task=1"],
    "1 node x 2 ranks": ["slurm.tasks_per_node=2", "slurm.cpus_per_task=1"],
}
GLOBAL_BATCH = 16  # 2 ranks x train.batch_size 8 of pretrain_tiny.yaml
WARMUP = 3  # first steps: allocator and data warm-up


def run(data: Path, out: Path, layout: list[str], steps: int) -> list[float]:
    """One job to the end; the seconds of each step after warm-up."""
    args = ["pretrain", "--config", str(CONFIG), f"data.root={data}", "--executor", "slurm"]
    args += ["--output-dir", str(out), *layout, f"train.max_steps={steps}", "train.epochs=50"]
    args += [f"train.checkpoint_every={steps}", "eval.attention_images=0"]
    assert main(args) == 0, f"job in {out} failed"
    records = [r for r in read_metrics(out / "metrics.jsonl") if "images_per_s" in r]
    return [GLOBAL_BATCH / r["images_per_s"] for r in records if r["step"] > WARMUP]


def main_bench() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2, help="jobs per layout, alternating")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    reason = unavailable_reason() or namespace_reason()
    if reason:
        raise SystemExit(f"bench_multinode: {reason}")
    with tempfile.TemporaryDirectory() as tmp, LocalSlurm.multi_node(2).session() as cluster:
        os.environ.update(cluster.env)
        data = generate_fashion_scenes(
            Path(tmp) / "data", size=64, n_train=120, n_test=60, seed=0, workers=1, progress=False
        )
        times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        exports: dict[str, Path] = {}
        for i in range(a.repeats):
            for name, layout in LAYOUTS.items():
                out = Path(tmp) / f"{name.replace(' ', '')}_{i}"
                times[name] += run(data, out, layout, a.steps)
                exports[name] = out / "export" / "backbone.pth"
        weights = [torch.load(p) for p in exports.values()]
        equal = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    medians = {name: statistics.median(t) for name, t in times.items()}
    two, one = medians["2 nodes x 1 rank"], medians["1 node x 2 ranks"]
    rows = [[name, len(times[name]), round(medians[name] * 1000, 1)] for name in LAYOUTS]
    for row in rows:
        print(f"{row[0]:<18} steps timed {row[1]:>3}  median ms/step {row[2]:>8}")
    print(f"two nodes / one node: {two / one:.2f}; exports bit-identical: {equal}")
    record_result(
        "multinode",
        tables={
            "step_time": {
                "columns": ["layout (DDP, gloo, world size 2)", "steps timed", "median ms/step"],
                "rows": rows,
            }  # fmt: skip
        },
        values={
            "two_over_one": round(two / one, 2),
            "exports": "bit-identical" if equal else "different",
        },
    )


if __name__ == "__main__":
    main_bench()
