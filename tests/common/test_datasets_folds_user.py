"""Your own folds: class lists, an even split, and the classes no fold uses."""

from __future__ import annotations

import pytest

from common.datasets.folds import even_folds, plan_folds

NAMES = ["background", *(f"c{i}" for i in range(1, 13))]  # 12 classes


def test_even_split_uses_every_class_in_order() -> None:
    assert even_folds(12, 4) == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    assert even_folds(13, 4)[0] == [1, 2, 3, 4] and even_folds(13, 4)[-1] == [11, 12, 13]
    plan, unused = plan_folds("pascal", 3, NAMES)
    assert unused is None and plan.test_classes(2) == [9, 10, 11, 12]
    assert plan.train_classes(2) == list(range(1, 9))
    with pytest.raises(ValueError, match="cannot split 12 classes"):
        even_folds(12, 13)


def test_user_folds_by_name_and_the_classes_left_over() -> None:
    plan, unused = plan_folds("pascal", [["c1", "c2"], [5, "c12"]], NAMES)
    assert plan.test_classes(1) == [5, 12]
    assert 9 in plan.train_classes(1) and 5 not in plan.train_classes(1)
    assert unused.startswith("classes c3 (3), c4 (4), c6 (6)") and "never tested" in unused
    with pytest.raises(ValueError, match="more than one fold"):
        plan_folds("pascal", [["c1"], ["c1"]], NAMES)
    with pytest.raises(ValueError, match="'hat', which is not a class"):
        plan_folds("pascal", [["hat"]], NAMES)
    with pytest.raises(ValueError, match="fold 2 is out of range"):
        plan.test_classes(2)


def test_a_benchmark_scheme_on_another_class_count() -> None:
    # 12 classes on FashionScenes-5i's 10: classes 11 and 12 named as left out, not silent.
    plan, unused = plan_folds("fashion_scenes", None, NAMES)
    assert plan.test_classes(1) == [6, 7, 8, 9, 10] and 11 not in plan.train_classes(0)
    assert "classes c11 (11), c12 (12) are left out" in unused
    with pytest.raises(ValueError, match="splits 10 classes into 2 folds but the dataset has 6"):
        plan_folds("fashion_scenes", None, NAMES[:7])
