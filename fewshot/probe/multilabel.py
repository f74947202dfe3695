"""Multi-label probe: one-vs-rest logistic regressions on scene features, scored by mAP."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from common.metrics import mean_average_precision


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
    """mAP on the test images of a one-vs-rest logistic regression (each class needs a
    positive and a negative training image)."""
    trivial = [i for i in range(y_train.shape[1]) if y_train[:, i].min() == y_train[:, i].max()]
    if trivial:
        raise ValueError(
            f"multi-label probe: classes at columns {trivial} are present in all or none of the "
            f"{len(y_train)} training images; label more images (multilabel.percent)"
        )
    model = OneVsRestClassifier(LogisticRegression(C=c, max_iter=max_iter)).fit(x_train, y_train)
    scores = model.predict_proba(x_test)
    return {"mAP": mean_average_precision(scores, y_test), "train_images": int(len(y_train))}
