"""One line on a running stage: its step out of the total, an ETA and where its log is."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from common.rundir import RunDir, read_metrics


def _total_steps(run: RunDir) -> int | None:
    """``train.max_steps`` of the run's config.yaml; None when unset (the schedule decides)."""
    if not run.config.is_file():
        return None
    train = (yaml.safe_load(run.config.read_text()) or {}).get("train") or {}
    steps = train.get("max_steps")
    return int(steps) if isinstance(steps, int) else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_line(name: str, run_dir: Path, started: float, now: float | None = None) -> str:
    """``name: step S/T, 1m10s elapsed, ETA 3m30s; log <run_dir>/log.txt`` from metrics.jsonl.

    ``started`` is the job's start on the ``time.monotonic`` clock; the ETA assumes the
    remaining steps go at the average pace so far.
    """
    run = RunDir(Path(run_dir))
    elapsed = (time.monotonic() if now is None else now) - started
    steps = [r["step"] for r in read_metrics(run.metrics) if isinstance(r.get("step"), int)]
    step, total = (max(steps) if steps else 0), _total_steps(run)
    parts = [f"step {step}/{total}" if total else f"step {step}", f"{_duration(elapsed)} elapsed"]
    if total and 0 < step < total:
        parts.append(f"ETA {_duration(elapsed / step * (total - step))}")
    if not steps:
        parts[0] = "starting (no metrics yet)"
    return f"{name}: {', '.join(parts)}; log {run.log}"
