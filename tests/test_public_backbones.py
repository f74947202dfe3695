"""Every stage runs end to end from public checkpoint files (DINOv2 with registers and patch
14, DINO with patch 8), written in their original layouts; nothing is downloaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets.voc import read_split_ids
from launch.report import flat_numbers
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
    write("dino_pretrain", ref, folder / "plain.pth")  # the same weights as a plain timm state dict
    return write(fmt, ref, folder / "checkpoint.pth"), size, folder


def _numbers(run_dir: Path) -> dict[str, float]:
    """The figures a stage wrote to results.json, less its timings."""
    summary = json.loads((run_dir / "results.json").read_text())
    return {k: v for k, v in flat_numbers(summary, depth=6).items() if "second" not in k}


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
    summary = json.loads((out / "distill" / "summary.json").read_text())
    quality = summary["quality"]
    rows = {r["method"]: r for r in quality["rows"]}
    assert quality["eval_images"] == 8  # quality.max_images
    assert rows["+ enhancer (10 GT)"]["gt_images"] == len(summary["gt_images"]) == 10
    assert all(0.0 <= r["miou"] <= 1.0 and 0.0 <= r["fb_iou"] <= 1.0 for r in rows.values())
    # The foreground and ignored shares the stage reports are those of the masks it wrote,
    # and the masks say something: foreground in most scenes, background in every one.
    masks = [np.asarray(Image.open(f)) for f in sorted(weak.glob("*.png"))]
    fg = [((m > 0) & (m != 255)).mean() for m in masks]
    assert summary["weak_fg_fraction"] == pytest.approx(np.mean(fg), abs=1e-9)
    assert summary["weak_ignore_fraction"] == pytest.approx(
        np.mean([(m == 255).mean() for m in masks]), abs=1e-9
    )
    assert sum(f > 0 for f in fg) > len(fg) / 2 and all((m == 0).any() for m in masks)


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
    summary = json.loads((out / "fewshot" / "results.json").read_text())
    assert summary["setting"]["fold"] == 0 and summary["setting"]["supervision"] == "weak"
    for way, models in summary["test"].items():
        for model in ("head", "prototype"):
            m = models[model]
            assert 0.0 <= m["miou"] <= 1.0 and 0.0 <= m["exact_ratio"] <= 1.0, (way, model, m)
    # The prototype baseline needs no training: given the support's ground-truth mask it finds
    # some of the query's foreground with any features.
    assert summary["test"]["1way"]["prototype"]["fb_iou"] > 0.0


def test_probe(public, fashion_scenes_root):
    """The probes give the same figures from the public layout as from a plain timm state
    dict of the same weights: the conversion, not only the run, is checked."""
    path, size, out = public
    for name, checkpoint in (("probe", path), ("probe_plain", out / "plain.pth")):
        _run(
            "fewshot.probe", "--config", "fashion_tiny", "--output-dir", str(out / name),
            f"backbone={checkpoint}", f"data.root={fashion_scenes_root}",
            f"data.image_size={size}", "device=cpu", "logreg.shots=[1]", "logreg.num_splits=1",
            "multilabel.percent=50.0", "train.max_steps=5", "threads=1",
        )  # fmt: skip
    ours, plain = _numbers(out / "probe"), _numbers(out / "probe_plain")
    # The patch segmentation probe is left out: its SGD gives other figures from one run to
    # the next, the random backbone's included.
    ours, plain = ({k: v for k, v in d.items() if ".segmentation." not in k} for d in (ours, plain))
    assert len(ours) > 5 and ours == plain
    accuracies = [v for k, v in ours.items() if ".knn." in k or k.endswith(".mean")]
    assert accuracies and all(0.0 <= v <= 1.0 for v in accuracies)


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
