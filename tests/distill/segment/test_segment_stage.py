"""`python -m distill.segment` end to end on the tiny FashionScenes fixture."""

import json
import logging

import pytest
import torch

from common.cli import stage_main
from distill.segment.model import SegmentationModel
from distill.segment.stage import run


def _run(args):
    return stage_main("distill/segment", run, "", ["--config", "fashion_tiny", *args])


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# On a GPU the resume restores optimizer state onto device parameters: a separate failure mode.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_segment_trains_evaluates_and_resumes(
    tmp_path, fashion_scenes_root, tiny_export, caplog, device
):
    # The fixture's own GT folder stands in for a pseudo-mask folder (same layout).
    args = [
        f"backbone={tiny_export}",
        f"pseudo_masks={fashion_scenes_root / 'SegmentationClassAug'}",
        f"data.root={fashion_scenes_root}",
        f"device={device}",
        "train.batch_size=8",
        "train.max_steps=3",
        "train.log_every=1",
        "scd.weight=0.1",
        "scd.num_points=16",
        "figures.num_images=2",
    ]
    out = tmp_path / "seg"
    _run(["--output-dir", str(out), *args])
    summary = json.loads((out / "summary.json").read_text())
    for tag in ("pseudo", "gt"):
        assert summary[tag]["steps"] == 3
        assert 0 <= summary[tag]["miou"] <= 1
        assert len(summary[tag]["iou_per_class"]) == 11
        assert (out / "figures" / f"confusion_{tag}.png").is_file()
        assert (out / "figures" / f"predictions_{tag}.png").is_file()
    # GT masks given as pseudo-masks score perfectly against GT.
    assert summary["pseudo_mask_quality_train"]["miou"] == 1.0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("scd" in r for r in records)
    with caplog.at_level(logging.INFO):
        more = [a for a in args if not a.startswith("train.max_steps")] + ["train.max_steps=5"]
        _run(["--output-dir", str(out), *more])
    assert "resumed from" in caplog.text and "at step 3" in caplog.text
    # max_steps is this stage's cosine schedule length: the changed schedule is named.
    assert "train.max_steps=5 (it was 3)" in caplog.text
    assert json.loads((out / "summary.json").read_text())["pseudo"]["steps"] == 5


def test_frozen_backbone_gets_no_gradient(tiny_export):
    from common.backbone import load_backbone

    backbone, _ = load_backbone(tiny_export)
    model = SegmentationModel(backbone, num_classes=3, channels=8, freeze=True).train()
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.decoder.fuse[-1].weight.grad is not None
    assert not model.backbone.training


def test_missing_pseudo_masks_is_a_clear_error(tmp_path, fashion_scenes_root, tiny_export, caplog):
    args = [f"backbone={tiny_export}", f"data.root={fashion_scenes_root}"]
    with pytest.raises(SystemExit):
        _run(["--output-dir", str(tmp_path / "x"), *args])
    assert "needs pseudo_masks=" in caplog.text


def test_pseudo_mask_of_the_wrong_size_is_a_clear_error(tmp_path, fashion_scenes_root, tiny_export):
    import shutil

    import numpy as np

    from common.datasets.palette import write_mask

    masks = tmp_path / "masks"
    shutil.copytree(fashion_scenes_root / "SegmentationClassAug", masks)
    first = sorted(masks.glob("train_*.png"))[0]
    write_mask(first, np.zeros((32, 32), dtype=np.uint8))
    args = [f"backbone={tiny_export}", f"data.root={fashion_scenes_root}", f"pseudo_masks={masks}"]
    with pytest.raises(ValueError, match="masks must match their image"):
        _run(["--output-dir", str(tmp_path / "x"), *args, "device=cpu"])
