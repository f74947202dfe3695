"""FS-CS quality bar on FashionScenes-5i: every fold x supervision, heads vs baselines.

Runs ``python -m fewshot --config fashion_tiny`` (in this process, one run per fold and
supervision, 2-way 1-shot: results for 1-way and 2-way) and the low-shot probes, sharing one
feature cache, then prints a markdown table with the wall-clock of each run:

    python benchmarks/bench_fewshot.py --backbone runs/pretrain/fashion_tiny \
        --pseudo-masks runs/distill/fashion_tiny --out runs/bench_fewshot
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.record import record_printed
from common.cli import run_stage
from common.config import load_config
from fewshot.probe.stage import run as probe_stage_run
from fewshot.stage import run as fscs_run

MODELS = ("head", "random_head", "prototype")


def fscs_runs(args: argparse.Namespace) -> list[dict]:
    rows = []
    for fold in args.folds:
        for sup in args.supervision:
            out = args.out / f"fscs_fold{fold}_{sup}"
            overrides = [
                f"backbone={args.backbone}",
                f"fold={fold}",
                "way=2",
                "shot=1",
                f"supervision={sup}",
                f"data.cache_dir={args.out / 'cache'}",
                f"threads={args.threads}",
                *args.overrides,
            ]
            if sup != "full":
                overrides.append(f"pseudo_masks={args.pseudo_masks}")
            cfg = load_config("fewshot", "fashion_tiny", overrides)
            start = time.perf_counter()
            res = run_stage("fewshot", fscs_run, cfg, out, force=True)
            rows.append(
                {"fold": fold, "supervision": sup, "seconds": time.perf_counter() - start, **res}
            )
    return rows


def probe_run(args: argparse.Namespace) -> dict:
    overrides = [
        f"backbone={args.backbone}",
        f"data.cache_dir={args.out / 'cache'}",
        f"threads={args.threads}",
    ]
    cfg = load_config("fewshot/probe", "fashion_tiny", overrides)
    start = time.perf_counter()
    res = run_stage("fewshot/probe", probe_stage_run, cfg, args.out / "probe", force=True)
    return {"seconds": time.perf_counter() - start, **res}


def fscs_table(rows: list[dict]) -> str:
    lines = [
        "| fold | supervision | way | model | ER % | acc % | mIoU % | FB-IoU % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        for way, by_model in r["test"].items():
            for model in MODELS:
                if model in by_model:
                    m = by_model[model]
                    lines.append(
                        f"| {r['fold']} | {r['supervision']} | {way} | {model} | "
                        f"{100 * m['exact_ratio']:.1f} | {100 * m['accuracy']:.1f} | "
                        f"{100 * m['miou']:.1f} | {100 * m['fb_iou']:.1f} |"
                    )
    lines.append("")
    lines += [f"- fold {r['fold']} {r['supervision']}: {r['seconds']:.0f} s" for r in rows]
    return "\n".join(lines)


def probe_table(res: dict) -> str:
    models = list(res["models"])
    lines = ["| probe | " + " | ".join(models) + " |", "| --- |" + " --- |" * len(models)]
    first = res["models"][models[0]]
    for setting in first["logreg"]:
        cells = [
            f"{100 * res['models'][m]['logreg'][setting]['mean']:.1f} ± "
            f"{100 * res['models'][m]['logreg'][setting]['std']:.1f}"
            for m in models
        ]
        lines.append(f"| logreg {setting} | " + " | ".join(cells) + " |")
    for share, accs in first["knn"].items():
        for k in accs:
            cells = [f"{100 * res['models'][m]['knn'][share][k]:.1f}" for m in models]
            lines.append(f"| k-NN {share} {k} | " + " | ".join(cells) + " |")
    lines.append(
        "| multi-label mAP | "
        + " | ".join(f"{100 * res['models'][m]['multilabel']['mAP']:.1f}" for m in models)
        + " |"
    )
    lines.append(
        "| patch seg mIoU | "
        + " | ".join(f"{100 * res['models'][m]['segmentation']['miou']:.1f}" for m in models)
        + " |"
    )
    lines.append(f"\nwall-clock: {res['seconds']:.0f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="pretrain run dir or export dir")
    parser.add_argument("--pseudo-masks", default=None, help="distill run dir (weak / mixed)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_fewshot"))
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--supervision", nargs="+", default=["weak", "mixed", "full"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--skip-probe", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra fewshot key=value overrides")
    args = parser.parse_args()
    rows = fscs_runs(args)
    report = ["## FS-CS (FashionScenes-5i, 1-shot)", "", fscs_table(rows)]
    if not args.skip_probe:
        report += ["", "## Low-shot probes (accuracy %)", "", probe_table(probe_run(args))]
    text = "\n".join(report)
    (args.out / "report.md").write_text(text + "\n")
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    with record_printed("fewshot", ["fscs", "probe"]):
        main()
