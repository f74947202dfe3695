"""Low-shot probes: the pieces against direct computations, and the CLI on the tiny fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.cli import stage_main
from common.datasets.classification import open_labelled
from fewshot.probe.knn import knn_predict
from fewshot.probe.logreg import choose_c, logreg_probe
from fewshot.probe.segmentation import patch_labels, segmentation_probe
from fewshot.probe.splits import draw_split, load_or_draw, setting_counts
from fewshot.probe.stage import run


def _blobs(n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated classes in 8-D, unit norm."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8)[:3] * 4
    x = np.concatenate([c + rng.normal(size=(n_per_class, 8)) for c in centres])
    y = np.repeat([1, 2, 3], n_per_class)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def test_splits_are_seeded_balanced_and_saved(tmp_path):
    labels = np.array([1] * 10 + [2] * 6 + [3] * 200)
    a = draw_split(labels, setting_counts("shot2", labels), seed=0)
    assert np.bincount(labels[a]).tolist() == [0, 2, 2, 2]
    assert np.array_equal(a, draw_split(labels, setting_counts("shot2", labels), seed=0))
    assert not np.array_equal(a, draw_split(labels, setting_counts("shot2", labels), seed=1))
    assert setting_counts("pct1", labels) == {1: 1, 2: 1, 3: 2}
    # 1 % of a 5000-image training split = 50 labels, spread by class frequency.
    assert setting_counts("pct1", labels, 5000) == {1: 2, 2: 1, 3: 46}
    ids = [f"img{i}" for i in range(len(labels))]
    path = tmp_path / "shot2_seed0.json"
    first = load_or_draw(path, "shot2", 0, labels, ids)
    # The saved file wins over a new draw with another seed.
    assert np.array_equal(load_or_draw(path, "shot2", 5, labels, ids), first)
    with pytest.raises(ValueError, match="another dataset"):
        load_or_draw(path, "shot2", 0, labels, [f"x{i}" for i in range(len(labels))])


def test_logreg_picks_c_on_training_labels_only():
    x, y = _blobs(6)
    xt, yt = _blobs(50, seed=1)
    assert choose_c(x[::6], y[::6], [0.1, 1.0], 3, 0, 200) is None  # one label per class
    res = logreg_probe(x, y, xt, yt, [0.01, 1.0, 100.0], 1.0, 3, 0, 500)
    assert res["C_selected_by"] == "cv" and res["accuracy"] > 0.9
    one = logreg_probe(x[::6], y[::6], xt, yt, [0.01, 1.0], 7.0, 3, 0, 500)
    assert one["C"] == 7.0 and one["C_selected_by"] == "default"


def test_knn_weighted_vote_by_hand():
    train = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    labels = np.array([1, 2, 2])
    test = np.array([[0.96, 0.28]])  # cosines: 0.96, 0.936, 0.28
    preds = knn_predict(train, labels, test, [1, 2, 3], temperature=0.07)
    # k=1: nearest is class 1; k=2: exp(.96/.07) vs exp(.936/.07): class 1 still wins;
    # k=3: class 2 adds exp(.28/.07), too small to overturn it at T=0.07.
    assert [preds[k][0] for k in (1, 2, 3)] == [1, 1, 1]
    flat = knn_predict(train, labels, test, [3], temperature=10.0)  # ~ a plain majority vote
    assert flat[3][0] == 2


def test_patch_labels_and_segmentation_probe():
    masks = torch.zeros(1, 4, 4, dtype=torch.uint8)
    masks[0, :2, :2] = torch.tensor([[1, 1], [1, 2]], dtype=torch.uint8)
    masks[0, 2:, 2:] = 255
    assert patch_labels(masks, 2, 3)[0].tolist() == [[1, 0], [0, 255]]
    # Patch features that equal their class one-hot: a linear probe segments perfectly.
    rng = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 3, (20, 4, 4), generator=rng).repeat_interleave(4, 1)
    gt = gt.repeat_interleave(4, 2).to(torch.uint8)  # [20, 16, 16], constant per 4x4 patch
    feats = torch.nn.functional.one_hot(gt[:, ::4, ::4].long(), 3).float()
    res = segmentation_probe(feats[:15], gt[:15], feats[15:], gt[15:], 3, 60, 256, 0.3, 0.0, 0)
    assert res["miou"] > 0.9


def _one_nn_accuracy(cache: Path, root: Path) -> float:
    """1-NN accuracy of val on train single-object scenes: feature = L2(L2(cls) ++ L2(mean
    patch token)), read from the probe's feature cache."""
    feats, labels = {}, {}
    for split in ("train", "val"):
        (path,) = cache.glob(f"global_tokens_{split}_*.pt")
        tensors = torch.load(path, weights_only=True)["tensors"]
        x = torch.cat(
            [
                F.normalize(tensors["cls"].float(), dim=-1),
                F.normalize(tensors["patch"].float().mean(dim=(1, 2)), dim=-1),
            ],
            dim=-1,
        )
        ids = (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        single = open_labelled(root, split, "voc")
        rows = [ids.index(p.stem) for p in single.paths]
        feats[split], labels[split] = F.normalize(x[rows], dim=-1), single.labels
    nearest = (feats["val"] @ feats["train"].T).argmax(dim=1).numpy()
    return float((labels["train"][nearest] == labels["val"]).mean())


def test_probe_cli_end_to_end(fashion_scenes_root, tiny_export, tmp_path):
    out = tmp_path / "probe"
    argv = [
        "--output-dir",
        str(out),
        f"backbone={tiny_export}",
        f"data.root={fashion_scenes_root}",
        "data.image_size=32",
        "logreg.shots=[1, 2]",
        "logreg.num_splits=2",
        "multilabel.percent=50.0",
        "train.max_steps=20",
        "threads=1",
    ]
    results = stage_main("fewshot/probe", run, "test", argv)
    assert set(results["models"]) == {"backbone", "random_backbone"}
    res = results["models"]["backbone"]
    assert set(res["logreg"]) == {"shot1", "shot2", "pct1"}
    assert len(res["logreg"]["shot2"]["splits"]) == 2
    shot2 = [s["accuracy"] for s in res["logreg"]["shot2"]["splits"]]
    assert res["logreg"]["shot2"]["mean"] == pytest.approx(np.mean(shot2))
    assert res["logreg"]["shot2"]["std"] == pytest.approx(np.std(shot2))
    assert set(res["knn"]["pct100"]) == {"k=1", "k=5", "k=20"}
    # 1-NN over every single-object scene, recomputed here from the cached tokens.
    assert res["knn"]["pct100"]["k=1"] == pytest.approx(
        _one_nn_accuracy(out / "cache" / results["backbone_hash"], fashion_scenes_root)
    )
    assert 0.0 <= res["multilabel"]["mAP"] <= 1.0 and 0.0 <= res["segmentation"]["miou"] <= 1.0
    assert (out / "figures" / "accuracy_vs_labels.png").stat().st_size > 1000
    assert (out / "splits" / "shot2_seed1.json").is_file()
    # Only the folders the probe uses: no training loop, so no checkpoints/ or export/.
    assert not (out / "checkpoints").exists() and not (out / "export").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["backbone_hash"] == results["backbone_hash"]
    # Same command again: features from the cache, the same split files, the same numbers.
    again = stage_main("fewshot/probe", run, "test", argv)
    for probe in ("logreg", "knn", "multilabel"):
        assert again["models"]["backbone"][probe] == res[probe]
