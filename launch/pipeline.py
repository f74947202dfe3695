"""``python -m launch pipeline``: stages as separate jobs chained by SLURM ``afterok``.

A pipeline file names each stage's config and overrides; ``${<stage name>.<artifact>}`` in an
override is the path of an artifact an earlier stage produces (``${pretrain.export}``,
``${distill.pseudo_masks}/weak``) and makes that stage a dependency. Every stage runs in
``<pipeline dir>/<stage name>/``; ``manifest.json`` records inputs, outputs, checksums,
resolved configs and job ids.
"""

from __future__ import annotations

import copy
import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.artifacts import ARTIFACT_KEYS, artifact_value, sha256_path
from common.config import (
    Config,
    ConfigError,
    declared_types,
    load_config,
    merge,
    parse_override,
    resolve_config_path,
    to_config,
    to_dict,
)
from launch.bars import check_bars
from launch.job import StageJob
from launch.manifest import Manifest, now
from launch.options import load_launch_options, split_overrides
from launch.slurm import LaunchError, cancel
from launch.stages import artifact_path, check_stage
from launch.submit import (
    Submitted,
    check_artifacts,
    check_run_dir,
    preflight,
    submit_stage,
    wait_jobs,
)

log = logging.getLogger(__name__)
REF = re.compile(r"\$\{([A-Za-z0-9_\-]+)\.([A-Za-z0-9_]+)\}")
PIPELINE_KEYS = ("name", "slurm", "stages", "bars")
STAGE_KEYS = ("stage", "config", "overrides", "slurm", "after")


@dataclass
class PlannedStage:
    """One pipeline stage, resolved before anything is submitted."""

    name: str
    stage: str
    cfg: Config
    run_dir: Path
    slurm: Config
    after: list[str] = field(default_factory=list)
    consumes: dict[str, dict] = field(default_factory=dict)
    skip: bool = False


