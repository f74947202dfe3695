"""The `python -m distill` command end to end on the tiny FashionScenes fixture."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.cli import stage_main
from common.datasets.voc import VOCSegmentation
from distill.stage import run

REPO = Path(__file__).resolve().parents[2]
FAST = [
    "device=cpu",
    "assign.max_images=40",
    "mixed.num_gt_images=10",
    "train.max_steps=10",
    "enhancer.eval_every=5",
    "quality.max_images=16",
    "quality.gt_counts=[10]",
    "figures.num_images=2",
]


def _run(args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "distill", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory, fashion_scenes_root, tiny_export):
    out = tmp_path_factory.mktemp("distill_run")
    args = [f"backbone={tiny_export}", f"data.root={fashion_scenes_root}", *FAST]
    proc = _run(["--config", "fashion_tiny", "--output-dir", str(out), *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, args


def test_cli_writes_pseudo_masks_figures_and_quality(distill_run, fashion_scenes_root):
    out, _ = distill_run
    for kind in ("weak", "mixed"):
        files = sorted((out / "pseudo_masks" / kind).glob("*.png"))
        assert len(files) == 120
        ds = VOCSegmentation(fashion_scenes_root, "train", mask_dir=out / "pseudo_masks" / kind)
        item = ds[ds.ids.index(files[0].stem)]
        assert item["mask"].shape == item["image"].shape[1:]
        assert set(np.unique(item["mask"].numpy())) <= set(range(11)) | {255}
        assert Image.open(files[0]).mode == "P"
    summary = json.loads((out / "summary.json").read_text())
    # Mixed masks keep ground truth on the enhancer's GT images.
    gt_id = summary["gt_images"][0]
    gt = VOCSegmentation(fashion_scenes_root, "train")
    mixed = VOCSegmentation(fashion_scenes_root, "train", mask_dir=out / "pseudo_masks" / "mixed")
    i = gt.ids.index(gt_id)
    assert (gt.read_mask(i) == mixed.read_mask(i)).all()
    methods = [r["method"] for r in summary["quality"]["rows"]]
    assert methods[0].startswith("colour saliency") and "+ enhancer (10 GT)" in methods
    assert all(0 <= r["miou"] <= 1 and 0 <= r["fb_iou"] <= 1 for r in summary["quality"]["rows"])
    assert (out / "quality.md").is_file() and (out / "figures" / "quality.png").is_file()
    assert (out / "figures" / "pseudo_masks_eval.png").is_file()
    assert (out / "checkpoints" / "last.pt").is_file()


def test_log_labels_the_baseline_and_prints_no_raw_tensors(distill_run):
    log_text = (distill_run[0] / "log.txt").read_text()
    assert "backbone: head signs from" in log_text
    assert "random-init ViT baseline: head signs from" in log_text
    assert "after the search on the foreground probe's map mirrored" in log_text
    assert "tensor(" not in log_text
    assert "Pseudo-label quality on 16 val images:" in log_text
    assert "quality (" not in log_text


def test_rerun_resumes_the_enhancer_and_reproduces_the_masks(distill_run, caplog):
    out, args = distill_run
    before = {p.name: p.read_bytes() for p in (out / "pseudo_masks" / "mixed").glob("*.png")}
    with caplog.at_level(logging.INFO):
        stage_main(
            "distill", run, "", ["--config", "fashion_tiny", "--output-dir", str(out)] + args
        )
    assert "resumed from" in caplog.text
    after = {p.name: p.read_bytes() for p in (out / "pseudo_masks" / "mixed").glob("*.png")}
    assert before == after


def test_bad_inputs_fail_with_clear_messages(tmp_path, fashion_scenes_root, tiny_export, caplog):
    base = [f"data.root={fashion_scenes_root}", *FAST, "quality.enabled=false"]
    with pytest.raises(SystemExit):
        stage_main("distill", run, "", ["--output-dir", str(tmp_path / "a"), *base])
    assert "distill needs a backbone: backbone=RUN_DIR" in caplog.text
    base.append(f"backbone={tiny_export}")
    with pytest.raises(ValueError, match="0 ground-truth images"):
        stage_main(
            "distill",
            run,
            "",
            ["--output-dir", str(tmp_path / "b"), *base, "mixed.num_gt_images=0"],
        )
    with pytest.raises(ValueError, match="has no image-level label"):
        stage_main(
            "distill",
            run,
            "",
            [
                "--output-dir",
                str(tmp_path / "c"),
                *base,
                "data.empty_labels=error",
                "mixed.enabled=false",
            ],
        )
