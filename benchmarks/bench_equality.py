"""N processes against one: the largest difference per preset, over DDP and FSDP at 2 and 4
gloo processes on CPU, of what ``tests/pretrain/test_equality.py`` compares (loss terms,
gradients at the first step and later, weights after 3 steps, k-NN monitor features).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_equality.py

Writes ``benchmarks/results/equality.json``. About 3 minutes on 2 cores.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.record import record_result
from common.datasets.fashion_scenes import generate_fashion_scenes
from tests.conftest import TINY_SCENES
from tests.pretrain.test_equality import CASES, run_all

QUANTITIES = ("terms", "gradients", "later_gradients", "weights", "features")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        root = generate_fashion_scenes(out / "scenes", workers=1, progress=False, **TINY_SCENES)
        found = run_all(out, root)
    rows = []
    for preset in CASES:
        cases = [v for k, v in found.items() if k[0] == preset]
        rows.append([preset, *(float(f"{max(c[q] for c in cases):.1e}") for q in QUANTITIES)])
    units = []
    for (unit, world), diffs in sorted((k, v) for k, v in found.items() if len(k) == 2):
        units.append([unit, world, float(f"{diffs['gradients']:.1e}"), round(diffs["scale"], 4)])
    largest = max(max(row[1:]) for row in rows)
    for row in rows:
        print(*row, sep="\t")
    for row in units:
        print(*row, sep="\t")
    record_result(
        "equality",
        tables={
            "largest_difference": {
                "columns": [
                    "preset",
                    "loss terms",
                    "gradients, step 1",
                    "gradients, steps 2-3",
                    "weights after 3 steps",
                    "k-NN features",
                ],
                "rows": rows,
            },
            "terms_alone": {
                "columns": ["term", "processes", "gradient difference", "gradient scale"],
                "rows": units,
            },
        },
        values={"largest_difference": largest},
    )


if __name__ == "__main__":
    main()
