"""``launch.json`` in a run directory: how the run was launched and its job ids; job states.

A state comes from SLURM while it still knows the job (``scontrol``), else from what the job
left on disk: submitit's result file (success or the traceback), or the local job's process.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.slurm import JobInfo, job_infos

RECORD = "launch.json"
SWEEP_RECORD = "sweep.json"
SUBMITIT_DIR = "submitit"  # submitit's scripts, pickles and logs inside a run directory


def read_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(run_dir: str | Path, record: dict) -> None:
    path = Path(run_dir) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)


def add_job(run_dir: str | Path, job: dict[str, Any], **fields: Any) -> dict:
    """Append a submitted job to the run's record (a run may be submitted again to resume)."""
    record = read_record(run_dir)
    record.update(fields)
    record.setdefault("jobs", []).append(job)
    write_record(run_dir, record)
    return record


def log_paths(submitit_dir: str | Path, job_id: str) -> dict[str, str]:
    """submitit's stdout/stderr files of task 0 of a job."""
    folder = Path(submitit_dir)
    return {
        "stdout": str(folder / f"{job_id}_0_log.out"),
        "stderr": str(folder / f"{job_id}_0_log.err"),
    }


def _result_outcome(submitit_dir: str | Path, job_id: str) -> tuple[str, Any] | None:
    path = Path(submitit_dir) / f"{job_id}_0_result.pkl"
    if not path.is_file():
        return None
    try:
        with path.open("rb") as fh:
            return pickle.load(fh)
    except Exception:  # a torn or foreign pickle: treat as unknown rather than crash status
        return None


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class JobState:
    """One job's state and, when it failed, the error's last line."""

    job_id: str
    executor: str
    state: str
    reason: str = ""
    error: str = ""
    restarts: int = 0


def job_state(job: dict, submitit_dir: str | Path, info: JobInfo | None = None) -> JobState:
    """State of one recorded job (``info``: a prefetched scontrol answer)."""
    jid, executor = str(job["job_id"]), job.get("executor", "slurm")
    outcome = _result_outcome(submitit_dir, jid) if executor != "inline" else None
    error = ""
    if outcome and outcome[0] == "error":
        error = str(outcome[1]).strip().splitlines()[-1] if outcome[1] else "error"
    if executor == "slurm":
        info = info or job_infos([jid]).get(jid)
        # A restarted cluster reuses job ids: trust SLURM only about a job logging here.
        logs_elsewhere = info is not None and info.stdout
        if logs_elsewhere and Path(info.stdout).parent.resolve() != Path(submitit_dir).resolve():
            info = None
        if info is not None:
            return JobState(jid, executor, info.state, info.reason, error, info.restarts)
    if executor == "inline":
        return JobState(jid, executor, job.get("state", "UNKNOWN"), error=job.get("error", ""))
    if outcome is not None:
        return JobState(
            jid, executor, "COMPLETED" if outcome[0] == "success" else "FAILED", "", error
        )
    if executor == "local" and _pid_alive(jid):
        return JobState(jid, executor, "RUNNING")
    return JobState(jid, executor, "UNKNOWN", "no result file and no longer known to SLURM")
