"""The callable a launched job runs: one stage in its run directory, preemption-safe.

On SLURM's warning signal (submitit's USR2, also USR1/SIGTERM) the job only sets the
``common.preemption`` flag; the stage's loop writes its last checkpoint at the next step
boundary and raises ``Preempted``; the job then requeues itself (``scontrol requeue``, or
submitit's local requeue) and the requeued run resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import submitit

from common import preemption
from common.cli import run_stage
from common.config import to_config
from common.distributed import detect_env
from common.errors import UserError
from launch.manifest import Manifest
from launch.stages import PRODUCES, stage_function

log = logging.getLogger(__name__)
REQUEUE_COUNT = ".requeue_count"
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class RequeueLimitError(UserError, RuntimeError):
    """A job was pre-empted more often than ``slurm.max_requeues`` allows."""


@dataclass
class StageJob(submitit.helpers.Checkpointable):
    """Run ``stage`` with the resolved ``config`` in ``output_dir`` (picklable for submitit).

    ``pipeline_dir``/``step`` tie the run to a pipeline manifest: inputs are verified before
    the stage starts and outputs are checksummed when it ends.
    """

    stage: str
    config: dict
    output_dir: str
    force: bool = False
    max_requeues: int = 3
    pipeline_dir: str | None = None
    step: str | None = None

    def __call__(self) -> dict:
        # Replace submitit's USR2 handler (which would exit mid-step): stop at a step boundary.
        preemption.clear_stop()
        preemption.install_signal_handlers(PREEMPT_SIGNALS)
        rank = detect_env().rank
        manifest = Manifest(self.pipeline_dir) if self.pipeline_dir else None
        if manifest is not None and rank == 0:
            manifest.update_stage(self.step, status="running", host=os.uname().nodename)
            manifest.verify_inputs(self.step)
        fn = stage_function(self.stage)
        try:
            summary = run_stage(
                self.stage, fn, to_config(self.config), self.output_dir, force=self.force
            )
        except preemption.Preempted as exc:
            self._requeue(exc, rank)
            raise
        except Exception as exc:
            if manifest is not None and rank == 0:
                manifest.update_stage(
                    self.step, status="failed", error=f"{type(exc).__name__}: {exc}"
                )
            raise
        summary = summary or {}
        if rank == 0:
            results = Path(self.output_dir) / "results.json"
            if not results.is_file():
                results.write_text(json.dumps(summary, indent=2, default=str))
            if manifest is not None:
                produces = {
                    name: Path(self.output_dir) / rel for name, rel in PRODUCES[self.stage].items()
                }
                manifest.record_outputs(self.step, produces, summary)
        return summary

    def _requeue(self, exc: preemption.Preempted, rank: int) -> None:
        """Requeue the job after the stage checkpointed; returns only when it cannot."""
        if rank != 0:
            log.info("rank %d stopped at step %d; rank 0 requeues the job", rank, exc.step)
            sys.exit(0)
        counter = Path(self.output_dir) / REQUEUE_COUNT
        count = int(counter.read_text()) if counter.is_file() else 0
        if count >= self.max_requeues:
            raise RequeueLimitError(
                f"pre-empted {count + 1} times, more than slurm.max_requeues={self.max_requeues}; "
                f"the last checkpoint (step {exc.step}) is intact: submit the same command again "
                "to resume, or raise slurm.max_requeues"
            ) from exc
        counter.write_text(str(count + 1))
        executor = os.environ.get("SUBMITIT_EXECUTOR")
        if executor == "local":
            from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

            log.warning("stopped at step %d; the local controller restarts the job", exc.step)
            sys.exit(LOCAL_REQUEUE_RETURN_CODE)
        job_id = (
            submitit.JobEnvironment().job_id
            if executor == "slurm"
            else os.environ.get("SLURM_JOB_ID")
        )
        if not job_id:
            log.warning(
                "stopped at step %d with the last checkpoint written; run the same command "
                "again to resume",
                exc.step,
            )
            return
        proc = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            # E.g. the stop came from scancel: the job ends for good, its checkpoint written.
            log.warning(
                "stopped at step %d; SLURM did not requeue job %s (%s)",
                exc.step,
                job_id,
                proc.stderr.strip(),
            )
            sys.exit(1)
        log.warning(
            "stopped at step %d; requeued SLURM job %s (%d/%d)",
            exc.step,
            job_id,
            count + 1,
            self.max_requeues,
        )
        # Like submitit's own handler: leave without a result file, the requeued job writes it.
        sys.exit(-1)
