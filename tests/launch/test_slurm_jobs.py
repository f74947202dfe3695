"""Real jobs on the local one-node SLURM cluster: submit, requeue, 2 tasks, failures."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from common.backbone import load_backbone
from common.rundir import read_metrics
from launch.__main__ import main
from launch.records import read_record
from launch.slurm import job_infos
from launch.status import collect, format_status

pytestmark = pytest.mark.slurm
ONE_CPU = "slurm.cpus_per_task=1"


def _job_id(run_dir: Path) -> str:
    return read_record(run_dir)["jobs"][-1]["job_id"]


def _wait(run_dir: Path, timeout: float = 240) -> str:
    """Poll `status` until the run's job ended; returns its state."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        row = collect(run_dir)[0]
        if row.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            return row.state
        time.sleep(1)
    raise AssertionError(
        f"{run_dir} did not finish in {timeout}s: {format_status(collect(run_dir))}"
    )


def test_pretrain_job_and_a_requeued_twin_end_identical(
    slurm_cluster, tiny_pretrain, tmp_path: Path
) -> None:
    """A real pretrain job, and a twin sent USR2 (SLURM's time-limit warning) mid-run that
    checkpoints, requeues and resumes: same steps, bit-identical weights."""
    ref, pre = tmp_path / "ref", tmp_path / "pre"
    for out in (ref, pre):
        args = ["pretrain", *tiny_pretrain, "--executor", "slurm", "--no-wait", ONE_CPU]
        assert main([*args, "--output-dir", str(out)]) == 0
    job = _job_id(pre)
    start = time.monotonic()
    while len(read_metrics(pre / "metrics.jsonl")) < 3:
        assert time.monotonic() - start < 120, "the job never logged 3 steps"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert _wait(ref) == "COMPLETED"
    assert _wait(pre) == "COMPLETED"

    # The uninterrupted job: outputs, strict-loadable export, logs where status says.
    model, _ = load_backbone(ref / "export")
    assert model.embed_dim == 32
    assert json.loads((ref / "results.json").read_text())["steps"] == 8
    assert (ref / "submitit" / f"{_job_id(ref)}_0_log.out").is_file()
    assert "COMPLETED" in format_status(collect(ref))

    # The pre-empted twin: requeued once, resumed from last.pt, nothing lost or repeated.
    info = job_infos([job]).get(job)
    assert info is not None and info.restarts == 1
    assert "resumed from" in (pre / "log.txt").read_text()
    assert [r["step"] for r in read_metrics(pre / "metrics.jsonl")] == list(range(1, 9))
    a = torch.load(ref / "export" / "backbone.pth")
    b = torch.load(pre / "export" / "backbone.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_task_job_initialises_gloo_from_slurm_variables(
    slurm_cluster, tiny_pretrain, tmp_path: Path
) -> None:
    """One pretrain job, 2 tasks: both ranks join one gloo group set up from SLURM_*."""
    out = tmp_path / "ddp"
    args = ["pretrain", *tiny_pretrain, "--executor", "slurm", ONE_CPU, "slurm.tasks_per_node=2"]
    assert main([*args, "--output-dir", str(out), "train.max_steps=3"]) == 0
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    port = 20000 + int(_job_id(out)) % 20000  # the rendezvous port is derived from the job id
    log = (out / "log.txt").read_text()
    assert f"rank 0/2 (local 0) via slurm, backend gloo, master {host}:{port}" in log
    assert "global batch 16" in log  # 2 processes x batch_size 8
    assert "rank 1/2 (local 1) via slurm" in (out / "log.rank1.txt").read_text()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_failing_stage_stops_dependents_and_status_shows_the_log(
    slurm_cluster, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tiny = Path(__file__).with_name("pretrain_tiny.yaml")
    pipe = tmp_path / "fail.yaml"
    pipe.write_text(
        f"""
slurm: {{cpus_per_task: 1}}
stages:
  first:
    stage: pretrain
    config: {tiny}
    overrides: {{data.root: {tmp_path}/no_such_dataset}}
  second:
    stage: pretrain
    config: {tiny}
    after: [first]
"""
    )
    out = tmp_path / "p"
    code = main(
        ["pipeline", "--config", str(pipe), "--executor", "slurm", "--output-dir", str(out)]
    )
    capsys.readouterr()
    assert code == 1
    rows = {r.name: r for r in collect(out)}
    assert rows["first"].state == "FAILED"
    assert rows["second"].state in ("CANCELLED", "DEPENDENCY_NEVER_SATISFIED")
    assert not (out / "second" / "metrics.jsonl").exists()
    recorded = json.loads((out / "manifest.json").read_text())["stages"]
    assert recorded["first"]["status"] == "failed"
    assert recorded["second"]["status"] in ("cancelled", "dependency_never_satisfied")
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "first" in text and "FAILED" in text
    err_log = rows["first"].logs["stderr"]
    assert err_log in text and "no_such_dataset" in Path(err_log).read_text()


def test_pipeline_chains_three_jobs_with_afterok_and_a_manifest(
    slurm_cluster, fashion_scenes_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pipe = Path(__file__).with_name("pipeline_tiny.yaml")
    out = tmp_path / "pipe"
    roots = [f"{s}.data.root={fashion_scenes_root}" for s in ("pretrain", "distill", "fewshot")]
    args = ["pipeline", "--config", str(pipe), "--executor", "slurm", "--output-dir", str(out)]
    assert main([*args, *roots]) == 0
    printed = capsys.readouterr().out
    assert "| fewshot | COMPLETED |" in printed and "report.md" in printed
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    ids = {name: manifest[name]["job_id"] for name in ("pretrain", "distill", "fewshot")}
    for name, after in (("distill", ["pretrain"]), ("fewshot", ["pretrain", "distill"])):
        script = (out / name / "submitit" / f"{ids[name]}_submission.sh").read_text()
        deps = ":".join(ids[a] for a in after)
        assert f"#SBATCH --dependency=afterok:{deps}" in script
    export = manifest["pretrain"]["produces"]["export"]
    assert export["path"] == str(out.resolve() / "pretrain" / "export")
    assert manifest["distill"]["consumes"]["backbone"]["sha256"] == export["sha256"]
    masks = manifest["distill"]["produces"]["pseudo_masks"]["path"]
    assert manifest["fewshot"]["consumes"]["pseudo_masks"]["path"] == masks
    assert manifest["fewshot"]["config"]["supervision"] == "weak"
    assert all(manifest[n]["status"] == "completed" for n in ids)
    report = (out / "report.md").read_text()
    assert "figures/pretrain_loss.png" in report and "episodes_1way.png" in report

    # Re-running skips completed stages; an artifact edited since is refused before submitting.
    (out / "pretrain" / "export" / "backbone.json").write_text("{}")
    with pytest.raises(SystemExit) as refused:
        main([*args, *roots])
    assert refused.value.code == 2
    assert "changed after it was produced" in capsys.readouterr().err
    assert (
        json.loads((out / "manifest.json").read_text())["stages"]["distill"]["job_id"]
        == ids["distill"]
    )


def test_sweep_is_one_job_array(slurm_cluster, tiny_pretrain, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "--stage", "pretrain", *tiny_pretrain, "--executor", "slurm", ONE_CPU]
    assert main([*args, "--output-dir", str(out), "train.max_steps=2", "seed=0,1"]) == 0
    assert capsys.readouterr().out.count("| 2 |") == 2
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["point"] for p in points] == [{"seed": "0"}, {"seed": "1"}]
    for p in points:  # one run directory per point, each a complete run
        assert Path(p["run_dir"]).name == f"seed={p['point']['seed']}"
        assert (Path(p["run_dir"]) / "export" / "backbone.pth").is_file()
    ids = [p["job"]["job_id"] for p in points]
    base = ids[0].split("_")[0]
    assert ids == [f"{base}_0", f"{base}_1"]
    assert "#SBATCH --array=0-1%2" in (out / "submitit" / f"{base}_submission.sh").read_text()


def test_cancel_stops_every_job_of_a_pipeline(
    slurm_cluster, fashion_scenes_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tiny = Path(__file__).with_name("pretrain_tiny.yaml")
    pipe = tmp_path / "two.yaml"
    pipe.write_text(
        f"""
slurm: {{cpus_per_task: 1}}
stages:
  first: {{stage: pretrain, config: {tiny}, overrides: {{train.max_steps: 500}}}}
  second: {{stage: pretrain, config: {tiny}, after: [first]}}
"""
    )
    out = tmp_path / "p"
    roots = [f"{s}.data.root={fashion_scenes_root}" for s in ("first", "second")]
    args = ["pipeline", "--config", str(pipe), "--executor", "slurm", "--no-wait"]
    assert main([*args, "--output-dir", str(out), *roots]) == 0
    assert main(["cancel", str(out)]) == 0
    assert "cancelled 2 job(s)" in capsys.readouterr().out
    deadline = time.monotonic() + 60
    while {r.state for r in collect(out)} != {"CANCELLED"}:
        assert time.monotonic() < deadline, format_status(collect(out))
        time.sleep(0.5)
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["first"]["status"] == stages["second"]["status"] == "cancelled"
