"""Your own folder through every stage: pretrain -> distill (weak, mixed) -> distill.segment
-> fewshot with your own folds -> the k-NN and logistic-regression probes on labels.csv.

The folder is laid out as a user keeps it (tests/distill/user_folder.py): JPEG and PNG of
150-500 px in nested folders with a symlink, labels.csv, ten masks in their own folder.
Nothing may be written into it, and every pseudo-mask must have its image's size.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.backbone import load_backbone
from common.cli import run_stage
from common.config import ConfigError, load_config
from common.datasets.coco import COCOSegmentation
from common.datasets.palette import read_mask
from distill.segment.stage import run as segment_run
from distill.stage import run as distill_run
from fewshot.probe.stage import run as probe_run
from fewshot.stage import run as fewshot_run
from pretrain.attention import write_attention_figures
from pretrain.stage import run as pretrain_run
from tests.distill.user_folder import build_user_folder, tree_digest
from tests.pretrain.conftest import TINY as PRETRAIN_TINY

FAST = [
    "device=cpu",
    "assign.max_images=40",
    "train.max_steps=10",
    "enhancer.eval_every=5",
    "quality.max_images=16",
    "quality.random_backbone=false",
    "figures.num_images=2",
    "attention.batch_size=8",
]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine more threads make it 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def user(tmp_path_factory, fashion_scenes_root) -> Path:
    return build_user_folder(fashion_scenes_root, tmp_path_factory.mktemp("user"))


def _classes(fashion_scenes_root: Path) -> str:
    names = (fashion_scenes_root / "classes.txt").read_text().split("\n")[1:]
    return "data.classes=[" + ",".join(n for n in names if n) + "]"


def _folder(user: Path, *extra: str) -> list[str]:
    return [
        "data.format=folder",
        f"data.root={user / 'photos'}",
        f"data.labels={user / 'labels.csv'}",
        *extra,
    ]


def _image_sizes(user: Path) -> dict[str, tuple[int, int]]:
    """{relative path without extension: (height, width)} of the user's images."""
    out = {}
    paths = [Path(d) / f for d, _, fs in os.walk(user / "photos", followlinks=True) for f in fs]
    for path in paths:
        if path.suffix in (".jpg", ".jpeg", ".png") and not path.name.startswith("."):
            with Image.open(path) as im:
                rel = path.relative_to(user / "photos").with_suffix("").as_posix()
                out[rel] = (im.height, im.width)
    return out


