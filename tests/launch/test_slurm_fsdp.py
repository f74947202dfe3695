"""A train.parallel=fsdp pretrain job with 2 tasks on the local SLURM cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from common.backbone import load_backbone
from common.checkpoint import load_torch_file
from common.rundir import read_metrics
from launch.__main__ import main
from pretrain.export import export_run

pytestmark = pytest.mark.slurm


def test_fsdp_job_with_two_tasks_trains_shards_checkpoints_and_exports(
    slurm_cluster, tiny_pretrain, tmp_path: Path
) -> None:
    """2 SLURM tasks form one gloo group, shard the model (bf16 parameters, fp32 reduction),
    write one shard file each, and rank 0 exports the gathered teacher."""
    out = tmp_path / "fsdp"
    args = ["pretrain", *tiny_pretrain, "--executor", "slurm", "slurm.cpus_per_task=1"]
    args += ["slurm.tasks_per_node=2", "--output-dir", str(out), "train.max_steps=4"]
    assert main([*args, "train.parallel=fsdp", "train.precision=bf16"]) == 0
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    log = (out / "log.txt").read_text()
    assert f"rank 0/2 (local 0) via slurm, backend gloo, master {host}" in log
    assert "global batch 16" in log
    assert "rank 1/2 (local 1) via slurm" in (out / "log.rank1.txt").read_text()
    records = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)

    last = out / "checkpoints" / "last"
    assert {p.name for p in last.iterdir()} == {
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "trainer.pt",
    }
    assert load_torch_file(last / "trainer.pt")["step"] == 4
    assert not (out / "checkpoints" / "last.pt").exists()

    model, _ = load_backbone(out / "export")  # strict
    assert model.embed_dim == 32
    exported = torch.load(out / "export" / "backbone.pth")
    export_run(out)  # one process, reading both shards
    again = torch.load(out / "export" / "backbone.pth")
    assert exported.keys() == again.keys()
    assert all(torch.equal(exported[k], again[k]) for k in exported)
