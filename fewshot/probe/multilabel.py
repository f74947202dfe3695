"""Multi-label probe: one-vs-rest logistic regressions on scene features, scored by mAP."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from common.metrics import mean_average_precision

log = logging.getLogger(__name__)


def label_matrix(labels: Sequence[Sequence[int]], classes: Sequence[int]) -> np.ndarray:
    """Binary [N, C] matrix: image n shows class ``classes[c]``."""
    col = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), dtype=np.int64)
    for n, ls in enumerate(labels):
        for c in ls:
            out[n, col[c]] = 1
    return out


def multilabel_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    c: float,
    max_iter: int,
) -> dict:
    """mAP on the test images of a one-vs-rest logistic regression.

    A class present in all or none of the training images gets a constant score (chance AP);
    the result lists such classes under ``constant_classes``.
    """
    trivial = [i for i in range(y_train.shape[1]) if y_train[:, i].min() == y_train[:, i].max()]
    if trivial:
        log.warning(
            "multi-label probe: class columns %s are present in all or none of the %d training "
            "images and get a constant score; label more images (multilabel.percent)",
            trivial,
            len(y_train),
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=max_iter))
        model.fit(x_train, y_train)
    scores = model.predict_proba(x_test)
    return {
        "mAP": mean_average_precision(scores, y_test),
        "train_images": int(len(y_train)),
        "constant_classes": trivial,
    }
