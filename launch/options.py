"""Launch options (``slurm.*`` keys): parsed apart from a stage's config keys, strictly."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from common.config import (
    OPEN_KEY_MARKER,
    Config,
    ConfigError,
    declared_types,
    load_config,
    merge,
    parse_override,
)

PREFIX = "slurm."
EXECUTORS = ("slurm", "local", "inline")
_TIME = re.compile(r"^(?:(\d+)-)?(\d{1,3}):(\d{2})(?::(\d{2}))?$")


def split_overrides(args: Iterable[str]) -> tuple[list[str], list[str]]:
    """Separate ``slurm.key=value`` launch options from the stage's ``key=value`` overrides."""
    launch, stage = [], []
    for arg in args:
        (launch if arg.startswith(PREFIX) else stage).append(arg)
    return launch, stage


def _parse(arg: str) -> tuple[str, Any]:
    key, value = parse_override(arg)
    if key == "slurm.time" and "=" in arg:
        # YAML reads 01:30:00 as a base-60 integer; a time limit stays the string the user wrote.
        value = arg.split("=", 1)[1] or None
    return key, value


def _nest(key: str, value: Any) -> dict:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def load_launch_options(
    layers: Sequence[tuple[Mapping, str]] = (), overrides: Iterable[str] = ()
) -> Config:
    """Defaults (configs/launch/default.yaml), then ``(slurm mapping, source)`` layers, then CLI.

    Unknown keys and wrong types raise a ConfigError naming the closest valid key.
    """
    opts = load_config("launch")
    types = declared_types("launch")
    for mapping, source in layers:
        opts = Config(merge(opts, {"slurm": dict(mapping)}, source, types=types))
    for arg in overrides:
        key, value = _parse(arg)
        opts = Config(merge(opts, _nest(key, value), f"command-line option '{arg}'", types=types))
    slurm = opts["slurm"]
    slurm["time"] = None if slurm["time"] is None else format_time(slurm["time"])
    for key in ("nodes", "cpus_per_task", "max_requeues", "array_parallelism"):
        if slurm[key] is not None and slurm[key] < (0 if key == "max_requeues" else 1):
            raise ConfigError(f"slurm.{key} must be positive, got {slurm[key]}")
    return Config({"slurm": Config(slurm)})


def format_time(value: Any) -> str:
    """Normalise a time limit (``HH:MM:SS``, ``D-HH:MM:SS``, ``MM:SS`` or minutes) for sbatch."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value // 60:02d}:{value % 60:02d}:00"
    if isinstance(value, str) and _TIME.match(value.strip()):
        return value.strip()
    raise ConfigError(
        f"slurm.time={value!r} is not a time limit; write HH:MM:SS (e.g. slurm.time=04:00:00), "
        "D-HH:MM:SS, or whole minutes"
    )


def time_minutes(time: str | None, default: float) -> float:
    """Minutes of a normalised time limit (``default`` when unset)."""
    if time is None:
        return default
    m = _TIME.match(time)
    assert m, time
    days, a, b, c = (int(g) if g else 0 for g in m.groups())
    # HH:MM:SS when three fields, MM:SS when two (sbatch's reading).
    hours, minutes, seconds = (a, b, c) if m.group(4) else (0, a, b)
    return days * 1440 + hours * 60 + minutes + seconds / 60


def tasks_per_node(slurm: Mapping) -> int:
    """One task per GPU; one task on CPU-only nodes unless set."""
    if slurm["tasks_per_node"]:
        return int(slurm["tasks_per_node"])
    return max(1, int(slurm["gpus_per_node"] or 0))


def sbatch_parameters(slurm: Mapping, job_name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters from the launch options."""
    params: dict[str, Any] = {
        "job_name": slurm["job_name"] or job_name,
        "nodes": slurm["nodes"],
        "ntasks_per_node": tasks_per_node(slurm),
        "cpus_per_task": slurm["cpus_per_task"],
        "signal_delay_s": slurm["signal_delay_s"],
        "array_parallelism": slurm["array_parallelism"],
        "partition": slurm["partition"],
        "account": slurm["account"],
        "qos": slurm["qos"],
        "constraint": slurm["constraint"],
        "exclude": slurm["exclude"],
        # submitit keeps the limit in minutes (it also does its own time-out bookkeeping).
        "time": math.ceil(time_minutes(slurm["time"], 0)) if slurm["time"] else None,
        "mem": f"{slurm['mem_gb']}GB" if slurm["mem_gb"] else None,
        "gpus_per_node": slurm["gpus_per_node"] or None,
        "setup": list(slurm["setup"]) or None,
        "additional_parameters": {
            k: v for k, v in slurm["additional"].items() if k != OPEN_KEY_MARKER
        }
        or None,
    }
    return {k: v for k, v in params.items() if v is not None}
