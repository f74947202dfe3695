"""The CLI wrapper: an expected error is one line and exit code 2; a bug keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.checkpoint import CheckpointError
from common.cli import defaults_key_list, run_cli
from common.datasets.errors import DatasetNotFoundError


def _raise(exc: BaseException):
    def main(argv: list[str]) -> int:
        raise exc

    return main


def test_an_expected_error_is_one_line_with_its_hint(capsys, monkeypatch) -> None:
    monkeypatch.delenv("LABELFEW_DEBUG", raising=False)
    error = DatasetNotFoundError("data.root /x does not exist\n  (looked there)", hint="fix it")
    with pytest.raises(SystemExit) as exc:
        run_cli(_raise(error), [])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "error: data.root /x does not exist (looked there)\nhint: fix it\n"
    )


def test_debug_reraises_the_expected_error(monkeypatch) -> None:
    monkeypatch.delenv("LABELFEW_DEBUG", raising=False)
    with pytest.raises(CheckpointError):
        run_cli(_raise(CheckpointError("bad")), ["--debug"])
    monkeypatch.setenv("LABELFEW_DEBUG", "1")
    with pytest.raises(CheckpointError):
        run_cli(_raise(CheckpointError("bad")), [])


def test_an_unexpected_error_keeps_its_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        run_cli(_raise(ZeroDivisionError("a bug")), [])


def test_a_dataloader_worker_traceback_is_cut_to_the_original_message(capsys) -> None:
    wrapped = CheckpointError(
        "Caught CheckpointError in DataLoader worker process 0.\nOriginal Traceback (most "
        'recent call last):\n  File "x.py", line 1, in f\ncommon.checkpoint.CheckpointError: '
        "checkpoint /r/last.pt is unreadable\n"
    )
    with pytest.raises(SystemExit):
        run_cli(_raise(wrapped), [])
    assert capsys.readouterr().err == "error: checkpoint /r/last.pt is unreadable\n"


TOY_DEFAULTS = """\
stage: toy
seed: 0                  # seeds everything
# Why the lr is what it is.
# A second line that help leaves out.
lr: 0.001
train:
  max_steps: null        # step to stop at
  sizes: [1, 2]
_types:
  train.max_steps: int
"""


def test_help_key_list_is_read_from_the_defaults_file(tmp_path: Path) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "default.yaml").write_text(TOY_DEFAULTS)
    assert defaults_key_list("toy", tmp_path).splitlines() == [
        "  seed=0  seeds everything",
        "  lr=0.001  Why the lr is what it is.",
        "  train.max_steps=null  step to stop at",
        "  train.sizes=[1, 2]",
    ]


def test_fewshot_help_names_the_keys_that_set_a_run() -> None:
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "fewshot", "--help"], cwd=repo, capture_output=True, text=True
    ).stdout
    for key in ("backbone.source=null", "pseudo_masks=null", "fold=0", "way=1", "shot=1"):
        assert f"\n  {key}  " in out, key
    assert "supervision=" in out and "Example:" in out
