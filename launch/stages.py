"""The stages ``launch`` can run, how to import them and which artifacts each one produces."""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

from common.cli import StageFn
from common.errors import UserError

STAGES = ("pretrain", "distill", "distill/segment", "fewshot", "fewshot/probe")

# Artifacts a stage leaves in its run directory for later stages (name -> path in the run dir);
# a pipeline refers to them as ${<stage name>.<artifact>}. results.json is every stage's summary.
PRODUCES: dict[str, dict[str, str]] = {
    "pretrain": {"export": "export", "results": "results.json"},
    "distill": {"pseudo_masks": "pseudo_masks", "results": "results.json"},
    "distill/segment": {"results": "results.json"},
    "fewshot": {"results": "results.json"},
    "fewshot/probe": {"results": "results.json"},
}


class StageError(UserError, ValueError):
    """An unknown stage name or a stage package that cannot be imported."""


def check_stage(name: str) -> str:
    """Return ``name`` if it is a stage, else raise with the closest names."""
    if name not in STAGES:
        close = difflib.get_close_matches(name, STAGES, n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise StageError(f"unknown stage '{name}'; stages are {', '.join(STAGES)}.{hint}")
    return name


def stage_function(name: str) -> StageFn:
    """``<package>.stage.run`` of a stage (``fewshot/probe`` -> ``fewshot.probe.stage.run``)."""
    module = check_stage(name).replace("/", ".") + ".stage"
    try:
        return importlib.import_module(module).run
    except ModuleNotFoundError as exc:
        raise StageError(
            f"stage '{name}' cannot be imported ({exc}); is the package installed "
            "(`pip install -e .` in the repository)?"
        ) from None


def artifact_path(stage: str, run_dir: str | Path, artifact: str) -> Path:
    """Where ``artifact`` of ``stage`` lives in its run directory."""
    produced = PRODUCES[check_stage(stage)]
    if artifact not in produced:
        raise StageError(
            f"stage '{stage}' produces no artifact '{artifact}'; it produces "
            f"{', '.join(sorted(produced))}"
        )
    return Path(run_dir) / produced[artifact]
