"""Episode sampling: fold separation, determinism, the presence prior, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from common.datasets.folds import fold_classes, train_classes
from common.datasets.voc import VOCSegmentation
from fewshot.episodes import EpisodeError, EpisodeSampler


@pytest.fixture(scope="module")
def train_labels(fashion_scenes_root) -> list[list[int]]:
    ds = VOCSegmentation(fashion_scenes_root, "train")
    return [ds.image_labels(i) for i in range(len(ds))]


@pytest.mark.parametrize("fold", [0, 1])
def test_training_episodes_never_show_test_fold_classes(train_labels, fold):
    test_cls = set(fold_classes("fashion_scenes", fold))
    sampler = EpisodeSampler(
        train_labels, train_classes("fashion_scenes", fold), way=2, shot=1, exclude=test_cls
    )
    rng = np.random.default_rng(0)
    for _ in range(300):
        ep = sampler.sample(rng)
        assert not set(ep.classes) & test_cls
        for image in (ep.query, *[s for shots in ep.supports for s in shots]):
            assert not set(train_labels[image]) & test_cls
        for c, shots in zip(ep.classes, ep.supports, strict=True):
            assert ep.query not in shots
            assert all(c in train_labels[s] for s in shots)
        assert ep.presence == tuple(c in train_labels[ep.query] for c in ep.classes)


def test_fixed_episodes_are_deterministic_by_index(train_labels):
    classes = fold_classes("fashion_scenes", 0)
    a = EpisodeSampler(train_labels, classes, way=2, shot=2, seed=3)
    b = EpisodeSampler(train_labels, classes, way=2, shot=2, seed=3)
    assert a.fixed(20) == b.fixed(20)
    assert a.episode(7) == b.episode(7)
    assert a.episode(7) != a.episode(8)
    assert EpisodeSampler(train_labels, classes, way=2, shot=2, seed=4).fixed(20) != a.fixed(20)


def test_presence_prior_and_query_holding_none_some_all(train_labels):
    classes = fold_classes("fashion_scenes", 1)
    one = EpisodeSampler(train_labels, classes, way=1, shot=1)
    rate = np.mean([one.episode(i).presence[0] for i in range(2000)])
    assert abs(rate - 0.5) < 0.04
    two = EpisodeSampler(train_labels, classes, way=2, shot=1)
    counts = np.bincount([sum(two.episode(i).presence) for i in range(1000)], minlength=3)
    # The query shows none, one, or both support classes, each in at least 2 % of episodes
    # (both is the rare case: big items occlude each other, so fewer scenes hold two classes).
    assert (counts > 20).all()
    skewed = EpisodeSampler(train_labels, classes, way=1, shot=1, presence_prior=0.9)
    assert np.mean([skewed.episode(i).presence[0] for i in range(500)]) > 0.8


def test_bad_settings_say_what_to_change(train_labels):
    classes = fold_classes("fashion_scenes", 0)
    with pytest.raises(EpisodeError, match="way=6 shot=1 needs 6 classes .* only 5"):
        EpisodeSampler(train_labels, classes, way=6, shot=1)
    with pytest.raises(EpisodeError, match="way=1 shot=500 needs 1 classes with at least 501"):
        EpisodeSampler(train_labels, classes, way=1, shot=500)
    # A class short of images is left out; the others still make episodes.
    counts = {c: sum(c in ls for ls in train_labels) for c in classes}
    rare = min(counts, key=counts.get)
    sampler = EpisodeSampler(train_labels, classes, way=2, shot=counts[rare])
    assert rare not in sampler.classes and len(sampler.classes) >= 2
    with pytest.raises(EpisodeError, match="both episode classes and excluded"):
        EpisodeSampler(train_labels, classes, way=1, shot=1, exclude=[classes[0]])
