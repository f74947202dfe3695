"""Seeded low-shot label splits, saved as JSON so every result can be reproduced.

A split names the image ids whose labels a probe may use: ``k`` per class (``shot<k>``) or
a label budget of ``p`` % of all training images spent on single-object scenes,
class-stratified (``pct<p>``, at least one per class). An
existing split file is read back, never redrawn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def draw_split(labels: np.ndarray, per_class: dict[int, int], seed: int) -> np.ndarray:
    """Sorted indices with ``per_class[c]`` images of each class ``c``, drawn with ``seed``.

    A class with fewer images gives all it has (with a warning), so tiny sets still run.
    """
    rng = np.random.default_rng(seed)
    picked = []
    for c, n in sorted(per_class.items()):
        pool = np.flatnonzero(labels == c)
        if len(pool) < n:
            log.warning(
                "class %d has only %d labelled images, the split asks for %d: using all of "
                "them (use more images, data.max_train_images, for a balanced split)",
                c,
                len(pool),
                n,
            )
        picked.append(rng.choice(pool, min(n, len(pool)), replace=False))
    return np.sort(np.concatenate(picked))


def setting_counts(
    setting: str, labels: np.ndarray, pool_size: int | None = None
) -> dict[int, int]:
    """Images per class of a setting: ``shot<k>``, or ``pct<p>``: a label budget of p % of
    ``pool_size`` images (default: ``len(labels)``) spread over the classes in proportion
    to their counts, at least one each."""
    classes, counts = np.unique(labels, return_counts=True)
    if setting.startswith("shot"):
        return {int(c): int(setting[4:]) for c in classes}
    if setting.startswith("pct"):
        budget = float(setting[3:]) / 100.0 * (pool_size or len(labels))
        share = counts / counts.sum()
        return {int(c): max(1, int(round(budget * f))) for c, f in zip(classes, share, strict=True)}
    raise ValueError(f"unknown split setting {setting!r}; use shot<k> or pct<p>")


def load_or_draw(
    path: Path,
    setting: str,
    seed: int,
    labels: np.ndarray,
    ids: Sequence[str],
    pool_size: int | None = None,
) -> np.ndarray:
    """Indices of split (``setting``, ``seed``): read from ``path`` when it exists, else drawn
    and written there. Ids not in ``ids`` (another dataset) are an error."""
    if path.is_file():
        stored = json.loads(path.read_text())
        where = {name: i for i, name in enumerate(ids)}
        missing = [name for name in stored["ids"] if name not in where]
        if missing:
            raise ValueError(
                f"split file {path} names {len(missing)} images not in this dataset (e.g. "
                f"{missing[:3]}); it belongs to another dataset: delete it or use a new run dir"
            )
        return np.sort(np.array([where[name] for name in stored["ids"]], dtype=np.int64))
    idx = draw_split(labels, setting_counts(setting, labels, pool_size), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"setting": setting, "seed": seed, "ids": [ids[i] for i in idx]}
    path.write_text(json.dumps(record, indent=1))
    return idx
