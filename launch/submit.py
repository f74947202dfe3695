"""Submit stage jobs through submitit (SLURM or local processes) or run them in-process."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.artifacts import ARTIFACT_KEYS, artifact_value
from common.config import Config, to_dict
from common.preemption import Preempted
from common.rundir import changed_config_keys
from launch.job import REQUEUE_COUNT, StageJob
from launch.manifest import now
from launch.options import EXECUTORS, sbatch_parameters, time_minutes
from launch.progress import progress_line
from launch.records import SUBMITIT_DIR, add_job, job_state
from launch.slurm import TERMINAL, LaunchError, job_infos, require_slurm, test_submission

log = logging.getLogger(__name__)
LOCAL_DEFAULT_MINUTES = 7 * 24 * 60


@dataclass
class Submitted:
    """A submitted (or, inline, finished) stage job."""

    job_id: str
    executor: str
    run_dir: Path
    summary: dict | None = None
    handle: Any = None  # the submitit Job (local jobs are polled through it)


def inside_allocation() -> bool:
    """True inside a SLURM job that submitit did not start (e.g. ``srun python -m launch``)."""
    return "SLURM_JOB_ID" in os.environ and "SUBMITIT_EXECUTOR" not in os.environ


def effective_executor(executor: str) -> str:
    """The executor to use: ``inline`` inside an allocation we did not submit."""
    if executor not in EXECUTORS:
        raise LaunchError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor != "inline" and inside_allocation():
        log.info(
            "inside SLURM allocation %s: running the stage directly instead of submitting",
            os.environ["SLURM_JOB_ID"],
        )
        return "inline"
    return executor


def check_run_dir(run_dir: Path, stage: str, cfg: Config) -> None:
    """Refuse, before submitting, a run directory that holds a run with a different config."""
    changed = changed_config_keys(run_dir, cfg, stage)
    if changed:
        raise LaunchError(
            f"{run_dir} already holds a {stage} run with a different config (keys differ: "
            f"{', '.join(changed[:8])}). Choose another --output-dir, or pass --force to "
            "overwrite its config and resume from its checkpoint."
        )


def check_artifacts(stage: str, cfg: Mapping, skip: Sequence[str] = ()) -> None:
    """Artifact paths in the config (backbone, pseudo_masks) must exist before submitting."""
    for key in ARTIFACT_KEYS:
        value = artifact_value(cfg, key)
        if value and key not in skip and not Path(value).exists():
            raise LaunchError(
                f"{stage}: {key}={value} does not exist. Point it at the artifact of an earlier "
                "run (a pretrain run's export/, a distill run's pseudo_masks/), or run that stage "
                "first (`python -m launch pipeline` chains them)."
            )


def make_executor(executor: str, folder: Path, slurm: Mapping, job_name: str) -> Any:
    """A submitit executor for ``slurm`` or ``local`` with the launch options applied."""
    if executor == "slurm":
        require_slurm()
        import submitit

        params = sbatch_parameters(slurm, job_name)
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=slurm["max_requeues"])
        ex.update_parameters(**params)
        return ex
    import submitit

    ex = submitit.LocalExecutor(folder=folder)
    ex.update_parameters(
        timeout_min=time_minutes(slurm["time"], LOCAL_DEFAULT_MINUTES),
        signal_delay_s=slurm["signal_delay_s"],
        tasks_per_node=1,
    )
    return ex


def preflight(executor: str, slurm: Mapping, job_name: str) -> None:
    """Checks that can fail before anything is queued (SLURM commands, partition, account)."""
    if executor == "slurm":
        require_slurm()
        test_submission(sbatch_parameters(slurm, job_name))


def submit_stage(
    job: StageJob,
    executor: str,
    slurm: Mapping,
    dependencies: Sequence[str] = (),
    job_name: str | None = None,
) -> Submitted:
    """Submit one stage job (after ``dependencies`` succeed, SLURM only) or run it inline."""
    run_dir = Path(job.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / REQUEUE_COUNT).unlink(missing_ok=True)
    name = job_name or f"labelfew-{job.stage.replace('/', '-')}"
    common = {
        "stage": job.stage,
        "submitit_dir": str(run_dir / SUBMITIT_DIR),
        "slurm": to_dict(slurm),
    }
    if executor == "inline":
        record = {"job_id": f"inline-{os.getpid()}", "executor": "inline", "submitted": now()}
        try:
            summary = job()
        except Preempted as exc:
            record.update(state="PREEMPTED", error=str(exc))
            add_job(run_dir, record, **common)
            raise
        except Exception as exc:
            record.update(state="FAILED", error=f"{type(exc).__name__}: {exc}")
            add_job(run_dir, record, **common)
            raise
        record["state"] = "COMPLETED"
        add_job(run_dir, record, **common)
        return Submitted(record["job_id"], "inline", run_dir, summary)
    ex = make_executor(executor, run_dir / SUBMITIT_DIR, slurm, name)
    if dependencies and executor == "slurm":
        ex.update_parameters(dependency="afterok:" + ":".join(dependencies))
    sub = ex.submit(job)
    record = {"job_id": str(sub.job_id), "executor": executor, "submitted": now()}
    if dependencies:
        record["after"] = list(dependencies)
    add_job(run_dir, record, **common)
    log.info(
        "%s: submitted %s job %s; its log: %s", job.stage, executor, sub.job_id, run_dir / "log.txt"
    )
    return Submitted(str(sub.job_id), executor, run_dir, handle=sub)


def wait_jobs(
    jobs: Sequence[Submitted],
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    report_s: float = 30.0,
) -> dict[str, str]:
    """Block until every job reached a final state; returns job id -> state.

    Every ``report_s`` seconds it logs each running job's progress (step, ETA, log path).
    """
    start = last_report = time.monotonic()
    states: dict[str, str] = {}
    pending = [j for j in jobs if j.executor != "inline"]
    for j in jobs:
        if j.executor == "inline":
            states[j.job_id] = "COMPLETED"
    while pending:
        infos = job_infos([j.job_id for j in pending if j.executor == "slurm"])
        still = []
        for j in pending:
            if j.executor == "local" and j.handle is not None and not j.handle.done():
                still.append(j)
                continue
            st = job_state(
                {"job_id": j.job_id, "executor": j.executor},
                j.run_dir / SUBMITIT_DIR,
                infos.get(j.job_id),
            )
            if j.executor == "local":
                # The process ended: no success result means it failed or was killed.
                states[j.job_id] = "COMPLETED" if st.state == "COMPLETED" else "FAILED"
            elif st.state in TERMINAL:
                states[j.job_id] = st.state
            else:
                still.append(j)
        pending = still
        if pending and time.monotonic() - last_report >= report_s:
            last_report = time.monotonic()
            for j in pending:
                log.info("%s", progress_line(j.run_dir.name, j.run_dir, start))
        if pending:
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise LaunchError(
                    f"jobs {[j.job_id for j in pending]} still not finished after {timeout_s:.0f}s"
                )
            time.sleep(poll_s)
    return states
