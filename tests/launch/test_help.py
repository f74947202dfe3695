"""``python -m launch <target> --help``: each target has its own help with an example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _help(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "launch", *args, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_usage_shows_overrides_and_the_sweep_syntax() -> None:
    usage = _help().split("\n\n", 1)[0]
    assert "key=value" in usage and "key=v1,v2" in usage


@pytest.mark.parametrize(
    "target, expected",
    [
        ("pipeline", "python -m launch pipeline --config configs/pipeline/"),
        ("sweep", "train.lr=1e-3,3e-3"),
        ("status", "python -m launch status runs/"),
        ("distill/segment", "python -m launch distill/segment --config"),
    ],
)
def test_each_target_has_its_own_help_with_an_example(target: str, expected: str) -> None:
    text = _help(target)
    assert text.startswith(f"usage: python -m launch {target}")
    assert "Example:" in text and expected in text
