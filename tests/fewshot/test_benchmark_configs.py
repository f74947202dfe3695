"""The Pascal-5i and COCO-20i presets run end to end on small datasets of their layouts."""

from __future__ import annotations

import pytest

from common.cli import stage_main
from common.datasets.folds import fold_classes, train_classes
from fewshot.stage import run
from tests.fewshot.benchmark_fixtures import build_coco_like, build_pascal_like

TINY = [
    "data.image_size=32",
    "data.val_fraction=0",
    "head.channels=[16, 32]",
    "head.pool_sizes=[2, 2]",
    "head.attn_heads=2",
    "train.max_steps=2",
    "train.batch_size=2",
    "episodes.test_episodes=4",
    "eval.visualize=1",
    "baselines.random_backbone=false",
    "threads=1",
]


def _classes(bench: str, fold: int) -> list[int]:
    # Two test classes and two training classes of the fold keep the set small.
    return fold_classes(bench, fold)[:2] + train_classes(bench, fold)[:2]


def test_pascal5i_preset(tmp_path, tiny_export):
    root = build_pascal_like(tmp_path / "voc", _classes("pascal", 1))
    argv = ["--config", "pascal5i", "--output-dir", str(tmp_path / "run")]
    argv += [f"data.root={root}", f"backbone={tiny_export}", "fold=1", "way=2", *TINY]
    results = stage_main("fewshot", run, "test", argv)
    assert results["setting"]["test_classes"] == [6, 7, 8, 9, 10]
    assert set(results["test"]["2way"]) == {"head", "prototype"}
    assert not (tmp_path / "run" / "cache").exists()  # the preset computes tokens per batch


def test_coco20i_preset(tmp_path, tiny_export):
    pytest.importorskip("pycocotools")
    root = build_coco_like(tmp_path / "coco", _classes("coco", 2))
    argv = ["--config", "coco20i", "--output-dir", str(tmp_path / "run")]
    argv += [f"data.root={root}", f"backbone={tiny_export}", "fold=2", *TINY]
    results = stage_main("fewshot", run, "test", argv)
    assert results["setting"]["test_classes"] == list(range(3, 81, 4))
    assert 0.0 <= results["test"]["1way"]["head"]["miou"] <= 1.0


@pytest.fixture
def dino_vits8_like(tmp_path):
    """A tiny ViT with patch 8 saved as DINO's ``*_pretrain.pth`` (CST's backbone format)."""
    from tests.fixtures.public_checkpoints import reference_vit, write

    return write("dino_pretrain", reference_vit(patch=8, size=32), tmp_path / "dino_p8.pth")


def test_cst_pascal_presets_chain_distill_to_weak_fscs(tmp_path, dino_vits8_like):
    from distill.stage import run as distill_run

    root = build_pascal_like(tmp_path / "voc", _classes("pascal", 0))
    common = [f"data.root={root}", f"backbone={dino_vits8_like}", "data.image_size=32"]
    distill_argv = ["--config", "cst_pascal", "--output-dir", str(tmp_path / "distill")]
    distill_argv += [*common, "device=cpu", "quality.max_images=8", "figures.num_images=1"]
    stage_main("distill", distill_run, "test", distill_argv)
    argv = ["--config", "cst_pascal", "--output-dir", str(tmp_path / "run"), *common, *TINY]
    argv += [f"pseudo_masks={tmp_path / 'distill'}", "fold=0", "way=2", "supervision=weak"]
    results = stage_main("fewshot", run, "test", argv)
    assert results["setting"]["supervision"] == "weak"
    assert results["setting"]["protocol"] == "cst"
    assert set(results["test"]) == {"1way", "2way"}


def test_cst_pascal_preset_is_csts_weak_setting(tmp_path, dino_vits8_like):
    root = build_pascal_like(tmp_path / "voc", _classes("pascal", 0))
    argv = ["--config", "cst_pascal", "--output-dir", str(tmp_path / "run"), *TINY]
    argv += [f"data.root={root}", f"backbone={dino_vits8_like}", "fold=0", "way=2"]
    results = stage_main("fewshot", run, "test", argv)  # no distill run: masks made on the fly
    assert results["setting"]["supervision"] == "cst_weak"
    assert results["setting"]["support_masks_at_test"] == "none"
    assert results["setting"]["protocol"] == "cst"
    assert set(results["test"]["2way"]) == {"head", "prototype"}


def test_cst_coco_preset(tmp_path, dino_vits8_like):
    pytest.importorskip("pycocotools")
    root = build_coco_like(tmp_path / "coco", _classes("coco", 0))
    argv = ["--config", "cst_coco", "--output-dir", str(tmp_path / "run")]
    argv += [f"data.root={root}", f"backbone={dino_vits8_like}", "fold=0", *TINY]
    results = stage_main("fewshot", run, "test", argv)
    assert results["setting"]["supervision"] == "cst_weak"
    assert results["setting"]["protocol"] == "cst"
    assert 0.0 <= results["test"]["1way"]["head"]["miou"] <= 1.0
