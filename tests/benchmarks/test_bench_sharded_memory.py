"""benchmarks/bench_sharded_memory.py end to end on CPU with a tiny backbone and 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_measures_both_modes_and_fsdp_halves_the_state_per_rank(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_sharded_memory.py")]
    cmd += ["--device", "cpu", "--tiny", "--backbones", "tiny-64x2", "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"ddp", "fsdp+ac"}
    assert all(r["status"] == "ok" and r["peak_mib"] > 0 for r in rows.values())
    assert rows["ddp"]["backbone_params_m"] == rows["fsdp+ac"]["backbone_params_m"]
    # 2 processes: each holds half of the parameters, gradients and AdamW state (plus the
    # padding of rows that do not split evenly).
    ratio = rows["fsdp+ac"]["state_mib"] / rows["ddp"]["state_mib"]
    assert 0.45 < ratio < 0.56, ratio
    assert "| tiny-64x2 | 0.1 | fsdp+ac |" in done.stdout
    assert "largest backbone that trains with fsdp+ac: tiny-64x2" in done.stdout
