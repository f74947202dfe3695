"""Manifest checksums, the pipeline report and the sweep's axes and summary table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from common.artifacts import ArtifactError, sha256_path
from common.rundir import MetricsLogger
from launch.bars import bars_table, check_bars
from launch.manifest import Manifest
from launch.report import flat_numbers, results_table, write_report
from launch.slurm import LaunchError
from launch.sweep import parse_axes, point_name


def test_folder_checksum_sees_content_and_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    first = sha256_path(tmp_path / "a")
    assert sha256_path(tmp_path / "a") == first
    (tmp_path / "a" / "x.txt").write_text("2")
    second = sha256_path(tmp_path / "a")
    assert second != first
    (tmp_path / "a" / "x.txt").rename(tmp_path / "a" / "y.txt")
    assert sha256_path(tmp_path / "a") not in (first, second)


def test_consumer_refuses_an_artifact_changed_after_it_was_produced(tmp_path: Path) -> None:
    export = tmp_path / "pretrain" / "export"
    export.mkdir(parents=True)
    (export / "backbone.pth").write_bytes(b"weights")
    manifest = Manifest(tmp_path)
    manifest.record_outputs("pretrain", {"export": export}, {"steps": 3})
    spec = {"path": str(export), "producer": "pretrain", "artifact": "export"}
    manifest.update_stage("distill", consumes={"backbone": spec})
    consumed = manifest.verify_inputs("distill")
    assert consumed["backbone"]["sha256"] == sha256_path(export)
    (export / "backbone.pth").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="changed after stage 'pretrain' produced it"):
        manifest.verify_inputs("distill")


def test_a_path_inside_an_artifact_is_checked_as_the_whole(tmp_path: Path) -> None:
    masks = tmp_path / "distill" / "pseudo_masks"
    (masks / "weak").mkdir(parents=True)
    (masks / "weak" / "a.png").write_bytes(b"mask")
    manifest = Manifest(tmp_path)
    manifest.record_outputs("distill", {"pseudo_masks": masks}, {})
    spec = {"path": str(masks / "weak"), "producer": "distill", "artifact": "pseudo_masks"}
    manifest.update_stage("segment", consumes={"masks": spec})
    assert manifest.verify_inputs("segment")["masks"]["sha256"] == sha256_path(masks / "weak")
    (masks / "weak" / "a.png").write_bytes(b"edited")
    with pytest.raises(ArtifactError, match="changed after stage 'distill' produced it"):
        manifest.verify_inputs("segment")


def test_consumer_refuses_an_artifact_never_recorded(tmp_path: Path) -> None:
    (tmp_path / "exp").mkdir()
    manifest = Manifest(tmp_path)
    spec = {"path": str(tmp_path / "exp"), "producer": "pretrain", "artifact": "export"}
    manifest.update_stage("distill", consumes={"backbone": spec})
    with pytest.raises(ArtifactError, match="has not recorded it"):
        manifest.verify_inputs("distill")


def test_report_plots_losses_and_links_stage_figures(tmp_path: Path) -> None:
    run = tmp_path / "pretrain"
    (run / "figures").mkdir(parents=True)
    logger = MetricsLogger(run / "metrics.jsonl")
    for step in range(1, 6):
        logger.log(step, loss=5.0 / step, loss_dino=4.0 / step, lr=1e-3)
    Image.new("RGB", (8, 8)).save(run / "figures" / "attention.png")
    (run / "results.json").write_text(json.dumps({"knn_top1": 0.5, "steps": 5}))
    table, report = write_report(
        tmp_path,
        [{"name": "pretrain", "stage": "pretrain", "state": "COMPLETED", "run_dir": str(run)}],
    )
    assert "| pretrain | COMPLETED | k-NN top-1 50.0 %, 5 steps | - |" in table
    text = report.read_text()
    assert "![pretrain loss](figures/pretrain_loss.png)" in text
    assert "(pretrain/figures/attention.png)" in text
    assert (tmp_path / "figures" / "pretrain_loss.png").stat().st_size > 1000


def _quality_row(method: str, miou: float) -> dict:
    return {
        "method": method,
        "gt_images": 0,
        "miou": miou,
        "fb_iou": 0.5,
        "iou_per_class": [0.1] * 11,
    }


def _probe_model(acc: float) -> dict:
    splits = [{"seed": s, "labels": 10, "accuracy": acc} for s in range(5)]
    logreg = {f"shot{k}": {"mean": acc, "std": 0.01, "splits": splits} for k in (1, 2, 5)}
    return {
        "logreg": logreg,
        "knn": {"pct100": {"k=1": acc - 0.1, "k=20": acc - 0.05}},
        "multilabel": {"mAP": 0.3, "per_class": [0.3] * 10},
        "segmentation": {"miou": 0.2, "iou_per_class": [0.2] * 11},
    }


def test_final_table_is_one_short_row_per_stage_in_percent() -> None:
    ways = {
        f"{w}way": {
            m: {"exact_ratio": 0.4, "accuracy": 0.6, "miou": 0.25, "fb_iou": 0.5}
            for m in ("head", "random_head", "prototype")
        }
        for w in (1, 2)
    }
    rows = [
        ("pretrain", "pretrain", "COMPLETED", {"steps": 600, "completed": True, "knn_top1": 0.61}),
        (
            "distill",
            "distill",
            "COMPLETED",
            {
                "rows": [
                    _quality_row("colour saliency (no learning)", 0.4),
                    _quality_row("random-init ViT + refine", 0.13),
                    _quality_row("attention (raw)", 0.22),
                    _quality_row("attention + refine", 0.299),
                    _quality_row("+ enhancer (10 GT)", 0.35),
                ]
            },
        ),
        (
            "probe",
            "fewshot/probe",
            "COMPLETED",
            {"models": {"backbone": _probe_model(0.62), "random_backbone": _probe_model(0.48)}},
        ),
        ("fscs", "fewshot", "COMPLETED", {"setting": {"fold": 0}, "test": ways}),
        ("wsss", "distill/segment", "FAILED", {}),
    ]
    lines = results_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert max(len(line) for line in lines) <= 160, max(lines, key=len)
    assert "weak pseudo-labels mIoU 29.9 %, enhancer (10 GT) 35.0 %" in lines[3]
    assert "colour saliency 40.0 %, random ViT 13.0 %" in lines[3]
    assert "logreg shot1 62.0 %, k-NN pct100 k=20 57.0 %" in lines[4]
    assert "random ViT logreg shot1 48.0 %" in lines[4]
    assert "2way ER 40.0 %, mIoU 25.0 %" in lines[5]
    assert lines[6] == "| wsss | FAILED | - | - |"


def test_flat_numbers_skips_non_finite_and_text() -> None:
    assert flat_numbers({"a": 1, "b": float("nan"), "c": "x", "d": {"e": 2.5}}) == {
        "a": 1.0,
        "d.e": 2.5,
    }


def test_sweep_axes_keep_yaml_lists_whole() -> None:
    axes, fixed = parse_axes(["train.lr=1e-3,1e-4", "crops.global_scale=[0.4,1.0]", "seed=0,1,2"])
    assert axes == {"train.lr": ["1e-3", "1e-4"], "seed": ["0", "1", "2"]}
    assert fixed == ["crops.global_scale=[0.4,1.0]"]
    assert point_name({"train.lr": "1e-3", "data.root": "/x y"}) == "train.lr=1e-3_data.root=-x-y"


def _fewshot(fold: int, head: float, random_head: float, prototype: float) -> dict:
    models = {"head": head, "random_head": random_head, "prototype": prototype}
    test = {
        f"{w}way": {m: {"exact_ratio": v, "miou": v - 0.1} for m, v in models.items()}
        for w in (1, 2)
    }
    return {"setting": {"fold": fold}, "test": test}


def test_bars_are_met_or_not_and_the_rest_are_reference_rows() -> None:
    distill = {
        "rows": [
            _quality_row("colour saliency (no learning)", 0.40),
            _quality_row("random-init ViT + refine", 0.13),
            _quality_row("attention + refine", 0.30),
            {**_quality_row("+ enhancer (10 GT)", 0.39), "gt_images": 10, "fb_iou": 0.9},
            {**_quality_row("+ enhancer (200 GT)", 0.41), "gt_images": 200},
        ]
    }
    stages = [
        ("distill", "distill", distill),
        ("fscs0", "fewshot", _fewshot(0, 0.52, 0.50, 0.47)),
        ("fscs1", "fewshot", _fewshot(1, 0.48, 0.49, 0.40)),
    ]
    bars = ["weak_beats_random", "enhancer_beats_weak", "heads_beat_random_head"]
    lines = bars_table(stages, bars).splitlines()[2:]
    # weak 30.0 / 50.0 against the random ViT's 13.0 / 50.0: FB-IoU ties, so not met.
    assert lines[0] == (
        "| weak pseudo-masks vs random-init backbone | 30.0 / 50.0 mIoU / FB-IoU "
        "| 13.0 / 50.0 | bar: **not met** |"
    )
    assert lines[1].startswith("| enhancer (10 GT) vs weak pseudo-masks | 39.0 / 90.0")
    assert lines[1].endswith("| bar: **met** |")
    assert not any("200 GT" in line for line in lines)  # the bar is about few masks
    assert lines[2] == (
        "| fscs0 (fold 0): FS-CS head vs random-backbone head, 1-way ER, 1-way mIoU, 2-way ER, "
        "2-way mIoU | 52.0 / 42.0 / 52.0 / 42.0 | 50.0 / 40.0 / 50.0 / 40.0 | bar: **met** |"
    )
    assert lines[3].startswith("| fscs1 (fold 1)") and lines[3].endswith("| bar: **not met** |")
    rest = lines[4:]
    assert rest[0].startswith("| fscs0 (fold 0): FS-CS head vs prototype baseline, 1-way mIoU")
    assert rest[0].endswith("| reference: ahead |")
    assert rest[2].startswith("| weak pseudo-masks vs colour saliency")
    assert rest[2].endswith("| reference: behind |")
    assert len(rest) == 3  # no WSSS row: no distill/segment stage in this pipeline


def test_a_bar_without_its_numbers_is_not_measured_and_unknown_bars_are_refused() -> None:
    lines = bars_table([("wsss", "distill/segment", {})], ["segment_beats_pseudo"]).splitlines()
    assert lines[2].endswith("| - | - | bar: not measured |")
    with pytest.raises(LaunchError, match="unknown bar.*weak_beats_colour.*known: weak_beats"):
        check_bars(["weak_beats_colour"], "p.yaml")
    with pytest.raises(LaunchError, match="must be a list"):
        check_bars("weak_beats_random", "p.yaml")


def test_report_says_what_the_numbers_mean_and_quotes_positive_controls(tmp_path: Path) -> None:
    run = tmp_path / "distill"
    run.mkdir()
    rows = [
        _quality_row("colour saliency (no learning)", 0.4),
        _quality_row("attention + refine", 0.3),
    ]
    (run / "results.json").write_text(json.dumps({"rows": rows}))
    stages = [{"name": "distill", "stage": "distill", "state": "COMPLETED", "run_dir": str(run)}]
    table, report = write_report(tmp_path, stages, ["weak_beats_saliency"])
    text = report.read_text()
    assert "| weak pseudo-masks vs colour saliency | 30.0 / 50.0 mIoU / FB-IoU" in table
    assert "**distill.** The weak pseudo-masks use the image-level labels only." in text
    assert "so the weak pseudo-masks must beat it" in text
    assert "## Positive controls (recorded, not re-measured)" in text
    assert "| FB-IoU " in text and "`benchmarks/results/refine.json`" in text  # from the record
    # Where saliency is not a bar the report says why it is a reference row.
    _, report = write_report(tmp_path, stages, [])
    assert "It is a reference row here, not a bar" in report.read_text()
