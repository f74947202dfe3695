"""Jobs across two SLURM nodes (network namespaces with their own addresses and host names)
against one node: pretraining (DDP and FSDP, a requeue, a node that dies) against the same
world size, and the probes' sharded feature extraction against one process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbone import backbone_kwargs, build_backbone, export_backbone
from common.checkpoint import load_torch_file
from common.cli import stage_main
from common.rundir import read_metrics
from fewshot.probe.stage import run as probe_stage
from launch.__main__ import main
from launch.records import read_record
from launch.slurm import job_infos
from launch.status import collect, format_status
from launch.testing.cluster import LocalSlurm
from tests.fewshot.probe.imagenet_like import write_imagenet_like
from tests.launch.conftest import TINY_PRETRAIN

pytestmark = pytest.mark.slurm
TWO_NODES = ("slurm.nodes=2", "slurm.cpus_per_task=1")
ONE_NODE = ("slurm.tasks_per_node=2", "slurm.cpus_per_task=1")
FSDP = ("train.parallel=fsdp",)
STEPS = 6  # checkpoints every 2 steps (pretrain_tiny.yaml)
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")
RESUMED = re.compile(r"resumed from \S+ at step (\d+)")


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["pretrain", "--config", str(TINY_PRETRAIN), f"data.root={data}", "--executor"]
    args += ["slurm", "--output-dir", str(out), f"train.max_steps={STEPS}"]
    return [*args, "eval.attention_images=0", *extra]  # no figures: seconds of matplotlib


def _submit(data: Path, out: Path, *extra: str) -> str:
    assert main([*_args(data, out, *extra), "--no-wait"]) == 0
    return read_record(out)["jobs"][-1]["job_id"]


def _wait(run_dir: Path, done: tuple[str, ...] = ENDED, timeout: float = 300) -> str:
    """Poll `status` until the run's last job is in one of ``done``; returns its state."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        state = collect(run_dir)[0].state
        if state in done:
            return state
        time.sleep(1)
    raise AssertionError(f"{run_dir}: not {done} in {timeout}s:\n{format_status(collect(run_dir))}")


def _wait_steps(run_dir: Path, steps: int, timeout: float = 180) -> None:
    start = time.monotonic()
    while len(read_metrics(run_dir / "metrics.jsonl")) < steps:
        assert time.monotonic() - start < timeout, f"{run_dir}: never logged {steps} steps"
        time.sleep(0.2)


def _hosts(run_dir: Path) -> dict[int, tuple[str, str]]:
    """rank -> (host, address) as each rank logged it at its last start."""
    out = {}
    for log in run_dir.glob("log*.txt"):
        for m in re.finditer(r"rank (\d+) runs on host (\S+), address (\S+)", log.read_text()):
            out[int(m.group(1))] = (m.group(2), m.group(3))
    return out


def _signal_task_on(node: str, sig: int) -> None:
    """Signal the job's task on one node only (the namespace of the node is named after it)."""
    pids = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True)
    tasks = [p for p in pids.stdout.split() if b"submitit.core._submit" in _cmdline(p)]
    assert len(tasks) == 1, f"tasks on {node}: {tasks}"
    os.kill(int(tasks[0]), sig)


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _resumed_at(log: Path) -> list[int]:
    return [int(s) for s in RESUMED.findall(log.read_text())]


def _assert_same_export(a: Path, b: Path) -> None:
    wa, wb = torch.load(a / "export" / "backbone.pth"), torch.load(b / "export" / "backbone.pth")
    assert wa.keys() == wb.keys()
    diff = {k: (wa[k].double() - wb[k].double()).abs().max().item() for k in wa}
    assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{a.name} != {b.name}: {diff}"


def _reference_and_requeued_runs(data: Path, root: Path) -> dict[str, Path]:
    """Three runs of one world size (2 ranks): DDP and FSDP on one node, FSDP on two nodes;
    the two-node job is requeued (`scontrol requeue`) once it logged 3 steps."""
    runs = {name: root / name for name in ("ddp1", "fsdp1", "fsdp2")}
    _submit(data, runs["fsdp2"], *TWO_NODES, *FSDP)
    _submit(data, runs["ddp1"], *ONE_NODE)
    _submit(data, runs["fsdp1"], *ONE_NODE, *FSDP)
    _wait_steps(runs["fsdp2"], 3)
    subprocess.run(["scontrol", "requeue", read_record(runs["fsdp2"])["jobs"][-1]["job_id"]],
                   check=True, timeout=60)  # fmt: skip
    for run in runs.values():
        assert _wait(run) == "COMPLETED", format_status(collect(run))
    return runs


