"""Record a finished pipeline run (``make demo``) as ``benchmarks/results/<name>.json``.

Reads the run's ``manifest.json`` and each stage's ``results.json``, as the pipeline report
does, and records the bars (``launch.bars``, the same rows ``report.md`` marks), the distill
quality table, the class-assignment figures and each stage's wall-clock. Extra FS-CS runs on
the same backbone (another fold) join the bars with ``--fewshot NAME=RUN_DIR``:

    .venv/bin/python -m launch pipeline --config configs/pipeline/fashion_tiny.yaml \
        --executor local --output-dir runs/demo
    .venv/bin/python -m fewshot --config fashion_tiny backbone=runs/demo/pretrain/export \
        pseudo_masks=runs/demo/distill/pseudo_masks fold=1 supervision=weak \
        --output-dir runs/fscs_fold1
    PYTHONPATH=. .venv/bin/python benchmarks/record_pipeline.py --run runs/demo \
        --fewshot fscs_fold1=runs/fscs_fold1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from pathlib import Path

import yaml

from benchmarks.record import record_result
from launch.bars import COMPARISONS, _verdict
from launch.report import read_summary

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def wall_clock(log: Path) -> float | None:
    """Seconds between the first and the last time-stamped line of a stage's log."""
    if not log.is_file():
        return None
    stamps = [m.group(1) for line in log.read_text().splitlines() if (m := STAMP.match(line))]
    if len(stamps) < 2:
        return None
    first, last = (dt.datetime.fromisoformat(s) for s in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{int(seconds // 60)} min {round(seconds % 60):02d} s"


def accuracy(scores: dict | None) -> str:
    """A class-assignment rule's pixel accuracy, as distill's results.json holds it."""
    value = (scores or {}).get("pixel_accuracy", float("nan"))
    return f"{100 * value:.1f} %"


def bars_rows(stages: list[tuple[str, str, dict]], bars: list[str]) -> list[list[str]]:
    present = {stage for _, stage, _ in stages}
    rows = []
    for name in list(bars) + [n for n in COMPARISONS if n not in bars]:
        stage, compare = COMPARISONS[name]
        if stage in present:
            rows += [
                [r.check, r.measured, r.against, _verdict(r.holds, name in bars).replace("*", "")]
                for r in compare(stages)
            ]
    return rows


def quality_rows(distill: dict) -> list[list]:
    rows = distill.get("rows") or []
    return [
        [r["method"], r.get("gt_images", 0), round(100 * r["miou"], 1), round(100 * r["fb_iou"], 1)]
        for r in rows
    ]


def pair(row: dict | None) -> str:
    return "-" if not row else f"{100 * row['miou']:.1f} / {100 * row['fb_iou']:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="the pipeline's output folder")
    parser.add_argument("--name", default="demo", help="the record's name")
    parser.add_argument("--fewshot", nargs="*", default=[], help="NAME=RUN_DIR of extra FS-CS runs")
    parser.add_argument("--config", default="configs/pipeline/fashion_tiny.yaml")
    args = parser.parse_args(argv)
    manifest = json.loads((args.run / "manifest.json").read_text())
    unfinished = [n for n, e in manifest["stages"].items() if e.get("status") != "completed"]
    if unfinished:
        raise SystemExit(
            f"error: {args.run}: stage(s) {', '.join(unfinished)} did not complete; "
            "record a finished run (python -m launch status shows where it stands)"
        )
    bars = yaml.safe_load(Path(args.config).read_text()).get("bars") or []
    stages, seconds = [], {}
    for name, entry in manifest["stages"].items():
        run_dir = Path(entry["run_dir"])
        stages.append((name, entry["stage"], read_summary(run_dir)))
        seconds[name] = wall_clock(run_dir / "log.txt")
    for extra in args.fewshot:
        name, _, folder = extra.partition("=")
        stages.append((name, "fewshot", read_summary(Path(folder))))
        seconds[name] = wall_clock(Path(folder) / "log.txt")
    distill = next((s for _, st, s in stages if st == "distill"), {})
    distill = distill.get("quality") or distill  # a pipeline's results.json nests it or not
    by_method = {r["method"]: r for r in distill.get("rows") or []}
    assign = distill.get("class_assignment") or {}
    values = {f"{n}_time": minutes(s) for n, s in seconds.items()}
    values.update(
        saliency=pair(by_method.get("colour saliency (no learning)")),
        weak=pair(by_method.get("attention + refine")),
        random=pair(by_method.get("random-init ViT + refine")),
        assign_prototype=accuracy(assign.get("prototype")),
        assign_first_label=accuracy(assign.get("first_label")),
    )
    for n in (10, 50, 200):
        values[f"enhancer_{n}"] = pair(by_method.get(f"+ enhancer ({n} GT)"))
    columns = ["comparison", "measured (%)", "against (%)", "verdict"]
    qcols = ["method", "GT masks used", "mIoU", "FB-IoU"]
    commands = [
        "PYTHONPATH=. .venv/bin/python -m launch pipeline --config "
        f"{args.config} --executor local --output-dir {args.run}"
    ]
    for extra in args.fewshot:
        folder = extra.partition("=")[2]
        fold = (read_summary(Path(folder)).get("setting") or {}).get("fold")
        commands.append(
            "PYTHONPATH=. .venv/bin/python -m fewshot --config fashion_tiny "
            f"backbone={args.run}/pretrain/export pseudo_masks={args.run}/distill/pseudo_masks "
            f"fold={fold} supervision=weak --output-dir {folder}"
        )
    record_result(
        args.name,
        tables={
            "bars": {"columns": columns, "rows": bars_rows(stages, bars)},
            "distill_quality": {"columns": qcols, "rows": quality_rows(distill)},
        },
        values=values,
        command_line="\n".join(commands),
    )


if __name__ == "__main__":
    main()
