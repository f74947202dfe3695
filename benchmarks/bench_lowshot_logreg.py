"""The logistic regressions of the low-shot protocols at ImageNet 1 % size (12,811 x 384,
1,000 classes; synthetic features: class centres plus noise), on this machine.

- MSN (``msn_lowshot``): one fit with the preset's defaults (lambd 0.00025, tol 1e-6).
- DINOv2 (``dinov2_logreg``): the cost of one C of its 45-value grid, measured as the time
  per L-BFGS iteration over ``--c-iters`` iterations (DINOv2's tol 1e-12 runs a fit to its
  max_iter of 1,000, so a C costs up to 1,000 iterations).

    python benchmarks/bench_lowshot_logreg.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from benchmarks.record import record_result
from fewshot.probe.lowshot_logreg import dinov2_c_values, msn_fit

N, DIM, CLASSES = 12_811, 384, 1000


def one_percent_features(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(N) % CLASSES
    x = rng.standard_normal((CLASSES, DIM))[y] + 3 * rng.standard_normal((N, DIM))
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--c-iters", type=int, default=30, help="L-BFGS iterations timed per C")
    args = parser.parse_args()
    x, y = one_percent_features()
    t = time.perf_counter()
    w, _ = msn_fit(x, y, 0.00025, 1e-6, 1000)
    msn_s = time.perf_counter() - t
    train_acc = float(((x - x.mean(1, keepdims=True)) @ w.T).argmax(1).__eq__(y).mean())
    c = float(dinov2_c_values([-6, 5, 45])[30])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t = time.perf_counter()
        model = LogisticRegression(C=c, max_iter=args.c_iters, tol=1e-12).fit(x, y)
        per_iter = (time.perf_counter() - t) / max(int(model.n_iter_[0]), 1)
    rows = [
        ["MSN logistic regression, one fit (msn_lowshot defaults)", round(msn_s, 1)],
        ["DINOv2, one L-BFGS iteration", round(per_iter, 2)],
        ["DINOv2, one C at max_iter=1000 (upper bound)", round(per_iter * 1000)],
        ["DINOv2, the 45-value grid + refit (upper bound)", round(per_iter * 1000 * 46)],
    ]
    for row in rows:
        print(row)
    record_result(
        "lowshot_logreg",
        tables={"logreg": {"columns": ["12,811 x 384, 1,000 classes", "seconds"], "rows": rows}},
        values={"msn_seconds": round(msn_s, 1), "msn_train_accuracy": round(train_acc, 3)},
    )


if __name__ == "__main__":
    main()
