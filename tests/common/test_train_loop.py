"""TrainLoop on a tiny real MLP: exact resume, schedule, NaN guard, pre-emption, fallback."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from common.checkpoint import CheckpointError, load_torch_file
from common.errors import UserError
from common.optim import NonFiniteLossError, cosine_decay
from common.preemption import Preempted, clear_stop, request_stop
from common.rundir import MetricsLogger, read_metrics
from common.train_loop import Checkpointing, TrainLoop

TOTAL = 12


class Counter:
    """Stage state that rides along in the checkpoint: how many steps saw a loss below 1."""

    def __init__(self) -> None:
        self.low = 0

    def checkpoint_state(self) -> dict:
        return {"low": self.low}

    def restore(self, state: dict, path: Path) -> None:
        self.low = state["low"]


def _loop(
    tmp_path: Path,
    *,
    seed: int = 0,
    every: int = 4,
    keep: int = 1,
    file: str = "ckpt/last.pt",
    **kw,
) -> tuple[TrainLoop, Counter]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # a resumed run starts from other weights: the checkpoint must win
    # Dropout draws from the global RNG, the batches from the loop's generator: both resume.
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    opt = torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": 1e-2},
            {"params": model[3].parameters(), "lr": 5e-3},
        ]
    )
    gen = torch.Generator().manual_seed(1)
    target = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def batches(start: int):
        while True:
            x = torch.randn(8, 4, generator=gen)
            yield x, x @ target

    counter = Counter()

    def step_fn(batch):
        x, y = batch
        loss = nn.functional.mse_loss(model(x), y)
        counter.low += int(loss.item() < 1)
        return loss, {"half": float(loss.detach()) / 2}

    loop = TrainLoop(
        model=model,
        optimizer=opt,
        step_fn=kw.pop("step_fn", step_fn),
        batches=batches,
        total_steps=kw.pop("total_steps", TOTAL),
        name="toy",
        fix="lower lr",
        lr_scale=lambda s: cosine_decay(s, TOTAL),
        checkpoint=Checkpointing(tmp_path / file, every, keep),
        generator=gen,
        identity={"tag": kw.pop("tag", "a"), "size": 4},
        extra=counter,
        metrics=MetricsLogger(tmp_path / "metrics.jsonl"),
        labels={"run": "toy"},
        **kw,
    )
    return loop, counter


def _stop_at(step: int):
    def after(s: int, record: dict) -> None:
        if s == step:
            request_stop("test")

    return after


def _interrupt(tmp_path: Path, step: int, **kw) -> None:
    loop, _ = _loop(tmp_path, after_step=_stop_at(step), **kw)
    try:
        with pytest.raises(Preempted) as exc:
            loop.run()
    finally:
        clear_stop()
    assert exc.value.step == step


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_resume_after_interruption_is_bit_identical(tmp_path):
    straight, straight_counter = _loop(tmp_path / "a")
    assert straight.run().steps == TOTAL
    _interrupt(tmp_path / "b", 5)
    resumed, counter = _loop(tmp_path / "b", seed=7)
    result = resumed.run()
    assert result.steps == TOTAL and result.seconds > 0
    _assert_same_weights(straight.model, resumed.model)
    assert counter.low == straight_counter.low  # the stage's own state came back
    first, second = (
        read_metrics(tmp_path / "a" / "metrics.jsonl"),
        read_metrics(tmp_path / "b" / "metrics.jsonl"),
    )
    assert [r["step"] for r in second] == list(range(1, TOTAL + 1))
    assert [r["loss"] for r in second] == [r["loss"] for r in first]
    assert all(r["run"] == "toy" and r["half"] == r["loss"] / 2 for r in second)


def test_learning_rate_at_step_k_is_the_cosine_formula(tmp_path):
    loop, _ = _loop(tmp_path)
    loop.run()
    records = read_metrics(tmp_path / "metrics.jsonl")
    for k, record in enumerate(records):  # the record of step k + 1 holds the lr step k used
        assert record["lr"] == pytest.approx(1e-2 * (1 + math.cos(math.pi * k / TOTAL)) / 2, 1e-12)
    assert loop.optimizer.param_groups[1]["lr"] == 5e-3 * cosine_decay(TOTAL - 1, TOTAL)


def test_nan_loss_stops_with_one_clear_line_and_keeps_the_last_weights(tmp_path):
    holder: list[TrainLoop] = []

    def nan_at_3(batch):
        x, y = batch
        loss = nn.functional.mse_loss(holder[0].model(x), y)
        return (loss * math.nan if holder[0].step == 3 else loss), {}

    loop, _ = _loop(tmp_path, step_fn=nan_at_3)
    holder.append(loop)
    last = tmp_path / "ckpt" / "last.pt"
    with pytest.raises(NonFiniteLossError) as exc:
        loop.run()
    assert isinstance(exc.value, UserError)
    assert str(exc.value) == (
        f"toy at step 3: loss is nan; {last} holds the weights before this step; lower lr"
    )
    saved = load_torch_file(last)
    assert saved["step"] == 3
    for name, p in loop.model.state_dict().items():
        assert torch.equal(saved["model"][name], p), name


def test_preemption_request_saves_the_step_and_raises(tmp_path):
    _interrupt(tmp_path, 2)
    saved = load_torch_file(tmp_path / "ckpt" / "last.pt")
    assert saved["step"] == 2 and saved["identity"] == {"tag": "a", "size": 4}
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_damaged_last_checkpoint_falls_back_to_older_copies(tmp_path, caplog):
    straight, _ = _loop(tmp_path / "a")
    straight.run()
    _interrupt(tmp_path / "b", 6, keep=2)  # periodic save at 4, stop at 6
    ckpt = tmp_path / "b" / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "last.pt",
        "step_00000004.pt",
        "step_00000006.pt",
    ]
    (ckpt / "last.pt").write_bytes(b"torn")
    (ckpt / "step_00000006.pt").write_bytes(b"torn")
    resumed, _ = _loop(tmp_path / "b", seed=7, keep=2)
    with caplog.at_level(logging.INFO):
        assert resumed.run().steps == TOTAL
    assert "resuming from the older" in caplog.text and "step_00000004.pt" in caplog.text
    assert "toy: resumed from" in caplog.text and "at step 4" in caplog.text
    # Schedule and data are looked up by step, so even the older copy reaches the same weights.
    _assert_same_weights(straight.model, resumed.model)


def test_finished_ends_the_run_early_and_saves(tmp_path):
    holder: list[TrainLoop] = []
    loop, _ = _loop(tmp_path, every=0, finished=lambda: holder[0].step >= 3)
    holder.append(loop)
    assert loop.run().steps == 3
    assert load_torch_file(tmp_path / "ckpt" / "last.pt")["step"] == 3
    # Resumed, the finished run trains no further.
    again, _ = _loop(tmp_path, every=0, finished=lambda: True)
    assert again.run().steps == 3


def test_checkpoint_of_another_run_is_refused(tmp_path):
    _interrupt(tmp_path, 2)
    other, _ = _loop(tmp_path, tag="b")
    message = r"toy checkpoint .*last.pt was written with tag='a'; this run has tag='b'\. Delete"
    with pytest.raises(CheckpointError, match=message):
        other.run()
    torch.save({"weights": {}}, tmp_path / "ckpt" / "last.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this training loop"):
        _loop(tmp_path)[0].run()


def test_single_file_checkpoint_without_step_copies(tmp_path):
    loop, _ = _loop(tmp_path, keep=0, file="one.pt")
    loop.run()
    assert [p.name for p in tmp_path.glob("*.pt")] == ["one.pt"]
    with pytest.raises(ValueError, match="beside a last.pt"):
        Checkpointing(tmp_path / "one.pt", 4, 1)
