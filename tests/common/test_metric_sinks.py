"""MetricsLogger's TensorBoard and Weights & Biases sinks: what they write reads back equal to
metrics.jsonl, resumes continue, missing packages are one clear error."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError
from common.metric_sinks import scalars
from common.rundir import MetricsLogger, read_metrics

REPO = Path(__file__).resolve().parents[2]


def _events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per tag of every TensorBoard event file in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _expected(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for tag, value in scalars({k: v for k, v in r.items() if k != "step"}):
            out.setdefault(tag, []).append((r["step"], value))
    return out


def _log_steps(logger: MetricsLogger, steps: range, offset: float) -> None:
    for step in steps:
        logger.log(step, loss=offset + 1.0 / step, lr=1e-3 * step, knn={"top1": step / 10})


def test_tensorboard_events_equal_the_jsonl_records(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    logger = MetricsLogger(tmp_path / "metrics.jsonl", tensorboard=True)
    _log_steps(logger, range(1, 5), 0.0)
    logger.log(5, loss=float("nan"), note="text", flag=True)  # not scalars: left out
    logger.close()
    events = _events(tmp_path)
    assert set(events) == {"loss", "lr", "knn/top1"}
    expected = _expected(read_metrics(tmp_path / "metrics.jsonl"))
    assert [s for s, _ in events["loss"]] == [1, 2, 3, 4]
    for tag, points in expected.items():
        assert [s for s, _ in events[tag]] == [s for s, _ in points]
        # Event files store float32.
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in points], rel=1e-6)


def test_a_resumed_run_replaces_the_steps_it_logs_again(tmp_path: Path) -> None:
    """A job pre-empted after logging step 4 but checkpointed at step 2 logs 3 and 4 again."""
    pytest.importorskip("tensorboard")
    first = MetricsLogger(tmp_path / "metrics.jsonl", tensorboard=True)
    _log_steps(first, range(1, 5), 0.0)
    first.close()
    second = MetricsLogger(tmp_path / "metrics.jsonl", tensorboard=True)
    _log_steps(second, range(3, 7), 10.0)
    second.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    loss = _events(tmp_path)["loss"]
    assert [s for s, _ in loss] == [1, 2, 3, 4, 5, 6]
    # Steps 3 and 4 read from the resumed job's file, not the first job's.
    assert [v for _, v in loss] == pytest.approx(
        [1.0, 0.5, 10 + 1 / 3, 10.25, 10.2, 10 + 1 / 6], rel=1e-6
    )


def test_a_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    logger = MetricsLogger(tmp_path / "metrics.jsonl", enabled=False, tensorboard=True)
    _log_steps(logger, range(1, 3), 0.0)
    logger.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("package", "kwargs", "reset"),
    [("tensorboard", {"tensorboard": True}, "false"), ("wandb", {"wandb": "proj"}, "null")],
)
def test_a_missing_package_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str, kwargs: dict, reset: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # what `import` sees when it is absent
    with pytest.raises(ConfigError) as err:
        MetricsLogger(tmp_path / "metrics.jsonl", **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert f"pip install {package} " in message and f"logging.{package}={reset}" in message
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_wandb_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="logging.wandb_mode must be one of online, offline"):
        MetricsLogger(tmp_path / "metrics.jsonl", wandb="proj", wandb_mode="offlne")


def _wandb_history(run_file: Path) -> list[dict]:
    """History rows of an offline run's ``run-<id>.wandb`` (a LevelDB-style log of protobuf
    records: 32 KiB blocks of chunks, each a 7-byte header crc32, length, kind)."""
    from wandb.proto import wandb_internal_pb2

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf, rows = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block padding
            pos += left
            continue
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                        for i in record.history.item
                    }
                )
    return rows


# One job of a run: its own process, as a pre-empted job's requeue is (W&B's service writes
# an offline run's last records when the process that owns it exits).
WANDB_JOB = """
import sys
from pathlib import Path
from common.rundir import MetricsLogger
first, last = int(sys.argv[2]), int(sys.argv[3])
logger = MetricsLogger(Path(sys.argv[1]), wandb="labelfew-test", wandb_mode="offline")
for step in range(first, last + 1):
    logger.log(step, loss=1.0 / step, lr=1e-3 * step, knn={"top1": step / 10})
logger.close()
"""


def test_wandb_offline_run_holds_the_jsonl_records_and_resumes_the_same_run(
    tmp_path: Path,
) -> None:
    pytest.importorskip("wandb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        {
            v: str(tmp_path / "home" / v)
            for v in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
        }
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 3\n")
    for first, last in ((1, 3), (4, 5)):  # a job, then its resume
        proc = subprocess.run(
            [sys.executable, "-c", WANDB_JOB, str(run / "metrics.jsonl"), str(first), str(last)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    run_id = (run / "wandb" / "labelfew_run_id").read_text()
    assert all(r.name.endswith(f"-{run_id}") for r in runs)
    rows = [row for r in runs for row in _wandb_history(r / f"run-{run_id}.wandb")]
    expected = _expected(read_metrics(run / "metrics.jsonl"))
    assert set(expected) == {"loss", "lr", "knn/top1"}
    for tag, points in expected.items():
        assert [(row["_step"], row[tag]) for row in rows] == points
