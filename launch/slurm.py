"""Thin wrappers over SLURM's client commands: checks before submitting, job states, cancel.

No accounting database is assumed (``sacct`` often is not there): states come from
``scontrol show job``, which knows a job until ``MinJobAge`` after it ends; after that the
caller falls back to the files the job left (see :mod:`launch.records`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import UserError

APT_HINT = "apt-get install slurm-client (Debian/Ubuntu) or load your site's slurm module"
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "DEPENDENCY_NEVER_SATISFIED",
}


class LaunchError(UserError, RuntimeError):
    """Something that stops a launch before (or while) submitting; the message says the fix."""


def require_slurm() -> None:
    """Raise a LaunchError saying how to get submitit and the SLURM clients when missing."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise LaunchError(
            "submitit is not installed: `pip install submitit` (it is a dependency of this "
            "package: `pip install -e .`), or run with --executor inline"
        ) from None
    missing = [c for c in ("sbatch", "srun", "scontrol", "squeue") if shutil.which(c) is None]
    if missing:
        raise LaunchError(
            f"--executor slurm needs the SLURM commands {', '.join(missing)} on PATH ({APT_HINT}). "
            "Without a cluster, use --executor local to run the job on this machine."
        )


def _flag(key: str, value: Any) -> str:
    return f"--{key.replace('_', '-')}={value}"


def test_submission(params: Mapping[str, Any]) -> None:
    """``sbatch --test-only`` with the job's resources: SLURM rejects a bad partition, account,
    QoS, constraint or size here, before anything is queued; its message is passed on."""
    keys = (
        "partition",
        "account",
        "qos",
        "constraint",
        "exclude",
        "nodes",
        "ntasks_per_node",
        "cpus_per_task",
        "gpus_per_node",
        "mem",
        "time",
    )
    cmd = ["sbatch", "--test-only", "--output=/dev/null"]
    cmd += [_flag(k, params[k]) for k in keys if params.get(k) is not None]
    cmd += [_flag(k, v) for k, v in (params.get("additional_parameters") or {}).items()]
    cmd.append("--wrap=true")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip()
        raise LaunchError(
            f"SLURM rejected the job before submission:\n  {message}\n"
            f"(checked with: {' '.join(cmd)}). Fix the slurm.* option it names "
            "(`sinfo -s` lists partitions, `sacctmgr show assoc user=$USER` accounts)."
        )


@dataclass(frozen=True)
class JobInfo:
    """What ``scontrol show job`` says about one job (or one array task)."""

    job_id: str
    state: str
    reason: str = ""
    exit_code: str = ""
    restarts: int = 0
    stdout: str = ""


def _parse_line(line: str) -> dict[str, str]:
    fields = {}
    for token in line.split():
        if "=" in token:
            key, value = token.split("=", 1)
            fields.setdefault(key, value)
    return fields


def job_infos(job_ids: Iterable[str]) -> dict[str, JobInfo]:
    """States of the given jobs (``123`` or array tasks ``123_4``); unknown ids are left out."""
    out: dict[str, JobInfo] = {}
    for base in sorted({str(j).split("_")[0] for j in job_ids}):
        proc = subprocess.run(
            ["scontrol", "show", "job", "-o", base], capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            continue
        for line in proc.stdout.splitlines():
            f = _parse_line(line)
            if "JobId" not in f:
                continue
            jid = f["JobId"]
            if f.get("ArrayJobId") and f.get("ArrayTaskId", "").isdigit():
                jid = f"{f['ArrayJobId']}_{f['ArrayTaskId']}"
            state = f.get("JobState", "UNKNOWN")
            if state == "PENDING" and f.get("Reason") == "DependencyNeverSatisfied":
                state = "DEPENDENCY_NEVER_SATISFIED"
            out[jid] = JobInfo(
                job_id=jid,
                state=state,
                reason=f.get("Reason", ""),
                exit_code=f.get("ExitCode", ""),
                restarts=int(f.get("Restarts", "0") or 0),
                stdout=f.get("StdOut", ""),
            )
    return out


def cancel(job_ids: Iterable[str]) -> None:
    """``scancel`` the given jobs (ids that already ended are ignored by SLURM)."""
    ids = [str(j) for j in job_ids]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
