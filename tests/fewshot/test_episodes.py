"""Episode sampling: fold separation, determinism, the presence prior, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from common.datasets.folds import fold_classes, train_classes
from common.datasets.voc import VOCSegmentation
from fewshot.episodes import CSTEpisodeSampler, EpisodeError, EpisodeSampler


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


def _cst_reference(labels, classes, way, shot, index):
    """CST's sample_episode written from its description, on numpy's global legacy RNG."""
    entries = [(i, c) for i, ls in enumerate(labels) for c in sorted(set(ls) & set(classes))]
    np.random.seed(index)
    query, query_class = entries[index % len(entries)]
    p = np.ones(len(classes)) / 2.0 / (len(classes) - 1)
    p[classes.index(query_class)] = 0.5
    chosen = np.random.choice(classes, way, p=p, replace=False).tolist()
    supports = []
    for c in chosen:
        images = [i for i, ls in enumerate(labels) if c in ls]
        picks = []
        while len(picks) < shot:
            s = np.random.choice(images, 1, replace=False)[0]
            if s != query and s not in picks:
                picks.append(s)
        supports.append(tuple(picks))
    return query, tuple(chosen), tuple(supports)


def test_cst_episodes_follow_csts_query_list_and_class_sampling(train_labels):
    classes = sorted(fold_classes("fashion_scenes", 0))
    sampler = CSTEpisodeSampler(train_labels, classes, way=2, shot=2)
    for index in (0, 1, 7, len(sampler) + 3):
        ep = sampler.episode(index)
        assert (ep.query, ep.classes, ep.supports) == _cst_reference(
            train_labels, classes, 2, 2, index
        )
        assert ep.presence == tuple(c in train_labels[ep.query] for c in ep.classes)
    # Queries walk the (image, class) list in order and cycle.
    assert [sampler.episode(i).query for i in range(3)] == [q for q, _ in sampler.entries[:3]]
    assert sampler.episode(len(sampler)).query == sampler.entries[0][0]


def test_cst_sampling_picks_the_query_class_half_the_time(train_labels):
    classes = fold_classes("fashion_scenes", 1)
    one = CSTEpisodeSampler(train_labels, classes, way=1, shot=1)
    eps = one.fixed(2000)
    hit = np.mean([e.classes[0] == one.entries[i % len(one)][1] for i, e in enumerate(eps)])
    assert abs(hit - 0.5) < 0.04
    with pytest.raises(EpisodeError, match="way=9"):
        CSTEpisodeSampler(train_labels, classes, way=9, shot=1)
