"""Every stage runs end to end from public checkpoint files (DINOv2 with registers and patch
14, DINO with patch 8), written in their original layouts; nothing is downloaded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from common.datasets.voc import read_split_ids
from tests.fixtures.public_checkpoints import reference_vit, write

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = {
    # name: (format, registers, layer scale, patch, native size, stage input size)
    "dinov2_reg4_p14": ("dinov2_hub", 4, True, 14, 56, 56),
    "dino_p8": ("dino_train", 0, False, 8, 32, 64),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def public(request, tmp_path_factory):
    fmt, regs, ls, patch, native, size = BACKBONES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    ref = reference_vit(regs, ls, patch=patch, size=native)
    return write(fmt, ref, folder / "checkpoint.pth"), size, folder


def _run(module: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_distill(public, fashion_scenes_root):
    path, size, out = public
    _run(
        "distill", "--config", "fashion_tiny", "--output-dir", str(out / "distill"),
        f"backbone={path}", f"data.root={fashion_scenes_root}", f"data.image_size={size}",
        "device=cpu", "assign.max_images=40", "mixed.num_gt_images=10", "train.max_steps=4",
        "enhancer.eval_every=2", "quality.max_images=8", "quality.gt_counts=[10]",
        "figures.num_images=2",
    )  # fmt: skip
    weak = out / "distill" / "pseudo_masks" / "weak"
    assert len(list(weak.glob("*.png"))) == len(read_split_ids(fashion_scenes_root, "train"))


def test_fewshot(public, fashion_scenes_root):
    path, size, out = public
    masks = out / "masks" / "pseudo_masks" / "weak"
    masks.mkdir(parents=True)
    for name in read_split_ids(fashion_scenes_root, "train"):
        shutil.copy(fashion_scenes_root / "SegmentationClassAug" / f"{name}.png", masks)
    _run(
        "fewshot", "--config", "fashion_tiny", "--output-dir", str(out / "fewshot"),
        f"backbone={path}", f"data.root={fashion_scenes_root}", f"data.image_size={size}",
        f"pseudo_masks={out / 'masks'}", "supervision=weak", "device=cpu", "head.pool_sizes=[2, 2]",
        "head.attn_heads=2", "train.max_steps=2", "train.batch_size=4", "train.eval_every=2",
        "episodes.val_episodes=4", "episodes.test_episodes=4", "eval.visualize=1", "threads=1",
    )  # fmt: skip
    assert (out / "fewshot" / "results.json").is_file()


def test_probe(public, fashion_scenes_root):
    path, size, out = public
    _run(
        "fewshot.probe", "--config", "fashion_tiny", "--output-dir", str(out / "probe"),
        f"backbone={path}", f"data.root={fashion_scenes_root}", f"data.image_size={size}",
        "device=cpu", "logreg.shots=[1]", "logreg.num_splits=1", "multilabel.percent=50.0",
        "train.max_steps=5", "threads=1",
    )  # fmt: skip
    assert (out / "probe" / "results.json").is_file()


def test_attention_figures(public, fashion_scenes_root):
    path, size, out = public
    images = sorted((fashion_scenes_root / "JPEGImages").glob("*.jpg"))[:2]
    _run(
        "pretrain.attention", "--checkpoint", str(path), "--out", str(out / "attention"),
        "--size", str(size), "--images", *map(str, images),
    )  # fmt: skip
    assert len(list((out / "attention").glob("*.png"))) == 2


def test_input_size_off_the_patch_grid_is_named(public, fashion_scenes_root):
    path, size, out = public
    proc = subprocess.run(
        [sys.executable, "-m", "fewshot.probe", "--config", "fashion_tiny", "--output-dir",
         str(out / "bad"), f"backbone={path}", f"data.root={fashion_scenes_root}",
         f"data.image_size={size + 2}", "device=cpu"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"data.image_size={size + 2} is not a multiple of the backbone's patch size" in proc.stderr
    )


@pytest.mark.parametrize(
    "stage", ["distill", "distill/segment", "fewshot", "fewshot/probe", "pretrain"]
)
def test_help_names_the_three_ways_to_give_a_backbone(stage):
    from common.cli import build_parser

    text = build_parser(stage, "").format_help()
    assert "timm:<name>" in text and "backbone.weights=FILE" in text and "DINOv2" in text
