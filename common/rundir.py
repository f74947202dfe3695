"""The run directory every stage writes: config, log, metrics, checkpoints, export, figures."""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.config import (
    CONFIG_ROOT,
    Config,
    ConfigError,
    diff_configs,
    load_config,
    save_config,
    to_dict,
)
from common.metric_sinks import MetricSink, build_sinks

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A record with this attribute set goes to the log files only (the CLI prints it itself).
CONSOLE_SKIP = "console_skip"


@dataclass(frozen=True)
class RunDir:
    """Paths inside ``<output_dir>``; see README "Run directory".

    ``checkpoints``, ``export`` and ``figures`` are created when a stage first asks for them,
    so a run directory holds only the folders its stage writes.
    """

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def _folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def checkpoints(self) -> Path:
        return self._folder("checkpoints")

    @property
    def last_checkpoint(self) -> Path:
        # Not created: reading it from a run that is not there must not make one.
        return self.root / "checkpoints" / "last.pt"

    @property
    def export(self) -> Path:
        return self._folder("export")

    @property
    def figures(self) -> Path:
        return self._folder("figures")

    def make(self) -> RunDir:
        self.root.mkdir(parents=True, exist_ok=True)
        return self


# Keys a user may change when resuming without it counting as "a different run".
RESUMABLE_KEYS = ("train.max_steps", "device", "data.num_workers", "launch")
# Stages where train.max_steps only says where to stop: pretrain's schedules span
# train.epochs, distill's enhancer and the probes keep a constant lr. In fewshot and
# distill.segment it is also the cosine schedule's length: a resume with another value bends
# the learning rate mid-run, which run_stage warns about.
MAX_STEPS_STOPS_ONLY = ("pretrain", "distill", "fewshot/probe")


def changed_config_keys(
    run_dir: str | Path, cfg: Config, stage: str, config_root: Path = CONFIG_ROOT
) -> list[str]:
    """Keys (other than RESUMABLE_KEYS) where ``cfg`` differs from the run's config.yaml."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return []
    old = load_config(stage, path, config_root=config_root)
    return [
        k
        for k in diff_configs(to_dict(old), to_dict(cfg))
        if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)
    ]


def schedule_change(
    run_dir: str | Path, cfg: Config, stage: str, config_root: Path = CONFIG_ROOT
) -> str | None:
    """A warning when resuming a run with another train.max_steps in a stage whose schedule
    spans train.max_steps; None otherwise."""
    run = RunDir(Path(run_dir))
    if stage in MAX_STEPS_STOPS_ONLY or not run.config.is_file() or not run.checkpoints.is_dir():
        return None
    if not any(run.checkpoints.iterdir()):
        return None
    old = load_config(stage, run.config, config_root=config_root).get("train", {})
    before, now = old.get("max_steps"), cfg.get("train", {}).get("max_steps")
    if before == now:
        return None
    return (
        f"resuming {run.root} with train.max_steps={now} (it was {before}): in {stage} "
        "train.max_steps is also the learning-rate schedule's length, so the schedule changes "
        "mid-run (the lr jumps to where the new schedule is at this step). Use another "
        "--output-dir to train with a clean schedule."
    )


def prepare_run_dir(
    output_dir: str | Path,
    cfg: Config,
    stage: str,
    force: bool = False,
    config_root: Path = CONFIG_ROOT,
) -> RunDir:
    """Create the run directory and write ``config.yaml``.

    An existing directory holding a different config is refused unless ``force`` is set,
    so a typo in ``--output-dir`` never mixes two experiments' checkpoints.
    """
    run = RunDir(Path(output_dir)).make()
    if not force:
        changed = changed_config_keys(run.root, cfg, stage, config_root)
        if changed:
            raise ConfigError(
                f"{run.root} already holds a run with a different config (keys differ: "
                f"{', '.join(changed[:8])}). Choose another --output-dir, or pass --force to "
                "overwrite its config and resume from its checkpoint."
            )
    save_config(cfg, run.config)
    return run


# What run_stage writes before the stage itself runs, and what a stage derives from its
# config and inputs alone (feature caches keyed by their content, the random-init baseline
# backbone rewritten on every run); anything else in a run directory is the stage's output.
RUN_METADATA = ("config.yaml", "inputs.json")
DERIVED_DIRS = ("cache", "random_backbone")


def _is_stage_output(rel: Path) -> bool:
    if rel.parts[0] in DERIVED_DIRS or rel.name in RUN_METADATA:
        return False
    return not (rel.name.startswith("log") and rel.suffix == ".txt")


@dataclass(frozen=True)
class RunDirState:
    """A run directory before a command touched it: put back if the command fails before its
    stage writes anything, so a mistaken command never changes what a later one sees."""

    root: Path
    existed: bool
    dirs: frozenset[str]
    metadata: dict[str, tuple[bytes, int]]  # name: (content, mtime_ns)
    outputs: frozenset[tuple[str, int, int]]


def _outputs(root: Path) -> frozenset[tuple[str, int, int]]:
    if not root.is_dir():
        return frozenset()
    return frozenset(
        (str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and _is_stage_output(p.relative_to(root))
    )


def snapshot_run_dir(output_dir: str | Path) -> RunDirState:
    """Record the run directory's metadata files, folders and stage outputs."""
    root = Path(output_dir)
    return RunDirState(
        root=root,
        existed=root.is_dir(),
        dirs=frozenset(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())
        if root.is_dir()
        else frozenset(),
        metadata={
            n: ((root / n).read_bytes(), (root / n).stat().st_mtime_ns)
            for n in RUN_METADATA
            if (root / n).is_file()
        },
        outputs=_outputs(root),
    )


