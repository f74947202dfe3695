"""Where a running stage stands, from its run directory: step, loss, speed and an ETA."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from common.rundir import RunDir, read_metrics

# pretrain/train.py logs this line when training starts (again on each resume): the steps the
# run will reach and the images one step consumes over all processes.
PLAN_LINE = re.compile(r"training (\d+) steps \(\d+ per epoch, global batch (\d+)")


def _total_steps(run: RunDir) -> int | None:
    """``train.max_steps`` of the run's config.yaml; None when unset (the schedule decides)."""
    if not run.config.is_file():
        return None
    train = (yaml.safe_load(run.config.read_text()) or {}).get("train") or {}
    steps = train.get("max_steps")
    return int(steps) if isinstance(steps, int) else None


def _plan(run: RunDir) -> tuple[int, int] | None:
    """(total steps, global batch) from the last plan line of the run's log.txt."""
    if not run.log.is_file():
        return None
    found = None
    with run.log.open(errors="replace") as fh:
        for line in fh:
            if "training " in line and (match := PLAN_LINE.search(line)):
                found = (int(match[1]), int(match[2]))
    return found


def duration(seconds: float) -> str:
    """``1h05m`` or ``3m20s``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _last_number(records: list[dict], key: str) -> float | None:
    for record in reversed(records):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


@dataclass(frozen=True)
class RunProgress:
    """The last logged step, loss and images/s of a run, its step total and time to go."""

    step: int | None
    total: int | None
    loss: float | None
    images_per_s: float | None
    eta_s: float | None


def run_progress(run_dir: str | Path) -> RunProgress:
    """A run's progress from its metrics.jsonl and log.txt.

    The ETA is the remaining steps at the last logged speed (images/s over the images of one
    step); only stages that log ``images_per_s`` and their plan line (pretrain) have one.
    """
    run = RunDir(Path(run_dir))
    records = read_metrics(run.metrics)
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    step = max(steps) if steps else None
    plan = _plan(run)
    total = plan[0] if plan else _total_steps(run)
    speed = _last_number(records, "images_per_s")
    eta = None
    if plan and speed and step is not None and step <= total:
        eta = (total - step) * plan[1] / speed
    return RunProgress(step, total, _last_number(records, "loss"), speed, eta)


def progress_line(name: str, run_dir: Path, started: float, now: float | None = None) -> str:
    """``name: step S/T, 1m10s elapsed, ETA 3m30s; log <run_dir>/log.txt`` from metrics.jsonl.

    ``started`` is the job's start on the ``time.monotonic`` clock; the ETA assumes the
    remaining steps go at the average pace so far.
    """
    run = RunDir(Path(run_dir))
    elapsed = (time.monotonic() if now is None else now) - started
    steps = [r["step"] for r in read_metrics(run.metrics) if isinstance(r.get("step"), int)]
    step, total = (max(steps) if steps else 0), _total_steps(run)
    parts = [f"step {step}/{total}" if total else f"step {step}", f"{duration(elapsed)} elapsed"]
    if total and 0 < step < total:
        parts.append(f"ETA {duration(elapsed / step * (total - step))}")
    if not steps:
        parts[0] = "starting (no metrics yet)"
    return f"{name}: {', '.join(parts)}; log {run.log}"
