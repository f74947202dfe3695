"""Where metrics go besides ``metrics.jsonl``: TensorBoard event files and Weights & Biases.

Neither package is a core dependency (``pip install -e '.[tensorboard]'`` / ``'.[wandb]'``);
asking for a sink whose package is missing is a :class:`~common.config.ConfigError` raised
when the logger is built, before any training.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml

from common.config import ConfigError

WANDB_MODES = ("online", "offline")


class MetricSink(Protocol):
    """Receives every record a :class:`~common.rundir.MetricsLogger` writes."""

    def write(self, step: int, values: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """The finite numbers of a record, nested mappings as ``outer/inner`` tags."""
    for key, value in values.items():
        tag = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from scalars(value, f"{tag}/")
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            yield tag, float(value)


def _require(package: str, key: str, value: Any) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(
            f"logging.{key}={value} needs the {package} package, which is not installed: "
            f"pip install {package} (or pip install -e '.[{package}]'), or set "
            f"logging.{key}={'false' if isinstance(value, bool) else 'null'}"
        ) from None


class TensorBoardSink:
    """Event files in ``log_dir`` (``tensorboard --logdir`` on it or a folder above it)."""

    def __init__(self, log_dir: Path) -> None:
        _require("tensorboard", "tensorboard", True)
        self.log_dir = log_dir
        self._writer: Any = None

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run logs again from its checkpoint's step: purge_step hides what an
            # earlier event file holds from that step on, as metrics.jsonl readers keep the
            # later record.
            self._writer = SummaryWriter(str(self.log_dir), purge_step=step)
        for tag, value in scalars(values):
            self._writer.add_scalar(tag, value, step)
        # Flushed per record, like metrics.jsonl: a pre-empted or killed job loses nothing.
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbSink:
    """A Weights & Biases run in ``run_dir/wandb``; a resumed run continues the same one."""

    ID_FILE = "labelfew_run_id"

    def __init__(self, project: str, run_dir: Path, mode: str) -> None:
        if mode not in WANDB_MODES:
            raise ConfigError(
                f"logging.wandb_mode must be one of {', '.join(WANDB_MODES)}, got {mode!r}"
            )
        wandb = _require("wandb", "wandb", project)
        folder = run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / self.ID_FILE
        config_file = run_dir / "config.yaml"
        config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
        self._run = wandb.init(
            project=project,
            dir=str(run_dir),
            id=id_file.read_text().strip() if id_file.is_file() else None,
            name=run_dir.name,
            config=config,
            mode=mode,
            resume="allow",
        )
        id_file.write_text(self._run.id)

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        self._run.log(dict(scalars(values)), step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def build_sinks(
    run_dir: Path, tensorboard: bool, wandb: str | None, wandb_mode: str
) -> list[MetricSink]:
    """The sinks a stage's ``logging`` config section asks for."""
    sinks: list[MetricSink] = []
    if tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    if wandb:
        sinks.append(WandbSink(str(wandb), run_dir, str(wandb_mode)))
    return sinks
