"""``python -m launch sweep``: the Cartesian product of ``key=v1,v2`` lists as one job array."""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.config import Config, ConfigError, load_config, to_dict
from launch.job import REQUEUE_COUNT, StageJob
from launch.manifest import now
from launch.records import SUBMITIT_DIR, SWEEP_RECORD, add_job
from launch.report import flat_numbers, read_summary
from launch.slurm import LaunchError
from launch.submit import (
    Submitted,
    check_artifacts,
    check_run_dir,
    make_executor,
    preflight,
    submit_stage,
    wait_jobs,
)

log = logging.getLogger(__name__)
# Commas inside [...] or {...} belong to one YAML value, not to the list of sweep values.
_SPLIT = re.compile(r",(?![^\[\{]*[\]\}])")


def parse_axes(args: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``key=v1,v2`` -> an axis; ``key=v`` -> a fixed override. Values stay YAML text."""
    axes: dict[str, list[str]] = {}
    fixed = []
    for arg in args:
        if "=" not in arg:
            raise LaunchError(f"sweep argument '{arg}' must look like key=v1,v2,v3")
        key, raw = arg.split("=", 1)
        values = [v.strip() for v in _SPLIT.split(raw)]
        if len(values) > 1:
            if key in axes:
                raise LaunchError(f"sweep key '{key}' is given twice")
            axes[key] = values
        else:
            fixed.append(arg)
    if not axes:
        raise LaunchError(
            "a sweep needs at least one key with several values, e.g. train.lr=1e-3,1e-4"
        )
    return axes, fixed


def point_name(point: Mapping[str, str]) -> str:
    """A folder name for one point: ``train.lr=0.001_seed=1`` (unsafe characters replaced)."""
    text = "_".join(f"{k}={v}" for k, v in point.items())
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", text)


def plan_sweep(
    stage: str, config: str | None, axes: dict[str, list[str]], fixed: Sequence[str], out: Path
) -> list[tuple[str, dict[str, str], Config]]:
    """(name, point, resolved config) for every point; every config is checked up front."""
    points = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(axes, combo, strict=True))
        overrides = [*fixed, *(f"{k}={v}" for k, v in point.items())]
        try:
            cfg = load_config(stage, config, overrides)
        except ConfigError as exc:
            raise LaunchError(f"sweep point {point}: {exc}") from None
        check_artifacts(stage, cfg)
        name = point_name(point)
        check_run_dir(out / name, stage, cfg)
        points.append((name, point, cfg))
    return points


def submit_sweep(
    stage: str,
    points: list[tuple[str, dict[str, str], Config]],
    out: Path,
    executor: str,
    slurm: Mapping,
    force: bool = False,
) -> list[Submitted]:
    """SLURM: one job array (``--array=0-N%parallelism``); local/inline: one point at a time."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        StageJob(stage, to_dict(cfg), str((out / name).resolve()), force, slurm["max_requeues"])
        for name, _, cfg in points
    ]
    record: dict[str, Any] = {
        "stage": stage,
        "executor": executor,
        "submitted": now(),
        "points": [],
    }
    subs: list[Submitted] = []
    if executor == "slurm":
        preflight(executor, slurm, f"labelfew-sweep-{stage.replace('/', '-')}")
        ex = make_executor(
            executor, out / SUBMITIT_DIR, slurm, f"labelfew-sweep-{stage.replace('/', '-')}"
        )
        with ex.batch():
            handles = [ex.submit(job) for job in jobs]
        for job, handle in zip(jobs, handles, strict=True):
            run_dir = Path(job.output_dir)
            (run_dir / REQUEUE_COUNT).unlink(missing_ok=True)
            entry = {"job_id": str(handle.job_id), "executor": "slurm", "submitted": now()}
            # The array's logs sit in the sweep's submitit folder; link it from each point.
            submitit_link = run_dir / SUBMITIT_DIR
            run_dir.mkdir(parents=True, exist_ok=True)
            if not submitit_link.exists():
                submitit_link.symlink_to(out.resolve() / SUBMITIT_DIR)
            add_job(run_dir, entry, stage=stage, submitit_dir=str(out / SUBMITIT_DIR))
            subs.append(Submitted(entry["job_id"], "slurm", run_dir, handle=handle))
    else:
        for job in jobs:
            sub = submit_stage(job, executor, slurm)
            if executor == "local":
                wait_jobs([sub])
            subs.append(sub)
    for (name, point, _), sub in zip(points, subs, strict=True):
        record["points"].append(
            {
                "name": name,
                "point": point,
                "run_dir": str(sub.run_dir),
                "job": {"job_id": sub.job_id, "executor": sub.executor},
            }
        )
    (out / SWEEP_RECORD).write_text(json.dumps(record, indent=2))
    return subs


def sweep_table(out: Path) -> str:
    """A markdown table: one row per point, the swept values then the summary's numbers."""
    record = json.loads((out / SWEEP_RECORD).read_text())
    keys = list(record["points"][0]["point"]) if record["points"] else []
    rows, metric_names = [], []
    for p in record["points"]:
        numbers = flat_numbers(read_summary(Path(p["run_dir"])))
        rows.append((p, numbers))
        metric_names += [k for k in numbers if k not in metric_names]
    metric_names = metric_names[:6]
    head = "| " + " | ".join(keys + metric_names) + " |"
    lines = [head, "|" + " --- |" * (len(keys) + len(metric_names))]
    for p, numbers in rows:
        cells = [p["point"][k] for k in keys]
        cells += [f"{numbers[m]:.4g}" if m in numbers else "-" for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
