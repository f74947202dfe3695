"""Class folds of the few-shot benchmarks: FashionScenes-5i, Pascal-5i, COCO-20i.

Class ids are 1-based (0 is background). Fold ``i`` holds out its test classes; the others
are training classes.
- FashionScenes-5i: 10 classes, 2 folds; fold i tests 5i+1..5i+5.
- Pascal-5i (Shaban et al. 2017): 20 classes, 4 folds; fold i tests 5i+1..5i+5.
- COCO-20i (Nguyen & Todorovic 2019): 80 classes, 4 folds; fold i tests i+1, i+5, ..., i+77,
  the interleaved split used by HSNet/CST (classes in contiguous 1..80 numbering).

Your own classes: :func:`plan_folds` takes a list of class lists, or a number of folds to
split the classes evenly in class order, and says which classes no fold uses.
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


@dataclass(frozen=True)
class FoldPlan:
    """The folds of one dataset: ``folds[i]`` = test classes of fold i; ``classes`` = every
    class a fold may train or test on (classes outside it are background everywhere)."""

    folds: list[list[int]]
    classes: list[int]

    def test_classes(self, fold: int) -> list[int]:
        if not isinstance(fold, int) or not 0 <= fold < len(self.folds):
            raise ValueError(
                f"fold {fold!r} is out of range: the dataset has folds 0..{len(self.folds) - 1}"
            )
        return sorted(self.folds[fold])

    def train_classes(self, fold: int) -> list[int]:
        held_out = set(self.test_classes(fold))
        return [c for c in self.classes if c not in held_out]


def _class_id(value: int | str, class_names: list[str]) -> int:
    if isinstance(value, int) and 1 <= value < len(class_names):
        return value
    if isinstance(value, str) and value in class_names[1:]:
        return class_names.index(value)
    raise ValueError(
        f"data.folds names class {value!r}, which is not a class of the dataset "
        f"(ids 1..{len(class_names) - 1}: {', '.join(class_names[1:])}); name classes as "
        "data.classes or the dataset's classes.txt names them"
    )


def even_folds(num_classes: int, num: int) -> list[list[int]]:
    """Classes 1..num_classes split in class order into ``num`` contiguous folds, the first
    ``num_classes % num`` one class larger (Pascal-5i's split when it divides evenly)."""
    if not 2 <= num <= num_classes:
        raise ValueError(
            f"data.folds={num} folds cannot split {num_classes} classes; use 2..{num_classes}"
        )
    size, extra = divmod(num_classes, num)
    out, start = [], 1
    for i in range(num):
        end = start + size + (1 if i < extra else 0)
        out.append(list(range(start, end)))
        start = end
    return out


def plan_folds(
    benchmark: str, folds: int | list | None, class_names: list[str]
) -> tuple[FoldPlan, str | None]:
    """The folds of a dataset with ``class_names`` (background first), and a line naming the
    classes no fold uses and why (None when every class is used).

    ``folds``: None = ``benchmark``'s scheme; an int = that many folds split evenly in class
    order; a list of class lists (names or ids) = your own folds.
    """
    n = len(class_names) - 1
    everything = list(range(1, n + 1))
    if folds is None:
        scheme = _scheme(benchmark)
        if scheme.num_classes > n:
            raise ValueError(
                f"data.benchmark={benchmark} splits {scheme.num_classes} classes into "
                f"{scheme.num_folds} folds but the dataset has {n}; set data.folds to a number "
                "of folds (classes split evenly in order) or to a list of class lists"
            )
        plan = FoldPlan([fold_classes(benchmark, f) for f in range(scheme.num_folds)], everything)
        unused = everything[scheme.num_classes :]
        if not unused:
            return plan, None
        plan = FoldPlan(plan.folds, everything[: scheme.num_classes])
        names = ", ".join(f"{class_names[c]} ({c})" for c in unused)
        return plan, (
            f"classes {names} are left out: data.benchmark={benchmark} has "
            f"{scheme.num_classes} classes, so they are never trained or tested (background "
            "everywhere); set data.folds to use them"
        )
    if isinstance(folds, int):
        return FoldPlan(even_folds(n, folds), everything), None
    if not isinstance(folds, list) or not all(isinstance(f, list) and f for f in folds):
        raise ValueError(
            f"data.folds must be a number of folds or a list of class lists, got {folds!r}"
        )
    ids = [[_class_id(v, class_names) for v in fold] for fold in folds]
    flat = [c for fold in ids for c in fold]
    twice = sorted({class_names[c] for c in flat if flat.count(c) > 1})
    if twice:
        raise ValueError(f"data.folds puts classes {twice} in more than one fold; keep one")
    unused = [c for c in everything if c not in flat]
    note = None
    if unused:
        names = ", ".join(f"{class_names[c]} ({c})" for c in unused)
        note = (
            f"classes {names} are in no fold of data.folds: they are training classes of "
            "every fold and never tested"
        )
    return FoldPlan(ids, everything), note
