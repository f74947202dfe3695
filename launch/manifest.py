"""A pipeline's ``manifest.json``: what each stage consumed and produced, with checksums.

A stage records sha256 checksums of its artifacts when it finishes; the next stage checks
them before reading, so an export or a pseudo-mask folder edited after it was produced is
refused instead of silently mixing results. Jobs and the submitting process update the file
under a lock with atomic writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.artifacts import ArtifactError, sha256_path

MANIFEST = "manifest.json"
FORMAT = "labelfew-pipeline-manifest-v1"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    """Read/update ``<pipeline dir>/manifest.json`` (one entry per pipeline stage)."""

    def __init__(self, pipeline_dir: str | Path) -> None:
        self.root = Path(pipeline_dir)
        self.path = self.root / MANIFEST

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> dict:
        if not self.path.is_file():
            return {"format": FORMAT, "stages": {}}
        return json.loads(self.path.read_text())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f".{MANIFEST}.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def update(self, fn: Callable[[dict], None]) -> dict:
        """Apply ``fn`` to the manifest under the lock and write it back atomically."""
        with self._locked():
            data = self.read()
            fn(data)
            fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=self.root)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2, default=str)
            os.replace(tmp, self.path)
        return data

    def update_stage(self, name: str, **fields: Any) -> None:
        def apply(data: dict) -> None:
            data["stages"].setdefault(name, {}).update(fields)

        self.update(apply)

    def stage(self, name: str) -> dict:
        return self.read()["stages"].get(name, {})

    def record_outputs(self, name: str, produces: dict[str, Path], summary: dict) -> None:
        """Checksum what stage ``name`` produced (artifacts that exist) and mark it completed."""
        records = {
            key: {"path": str(path), "sha256": sha256_path(path)}
            for key, path in produces.items()
            if Path(path).exists()
        }
        self.update_stage(
            name, produces=records, status="completed", finished=now(), summary=summary
        )

    def verify_inputs(self, name: str) -> dict[str, dict]:
        """Check every artifact stage ``name`` consumes against its producer's checksum.

        Returns the consumed records (path, sha256, producer) and stores them in the manifest.
        """
        entry = self.stage(name)
        consumed = {}
        for key, spec in entry.get("consumes", {}).items():
            path = Path(spec["path"])
            current = sha256_path(path)
            producer = spec.get("producer")
            if producer:
                produced = self.stage(producer).get("produces", {}).get(spec["artifact"])
                if produced is None:
                    raise ArtifactError(
                        f"stage '{name}' needs {spec['artifact']} of stage '{producer}' "
                        f"({path}), but '{producer}' has not recorded it in {self.path}; "
                        f"run '{producer}' first"
                    )
                # A path inside the artifact (e.g. pseudo_masks/weak) is checked as the whole.
                whole = produced.get("path", str(path))
                if produced["sha256"] != (current if whole == str(path) else sha256_path(whole)):
                    raise ArtifactError(
                        f"artifact {path} changed after stage '{producer}' produced it "
                        f"(sha256 {produced['sha256'][:12]}... then, {current[:12]}... now); "
                        f"re-run '{producer}' (delete its entry in {self.path}) or restore it"
                    )
            consumed[key] = {**spec, "sha256": current}
        self.update_stage(name, consumes=consumed)
        return consumed
