"""Self-training a linear foreground probe on the patch tokens, seeded by attention.

The patch tokens of a small ViT can hold foreground far more cleanly than its attention:
on FashionScenes a linear probe fitted to ground-truth patches separates foreground from
background with AUC 0.97, while the best sign-corrected head mean reaches 0.87
(benchmarks/bench_patch_signal.py). Without pixel labels the probe is fitted to the
attention's confident patches instead: on each fit image the top ``SEED_SHARE`` (30%) of
the head-mean map are taken as foreground, the bottom 30% as background, the middle is
left out. Images known to show no object give all their patches as background. A
linear model cannot follow the seeds' blobby errors, so its scores keep the
direction the seeds agree on and sharpen the map (measured in benchmarks/RESULTS.md).
Fitted with scikit-learn's logistic regression on L2-normalised tokens.

The seeds are only as good as the heads' signs. Per head, the label criterion of
:mod:`distill.polarity` is weak for heads near chance, and one wrong sign costs a third of
the probe's quality. On the probe's own, sharper map the same criterion (does the bright
half name the class better than the dark half?) is clear, so :func:`search_signs` starts from
the per-head signs and flips heads one at a time, keeping the flip whose probe separates
the classes best (``mask.head_polarity: search``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from distill.polarity import HeadPolarity, apply_signs

# Share of each fit image's patches taken as foreground seeds, and as background seeds: the
# middle 40%, where the attention's blobby errors sit, is left out.
SEED_SHARE = 0.3
FitImages = Sequence[tuple[torch.Tensor, torch.Tensor, Sequence[Sequence[int]]]]


def seed_labels(maps: torch.Tensor, share: float = SEED_SHARE) -> torch.Tensor:
    """Per-image seeds from maps [B, h, w]: 1 for the top ``share``, 0 for the bottom, -1 else.

    By rank, so every image gives the same number of seeds whatever its contrast.
    """
    if not 0.0 < share <= 0.5:
        raise ValueError(f"the seed share must be in (0, 0.5], got {share}")
    flat = maps.flatten(1)
    n = flat.shape[1]
    k = min(max(1, int(round(share * n))), n // 2)  # the two seed sets never overlap
    order = flat.argsort(dim=1, descending=True, stable=True)
    seeds = torch.full_like(flat, -1, dtype=torch.long)
    seeds.scatter_(1, order[:, :k], 1)
    seeds.scatter_(1, order[:, n - k :], 0)
    return seeds.reshape(maps.shape)


@dataclass(frozen=True)
class ForegroundProbe:
    """A fitted linear probe: P(fg) = sigmoid(w . normalised token + b)."""

    weight: torch.Tensor  # [C]
    bias: float

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Foreground probability [B, h, w] of patch tokens [B, h, w, C]."""
        t = F.normalize(tokens.float(), dim=-1)
        return torch.sigmoid(t @ self.weight.to(t.device) + self.bias)


class ProbeSeeds:
    """Accumulates seeded patch tokens; :meth:`fit` turns them into a ForegroundProbe."""

    def __init__(self, share: float = SEED_SHARE) -> None:
        self.share = share
        self._x: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []

    @property
    def count(self) -> int:
        """Seed patches added so far."""
        return sum(len(y) for y in self._y)

    def add(self, tokens: torch.Tensor, maps: torch.Tensor) -> None:
        """A batch: patch tokens [B, h, w, C] and the maps [B, h, w] that seed it."""
        seeds = seed_labels(maps.float(), self.share).flatten()
        keep = seeds >= 0
        x = F.normalize(tokens.float(), dim=-1).flatten(0, 2)
        self._x.append(x[keep].cpu())
        self._y.append(seeds[keep].cpu())

    def add_background(self, tokens: torch.Tensor) -> None:
        """Every patch of images known to show no object [B, h, w, C] as a background seed."""
        x = F.normalize(tokens.float(), dim=-1).flatten(0, 2)
        self._x.append(x.cpu())
        self._y.append(torch.zeros(len(x), dtype=torch.long))

    def fit(self) -> ForegroundProbe:
        """A balanced logistic regression on the seeds added so far."""
        if not self._x:
            raise ValueError("no image was added: the foreground probe needs fit images")
        x = torch.cat(self._x).double().numpy()
        y = torch.cat(self._y).numpy()
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x, y)
        return ForegroundProbe(torch.from_numpy(clf.coef_[0]).float(), float(clf.intercept_[0]))


def fit_probe(images: FitImages, signs: torch.Tensor) -> ForegroundProbe:
    """A probe seeded by the head mean of ``images`` (heads, tokens, labels) under ``signs``.

    Images with an empty label list give every patch as background.
    """
    seeds = ProbeSeeds()
    for heads, tokens, labels in images:
        keep = [i for i, labs in enumerate(labels) if labs]
        empty = [i for i, labs in enumerate(labels) if not labs]
        if keep:
            seeds.add(tokens[keep], apply_signs(heads[keep], signs).mean(dim=1))
        if empty:
            seeds.add_background(tokens[empty])
    return seeds.fit()


def probe_separation(probe: ForegroundProbe, images: FitImages, num_classes: int) -> float:
    """How much better the probe's bright half names the class than its dark half (Fisher)."""
    acc = HeadPolarity(num_classes)
    for _, tokens, labels in images:
        acc.add(probe(tokens)[:, None], tokens, labels)
    if acc.bright is None or acc.dark is None:
        raise ValueError("no single-label image: the probe's polarity cannot be checked")
    return float(acc.bright.ratio()[0] - acc.dark.ratio()[0])


@dataclass(frozen=True)
class SignSearch:
    """The outcome of :func:`search_signs`: per-head start, final signs and their probe."""

    start: torch.Tensor  # [K] per-head signs from the label criterion
    signs: torch.Tensor  # [K] after the search on the probe's map
    probe: ForegroundProbe
    separation: float
    single_label_images: int


def search_signs(images: FitImages, num_classes: int) -> SignSearch:
    """Head signs [K] (+1 keep, -1 mirror) whose probe's map names the classes best.

    Starts from each head's own label criterion (distill.polarity), then steepest ascent:
    each round tries flipping every head alone and keeps the best flip, until none helps.
    On planted scenes it beats both the unsigned heads and the per-head start
    (tests/distill/test_token_probe.py); on fashion_tiny it lifted the raw weak FB-IoU from
    47.6 (per-head signs) to 62.8 (benchmarks/RESULTS.md).
    """
    per_head = HeadPolarity(num_classes)
    for heads, tokens, labels in images:
        per_head.add(heads, tokens, labels)
    start = per_head.signs()
    signs = start.clone()
    probe = fit_probe(images, signs)
    best = probe_separation(probe, images, num_classes)
    while True:
        trials = []
        for k in range(len(signs)):
            trial = signs.clone()
            trial[k] = -trial[k]
            cand = fit_probe(images, trial)
            trials.append((probe_separation(cand, images, num_classes), trial, cand))
        score, trial, cand = max(trials, key=lambda t: t[0])
        # A flip must lift the separation by more than 1%: sign sets whose probes tie are
        # noise apart, and the per-head start is then kept.
        if score <= best + 0.01 * abs(best):
            return SignSearch(start, signs, probe, best, per_head.images)
        signs, probe, best = trial, cand, score
