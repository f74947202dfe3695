"""`python -m launch status`: per job the last logged step, loss, images/s and, while it runs,
an ETA, from the files a real pretrain run writes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.rundir import read_metrics
from launch.__main__ import main
from launch.progress import duration, run_progress
from launch.records import read_record, write_record
from launch.status import collect, format_status


def _row(text: str, name: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.startswith(name + " "))


def test_a_running_job_shows_step_loss_speed_and_eta(
    tiny_pretrain: list[str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(["pretrain", *tiny_pretrain, "--executor", "inline", "--output-dir", str(out)]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 9))
    # The files as they stood after step 5 of 8: its metrics.jsonl cut there, its job (a live
    # local process) still running.
    (out / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (out / "metrics.jsonl").read_text().splitlines()[:5])
    )
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    record = read_record(out)
    try:
        write_record(
            out,
            {**record, "jobs": [*record["jobs"], {"job_id": str(job.pid), "executor": "local"}]},
        )
        capsys.readouterr()
        assert main(["status", str(out)]) == 0
        text = capsys.readouterr().out
    finally:
        job.kill()
        job.wait()
    fifth = records[4]
    # pretrain_tiny.yaml: batch_size 8 in one process, so 3 steps to go are 24 images.
    eta = duration(3 * 8 / fifth["images_per_s"])
    row = _row(text, "pretrain")
    assert row[:7] == [
        "pretrain",
        str(job.pid),
        "RUNNING",
        "5/8",
        f"{fifth['loss']:.4g}",
        f"{fifth['images_per_s']:.1f}",
        eta,
    ]
    assert "loss=" not in text and "images_per_s" not in text  # not repeated in last metrics

    # A job that is not running (here the inline one that wrote the files) has no ETA.
    write_record(out, record)
    row = _row(format_status(collect(out)), "pretrain")
    assert row[2:7] == [
        "COMPLETED",
        "5/8",
        f"{fifth['loss']:.4g}",
        f"{fifth['images_per_s']:.1f}",
        "-",
    ]


def test_a_run_without_metrics_shows_dashes(tmp_path: Path) -> None:
    progress = run_progress(tmp_path)
    assert progress.step is progress.loss is progress.images_per_s is progress.eta_s is None


@pytest.mark.slurm
def test_status_of_a_running_slurm_job(slurm_cluster, tiny_pretrain, tmp_path: Path) -> None:
    """A real pretrain job on the local cluster, read while it trains, then cancelled."""
    out = tmp_path / "long"
    args = ["pretrain", *tiny_pretrain, "--executor", "slurm", "--no-wait"]
    overrides = ["slurm.cpus_per_task=1", "train.epochs=10000", "train.max_steps=5000"]
    assert main([*args, *overrides, "--output-dir", str(out)]) == 0
    job = read_record(out)["jobs"][-1]["job_id"]
    try:
        start = time.monotonic()
        while len(read_metrics(out / "metrics.jsonl")) < 3:
            assert time.monotonic() - start < 180, format_status(collect(out))
            time.sleep(0.5)
        row = collect(out)[0]
        text = format_status([row])
    finally:
        subprocess.run(["scancel", job], check=True)
    assert row.state == "RUNNING"
    p = row.progress
    assert p.step is not None and p.step >= 3 and p.total == 5000
    logged = {r["step"]: r for r in read_metrics(out / "metrics.jsonl")}
    assert p.loss == logged[p.step]["loss"]
    assert p.images_per_s == logged[p.step]["images_per_s"]
    assert p.eta_s == pytest.approx((5000 - p.step) * 8 / p.images_per_s)
    cells = _row(text, "pretrain")
    assert cells[1:7] == [
        job,
        "RUNNING",
        f"{p.step}/5000",
        f"{p.loss:.4g}",
        f"{p.images_per_s:.1f}",
        duration(p.eta_s),
    ]
