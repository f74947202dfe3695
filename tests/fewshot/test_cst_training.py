"""CST's training under ``protocol: cst``: a constant lr (cosine under ``ours``), read from a
real run's metrics, and CST's training episodes, whose share of episodes with the class
present follows CST's formula (ours: the presence prior)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.cli import stage_main
from common.config import load_config
from common.rundir import read_metrics
from fewshot import stage
from fewshot.episodes import CSTEpisodeSampler, EpisodeSampler

TINY = [
    "data.image_size=32",
    "data.val_fraction=0.3",
    "head.channels=[16, 32]",
    "head.pool_sizes=[2, 2]",
    "head.attn_heads=2",
    "train.max_steps=4",
    "train.batch_size=4",
    "train.lr=0.002",
    "train.eval_every=4",
    "episodes.val_episodes=6",
    "episodes.test_episodes=6",
    "eval.visualize=0",
    "baselines.random_backbone=false",
    "baselines.prototype=false",
    "supervision=full",
    "threads=1",
]


@pytest.mark.parametrize("protocol", ["cst", "ours"])
def test_lr_is_constant_under_cst_and_cosine_under_ours(
    protocol, fashion_scenes_root, tiny_export, tmp_path
):
    argv = ["--output-dir", str(tmp_path / "run"), f"data.root={fashion_scenes_root}"]
    argv += [f"backbone={tiny_export}", f"protocol={protocol}", *TINY]
    stage_main("fewshot", stage.run, "test", argv)
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    lrs = {r["step"]: r["lr"] for r in records}
    assert sorted(lrs) == [1, 2, 3, 4]
    # The lr of step t (logged after it) is the one set before it: factor at t - 1.
    if protocol == "cst":
        want = {t: 0.002 for t in lrs}
    else:
        want = {t: 0.002 * 0.5 * (1 + math.cos(math.pi * (t - 1) / 4)) for t in lrs}
    assert lrs == pytest.approx(want, rel=1e-9)
    assert (protocol == "cst") == (len(set(lrs.values())) == 1)


# Planted training list: 5 classes; image -> classes it shows (image 7 shows an excluded
# class, image 8 none of the fold's).
CLASSES = [1, 2, 3, 4, 5]
LABELS = [[1], [1, 2], [2, 3, 4], [3], [4, 5], [5, 1], [2], [1, 9], [7], [3, 5]]


def _cst_present_share(labels: list[list[int]], classes: list[int]) -> float:
    """CST's 1-way draw, computed directly: each (image, class) entry equally likely; its own
    class with p = 1/2, each of the other n - 1 with 1 / (2 (n - 1)), present when the image
    shows it: 1/2 + (k - 1) / (2 (n - 1)) for an image showing k of the n classes."""
    n = len(classes)
    shares = [
        0.5 + (len(set(ls) & set(classes)) - 1) / (2 * (n - 1))
        for ls in labels
        for _ in set(ls) & set(classes)
    ]
    return sum(shares) / len(shares)


def test_cst_training_episodes_show_the_class_as_often_as_cst_draws_it():
    images = [0, 1, 2, 3, 4, 5, 6, 7, 8]  # image 9 held out (validation)
    kept = [LABELS[i] for i in images if 9 not in LABELS[i]]
    want = _cst_present_share(kept, CLASSES)
    assert want == pytest.approx((3 * 0.5 + 6 * 0.625 + 3 * 0.75) / 12)
    cst = CSTEpisodeSampler(LABELS, CLASSES, 1, 1, images=images, exclude=[9])
    assert len(cst) == 12  # one entry per (image, class), images 7 (excluded), 8, 9 without
    draws = 20000
    rng = np.random.default_rng(0)
    eps = [cst.sample(rng) for _ in range(draws)]
    present = sum(e.presence[0] for e in eps)
    assert abs(present / draws - want) < 4 * math.sqrt(want * (1 - want) / draws)
    assert {e.query for e in eps} <= set(images) - {7, 8}
    assert all(s not in (7, 9) and s != e.query for e in eps for s in e.supports[0])
    for e in eps[:200]:
        assert e.presence[0] == (e.classes[0] in LABELS[e.query])
    # A query is drawn once per class it shows: image 2 (three classes) three times image 3's.
    counts = np.bincount([e.query for e in eps], minlength=len(LABELS))
    assert counts[2] / counts[3] == pytest.approx(3, rel=0.15)

    ours = EpisodeSampler(LABELS, CLASSES, 1, 1, exclude=[9], images=images)
    ours_present = np.mean([ours.sample(rng).presence[0] for _ in range(draws)])
    assert abs(ours_present - 0.5) < 4 * math.sqrt(0.25 / draws)
    assert want - ours_present > 0.1  # CST's draw shows the class more often


@pytest.mark.parametrize("protocol", ["cst", "ours"])
def test_the_protocol_picks_the_training_sampler(protocol):
    cfg = load_config("fewshot", None, [f"protocol={protocol}"])
    sampler = stage.train_sampler(cfg, LABELS, CLASSES, [0, 1, 2, 3, 4, 5, 6], [])
    assert isinstance(sampler, CSTEpisodeSampler if protocol == "cst" else EpisodeSampler)
    assert stage.train_settings(cfg).constant_lr == (protocol == "cst")
