"""The logistic regressions of MSN's and DINOv2's low-shot evaluations, on scikit-learn.

MSN (``logistic_eval.py``) fits cyanure's multinomial logistic regression without
intercept on features each centred on its own mean and L2-normalised, minimising

    (1/n) sum_i CE(W x_i, y_i) + (lam/2) ||W||^2,   lam = lambd / n   (MSN: lambd = 0.00025).

scikit-learn minimises ``C sum_i CE + ||W||^2 / 2``; dividing by ``C n`` gives the same
objective with ``lam = 1 / (C n)``, so ``C = 1 / lambd`` whatever n (cyanure's
documentation: ``C = 1 / (n lam)``).

DINOv2 (``eval/log_regression.py``) fits cuML's logistic regression (scikit-learn's C,
an intercept, float64) for each C in ``10 ** linspace(-6, 5, 45)`` on 90 % of train,
picks the C with the best top-1 on the other 10 % (``torch.manual_seed(0); randperm``),
and refits that C on all of train.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

log = logging.getLogger(__name__)


def center_normalize(x: np.ndarray) -> np.ndarray:
    """Each row minus its own mean, then scaled to unit L2 norm (cyanure's ``preprocess(X,
    centering=True, normalize=True, columns=False)``), in float64."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _fit(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("logistic regression (C=%g) stopped at max_iter=%d", model.C, model.max_iter)
    return model


def msn_fit(
    x: np.ndarray, y: np.ndarray, lambd: float, tol: float, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """MSN's classifier on raw features ``x`` (centred and normalised here): the weights
    ``W`` [classes, D] of the multinomial objective and the classes they score.

    With two classes scikit-learn fits one vector ``w`` (binary logistic); the multinomial
    optimum is ``W = [-w/2, w/2]``, whose penalty is ``||w||^2 / 2``: hence ``C = 2 / lambd``.
    """
    if lambd <= 0:
        raise ValueError(f"msn_lowshot.lambd must be > 0, got {lambd}")
    binary = len(np.unique(y)) == 2
    model = LogisticRegression(
        C=(2.0 if binary else 1.0) / lambd, fit_intercept=False, tol=tol, max_iter=max_iter
    )
    _fit(model, center_normalize(x), y)
    w = np.concatenate([-model.coef_ / 2, model.coef_ / 2]) if binary else model.coef_
    return w, model.classes_


def msn_objective(w: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float) -> float:
    """(1/n) sum CE(W x_i, y_i) + lam/2 ||W||^2 for ``w`` [classes, D] and labels 0..C-1."""
    logits = x @ w.T
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean() + lam / 2 * (w**2).sum())


def dinov2_c_values(log10_range: Sequence[float]) -> np.ndarray:
    """``10 ** linspace(start, stop, num)`` computed as DINOv2 does (a float32 torch grid)."""
    start, stop, num = log10_range
    return (10 ** torch.linspace(float(start), float(stop), int(num))).double().numpy()


def holdout_split(n: int, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) indices: the first ``int(n * share)`` of ``randperm(n)`` are held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    cut = int(n * share)
    return perm[cut:], perm[:cut]


def dinov2_sweep(
    x: np.ndarray,
    y: np.ndarray,
    c_values: np.ndarray,
    holdout: float,
    max_iter: int,
    tol: float,
    seed: int = 0,
) -> dict:
    """Held-out top-1 of each C (fit on the rest of train) and the best C, refit on all of
    train. Fits go from small to large C, each starting from the previous solution (the
    objective is convex, so the optimum is the same; it only saves iterations)."""
    x = np.asarray(x, dtype=np.float64)
    fit_idx, held = holdout_split(len(x), holdout, seed)
    if len(held) == 0 or len(np.unique(y[fit_idx])) < 2:
        raise ValueError(
            f"dinov2_logreg holds out {holdout:.0%} of {len(x)} training images: too few to "
            "choose C; use more training images"
        )
    model = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)
    scores = []
    for c in c_values:
        model.set_params(C=float(c))
        _fit(model, x[fit_idx], y[fit_idx])
        scores.append(float((model.predict(x[held]) == y[held]).mean()))
    best = float(c_values[int(np.argmax(scores))])
    final = _fit(LogisticRegression(C=best, max_iter=max_iter, tol=tol), x, y)
    return {"model": final, "best_C": best, "heldout_top1": scores}