def _assert_two_hosts(run: Path, nodes: list[str]) -> None:
    """Each node's rank logged its own host name and address; rank 1 reached rank 0's node
    by the first host of SLURM_JOB_NODELIST; status lists each node's logs."""
    hosts = _hosts(run)
    assert [hosts[0][0], hosts[1][0]] == nodes
    assert hosts[0][1] != hosts[1][1]
    for log in ("log.txt", "log.rank1.txt"):
        assert f"via slurm, backend gloo, master {nodes[0]}:" in (run / log).read_text()
    text = format_status(collect(run))
    job = read_record(run)["jobs"][-1]["job_id"]
    assert f"{nodes[0]} ({hosts[0][1]}) rank 0: log.txt, submitit/{job}_0_log.err" in text
    assert f"{nodes[1]} ({hosts[1][1]}) rank 1: log.rank1.txt, submitit/{job}_1_log.err" in text


def test_two_nodes_equal_one_node_through_a_requeue_a_lone_signal_and_a_dead_node(
    slurm_two_nodes, fashion_scenes_root: Path, tmp_path: Path
) -> None:
    """One test, so one pytest worker owns the cluster while a node is killed."""
    nodes = slurm_two_nodes.node_names
    _check_probe_features_sharded_across_two_nodes(nodes, tmp_path / "probe")
    runs = _reference_and_requeued_runs(fashion_scenes_root, tmp_path)
    _check_fsdp_across_two_nodes_through_a_requeue(runs, nodes)
    _check_ddp_through_a_lone_signal_and_a_dead_node(
        runs["ddp1"], slurm_two_nodes, fashion_scenes_root, tmp_path / "ddp2"
    )


SHARD_LINE = re.compile(r"rank (\d)/2 writes \d+ shard\(s\) of (\w+) into \S+: ([\d,]*)")


