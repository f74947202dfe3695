"""``python -m launch status|cancel RUN_DIR`` for a run, a pipeline or a sweep directory."""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

from common.rundir import read_metrics
from launch.manifest import Manifest
from launch.progress import RunProgress, duration, run_progress
from launch.records import (
    SUBMITIT_DIR,
    SWEEP_RECORD,
    JobState,
    job_state,
    log_paths,
    read_record,
)
from launch.report import flat_numbers, node_log_lines
from launch.slurm import LaunchError, cancel, job_infos


@dataclass
class RunStatus:
    """One run's job, its state, progress and where its logs are."""

    name: str
    run_dir: Path
    job: JobState | None
    last_step: int | None
    last_metrics: dict
    logs: dict[str, str]
    progress: RunProgress
    nodes: list[str] = field(default_factory=list)  # per node: host, address, ranks, logs
    failed_node: str | None = None

    @property
    def state(self) -> str:
        return self.job.state if self.job else "NOT SUBMITTED"


def _entries(path: Path) -> list[tuple[str, Path, dict | None]]:
    """(name, run dir, job record) for every run under ``path``."""
    if (path / "manifest.json").is_file():
        stages = Manifest(path).read()["stages"]
        out = []
        for name, entry in stages.items():
            job = None
            if entry.get("job_id"):
                job = {"job_id": entry["job_id"], "executor": entry.get("executor", "slurm")}
            elif entry.get("status") == "failed":
                # A stage that failed in-process never got its job id into the manifest.
                job = (read_record(entry["run_dir"]).get("jobs") or [None])[-1]
            out.append((name, Path(entry["run_dir"]), job))
        return out
    if (path / SWEEP_RECORD).is_file():
        sweep = json.loads((path / SWEEP_RECORD).read_text())
        return [(p["name"], Path(p["run_dir"]), p.get("job")) for p in sweep["points"]]
    record = read_record(path)
    if record.get("jobs"):
        return [(record.get("stage", path.name), path, record["jobs"][-1])]
    raise LaunchError(
        f"{path} holds no launch record (manifest.json, sweep.json or launch.json); give the "
        "--output-dir of a `python -m launch` run, pipeline or sweep"
    )


def collect(path: str | Path) -> list[RunStatus]:
    """State, last logged step and log paths of every job of a run/pipeline/sweep."""
    path = Path(path)
    entries = _entries(path)
    slurm_ids = [j["job_id"] for _, _, j in entries if j and j.get("executor") == "slurm"]
    infos = job_infos(slurm_ids) if slurm_ids else {}
    out = []
    for name, run_dir, job in entries:
        submitit_dir = run_dir / SUBMITIT_DIR
        state = job_state(job, submitit_dir, infos.get(str(job["job_id"]))) if job else None
        if state is not None and job and job.get("executor") == "inline":
            record_jobs = read_record(run_dir).get("jobs", [])
            if record_jobs:
                state = job_state(record_jobs[-1], submitit_dir)
        metrics = read_metrics(run_dir / "metrics.jsonl")
        last = metrics[-1] if metrics else {}
        logs = {"stage": str(run_dir / "log.txt")}
        nodes, dead = node_log_lines(run_dir), None
        if job and job.get("executor") != "inline":
            logs.update(log_paths(submitit_dir, str(job["job_id"])))
            nodes = node_log_lines(run_dir, submitit_dir / str(job["job_id"]))
        if state is not None and state.state not in ("COMPLETED", "RUNNING"):
            dead = failed_node(submitit_dir, state.job_id)
        shown = ("step", "loss", "images_per_s")  # in their own columns
        numbers = flat_numbers({k: v for k, v in last.items() if k not in shown}, depth=1)
        out.append(
            RunStatus(
                name,
                run_dir,
                state,
                last.get("step"),
                dict(list(numbers.items())[:4]),
                logs,
                run_progress(run_dir),
                nodes,
                dead,
            )
        )
    return out


# srun's line in the tasks' stderr when slurmctld declares a node of the step dead.
NODE_FAILURE = re.compile(r"srun: error: Node failure on (\S+)")


