"""Class folds of the few-shot benchmarks: FashionScenes-5i, Pascal-5i, COCO-20i.

Class ids are 1-based (0 is background). Fold ``i`` holds out its test classes; the others
are training classes.
- FashionScenes-5i: 10 classes, 2 folds; fold i tests 5i+1..5i+5.
- Pascal-5i (Shaban et al. 2017): 20 classes, 4 folds; fold i tests 5i+1..5i+5.
- COCO-20i (Nguyen & Todorovic 2019): 80 classes, 4 folds; fold i tests i+1, i+5, ..., i+77,
  the interleaved split used by HSNet/CST (classes in contiguous 1..80 numbering).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FoldScheme:
    """How a benchmark splits its classes into folds."""

    num_classes: int
    num_folds: int
    interleaved: bool  # True: fold i takes every num_folds-th class starting at i+1


SCHEMES: dict[str, FoldScheme] = {
    "fashion_scenes": FoldScheme(num_classes=10, num_folds=2, interleaved=False),
    "pascal": FoldScheme(num_classes=20, num_folds=4, interleaved=False),
    "coco": FoldScheme(num_classes=80, num_folds=4, interleaved=True),
}
_ALIASES = {
    "fashionscenes": "fashion_scenes",
    "fashion_scenes_5i": "fashion_scenes",
    "fashionscenes_5i": "fashion_scenes",
    "pascal_5i": "pascal",
    "voc": "pascal",
    "coco_20i": "coco",
}


def _scheme(name: str) -> FoldScheme:
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in SCHEMES:
        raise ValueError(
            f"unknown fold benchmark {name!r}; choose one of {sorted(SCHEMES)} "
            "(aliases: FashionScenes-5i, Pascal-5i, COCO-20i)"
        )
    return SCHEMES[key]


def num_folds(name: str) -> int:
    """Number of folds of benchmark ``name``."""
    return _scheme(name).num_folds


def num_fold_classes(name: str) -> int:
    """Number of foreground classes of benchmark ``name`` (all folds together)."""
    return _scheme(name).num_classes


def fold_classes(name: str, fold: int) -> list[int]:
    """The held-out (test) class ids of ``fold``, sorted."""
    scheme = _scheme(name)
    if not isinstance(fold, int) or not 0 <= fold < scheme.num_folds:
        raise ValueError(
            f"fold {fold!r} is out of range for {name}: it has folds 0..{scheme.num_folds - 1}"
        )
    if scheme.interleaved:
        return list(range(fold + 1, scheme.num_classes + 1, scheme.num_folds))
    per_fold = scheme.num_classes // scheme.num_folds
    return list(range(fold * per_fold + 1, (fold + 1) * per_fold + 1))


def train_classes(name: str, fold: int) -> list[int]:
    """The training class ids of ``fold``: every class not held out by it, sorted."""
    held_out = set(fold_classes(name, fold))
    return [c for c in range(1, _scheme(name).num_classes + 1) if c not in held_out]
