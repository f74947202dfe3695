"""Atomic checkpoint writes and clear errors for unreadable or mismatched checkpoints."""

import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

from common.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_state_dict_strict,
    load_torch_file,
    save_checkpoint,
)


def _write_forever(path: str) -> None:
    big = {"w": torch.randn(4_000_000)}  # ~16 MB per write: a kill lands mid-write
    i = 0
    while True:
        big["i"] = i
        atomic_torch_save(big, path)
        i += 1


def test_crash_mid_write_leaves_previous_last_loadable(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"i": -1, "w": torch.zeros(1)}, path)
    proc = mp.get_context("spawn").Process(target=_write_forever, args=(str(path),))
    proc.start()
    time.sleep(3.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    state = load_torch_file(path)  # must not raise: the rename is atomic
    assert "i" in state
    leftovers = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    # a killed writer may leave its temp file, but never a half-written last.pt
    assert all(p.name.endswith(".tmp") for p in leftovers)


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated"):
        load_torch_file(path)


def test_rolling_checkpoints_keep_the_latest(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint({"step": step}, tmp_path, step, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == [
        "step_00000003.pt",
        "step_00000004.pt",
    ]
    assert load_torch_file(tmp_path / "last.pt")["step"] == 4


def test_strict_load_names_the_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    other = torch.nn.Sequential(torch.nn.Linear(4, 5)).state_dict()
    with pytest.raises(CheckpointError, match=r"0.weight: checkpoint \(5, 4\) vs model \(3, 4\)"):
        load_state_dict_strict(model, other, "test checkpoint")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_state_dict_strict(model, {}, "test checkpoint")
