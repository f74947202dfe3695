"""Self-training a linear foreground probe on the patch tokens, seeded by attention.

The patch tokens of a small ViT can hold foreground far more cleanly than its attention:
on FashionScenes a linear probe fitted to ground-truth patches separates foreground from
background with AUC 0.97, while the best sign-corrected head mean reaches 0.87
(benchmarks/bench_patch_signal.py). Without pixel labels the probe is fitted to the
attention's confident patches instead: on each fit image the top ``seed_share`` of the
head-mean map are taken as foreground, the bottom ``seed_share`` as background, the middle
is left out. Images known to show no object give all their patches as background. A
linear model cannot follow the seeds' blobby errors, so its scores keep the
direction the seeds agree on and sharpen the map (measured in benchmarks/RESULTS.md,
session 13). Fitted with scikit-learn's logistic regression on L2-normalised tokens.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression


def seed_labels(maps: torch.Tensor, share: float) -> torch.Tensor:
    """Per-image seeds from maps [B, h, w]: 1 for the top ``share``, 0 for the bottom, -1 else.

    By rank, so every image gives the same number of seeds whatever its contrast.
    """
    if not 0.0 < share <= 0.5:
        raise ValueError(f"mask.probe_seed_share must be in (0, 0.5], got {share}")
    flat = maps.flatten(1)
    n = flat.shape[1]
    k = max(1, int(round(share * n)))
    order = flat.argsort(dim=1, descending=True, stable=True)
    seeds = torch.full_like(flat, -1, dtype=torch.long)
    seeds.scatter_(1, order[:, :k], 1)
    seeds.scatter_(1, order[:, n - k :], 0)
    return seeds.reshape(maps.shape)


class ForegroundProbe:
    """Accumulates seeded patch tokens, fits a logistic regression, maps tokens to P(fg)."""

    def __init__(self, seed_share: float = 0.3) -> None:
        self.seed_share = seed_share
        self._x: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def add(self, tokens: torch.Tensor, maps: torch.Tensor) -> None:
        """A batch: patch tokens [B, h, w, C] and the maps [B, h, w] that seed it."""
        seeds = seed_labels(maps.float(), self.seed_share).flatten()
        keep = seeds >= 0
        x = F.normalize(tokens.float(), dim=-1).flatten(0, 2)
        self._x.append(x[keep].cpu())
        self._y.append(seeds[keep].cpu())

    def add_background(self, tokens: torch.Tensor) -> None:
        """Every patch of images known to show no object [B, h, w, C] as a background seed."""
        x = F.normalize(tokens.float(), dim=-1).flatten(0, 2)
        self._x.append(x.cpu())
        self._y.append(torch.zeros(len(x), dtype=torch.long))

    def fit(self) -> dict:
        """Fit on the seeds added so far; returns the seed count and the fit's seed accuracy."""
        if not self._x:
            raise ValueError("no image was added: the foreground probe needs fit images")
        x = torch.cat(self._x).double().numpy()
        y = torch.cat(self._y).numpy()
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x, y)
        self.weight = torch.from_numpy(clf.coef_[0]).float()
        self.bias = torch.tensor(float(clf.intercept_[0]))
        self._x, self._y = [], []
        return {"seeds": int(len(y)), "seed_accuracy": float(np.mean(clf.predict(x) == y))}

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Foreground probability [B, h, w] of patch tokens [B, h, w, C]."""
        if self.weight is None or self.bias is None:
            raise RuntimeError("ForegroundProbe.fit must run before the probe is applied")
        t = F.normalize(tokens.float(), dim=-1)
        w, b = self.weight.to(t.device), self.bias.to(t.device)
        return torch.sigmoid(t @ w + b)

    def state_dict(self) -> dict:
        return {"weight": self.weight, "bias": self.bias, "seed_share": self.seed_share}
