"""Artifacts one stage reads from another (a backbone export, a pseudo-mask folder), their
checksums, and the check that a run resumed in the same directory still reads the same ones.

``launch`` records the same checksums in a pipeline's manifest; a stage run directly records
them in ``<output_dir>/inputs.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from common.errors import UserError

# Top-level config keys that name an artifact on disk.
ARTIFACT_KEYS = ("backbone", "pseudo_masks")
INPUTS_FILE = "inputs.json"


class ArtifactError(UserError, RuntimeError):
    """A missing artifact, or one whose checksum changed after it was recorded."""


def artifact_value(cfg: Mapping, key: str) -> str | None:
    """The path an artifact key names, or None (unset, or a ``timm:`` name: not a file)."""
    value = cfg.get(key)
    if isinstance(value, Mapping):  # backbone: {source, weights}
        value = value.get("source")
    if not value or str(value).startswith("timm:"):
        return None
    return str(value)


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder's relative file names and contents (sorted)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"artifact not found: {path}")
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _content_path(key: str, value: str) -> Path:
    """What to checksum: a run directory given as a backbone stands for its export/ only
    (its logs and checkpoints change while the backbone does not)."""
    path = Path(value)
    if key == "backbone" and (path / "export" / "backbone.json").is_file():
        return path / "export"
    return path


def input_checksums(cfg: Mapping) -> dict[str, dict[str, str]]:
    """``{key: {"path", "sha256"}}`` of the artifacts ``cfg`` names that exist on disk."""
    records = {}
    for key in ARTIFACT_KEYS:
        value = artifact_value(cfg, key)
        if value and Path(value).exists():
            path = _content_path(key, value).resolve()
            records[key] = {"path": str(path), "sha256": sha256_path(path)}
    return records


def check_run_inputs(run_root: str | Path, cfg: Mapping, force: bool = False) -> None:
    """Refuse to resume a run whose input artifacts changed since it recorded them; record them.

    Checkpoints trained on one backbone or one set of pseudo-masks must not continue on
    another that sits at the same path. ``force`` accepts the change and records the new ones.
    """
    path = Path(run_root) / INPUTS_FILE
    current = input_checksums(cfg)
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    for key, old in recorded.items():
        new = current.get(key)
        if force or new is None or new["path"] != old["path"] or new["sha256"] == old["sha256"]:
            continue
        raise ArtifactError(
            f"{key} {old['path']} changed since this run recorded it in {path} (sha256 "
            f"{old['sha256'][:12]}... then, {new['sha256'][:12]}... now): its checkpoints were "
            "made from the old one. Restore it, use another --output-dir, or pass --force "
            "to continue from the new one."
        )
    fd, tmp = tempfile.mkstemp(prefix=f".{INPUTS_FILE}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(current, fh, indent=2)
    os.replace(tmp, path)