def restore_run_dir(state: RunDirState) -> bool:
    """Undo what a failed command wrote, unless its stage had started (written an output).

    Returns whether the directory was put back: its config.yaml and inputs.json as they were
    and the folders it created removed (the whole directory when it did not exist before).
    """
    root = state.root
    if not root.is_dir() or _outputs(root) != state.outputs:
        return False
    if not state.existed:
        shutil.rmtree(root)
        return True
    for name in RUN_METADATA:
        path = root / name
        if name in state.metadata:
            content, mtime_ns = state.metadata[name]
            path.write_bytes(content)
            os.utime(path, ns=(mtime_ns, mtime_ns))
        else:
            path.unlink(missing_ok=True)
    new_dirs = [p for p in root.rglob("*") if p.is_dir()]
    for d in sorted(new_dirs, key=lambda p: len(p.parts), reverse=True):
        if str(d.relative_to(root)) not in state.dirs and not any(d.iterdir()):
            d.rmdir()
    return True


def setup_logging(run: RunDir | None, rank: int = 0, level: int = logging.INFO) -> None:
    """Console logging on rank 0 only; every rank logs to its file (rank>0: log.rank<N>.txt)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_labelfew", False):
            root.removeHandler(h)
    root.setLevel(level)
    fmt = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = []
    if rank == 0:
        console = logging.StreamHandler(sys.stderr)
        console.addFilter(lambda record: not getattr(record, CONSOLE_SKIP, False))
        handlers.append(console)
    if run is not None:
        name = "log.txt" if rank == 0 else f"log.rank{rank}.txt"
        handlers.append(logging.FileHandler(run.root / name))
    for h in handlers:
        h.setFormatter(fmt)
        h._labelfew = True  # type: ignore[attr-defined]
        root.addHandler(h)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class MetricsLogger:
    """Append one JSON object per call to ``metrics.jsonl``; each carries a ``step`` key.

    The same records also go to TensorBoard event files beside it (``tensorboard``) and to a
    Weights & Biases project (``wandb``: its name; ``wandb_mode`` offline needs no network):
    a stage passes its ``logging`` config section. A disabled logger (ranks other than 0)
    writes nothing anywhere.
    """

    def __init__(
        self,
        path: str | Path,
        enabled: bool = True,
        tensorboard: bool = False,
        wandb: str | None = None,
        wandb_mode: str = "online",
    ) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.sinks: list[MetricSink] = []
        if enabled and (tensorboard or wandb):
            self.sinks = build_sinks(self.path.parent, tensorboard, wandb, wandb_mode)
            # Also on an exit that skips close(): a pre-empted job raises out of its loop.
            atexit.register(self.close)

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        for sink in self.sinks:
            sink.write(record["step"], {k: v for k, v in record.items() if k != "step"})

    def close(self) -> None:
        """Flush and close the sinks (metrics.jsonl needs nothing: each line is written whole)."""
        for sink in self.sinks:
            sink.close()
        self.sinks = []


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` (a torn last line, from a crash, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
