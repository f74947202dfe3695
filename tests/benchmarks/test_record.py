"""A benchmark run leaves a record with its printed tables, command, commit, machine and date."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.record import split_printed

ROOT = Path(__file__).resolve().parents[2]


def test_printed_tables_are_named_in_order_and_other_lines_kept():
    text = "run 1\n| a | b |\n| --- | ---: |\n| x | 1.5 |\n\nnote\n|c|\n|---|\n|y|\n|z|\n"
    tables, other = split_printed(text, ["first"])
    assert tables == {
        "first": {"columns": ["a", "b"], "rows": [["x", "1.5"]]},
        "table_1": {"columns": ["c"], "rows": [["y"], ["z"]]},
    }
    assert other == ["run 1", "note"]


def test_a_benchmark_script_records_what_it_printed(tmp_path):
    records = tmp_path / "records"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_refine.py")]
    cmd += ["--images", "3", "--size", "64", "--patch", "16", "--noise", "0.3"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), LABELFEW_RESULTS_DIR=str(records))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rec = json.loads((records / "refine.json").read_text())
    assert rec["command"].endswith(
        "benchmarks/bench_refine.py --images 3 --size 64 --patch 16 --noise 0.3"
    )
    assert rec["commit"] and rec["machine"] and rec["date"]
    table = rec["tables"]["refine"]
    assert [r[0].strip("*").split(" ")[0] for r in table["rows"]] == [
        "none",
        "par_variation",
        "varm",
    ]
    for row in table["rows"]:  # every printed cell is in the record, as printed
        assert "| " + " | ".join(row) + " |" in done.stdout
    assert "3 val scenes, 16 px cells, noise 0.3" in rec["values"]["printed"]
