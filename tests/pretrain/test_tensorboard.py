"""A tiny pretrain run with logging.tensorboard=true: its event files hold what metrics.jsonl
holds (losses, schedules, teacher statistics, throughput, memory, k-NN)."""

from __future__ import annotations

import pytest

from common.cli import run_stage
from common.metric_sinks import scalars
from common.rundir import read_metrics
from pretrain.stage import run


def test_event_files_equal_metrics_jsonl(tiny_config, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config("dino", "train.max_steps=6", "eval.every=3", "logging.tensorboard=true")
    run_stage("pretrain", run, cfg, tmp_path)

    records = read_metrics(tmp_path / "metrics.jsonl")
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for tag, value in scalars({k: v for k, v in r.items() if k != "step"}):
            expected.setdefault(tag, []).append((r["step"], value))
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [s for s, _ in points], tag
        assert [e.value for e in events] == pytest.approx([v for _, v in points], rel=1e-6), tag
    # What a user watches: losses, schedules, teacher statistics, throughput, memory, k-NN.
    watched = {"loss", "lr", "momentum", "teacher_entropy", "center_norm", "images_per_s"}
    assert watched | {"peak_memory_mb", "knn_top1"} <= set(expected)
    assert [s for s, _ in expected["loss"]] == [2, 4, 6]
    # The periodic probe at steps 3 and 6, and the final one at step 6.
    assert [s for s, _ in expected["knn_top1"]] == [3, 6, 6]
