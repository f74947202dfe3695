"""Results as data: each benchmark writes its numbers to ``benchmarks/results/<name>.json``.

A record holds the numbers (named tables of rows, and single named values), the command that
produced them, the commit, the machine and the date. ``benchmarks/RESULTS.md`` is rendered
from these files, so a figure on the results page always has a record behind it.

    from benchmarks.record import record_result
    record_result(
        "augment",
        tables={"throughput": {"columns": ["recipe", "path", "images/s"], "rows": rows}},
        values={"speedup_fashion_tiny": 1.8},
    )
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROOT = RESULTS_DIR.parent.parent


def machine() -> str:
    """A one-line description of the machine: CPU model and cores, memory, and the GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{os.cpu_count()}-core {cpu}"]
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        parts.append(f"{kib / 2**20:.0f} GiB")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
        else:
            parts.append("no GPU")
    except ImportError:
        parts.append("no GPU")
    return ", ".join(parts)


def commit() -> str:
    """The checkout's short commit, with ``-dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", ".", ":!benchmarks/results"], cwd=ROOT
        ).returncode
    except OSError:
        return "unknown"
    return (head or "unknown") + ("-dirty" if dirty else "")


def command(argv: list[str] | None = None) -> str:
    """The command line that ran this benchmark, relative to the repository root."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        with contextlib.suppress(ValueError):
            argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
    return "PYTHONPATH=. .venv/bin/python " + shlex.join(argv)


def record_result(
    name: str,
    *,
    tables: dict[str, dict[str, Any]] | None = None,
    values: dict[str, Any] | None = None,
    argv: list[str] | None = None,
    out_dir: Path | None = None,
    command_line: str | None = None,
) -> Path:
    """Write ``<out_dir>/<name>.json`` (default ``benchmarks/results``) and return its path.

    ``tables`` maps a table name to ``{"columns": [...], "rows": [[...], ...]}``; ``values``
    maps a name to a single figure quoted in prose; ``command_line`` replaces the recorded
    command where the numbers came from other commands than this one (a pipeline run). The
    write is atomic.
    """
    for key, table in (tables or {}).items():
        if set(table) - {"columns", "rows", "caption"} or "rows" not in table:
            raise ValueError(f"table {key!r} needs 'columns' and 'rows' (and maybe 'caption')")
        width = len(table.get("columns", []))
        bad = [r for r in table["rows"] if width and len(r) != width]
        if bad:
            raise ValueError(f"table {key!r}: row {bad[0]} has not {width} cells")
    data = {
        "name": name,
        "command": command_line if command_line is not None else command(argv),
        "commit": commit(),
        "machine": machine(),
        "date": _dt.date.today().isoformat(),
        "tables": tables or {},
        "values": values or {},
    }
    folder = Path(out_dir) if out_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float) + "\n")
    tmp.replace(path)
    return path
