"""N-way K-shot FS-CS episodes whose query may hold none, some or all of the N classes.

Our protocol (``EpisodeSampler``, for the FS-CS setting of Kang & Cho, 2022): a query image
is drawn from the images that show at least one class of the pool; each of the N support
classes is, with probability ``presence_prior`` (0.5 by default), one the query shows,
otherwise one it does not show; K support images per class are drawn among the other images showing
that class. Images that show an ``excluded`` class (the test fold, during training) are left
out entirely, so those classes are never seen. Evaluation episodes come from
``episode(index)``: seeded by index, every run and every model sees the same ones.
CST samples its test and training episodes differently (``CSTEpisodeSampler``,
``protocol: cst``): its queries show a support class more often.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from common.errors import UserError

log = logging.getLogger(__name__)


class EpisodeError(UserError, ValueError):
    """An episode setting the data cannot satisfy; the message says what to change."""


@dataclass(frozen=True)
class Episode:
    """Indices into the image pool: one query, ``supports[n]`` = K images of ``classes[n]``."""

    query: int
    classes: tuple[int, ...]
    supports: tuple[tuple[int, ...], ...]
    presence: tuple[bool, ...]


def short_classes(counts: dict[int, int], shot: int, name: str) -> dict[int, int]:
    """Classes with fewer than K supports plus a query (class: images), logged as left out."""
    short = {c: n for c, n in counts.items() if n < shot + 1}
    if short:
        log.warning(
            "%s: classes %s (class: images) have fewer than shot+1=%d images and are left out",
            name,
            short,
            shot + 1,
        )
    return short


class EpisodeSampler:
    """Samples episodes over images with known image-level labels."""

    def __init__(
        self,
        labels: Sequence[Sequence[int]],
        classes: Sequence[int],
        way: int,
        shot: int,
        presence_prior: float = 0.5,
        exclude: Sequence[int] = (),
        images: Sequence[int] | None = None,
        seed: int = 0,
        name: str = "episodes",
    ) -> None:
        self.classes = sorted(int(c) for c in classes)
        self.way, self.shot, self.prior, self.seed = int(way), int(shot), presence_prior, seed
        excluded = set(int(c) for c in exclude)
        if excluded & set(self.classes):
            raise EpisodeError(
                f"{name}: classes {sorted(excluded & set(self.classes))} are both episode "
                "classes and excluded"
            )
        if not 0.0 <= presence_prior <= 1.0:
            raise EpisodeError(f"{name}: presence_prior must be in [0, 1], got {presence_prior}")
        if self.way < 1 or self.shot < 1:
            raise EpisodeError(f"{name}: way and shot must be >= 1, got way={way} shot={shot}")
        pool = range(len(labels)) if images is None else images
        cls_set = set(self.classes)
        self.labels = {i: cls_set & set(labels[i]) for i in pool if not excluded & set(labels[i])}
        by_class = {c: sorted(i for i, ls in self.labels.items() if c in ls) for c in self.classes}
        short = short_classes({c: len(v) for c, v in by_class.items()}, self.shot, name)
        self.classes = [c for c in self.classes if c not in short]
        if self.way > len(self.classes):
            raise EpisodeError(
                f"{name}: way={way} shot={shot} needs {way} classes with at least "
                f"{self.shot + 1} images each (the supports plus a query), but only "
                f"{len(self.classes)} of the fold's classes have that many (too few: {short}); "
                "lower way/shot or use more images (data.max_*_images)"
            )
        self.by_class = {c: np.array(by_class[c]) for c in self.classes}
        kept = set(self.classes)
        self.labels = {i: ls & kept for i, ls in self.labels.items()}
        self.queries = np.array(sorted(i for i, ls in self.labels.items() if ls))

    def __len__(self) -> int:
        return len(self.queries)

    def _pick_classes(self, rng: np.random.Generator, query: int) -> list[int]:
        present = [c for c in self.classes if c in self.labels[query]]
        absent = [c for c in self.classes if c not in self.labels[query]]
        chosen: list[int] = []
        for _ in range(self.way):
            want_present = rng.random() < self.prior
            pools = (present, absent) if want_present else (absent, present)
            source = pools[0] if pools[0] else pools[1]
            chosen.append(source.pop(int(rng.integers(len(source)))))
        return chosen

    def sample(self, rng: np.random.Generator) -> Episode:
        """One episode drawn with ``rng``."""
        query = int(self.queries[rng.integers(len(self.queries))])
        classes = self._pick_classes(rng, query)
        supports = []
        for c in classes:
            candidates = self.by_class[c][self.by_class[c] != query]
            supports.append(tuple(int(i) for i in rng.choice(candidates, self.shot, replace=False)))
        return Episode(
            query=query,
            classes=tuple(classes),
            supports=tuple(supports),
            presence=tuple(c in self.labels[query] for c in classes),
        )

    def episode(self, index: int) -> Episode:
        """The ``index``-th fixed episode (seeded by ``(seed, index)``)."""
        return self.sample(np.random.default_rng([self.seed, index]))

    def fixed(self, count: int) -> list[Episode]:
        """The first ``count`` fixed episodes (validation / test)."""
        return [self.episode(i) for i in range(count)]


class CSTEpisodeSampler:
    """CST's episodes (Kang et al., CVPR 2023; dahyun-kang/cst, data/pascal.py).

    One (query image, class) entry per fold class an image shows, images in split order.
    Test episode ``i`` (``episode``) takes the ``i mod M``-th of the M entries and draws with
    numpy's legacy generator seeded by ``i`` alone; a training episode (``sample``) takes an
    entry uniformly at random (CST shuffles the entries each epoch: the same share per draw).
    Either way: N classes without replacement with probability 1/2 for the entry's class
    and 1 / (2 (n - 1)) for each other fold class (renormalised after each draw), then for
    each class K distinct supports among its images other than the query, one draw at a
    time. CST's query class is thus sampled more often than ours, and a query showing
    several classes is drawn once per class. ``images`` restricts queries and supports to a
    subset of ``labels``; images showing an ``exclude`` class are left out.
    """

    def __init__(
        self,
        labels: Sequence[Sequence[int]],
        classes: Sequence[int],
        way: int,
        shot: int,
        images: Sequence[int] | None = None,
        exclude: Sequence[int] = (),
        name: str = "cst episodes",
    ) -> None:
        self.way, self.shot = int(way), int(shot)
        excluded = set(int(c) for c in exclude)
        pool = range(len(labels)) if images is None else sorted(int(i) for i in images)
        pool = [i for i in pool if not excluded & set(int(c) for c in labels[i])]
        counts = {int(c): sum(int(c) in labels[i] for i in pool) for c in classes}
        # CST's loader would loop forever on such classes; they are left out as in ours.
        short = short_classes(counts, self.shot, name)
        self.classes = sorted(c for c in counts if c not in short)
        if self.way < 1 or self.shot < 1 or self.way > len(self.classes):
            raise EpisodeError(
                f"{name}: way={way} shot={shot} needs {way} fold classes shown by at least "
                f"{self.shot + 1} images each, but only {len(self.classes)} are (too few: "
                f"{short}); lower way/shot or use more images"
            )
        self.labels = [set(self.classes) & set(int(c) for c in ls) for ls in labels]
        self.entries = [(i, c) for i in pool for c in sorted(self.labels[i])]
        self.by_class = {c: [i for i in pool if c in self.labels[i]] for c in self.classes}

    def __len__(self) -> int:
        return len(self.entries)

    def episode(self, index: int) -> Episode:
        """The ``index``-th test episode: entry ``index mod M``, numpy RandomState(index)."""
        return self._draw(np.random.RandomState(index), *self.entries[index % len(self.entries)])

    def sample(self, rng: np.random.Generator) -> Episode:
        """One training episode drawn with ``rng``: a uniformly drawn entry."""
        return self._draw(rng, *self.entries[int(rng.integers(len(self.entries)))])

    def class_probabilities(self, query_class: int) -> np.ndarray:
        """The first draw's probability of each of ``classes`` for an entry of ``query_class``."""
        n = len(self.classes)
        p = np.full(n, 0.5 / max(n - 1, 1))
        p[self.classes.index(query_class)] = 0.5 if n > 1 else 1.0
        return p

    def _draw(
        self, rng: np.random.RandomState | np.random.Generator, query: int, query_class: int
    ) -> Episode:
        p = self.class_probabilities(query_class)
        classes = [int(c) for c in rng.choice(self.classes, self.way, p=p, replace=False)]
        supports = []
        for c in classes:
            picks: list[int] = []
            while len(picks) < self.shot:
                s = int(rng.choice(self.by_class[c], 1, replace=False)[0])
                if s != query and s not in picks:
                    picks.append(s)
            supports.append(tuple(picks))
        return Episode(
            query=query,
            classes=tuple(classes),
            supports=tuple(supports),
            presence=tuple(c in self.labels[query] for c in classes),
        )

    def fixed(self, count: int) -> list[Episode]:
        """The first ``count`` test episodes (CST's test uses 1,000)."""
        return [self.episode(i) for i in range(count)]
