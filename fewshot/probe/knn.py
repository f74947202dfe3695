"""Weighted k-NN classification on L2-normalised features (faiss inner product = cosine;
the GPU index when faiss has GPU support).

As in DINO's k-NN evaluation: the k nearest training features vote for their class with
weight ``exp(cosine / T)``; the class with the largest total wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.faiss_index import search_ip


def knn_predict(
    train: np.ndarray, labels: np.ndarray, test: np.ndarray, ks: Sequence[int], temperature: float
) -> dict[int, np.ndarray]:
    """Predicted labels of ``test`` for every k in ``ks`` (k is capped at the training size)."""
    if temperature <= 0:
        raise ValueError(f"k-NN temperature must be > 0, got {temperature}")
    sims, nn = search_ip(train, test, max(ks))
    kmax = nn.shape[1]
    classes = np.unique(labels)
    onehot = (labels[nn][..., None] == classes).astype(np.float32)  # [N, kmax, C]
    weights = np.exp(sims / temperature)[..., None]
    out = {}
    for k in ks:
        k_eff = min(k, kmax)
        votes = (onehot[:, :k_eff] * weights[:, :k_eff]).sum(axis=1)
        out[k] = classes[votes.argmax(axis=1)]
    return out


def knn_accuracy(
    train: np.ndarray,
    labels: np.ndarray,
    test: np.ndarray,
    test_labels: np.ndarray,
    ks: Sequence[int],
    temperature: float,
) -> dict[str, float]:
    """``{"k=<k>": accuracy}`` for every k."""
    preds = knn_predict(train, labels, test, ks, temperature)
    return {f"k={k}": float((p == test_labels).mean()) for k, p in preds.items()}
