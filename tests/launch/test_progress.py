"""The progress line a waiting pipeline logs for a running stage."""

from __future__ import annotations

from pathlib import Path

from common.rundir import MetricsLogger


def test_progress_shows_step_eta_and_log(tmp_path: Path) -> None:
    from launch.progress import progress_line

    run = tmp_path / "pretrain"
    run.mkdir()
    assert progress_line("pretrain", run, started=0.0, now=5.0) == (
        f"pretrain: starting (no metrics yet), 0m05s elapsed; log {run / 'log.txt'}"
    )
    (run / "config.yaml").write_text("train:\n  max_steps: 100\n")
    logger = MetricsLogger(run / "metrics.jsonl")
    for step in range(1, 26):
        logger.log(step, loss=1.0)
    line = progress_line("pretrain", run, started=0.0, now=60.0)
    # 25 steps in a minute: 75 more take three.
    assert line == f"pretrain: step 25/100, 1m00s elapsed, ETA 3m00s; log {run / 'log.txt'}"