def _strict_keys(data: Mapping, allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise LaunchError(
                f"unknown key '{key}' in {where}; allowed: {', '.join(allowed)}.{hint}"
            )


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested overrides -> dotted keys (a mapping value for an open key stays whole)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(key: str, value: Any) -> dict:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def load_pipeline_file(path: str | Path) -> dict:
    """Read and check the shape of a pipeline YAML."""
    path = resolve_config_path(path, "pipeline")
    data = yaml.safe_load(path.read_text()) or {}
    _strict_keys(data, PIPELINE_KEYS, str(path))
    stages = data.get("stages")
    if not isinstance(stages, Mapping) or not stages:
        raise LaunchError(f"{path} needs a `stages:` mapping of stage name -> settings")
    for name, spec in stages.items():
        if not isinstance(spec, Mapping) or "stage" not in spec:
            raise LaunchError(f"{path}: stage '{name}' needs at least `stage:` (e.g. pretrain)")
        _strict_keys(spec, STAGE_KEYS, f"{path} stage '{name}'")
    data["bars"] = check_bars(data.get("bars"), str(path))
    data["_path"] = str(path)
    return data


def plan(
    data: dict, pipeline_dir: Path, cli_overrides: Sequence[str] = (), force: bool = False
) -> list[PlannedStage]:
    """Resolve every stage's config, artifacts, dependencies and launch options; submit nothing."""
    source = data["_path"]
    names = list(data["stages"])
    launch_cli, stage_cli = split_overrides(cli_overrides)
    per_stage: dict[str, list[str]] = {n: [] for n in names}
    for arg in stage_cli:
        head = arg.split("=", 1)[0].split(".", 1)[0]
        if head not in per_stage or "." not in arg.split("=", 1)[0]:
            raise LaunchError(
                f"pipeline override '{arg}' must start with a stage name "
                f"({', '.join(names)}), e.g. {names[0]}.train.max_steps=10"
            )
        per_stage[head].append(arg.split(".", 1)[1])
    manifest = Manifest(pipeline_dir)
    recorded = manifest.read()["stages"]
    planned: list[PlannedStage] = []
    for idx, name in enumerate(names):
        spec = data["stages"][name]
        stage = check_stage(spec["stage"])
        run_dir = (pipeline_dir / name).resolve()
        consumes: dict[str, dict] = {}
        after = list(spec.get("after") or [])

        def resolve(
            value: Any,
            key: str,
            name: str = name,
            idx: int = idx,
            consumes: dict = consumes,
            after: list = after,
        ) -> Any:
            if not isinstance(value, str):
                return value
            m = REF.search(value)
            if not m:
                return value
            producer, artifact = m.group(1), m.group(2)
            if producer not in names[:idx]:
                raise LaunchError(
                    f"{source}: stage '{name}' refers to ${{{producer}.{artifact}}} but "
                    f"'{producer}' is not an earlier stage ({', '.join(names[:idx]) or 'none'})"
                )
            prod_stage = data["stages"][producer]["stage"]
            base = artifact_path(prod_stage, pipeline_dir.resolve() / producer, artifact)
            path = value[: m.start()] + str(base) + value[m.end() :]
            consumes[key] = {"path": path, "producer": producer, "artifact": artifact}
            if producer not in after:
                after.append(producer)
            return path

        try:
            cfg: dict = to_dict(load_config(stage, _config_path(spec.get("config"), source)))
            types = declared_types(stage)
            for key, value in _flatten(spec.get("overrides") or {}).items():
                cfg = merge(
                    cfg, _nest(key, resolve(value, key)), f"{source} stage '{name}'", types=types
                )
            for arg in per_stage[name]:
                key, value = parse_override(arg)
                cfg = merge(
                    cfg, _nest(key, resolve(value, key)), f"override '{name}.{arg}'", types=types
                )
            slurm_layers = [(data.get("slurm") or {}, f"{source} slurm")]
            slurm_layers.append((spec.get("slurm") or {}, f"{source} stage '{name}' slurm"))
            slurm = load_launch_options(slurm_layers, launch_cli).slurm
        except ConfigError as exc:
            raise LaunchError(f"pipeline stage '{name}': {exc}") from None
        for dep in after:
            if dep not in names[:idx]:
                raise LaunchError(f"{source}: stage '{name}' is after unknown stage '{dep}'")
        check_artifacts(f"pipeline stage '{name}'", cfg, skip=list(consumes))
        # Artifacts named directly (not produced here) are recorded too: a later change is seen.
        for key in ARTIFACT_KEYS:
            path = artifact_value(cfg, key)
            if path and key not in consumes:
                consumes[key] = {"path": path, "producer": None, "artifact": key}
        cfg_obj = to_config(cfg)
        if not force:
            check_run_dir(run_dir, stage, cfg_obj)
        item = PlannedStage(name, stage, cfg_obj, run_dir, slurm, after, consumes)
        # --force runs every stage again (its outputs are produced and recorded anew).
        item.skip = not force and _already_done(recorded.get(name), cfg, name, manifest)
        planned.append(item)
    # A stage whose producer runs again must run again too.
    rerun = {p.name for p in planned if not p.skip}
    for p in planned:
        if p.skip and any(dep in rerun for dep in p.after):
            p.skip = False
            rerun.add(p.name)
    return planned


def _config_path(config: str | None, pipeline_file: str) -> str | None:
    """A stage config path relative to the pipeline file, else a path/preset as given."""
    if config is None:
        return None
    beside = Path(pipeline_file).parent / config
    return str(beside) if beside.is_file() else config


def _already_done(entry: dict | None, cfg: dict, name: str, manifest: Manifest) -> bool:
    """A stage completed with the same config and untouched outputs is not run again."""
    if not entry or entry.get("status") != "completed" or entry.get("config") != cfg:
        return False
    for artifact, rec in entry.get("produces", {}).items():
        if not Path(rec["path"]).exists() or sha256_path(rec["path"]) != rec["sha256"]:
            raise LaunchError(
                f"{rec['path']} ({artifact} of stage '{name}') changed after it was produced "
                f"(checksum differs from {manifest.path}). Restore it, or re-run the stage with "
                "--force (it is then produced again)."
            )
    return True


def submit_pipeline(
    planned: list[PlannedStage],
    pipeline_dir: Path,
    executor: str,
    data: dict,
    force: bool = False,
) -> list[Submitted]:
    """Check every stage with SLURM, write the manifest, then submit (SLURM: all at once with
    afterok; local/inline: one after the other, stopping at the first failure)."""
    for p in planned:
        if not p.skip:
            preflight(executor, p.slurm, f"labelfew-{p.name}")
    manifest = Manifest(pipeline_dir)

    def init(m: dict) -> None:
        m["pipeline"] = {
            "name": data.get("name", Path(data["_path"]).stem),
            "config": data["_path"],
            "executor": executor,
            "submitted": now(),
        }
        for p in planned:
            entry = m["stages"].setdefault(p.name, {})
            if p.skip:
                continue
            entry.clear()
            entry.update(
                stage=p.stage,
                run_dir=str(p.run_dir),
                config=to_dict(p.cfg),
                consumes=copy.deepcopy(p.consumes),
                after=p.after,
                slurm=to_dict(p.slurm),
                status="pending",
            )

    manifest.update(init)
    submitted: dict[str, Submitted] = {}
    out = []
    for p in planned:
        if p.skip:
            log.info("%s: completed earlier with the same config, reusing %s", p.name, p.run_dir)
            continue
        job = StageJob(
            stage=p.stage,
            config=to_dict(p.cfg),
            output_dir=str(p.run_dir),
            force=force,
            max_requeues=p.slurm["max_requeues"],
            pipeline_dir=str(pipeline_dir.resolve()),
            step=p.name,
        )
        deps = [submitted[d].job_id for d in p.after if d in submitted]
        try:
            sub = submit_stage(job, executor, p.slurm, deps, job_name=f"labelfew-{p.name}")
        except Exception:
            if executor == "slurm":
                cancel([s.job_id for s in submitted.values()])
            _mark_not_run(manifest, planned, p.name)
            if executor != "inline":
                raise
            # In-process: the stage's own error is the news; show it, then report as usual.
            log.exception("stage '%s' failed", p.name)
            break
        manifest.update_stage(p.name, job_id=sub.job_id, executor=sub.executor, submitted=now())
        submitted[p.name] = sub
        out.append(sub)
        if executor == "local":
            state = wait_jobs([sub])[sub.job_id]
            if state != "COMPLETED":
                manifest.update_stage(p.name, status="failed")
                _mark_not_run(manifest, planned, p.name)
                break
    return out


def _mark_not_run(manifest: Manifest, planned: list[PlannedStage], failed: str) -> None:
    names = [p.name for p in planned]
    for p in planned[names.index(failed) + 1 :]:
        if not p.skip:
            manifest.update_stage(p.name, status="not run", reason=f"'{failed}' did not complete")


def sync_statuses(pipeline_dir: Path, rows: list) -> None:
    """Record in the manifest how jobs that never reported themselves ended (e.g. cancelled)."""
    manifest = Manifest(pipeline_dir)
    recorded = manifest.read()["stages"]
    for row in rows:
        status = recorded.get(row.name, {}).get("status")
        if status in ("pending", "running") and row.job and row.state not in ("PENDING", "RUNNING"):
            manifest.update_stage(row.name, status=row.state.lower())
