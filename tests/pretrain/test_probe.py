"""The k-NN monitor of pretraining reads any labelled set (here ImageNet layout, mixed image
sizes), gives the accuracy a direct computation gives, and never fails a run because the
training folder itself is unlabelled."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from common.backbone import backbone_kwargs, build_backbone
from common.cli import run_stage
from common.config import ConfigError, to_config
from common.datasets.errors import DatasetNotFoundError
from common.rundir import read_metrics
from pretrain.probe import make_knn_probe
from pretrain.stage import run
from tests.fewshot.probe.imagenet_like import write_imagenet_like

EVAL = {
    "root": None,
    "format": "auto",
    "bank_split": "train",
    "query_split": "val",
    "max_bank": None,
    "max_queries": None,
    "image_size": 32,
    "resize": None,
    "k": 5,
    "temperature": 0.07,
    "pooling": "cls",
}


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    return write_imagenet_like(tmp_path_factory.mktemp("inet"), 5, 3)


def test_monitor_on_imagenet_layout_matches_a_direct_computation(inet):
    probe = make_knn_probe(to_config(EVAL), str(inet), 16)
    # 500 x 375-ish images of assorted sizes: resized (short side 37) and cropped to 32.
    assert probe.bank_images.shape == (20, 3, 32, 32) and probe.bank_images.dtype == torch.uint8
    torch.manual_seed(0)
    model = build_backbone(backbone_kwargs("custom", 32, 8, embed_dim=32, depth=2, num_heads=2))
    got = probe(model)["knn_top1"]

    tf = T.Compose([T.Resize(37, interpolation=3), T.CenterCrop(32), T.ToTensor()])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def feats(split):
        paths = sorted((inet / split).glob("*/*"))
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
        x = (x * 255).round() / 255  # the monitor keeps its images as uint8
        with torch.no_grad():
            cls = model.eval().forward_features((x - mean) / std)[:, 0]
        labels = np.array(
            [sorted(p.name for p in (inet / split).iterdir()).index(p.parent.name) for p in paths]
        )
        return F.normalize(cls, dim=1), labels

    bank, bank_y = feats("train")
    query, query_y = feats("val")
    sims, idx = (query @ bank.T).topk(5, dim=1)
    votes = np.zeros((len(query), 4))
    np.add.at(
        votes, (np.arange(len(query))[:, None], bank_y[idx.numpy()]), (sims / 0.07).exp().numpy()
    )
    assert got == pytest.approx(float((votes.argmax(1) == query_y).mean()), abs=1e-9)
    # A subset is spread over every class, not the first folders.
    few = make_knn_probe(to_config({**EVAL, "max_bank": 8}), str(inet), 16)
    assert sorted(set(few.bank_labels.tolist())) == [0, 1, 2, 3]


def test_unlabelled_training_folder_turns_the_monitor_off(inet, tmp_path, caplog):
    flat = tmp_path / "unlabelled"
    flat.mkdir()
    for p in list((inet / "train").glob("*/*"))[:3]:
        shutil.copy(p, flat / p.name)
    with caplog.at_level(logging.WARNING):
        assert make_knn_probe(to_config(EVAL), str(flat), 16) is None
    assert "k-NN monitor off" in caplog.text and "eval.root" in caplog.text
    # A named eval.root that is not labelled is the user's mistake: one line.
    with pytest.raises(DatasetNotFoundError, match="not a labelled dataset"):
        make_knn_probe(to_config({**EVAL, "root": str(flat)}), str(inet), 16)
    # The folder format's labels file and id lists are fewshot.probe keys, not eval's.
    with pytest.raises(ConfigError, match="eval.format=folder is not read by the k-NN monitor"):
        make_knn_probe(to_config({**EVAL, "format": "folder"}), str(inet), 16)


def test_pretraining_on_unlabelled_images_monitors_an_imagenet_val_folder(
    tiny_config, inet, tmp_path
):
    flat = tmp_path / "unlabelled"
    shutil.copytree(inet / "train", flat)  # class folders read as plain images
    cfg = tiny_config(
        "dino",
        "train.max_steps=2",
        "eval.every=2",
        f"data.root={flat}",
        "eval.max_bank=12",
        "eval.max_queries=8",
    )
    # With eval.root unset the training folder is unlabelled: the run goes on, no monitor.
    run_stage("pretrain", run, cfg, tmp_path / "off")
    assert not any("knn_top1" in r for r in read_metrics(tmp_path / "off" / "metrics.jsonl"))
    cfg = tiny_config(
        "dino",
        "train.max_steps=2",
        "eval.every=2",
        f"data.root={flat}",
        f"eval.root={inet}",
        "eval.max_bank=12",
        "eval.max_queries=8",
    )
    run_stage("pretrain", run, cfg, tmp_path / "on")
    knn = [
        r["knn_top1"] for r in read_metrics(tmp_path / "on" / "metrics.jsonl") if "knn_top1" in r
    ]
    assert len(knn) == 2 and all(v in {i / 8 for i in range(9)} for v in knn)