def _stores(cache: Path) -> dict[str, np.ndarray]:
    """split -> features of each store in ``cache`` (every one must be complete)."""
    out = {}
    for store in cache.iterdir():
        record = json.loads((store / "record.json").read_text())
        shards = -(-record["n"] // record["shard_size"])
        assert len(list((store / "done").iterdir())) == shards, f"{store}: shards missing"
        assert {p.name for p in store.iterdir()} == {"record.json", "features.npy", "done"}
        out[record["split"]] = np.load(store / "features.npy")
    return out


def _check_probe_features_sharded_across_two_nodes(nodes: list[str], root: Path) -> None:
    """DINO's k-NN probe launched as a two-node job (one task per node, 4-image shards): each
    node's rank writes its own shards (s % 2 == rank) into one store per split in the shared
    run directory, rank 0 waits for them and probes. The stores hold every shard, their
    features equal a one-process run's (default 4096-image shards, so other batches: float32
    to 1e-5) and so do the predictions of every k; status lists each node's log."""
    inet = write_imagenet_like(root / "inet", 6, 3)  # 24 train / 12 val images, 4 classes
    torch.manual_seed(0)
    kwargs = backbone_kwargs("custom", 32, 16, embed_dim=48, depth=2, num_heads=3)
    export = export_backbone(build_backbone(kwargs), kwargs, root / "vit")
    args = ["--config", "dino_knn", f"backbone={export}", f"data.root={inet}", "threads=1"]
    two, one = root / "two_nodes", root / "one_process"
    submit = ["fewshot/probe", *args, "--executor", "slurm", "--output-dir", str(two)]
    assert main([*submit, *TWO_NODES, "store.shard_size=4", "--no-wait"]) == 0
    single = stage_main("fewshot/probe", probe_stage, "test", [*args, "--output-dir", str(one)])
    assert _wait(two) == "COMPLETED", format_status(collect(two))

    hosts = _hosts(two)
    assert [hosts[0][0], hosts[1][0]] == nodes and hosts[0][1] != hosts[1][1]
    written = {}
    for rank, log in enumerate(("log.txt", "log.rank1.txt")):
        for r, split, shards in SHARD_LINE.findall((two / log).read_text()):
            assert int(r) == rank
            written[rank, split] = [int(s) for s in shards.split(",")]
    assert written == {
        (0, "train"): [0, 2, 4],
        (1, "train"): [1, 3, 5],
        (0, "val"): [0, 2],
        (1, "val"): [1],
    }
    sharded, reference = _stores(two / "cache"), _stores(one / "cache")
    assert sharded.keys() == reference.keys() == {"train", "val"}
    for split in sharded:
        np.testing.assert_allclose(sharded[split], reference[split], rtol=1e-5, atol=1e-5)
    got, ref = np.load(two / "predictions.npz"), np.load(one / "predictions.npz")
    assert sorted(got.files) == sorted(ref.files) == [f"all/k{k}" for k in (10, 100, 20, 200)]
    for key in ref.files:
        np.testing.assert_array_equal(got[key], ref[key])
    assert len(set(ref["all/k10"].tolist())) > 1  # not one class for every image
    results = json.loads((two / "results.json").read_text())
    assert results["subsets"] == single["subsets"]
    text = format_status(collect(two))
    job = read_record(two)["jobs"][-1]["job_id"]
    assert f"{nodes[0]} ({hosts[0][1]}) rank 0: log.txt, submitit/{job}_0_log.err" in text
    assert f"{nodes[1]} ({hosts[1][1]}) rank 1: log.rank1.txt, submitit/{job}_1_log.err" in text


def _check_fsdp_across_two_nodes_through_a_requeue(runs: dict[str, Path], nodes: list[str]) -> None:
    """FSDP ranks on two hosts (rendezvous from SLURM, one shard file per node) requeued
    mid-run: both resume from the same step and the export equals the uninterrupted one-node
    run bit for bit (two ranks reduce in the same order wherever they run)."""
    run = runs["fsdp2"]
    _assert_two_hosts(run, nodes)
    assert len(set(_hosts(runs["fsdp1"]).values())) == 1
    job = read_record(run)["jobs"][-1]["job_id"]
    assert job_infos([job])[job].restarts == 1
    (step0,), (step1,) = _resumed_at(run / "log.txt"), _resumed_at(run / "log.rank1.txt")
    assert step0 == step1 >= 3
    # A stop lands on a step boundary: no step is lost; one killed mid-step is logged again.
    assert sorted({r["step"] for r in read_metrics(run / "metrics.jsonl")}) == list(
        range(1, STEPS + 1)
    )
    shards = {p.name for p in (run / "checkpoints" / "last").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "trainer.pt"} <= shards
    _assert_same_export(runs["fsdp1"], run)


def _check_ddp_through_a_lone_signal_and_a_dead_node(
    ddp1: Path, cluster: LocalSlurm, data: Path, out: Path
) -> None:
    """A DDP job on two nodes: only node 2's rank gets the time-limit warning (USR2), yet both
    ranks stop at one step and the job requeues and resumes. Then node 2 dies (slurmd and the
    job's processes killed): SLURM notices, status names the node in one line, last.pt is
    intact; cancelled and submitted again once the node is back, the run resumes from it on
    both nodes and exports the one-node run's weights bit for bit."""
    dead = cluster.node_names[1]
    _submit(data, out, *TWO_NODES)
    try:
        _wait_steps(out, 2)
        _signal_task_on(dead, signal.SIGUSR2)
        start = time.monotonic()
        while (
            not _resumed_at(out / "log.txt")
            or max(r["step"] for r in read_metrics(out / "metrics.jsonl"))
            <= _resumed_at(out / "log.txt")[0]
        ):
            assert time.monotonic() - start < 180, format_status(collect(out))
            time.sleep(0.5)
        (stopped,) = _resumed_at(out / "log.txt")
        assert _resumed_at(out / "log.rank1.txt") == [stopped]
        assert f"rank 1 stopped at step {stopped}" in (out / "log.rank1.txt").read_text()

        cluster.kill_node(dead)
        # SLURM requeues a job whose node failed; it waits for nodes (or ends, without requeue).
        start = time.monotonic()
        while True:
            row = collect(out)[0]
            if row.state in ENDED or (row.state == "PENDING" and row.failed_node):
                break
            assert time.monotonic() - start < 120, format_status([row])
            time.sleep(1)
        text = format_status([row])
        notes = [line for line in text.splitlines() if f"node {dead} failed" in line]
        assert len(notes) == 1 and "slurm.exclude=" in notes[0], text
        saved = load_torch_file(out / "checkpoints" / "last.pt")["step"]
        assert stopped <= saved < STEPS
        assert main(["cancel", str(out)]) == 0
    finally:
        cluster.start()  # the node comes back
    assert main(_args(data, out, *TWO_NODES)) == 0
    assert _resumed_at(out / "log.txt") == [stopped, saved]
    assert _resumed_at(out / "log.rank1.txt") == [stopped, saved]
    _assert_two_hosts(out, cluster.node_names)
    _assert_same_export(ddp1, out)
