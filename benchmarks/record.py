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
import io
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
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


def markdown_table(text: str) -> dict[str, Any]:
    """A printed markdown table (header, rule, rows) as a record table; other lines are skipped."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    body = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
    return {"columns": cells[0] if cells else [], "rows": body}


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
    # LABELFEW_RESULTS_DIR sends records elsewhere: tests that run a benchmark set it, so the
    # committed records change only when someone measures.
    default = Path(os.environ.get("LABELFEW_RESULTS_DIR") or RESULTS_DIR)
    folder = Path(out_dir) if out_dir is not None else default
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float) + "\n")
    tmp.replace(path)
    return path


class _Tee(io.TextIOBase):
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def split_printed(text: str, keys: list[str]) -> tuple[dict[str, dict], list[str]]:
    """The markdown tables in printed text, named by ``keys`` in order (``table_N`` after
    them), and the other non-empty lines."""
    tables, other, block = [], [], []
    for line in [*text.splitlines(), ""]:
        if line.strip().startswith("|"):
            block.append(line)
            continue
        if block:
            tables.append(markdown_table("\n".join(block)))
            block = []
        if line.strip():
            other.append(line.strip())
    names = [*keys, *(f"table_{i}" for i in range(len(keys), len(tables)))]
    return dict(zip(names, tables, strict=False)), other


@contextlib.contextmanager
def record_printed(name: str, keys: list[str], **values: Any) -> Iterator[dict]:
    """Record the markdown tables a benchmark prints (named by ``keys`` in print order), the
    other lines it prints (value ``printed``), ``values`` and what the body adds to the dict
    it is given; nothing is written on failure."""
    buffer = io.StringIO()
    computed: dict[str, Any] = {}
    with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
        yield computed
    tables, other = split_printed(buffer.getvalue(), keys)
    record_result(name, tables=tables, values={**values, **computed, "printed": other})
