"""N-way assembly, episode scoring and K-shot averaging against direct computations."""

from __future__ import annotations

import pytest
import torch

from fewshot.data import build_pool, open_split
from fewshot.episodes import Episode
from fewshot.evaluate import assemble, episode_target, score
from fewshot.features import FrozenBackbone
from fewshot.model import FSCSModel, episode_probabilities


def test_assemble_takes_the_best_class_or_background():
    presence = torch.tensor([0.7, 0.2])
    fg = torch.tensor([[[0.6, 0.2], [0.4, 0.9]], [[0.3, 0.1], [0.45, 0.95]]])
    present, labels = assemble(presence, fg, 0.5, 0.5)
    assert present.tolist() == [True, False]
    # pixel (1,0): best is 0.45 < 0.5 -> background; (1,1): class 2 wins 0.95 vs 0.9.
    assert labels.tolist() == [[1, 0], [0, 2]]


def test_episode_target_keeps_episode_classes_and_ignore():
    gt = torch.tensor([[3, 7], [255, 0]], dtype=torch.uint8)
    assert episode_target(gt, [7, 9]).tolist() == [[0, 7], [255, 0]]


def test_score_maps_episode_labels_to_dataset_classes():
    gt = torch.tensor([[[4, 4], [0, 0]]], dtype=torch.uint8)
    ep = Episode(query=0, classes=(2, 4), supports=((1,), (2,)), presence=(False, True))
    fg = torch.tensor([[[0.1, 0.1], [0.1, 0.1]], [[0.9, 0.2], [0.1, 0.1]]])
    res = score([ep], [(torch.tensor([0.1, 0.8]), fg)], gt, num_classes=5)
    assert res["exact_ratio"] == 1.0 and res["accuracy"] == 1.0
    assert res["miou"] == pytest.approx(0.5)  # class 4: 1 of 2 pixels found, no false positive
    assert res["fb_iou"] == pytest.approx((2 / 3 + 0.5) / 2)


def test_k_shot_averages_one_shot_passes(fashion_scenes_root, tiny_export, tmp_path):
    ds = open_split(fashion_scenes_root, "val", 32, 12)
    pool = build_pool(
        ds, FrozenBackbone(tiny_export, torch.device("cpu")), [0, 1], tmp_path, None, 8
    )
    torch.manual_seed(0)
    model = FSCSModel(2, 3, 8, 32, (16, 32), (2, 2), 2)
    c = pool.labels[1][0]
    two_shot = Episode(query=0, classes=(c,), supports=((1, 2),), presence=(True,))
    one = [Episode(0, (c,), ((s,),), (True,)) for s in (1, 2)]
    (p2, fg2), *_ = episode_probabilities(model, pool, [two_shot], torch.device("cpu"))
    singles = episode_probabilities(model, pool, one, torch.device("cpu"), batch_size=1)
    torch.testing.assert_close(p2, (singles[0][0] + singles[1][0]) / 2)
    torch.testing.assert_close(fg2, (singles[0][1] + singles[1][1]) / 2)
    assert fg2.shape == (1, 32, 32)
