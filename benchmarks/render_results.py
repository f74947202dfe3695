"""Render ``benchmarks/RESULTS.md`` from the page fragments and the results records.

The page is every ``benchmarks/page/*.md`` fragment, concatenated in file-name order with one
blank line between fragments. Fragments hold the prose; every figure comes from a record
``benchmarks/results/<NAME>.json`` (written by ``benchmarks.record.record_result``) through a
placeholder, inline or on its own line:

- ``{{table NAME:KEY}}`` renders the record's table ``KEY`` as a markdown table (its
  ``caption``, if any, as a line above it). Cells are printed as recorded.
- ``{{value NAME:KEY}}`` renders the record's value ``KEY`` as recorded.
- ``{{source NAME}}`` renders the record's command as a ``bash`` block and, below it, one
  line with the machine, the date and the commit (or, for a record converted from an earlier
  page, that fact and the date it was measured).

Fragment rules: a fragment is named ``NN_topic.md``. The existing numbers are
10 intro and bars, 20 datasets, 30 backbones, 40 pretrain, 50 distill, 60 fewshot, 70 launch,
80 test suite, 90 GPU; a new section takes a free number in its stage's range ending in 5 or
7 (``47_recipes.md``, ``65_lowshot.md``). A fragment starts with a ``##`` or ``###`` heading,
says in a few sentences what the numbers mean, and types no result by hand.

    PYTHONPATH=. .venv/bin/python benchmarks/render_results.py          # write RESULTS.md
    PYTHONPATH=. .venv/bin/python benchmarks/render_results.py --check  # exit 1 and a diff if stale

An unknown record, table or value is one error line naming the fragment, the line and the
records or keys that exist; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAGE_DIR = HERE / "page"
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"

PLACEHOLDER = re.compile(r"\{\{\s*(table|value|source)\s+([A-Za-z0-9_.-]+)(?::([^}\s]+))?\s*\}\}")
HEADER = (
    "<!-- Rendered by benchmarks/render_results.py from benchmarks/page/ and "
    "benchmarks/results/: edit those, not this file. -->\n\n"
)


class RenderError(Exception):
    """A placeholder that names no record, table or value: one line for the user."""


def load_records(results_dir: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """Every ``<name>.json`` record in ``results_dir``, by name."""
    records = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            records[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise RenderError(f"{path}: not valid JSON ({err}); re-run its benchmark") from err
    return records


def cell(value: Any) -> str:
    """A table cell or inline value as recorded; ``None`` is a dash."""
    if value is None:
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table_md(table: dict[str, Any]) -> str:
    cols = table.get("columns") or [""] * len(table["rows"][0])
    lines = [f"{table['caption']}\n"] if table.get("caption") else []
    lines.append("| " + " | ".join(cell(c) for c in cols) + " |")
    lines.append("|" + " --- |" * len(cols))
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table["rows"]]
    return "\n".join(lines)


def source_md(rec: dict[str, Any]) -> str:
    block = f"```bash\n{rec.get('command', '').strip()}\n```\n"
    if rec.get("source"):
        return block + f"{rec['machine']}, {rec['date']} ({rec['source']})."
    return block + f"{rec['machine']}, {rec['date']}, commit `{rec['commit']}`."


def expand(kind: str, name: str, key: str | None, records: dict[str, dict[str, Any]]) -> str:
    if name not in records:
        raise RenderError(
            f"no record {name!r} (benchmarks/results/{name}.json); records: {', '.join(records)}"
        )
    rec = records[name]
    if kind == "source":
        return source_md(rec)
    field = "tables" if kind == "table" else "values"
    found = rec.get(field, {})
    if key is None or key not in found:
        raise RenderError(
            f"record {name!r} has no {kind} {key!r}; its {field}: {', '.join(found) or 'none'}"
        )
    return table_md(found[key]) if kind == "table" else cell(found[key])


def render_fragment(text: str, where: str, records: dict[str, dict[str, Any]]) -> str:
    out = []
    for number, line in enumerate(text.splitlines(), 1):

        def sub(m: re.Match, number: int = number) -> str:
            try:
                return expand(m.group(1), m.group(2), m.group(3), records)
            except RenderError as err:
                raise RenderError(f"{where}:{number}: {m.group(0)}: {err}") from None

        if line.count("{{") != len(PLACEHOLDER.findall(line)):
            raise RenderError(
                f"{where}:{number}: malformed placeholder; write {{{{table NAME:KEY}}}}, "
                "{{value NAME:KEY}} or {{source NAME}}"
            )
        out.append(PLACEHOLDER.sub(sub, line))
    return "\n".join(out).strip("\n") + "\n"


def render(page_dir: Path = PAGE_DIR, results_dir: Path = RESULTS_DIR) -> str:
    """The results page: every fragment in name order, placeholders filled from the records."""
    fragments = sorted(page_dir.glob("*.md"))
    if not fragments:
        raise RenderError(f"no fragments in {page_dir}")
    records = load_records(results_dir)
    parts = [
        render_fragment(f.read_text(), f"benchmarks/page/{f.name}", records) for f in fragments
    ]
    return HEADER + "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 with a diff if RESULTS.md is stale"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_MD)
    args = parser.parse_args(argv)
    try:
        text = render()
    except RenderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.check:
        args.out.write_text(text)
        return 0
    current = args.out.read_text() if args.out.exists() else ""
    if current == text:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(keepends=True), text.splitlines(keepends=True), str(args.out), "rendered"
    )
    sys.stdout.writelines(diff)
    print(f"{args.out} is stale: run PYTHONPATH=. .venv/bin/python benchmarks/render_results.py")
    return 1


if __name__ == "__main__":
    sys.exit(main())
