"""Multinomial logistic regression on frozen features, regularisation picked without the test.

The inverse regularisation strength C is chosen by stratified cross-validation over the
training labels alone (``min(folds, fewest labels of a class)`` folds). With one label per
class nothing can be held out, so ``default_c`` is used and the result says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=max_iter).fit(x, y)


def choose_c(
    x: np.ndarray, y: np.ndarray, grid: Sequence[float], folds: int, seed: int, max_iter: int
) -> float | None:
    """The C of ``grid`` with the best mean held-out accuracy; None when a class has 1 label."""
    _, counts = np.unique(y, return_counts=True)
    n_splits = min(folds, int(counts.min()))
    if n_splits < 2:
        return None
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = []
    for c in grid:
        accs = [
            float((_fit(x[tr], y[tr], c, max_iter).predict(x[va]) == y[va]).mean())
            for tr, va in cv.split(x, y)
        ]
        scores.append(np.mean(accs))
    return float(grid[int(np.argmax(scores))])


def logreg_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    grid: Sequence[float],
    default_c: float,
    folds: int,
    seed: int,
    max_iter: int,
) -> dict:
    """Test accuracy of a logistic regression fit on the training labels; reports the C used."""
    c = choose_c(x_train, y_train, grid, folds, seed, max_iter)
    chosen = c if c is not None else default_c
    model = _fit(x_train, y_train, chosen, max_iter)
    acc = float((model.predict(x_test) == y_test).mean())
    return {"accuracy": acc, "C": chosen, "C_selected_by": "cv" if c is not None else "default"}
