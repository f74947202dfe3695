"""Atomic checkpoint writes and clear errors for unreadable or mismatched checkpoints."""

import multiprocessing as mp
import os
import re
import signal
import time

import pytest
import torch

from common.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_resume_checkpoint,
    load_state_dict_strict,
    load_torch_file,
    save_checkpoint,
)
from tests.fixtures.small_disk import small_disk


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


def test_disk_full_keeps_the_previous_file_and_says_how_much_space(tmp_path):
    with small_disk(tmp_path / "disk", mib=2) as disk:
        path = disk / "last.pt"
        atomic_torch_save({"step": 1}, path)
        with pytest.raises(CheckpointError) as err:
            atomic_torch_save({"step": 2, "w": torch.zeros(2**20)}, path)  # 4 MiB on 2 MiB
        message = str(err.value)
        assert f"disk full while writing {path}" in message
        needed, free = (float(x) for x in re.findall(r"([\d.]+) MiB", message))
        assert 1.0 < needed <= 2.0 and free > 1.5  # what filled it; freed again after
        assert "the previous last.pt is intact" in message
        assert load_torch_file(path) == {"step": 1}
        assert [p.name for p in disk.iterdir()] == ["last.pt"]  # no temp file left


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    atomic_torch_save({"w": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated"):
        load_torch_file(path)


class _MakesADirectory:
    """Unpickling this object calls os.mkdir: what a malicious checkpoint would do."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_file_needing_arbitrary_unpickling_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.zeros(1), "x": _MakesADirectory(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt holds a posix.mkdir object.*refused"):
        load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()


def _damage(path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def test_resume_falls_back_to_the_newest_readable_step_copy(tmp_path, caplog):
    for step in (1, 2, 3):
        save_checkpoint({"step": step}, tmp_path, step, keep=2)
    _damage(tmp_path / "last.pt")
    _damage(tmp_path / "step_00000003.pt")
    state, path = load_resume_checkpoint(tmp_path / "last.pt")
    assert (state["step"], path.name) == (2, "step_00000002.pt")
    assert "last.pt" in caplog.text and "step_00000002.pt" in caplog.text


def test_resume_with_no_readable_checkpoint_names_them_all(tmp_path):
    assert load_resume_checkpoint(tmp_path / "last.pt") is None  # a new run
    save_checkpoint({"step": 1}, tmp_path, 1, keep=1)
    _damage(tmp_path / "last.pt")
    _damage(tmp_path / "step_00000001.pt")
    with pytest.raises(CheckpointError, match=r"last.pt and .*step_00000001.pt cannot be loaded"):
        load_resume_checkpoint(tmp_path / "last.pt")


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