def test_your_folder_through_every_stage(user, fashion_scenes_root, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    before = tree_digest(user)
    sizes = _image_sizes(user)
    assert len(sizes) == 30 and len(set(sizes.values())) > 20

    pre = load_config(
        "pretrain", None, [*PRETRAIN_TINY, f"data.root={user / 'photos'}", "train.max_steps=2"]
    )
    run_stage("pretrain", pretrain_run, pre, tmp_path / "pretrain")
    assert "found 30 images under" in caplog.text and "skipped 1 macOS ._ files" in caplog.text
    backbone = f"backbone={tmp_path / 'pretrain'}"
    model, _ = load_backbone(str(tmp_path / "pretrain"), torch.device("cpu"))
    twins = [user / "photos/shop/a/photo1.png", user / "photos/shop/b/photo1.jpg"]
    figures = write_attention_figures(model, twins, tmp_path / "figs", 16)
    assert [f.relative_to(tmp_path / "figs").as_posix() for f in figures] == [
        "a/photo1_attention.png",
        "b/photo1_attention.png",
    ]

    # Weak: labels only, working resolution by short side, no masks anywhere.
    weak_cfg = load_config(
        "distill",
        None,
        [backbone, *FAST, *_folder(user, "data.short_side=48"), "mixed.enabled=false"],
    )
    summary = run_stage("distill", distill_run, weak_cfg, tmp_path / "weak")
    assert "quality report: nothing to score against" in caplog.text
    assert summary["images"] == 30 and "quality" not in summary
    written = {
        p.relative_to(tmp_path / "weak/pseudo_masks/weak").with_suffix("").as_posix(): p
        for p in (tmp_path / "weak/pseudo_masks/weak").rglob("*.png")
    }
    assert set(written) == set(sizes)  # shop/a/photo1 and shop/b/photo1 are two files
    for rel, path in written.items():
        mask = read_mask(path)
        assert mask.shape == sizes[rel], rel
        assert set(np.unique(mask)) <= {0, 255, *range(1, 11)}

    # Mixed: the ten masks of data.masks train the enhancer; a fixed working size.
    classes = _classes(fashion_scenes_root)
    mixed_cfg = load_config(
        "distill",
        None,
        [
            backbone,
            *FAST,
            *_folder(user, f"data.masks={user / 'masks'}", "data.image_size=48", classes),
        ],
    )
    summary = run_stage("distill", distill_run, mixed_cfg, tmp_path / "mixed")
    assert f"the 10 images with a mask in {user / 'masks'} train the enhancer" in caplog.text
    assert len(summary["gt_images"]) == 10 and summary["quality"]["eval_images"] == 10
    gt = read_mask(user / "masks" / "shop/a/photo1.png")
    assert np.array_equal(read_mask(tmp_path / "mixed/pseudo_masks/mixed/shop/a/photo1.png"), gt)
    assert (
        read_mask(tmp_path / "mixed/pseudo_masks/mixed/street/img_017.png").shape
        == sizes["street/img_017"]
    )

    # The WSSS model on the weak pseudo-masks, scored on the ten real masks.
    seg_cfg = load_config(
        "distill/segment",
        None,
        [
            backbone,
            "device=cpu",
            f"pseudo_masks={tmp_path / 'weak/pseudo_masks/weak'}",
            *_folder(user, f"data.masks={user / 'masks'}", "data.image_size=48", classes),
            "train.max_steps=4",
            "train.batch_size=8",
            "figures.num_images=2",
        ],
    )
    results = run_stage("distill.segment", segment_run, seg_cfg, tmp_path / "segment")
    assert 0.0 <= results["pseudo"]["miou"] <= 1.0
    quality = results["pseudo_mask_quality_train"]  # weak masks of the ten vs their masks
    assert 0.0 < quality["miou"] < 1.0 and 0.0 < quality["fb_iou"] < 1.0
    assert json.loads((tmp_path / "segment/summary.json").read_text())["pseudo"]["steps"] == 4

    # Without any real mask the model is trained and saved, and the log says it is unscored.
    seg_cfg = load_config(
        "distill/segment",
        None,
        [
            backbone,
            "device=cpu",
            f"pseudo_masks={tmp_path / 'weak/pseudo_masks/weak'}",
            *_folder(user, "data.image_size=48"),
            "train.max_steps=1",
        ],
    )
    unscored = run_stage("distill.segment", segment_run, seg_cfg, tmp_path / "segment_unscored")
    assert "WSSS evaluation: nothing to score against" in caplog.text
    assert unscored["pseudo"]["steps"] == 1 and "miou" not in unscored["pseudo"]

    # Few-shot episodes: trained on the mixed pseudo-masks, tested on the ten real masks,
    # with the user's own two folds (classes named as in labels.csv).
    fs_args = [
        backbone,
        "device=cpu",
        "supervision=mixed",
        f"pseudo_masks={tmp_path / 'mixed'}",
        "data.format=folder",
        f"data.root={user / 'photos'}",
        f"data.masks={user / 'masks'}",
        classes,
        "data.folds=[[Dress,Ankle boot],[Bag,Shirt,Sneaker]]",
        "data.val_fraction=0",
        "data.image_size=32",
        "head.channels=[16,32]",
        "head.pool_sizes=[2,2]",
        "head.attn_heads=2",
        "train.max_steps=2",
        "episodes.val_episodes=4",
        "episodes.test_episodes=4",
        "baselines.random_backbone=false",
        "baselines.prototype=false",
        "eval.visualize=0",
        "threads=1",
    ]
    fs_cfg = load_config("fewshot", None, fs_args)
    leaky = load_config("fewshot", None, [*fs_args, "episodes.train_on_test_class_images=true"])
    with pytest.raises(ConfigError, match="in both the training and the test split"):
        run_stage("fewshot", fewshot_run, leaky, tmp_path / "fewshot_leaky")
    fs = run_stage("fewshot", fewshot_run, fs_cfg, tmp_path / "fewshot")
    assert fs["setting"]["test_classes"] == [4, 10]
    assert fs["setting"]["train_classes"] == [1, 2, 3, 5, 6, 7, 8, 9]
    assert (
        "classes T-shirt/top (1), Trouser (2), Pullover (3), Coat (5), Sandal (6) are in no "
        "fold of data.folds: they are training classes of every fold and never tested"
    ) in caplog.text
    assert "1way" in fs["test"]

    _probes(user, backbone, tmp_path, caplog)
    assert tree_digest(user) == before  # nothing written into the user's folders


def test_coco_images_get_pseudo_masks_at_their_own_size(coco_root, tiny_export, tmp_path):
    cfg = load_config(
        "distill",
        None,
        [
            f"backbone={tiny_export}",
            "device=cpu",
            "data.format=coco",
            f"data.root={coco_root}",
            "data.image_size=32",  # working resolution; the files are 48x32, 40x40, 36x24
            "mask.head_polarity=none",  # three images, none with a single label
            "mixed.num_gt_images=2",
            "train.max_steps=2",
            "enhancer.eval_every=1",
            "quality.gt_counts=[2]",
            "quality.random_backbone=false",
        ],
    )
    out = run_stage("distill", distill_run, cfg, tmp_path / "run")
    train = COCOSegmentation(coco_root, "train")
    assert out["images"] == 3 and out["quality"]["eval_images"] == 3
    for i, name in enumerate(train.ids):
        for kind in ("weak", "mixed"):
            mask = read_mask(tmp_path / "run/pseudo_masks" / kind / f"{name}.png")
            assert mask.shape == train.read_mask(i).shape


def _probes(user: Path, backbone: str, tmp_path: Path, caplog) -> None:
    """k-NN and logistic regression on labels.csv, split by two id lists the user wrote."""
    rows = [r.split(",") for r in (user / "labels.csv").read_text().splitlines()[1:]]
    names = sorted({lab for _, labs in rows for lab in labs.split(";") if lab})
    lists = {"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"}
    single = [r for r in rows if r[1] and ";" not in r[1]]
    several = [r for r in rows if ";" in r[1]]
    train, test = single[0::2] + several[0::2], single[1::2] + several[1::2]
    lists["train"].write_text("".join(f"{image}\n" for image, _ in train))
    lists["test"].write_text("".join(f"{image}\n" for image, _ in test))
    expected = np.array([names.index(labs) for _, labs in single[1::2]])
    args = [
        backbone,
        "device=cpu",
        "data.format=folder",
        f"data.root={user / 'photos'}",
        f"data.labels={user / 'labels.csv'}",
        f"data.train_split={lists['train']}",
        f"data.test_split={lists['test']}",
        f"data.cache_dir={tmp_path / 'probe_cache'}",
    ]
    scenes_cfg = load_config("fewshot/probe", None, args)  # the default VOC-scenes protocol
    with pytest.raises(ConfigError, match="is read by the classification protocols"):
        run_stage("fewshot.probe", probe_run, scenes_cfg, tmp_path / "probe_scenes")
    small = ["resize=32", "crop=32"]
    knn_cfg = load_config(
        "fewshot/probe", "dino_knn", [*args, *(f"dino_knn.{a}" for a in small), "dino_knn.ks=[1,3]"]
    )
    knn = run_stage("fewshot.probe", probe_run, knn_cfg, tmp_path / "knn")
    assert knn["classes"] == len(names) and knn["test_images"] == len(expected) > 3
    assert "have several labels and 0 none; the single-label probes use the" in caplog.text
    preds = np.load(tmp_path / "knn/predictions.npz")
    for k in (1, 3):  # the reported accuracy is that of the predictions on labels.csv's classes
        top1 = knn["subsets"]["all"][f"k={k}"]["top1"]
        assert top1 == pytest.approx(float((preds[f"all/k{k}"] == expected).mean()))

    # The test images listed as training images too: each is its own nearest neighbour.
    lists["both"] = tmp_path / "both.txt"
    lists["both"].write_text(lists["train"].read_text() + lists["test"].read_text())
    self_cfg = load_config(
        "fewshot/probe",
        "dino_knn",
        [
            *args,
            f"data.train_split={lists['both']}",
            *(f"dino_knn.{a}" for a in small),
            "dino_knn.ks=[1]",
        ],
    )
    leak = run_stage("fewshot.probe", probe_run, self_cfg, tmp_path / "knn_self")
    assert leak["subsets"]["all"]["k=1"]["top1"] == 1.0
    assert "6 of 6 test images are training images too" in caplog.text

    lr_cfg = load_config(
        "fewshot/probe",
        "dinov2_logreg",
        [
            *args,
            *(f"dinov2_logreg.{a}" for a in small),
            "dinov2_logreg.c_log10=[-2,2,5]",
            "dinov2_logreg.holdout=0.34",  # two of the six training images choose C
        ],
    )
    lr = run_stage("fewshot.probe", probe_run, lr_cfg, tmp_path / "logreg")
    preds = np.load(tmp_path / "logreg/predictions.npz")["all/top1"]
    assert lr["subsets"]["all"]["top1"] == pytest.approx(float((preds == expected).mean()))
    assert len(preds) == len(expected) and len(lr["subsets"]["all"]["heldout_top1"]) == 5