def failed_node(submitit_dir: Path, job_id: str) -> str | None:
    """The node that failed under the job, as srun reported it in the tasks' stderr."""
    for err in sorted(submitit_dir.glob(f"{job_id}_*_log.err")):
        with err.open(errors="replace") as fh:
            for line in fh:
                m = NODE_FAILURE.search(line)
                if m:
                    return m.group(1)
    return None


def _node_failure_note(r: RunStatus) -> str:
    """One line: which node died, that the checkpoint is kept, and how to go on."""
    n = r.failed_node
    return (
        f"  {r.name}: node {n} failed under job {r.job.job_id}; its last checkpoint in "
        f"{r.run_dir / 'checkpoints'} is kept. SLURM requeues the job to resume from it once "
        f"enough nodes are up (`sinfo -N`), or cancel it (`python -m launch cancel "
        f"{r.run_dir}`) and submit the same command again, with slurm.exclude={n} to avoid it"
    )


def _progress_cells(r: RunStatus) -> tuple[str, str, str, str]:
    """step (``S/T`` when the total is known), loss, images/s, and the ETA of a running job."""
    p = r.progress
    step = "-" if r.last_step is None else str(r.last_step)
    if r.last_step is not None and p.total:
        step = f"{r.last_step}/{p.total}"
    loss = "-" if p.loss is None else f"{p.loss:.4g}"
    speed = "-" if p.images_per_s is None else f"{p.images_per_s:.1f}"
    eta = duration(p.eta_s) if r.state == "RUNNING" and p.eta_s is not None else "-"
    return step, loss, speed, eta


def format_status(rows: list[RunStatus]) -> str:
    """A plain-text table, the logs of each node of a distributed run, and for failed jobs
    the error and the log to read (one line naming the node when a node died).

    Per job: the last logged step, loss and images/s from metrics.jsonl and, while it runs,
    the ETA at its last logged speed.
    """
    lines = [
        f"{'run':<16} {'job':<12} {'state':<28} {'step':>11} {'loss':>8} {'img/s':>8} "
        f"{'ETA':>7}  last metrics"
    ]
    notes, node_lines = [], []
    for r in rows:
        node_lines += [f"  {r.name}: {line}" for line in r.nodes]
        job = r.job.job_id if r.job else "-"
        state = r.state + (
            f" ({r.job.reason})" if r.job and r.job.reason not in ("", "None") else ""
        )
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in r.last_metrics.items())
        step, loss, speed, eta = _progress_cells(r)
        lines.append(
            f"{r.name:<16} {job:<12} {state:<28} {step:>11} {loss:>8} {speed:>8} {eta:>7}  "
            f"{metrics}".rstrip()
        )
        if r.job is None:
            notes.append(f"  {r.name}: not submitted")
        elif r.failed_node:
            notes.append(_node_failure_note(r))
        elif r.state not in ("COMPLETED", "RUNNING", "PENDING"):
            log = r.logs.get("stderr") or r.logs["stage"]
            err = f": {r.job.error}" if r.job and r.job.error else ""
            notes.append(f"  {r.name}: {r.state}{err}\n    logs: {log} and {r.logs['stage']}")
    if node_lines:
        lines += ["", "Logs per node (host, address, ranks: logs in the run directory):"]
        lines += node_lines
    if notes:
        lines += ["", "Not completed:", *notes]
    return "\n".join(lines)


def cancel_runs(path: str | Path) -> list[str]:
    """Cancel every unfinished job of a run/pipeline/sweep; returns the cancelled job ids."""
    rows = collect(path)
    active = [
        r for r in rows if r.job and r.state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING")
    ]
    slurm_ids = [r.job.job_id for r in active if r.job.executor == "slurm"]
    cancel(slurm_ids)
    for r in active:
        if r.job.executor == "local":
            os.kill(int(r.job.job_id), signal.SIGTERM)
    manifest = Manifest(path)
    if manifest.exists():
        for r in active:
            manifest.update_stage(r.name, status="cancelled")
    return [r.job.job_id for r in active]
