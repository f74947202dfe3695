"""A benchmark run leaves a record with its printed tables, command, commit, machine and date."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.record import split_printed

ROOT = Path(__file__).resolve().parents[2]


def test_printed_tables_are_named_in_order_and_other_lines_kept():
    text = "run 1\n| a | b |\n| --- | ---: |\n| x | 1.5 |\n\nnote\n|c|\n|---|\n|y|\n|z|\n"
    tables, other = split_printed(text, ["first"])
    assert tables == {
        "first": {"columns": ["a", "b"], "rows": [["x", "1.5"]]},
        "table_1": {"columns": ["c"], "rows": [["y"], ["z"]]},
    }
    assert other == ["run 1", "note"]


def test_a_benchmark_script_records_what_it_printed(tmp_path):
    records = tmp_path / "records"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_refine.py")]
    cmd += ["--images", "3", "--size", "64", "--patch", "16", "--noise", "0.3"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), LABELFEW_RESULTS_DIR=str(records))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rec = json.loads((records / "refine.json").read_text())
    assert rec["command"].endswith(
        "benchmarks/bench_refine.py --images 3 --size 64 --patch 16 --noise 0.3"
    )
    assert rec["commit"] and rec["machine"] and rec["date"]
    table = rec["tables"]["refine"]
    assert [r[0].strip("*").split(" ")[0] for r in table["rows"]] == [
        "none",
        "par_variation",
        "varm",
    ]
    for row in table["rows"]:  # every printed cell is in the record, as printed
        assert "| " + " | ".join(row) + " |" in done.stdout
    assert "3 val scenes, 16 px cells, noise 0.3" in rec["values"]["printed"]


def _stage_dir(root: Path, name: str, summary: dict) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(summary))
    (run / "log.txt").write_text(
        "2026-12-07 05:00:00,000 INFO start\n2026-12-07 05:02:05,000 INFO done\n"
    )
    return run


def _fscs(fold: int, head: float, prototype: float) -> dict:
    scores = {"head": {"miou": head}, "prototype": {"miou": prototype}}
    return {"setting": {"fold": fold}, "test": {"1way": scores}}


def test_a_pipeline_run_is_recorded_with_its_bars_on_every_fold(tmp_path):
    from benchmarks import record_pipeline

    def row(method, gt, miou, fb):
        return {"method": method, "gt_images": gt, "miou": miou, "fb_iou": fb}

    distill = {
        "rows": [
            row("colour saliency (no learning)", 0, 0.359, 0.851),
            row("random-init ViT + refine", 0, 0.13, 0.347),
            row("attention + refine", 0, 0.284, 0.656),
            row("+ enhancer (10 GT)", 10, 0.394, 0.929),
        ],
        "class_assignment": {
            "prototype": {"pixel_accuracy": 0.472, "images": 249},
            "first_label": {"pixel_accuracy": 0.494, "images": 249},
        },
    }
    pipe = tmp_path / "demo"
    stages = {
        "distill": ("distill", _stage_dir(pipe, "distill", distill)),
        "fscs": ("fewshot", _stage_dir(pipe, "fscs", _fscs(0, 0.191, 0.183))),
    }
    pipe.joinpath("manifest.json").write_text(
        json.dumps(
            {
                "stages": {
                    n: {"stage": s, "run_dir": str(d), "status": "completed"}
                    for n, (s, d) in stages.items()
                }
            }
        )
    )
    fold1 = _stage_dir(tmp_path, "fold1", _fscs(1, 0.150, 0.155))
    record_pipeline.main(["--run", str(pipe), "--fewshot", f"fscs_fold1={fold1}"])
    rec = json.loads((Path(os.environ["LABELFEW_RESULTS_DIR"]) / "demo.json").read_text())
    bars = {r[0]: r for r in rec["tables"]["bars"]["rows"]}
    head = [r for name, r in bars.items() if "FS-CS head vs prototype" in name]
    assert [(r[1], r[2], r[3]) for r in head] == [
        ("19.1", "18.3", "bar: met"),
        ("15.0", "15.5", "bar: not met"),
    ]
    assert bars["weak pseudo-masks vs random-init backbone"][1:] == [
        "28.4 / 65.6 mIoU / FB-IoU", "13.0 / 34.7", "bar: met"
    ]  # fmt: skip
    assert ["+ enhancer (10 GT)", 10, 39.4, 92.9] in rec["tables"]["distill_quality"]["rows"]
    values = rec["values"]
    assert values["weak"] == "28.4 / 65.6" and values["assign_first_label"] == "49.4 %"
    assert values["fscs_time"] == values["fscs_fold1_time"] == "2 min 05 s"
    assert "fold=1 supervision=weak --output-dir" in rec["command"]


def test_pretrain_quality_margins_span_the_low_shot_columns():
    from benchmarks.bench_pretrain_quality import margins

    def row(values: list[float]) -> dict:
        cells = [f"{m}_{s}" for m in ("logreg", "knn") for s in (1, 2, 5)]
        return {c: (v, 0.0) for c, v in zip(cells, values, strict=True)}

    raw = row([15.5, 20.9, 21.9, 15.3, 20.5, 22.5])
    random_vit = row([9.7, 13.1, 17.7, 11.3, 14.1, 13.8])
    run = row([23.1, 28.3, 32.6, 22.8, 25.0, 28.4])
    assert margins([raw, random_vit, run]) == {
        "margin_over_raw_pixels": "4.5 to 10.7",
        "margin_over_random_vit": "10.9 to 15.2",
    }
    assert margins([raw, random_vit]) == {}
