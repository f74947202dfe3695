"""Time FashionScenes generation with 1 vs N workers (same process, same machine).

    .venv/bin/python benchmarks/bench_fashion_scenes.py --scenes 10000 --workers 1 2

Reports seconds, scenes/s and the speed-up over 1 worker, and checks that every worker count
wrote identical files (generation is deterministic per scene, not per worker).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

from benchmarks.record import record_printed
from common.datasets.fashion_mnist import load_fashion_mnist
from common.datasets.fashion_scenes import generate_fashion_scenes


def _digest(root: Path) -> str:
    """One hash over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=10000, help="total scenes (80%% train)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--tmp-root",
        type=Path,
        default=None,
        help="where the scratch sets go (default: the system temp folder); file creation "
        "speed differs a lot between folders, so say which one when you report numbers",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n_train = args.scenes * 4 // 5
    n_test = args.scenes - n_train
    # Read Fashion-MNIST once up front so every timed run starts from the same warm cache.
    load_fashion_mnist("train")
    load_fashion_mnist("test")
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.tmp_root) as tmp:
        for workers in args.workers:
            out = Path(tmp) / f"w{workers}"
            start = time.perf_counter()
            generate_fashion_scenes(
                out,
                size=args.size,
                n_train=n_train,
                n_test=n_test,
                workers=workers,
                progress=False,
            )
            seconds = time.perf_counter() - start
            rows.append((workers, seconds, _digest(out)))
    base = rows[0][1]
    identical = len({digest for _, _, digest in rows}) == 1
    print(f"FashionScenes generation, {args.scenes} scenes of {args.size}px under {tmp}")
    print("| workers | seconds | scenes/s | speed-up vs first |")
    print("| --- | --- | --- | --- |")
    for workers, seconds, _ in rows:
        print(
            f"| {workers} | {seconds:.2f} | {args.scenes / seconds:.0f} | {base / seconds:.2f}x |"
        )
    print(f"identical output across worker counts: {identical}")
    # Other processes on the machine skew the timings: report the load they added.
    print(f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    return 0 if identical else 1


if __name__ == "__main__":
    with record_printed("fashion_scenes", ["generation"]):
        status = main()
    raise SystemExit(status)
