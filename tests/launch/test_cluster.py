"""The local SLURM cluster: idempotent start under concurrency, shared sessions, srun inside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.records import read_record
from launch.testing.cluster import SCRIPT, LocalSlurm

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parents[2]


def _ctld_pid(cluster: LocalSlurm) -> str:
    return (cluster.state_dir / "slurmctld.pid").read_text().strip()


def test_concurrent_starts_reuse_the_running_cluster(slurm_cluster: LocalSlurm) -> None:
    before = _ctld_pid(slurm_cluster)
    procs = [
        subprocess.Popen(["bash", str(SCRIPT), "start"], stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "reusing the running cluster" in err
    assert _ctld_pid(slurm_cluster) == before
    node = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout
    assert node.strip() in ("idle", "mix", "alloc")


def test_a_second_session_leaving_keeps_the_cluster_up(slurm_cluster: LocalSlurm) -> None:
    code = "from launch.testing.cluster import LocalSlurm\nwith LocalSlurm().session(): pass\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    assert slurm_cluster.is_up()


def test_inside_an_allocation_the_stage_runs_directly(
    slurm_cluster: LocalSlurm, tiny_pretrain: list[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch", "pretrain", *tiny_pretrain, "--executor", "slurm"]
    cmd += ["--output-dir", str(out), "train.max_steps=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_JOB")}
    proc = subprocess.run(
        ["srun", "--ntasks=1", "--cpus-per-task=1", *cmd],
        cwd=REPO,
        env={**env, **slurm_cluster.env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "running the stage directly" in proc.stderr
    jobs = read_record(out)["jobs"]
    assert [j["executor"] for j in jobs] == ["inline"]
    assert not (out / "submitit").exists()
    assert (out / "export" / "backbone.pth").is_file()
