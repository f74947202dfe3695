"""A run resumed in the same directory must read the same input artifacts it started from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.artifacts import INPUTS_FILE, ArtifactError, check_run_inputs


def _export(root: Path) -> Path:
    export = root / "pt" / "export"
    export.mkdir(parents=True)
    (export / "backbone.json").write_text('{"format": "x"}')
    (export / "backbone.pth").write_bytes(b"weights")
    return root / "pt"


def test_a_changed_input_is_refused_on_resume(tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(b"mask")
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"backbone": {"source": str(_export(tmp_path))}, "pseudo_masks": str(masks)}
    check_run_inputs(run, cfg)
    recorded = json.loads((run / INPUTS_FILE).read_text())
    assert recorded["backbone"]["path"] == str((tmp_path / "pt" / "export").resolve())
    (tmp_path / "pt" / "log.txt").write_text("a run dir's log changes, its export does not")
    check_run_inputs(run, cfg)  # same inputs: resumes
    (masks / "a.png").write_bytes(b"edited")
    with pytest.raises(ArtifactError, match=rf"pseudo_masks {masks} changed since this run"):
        check_run_inputs(run, cfg)
    check_run_inputs(run, cfg, force=True)  # accepted, and recorded
    check_run_inputs(run, cfg)


def test_timm_names_and_unset_keys_are_not_files(tmp_path: Path) -> None:
    check_run_inputs(tmp_path, {"backbone": {"source": "timm:vit_small_patch16_224"}})
    assert json.loads((tmp_path / INPUTS_FILE).read_text()) == {}
