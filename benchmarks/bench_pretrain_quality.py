"""Quality of pretrained features on FashionScenes single-object scenes, against baselines.

For each exported backbone (a pretraining run directory or export folder) and two baselines
measured in the same process (raw pixels at the model's input size; a randomly initialised
ViT with the same kwargs), reports logistic-regression and 1-NN accuracy with 1/2/5
labelled train scenes per class (mean ± std over seeds), and 20-NN accuracy with every
single-object train scene as the bank. Queries: every single-object val (test) scene.

    python benchmarks/bench_pretrain_quality.py --data data/fashion_scenes \\
        --runs runs/pt_dino runs/pt_maskcluster --seeds 5 --out /tmp/quality.md

``--variants "NAME=k=v k=v" ...`` (overrides separated by spaces, so list values such as
``crops.color_jitter=[0.4,0.4,0.8,0.5]`` stay whole) first trains each variant of
``--base-config`` (fashion_tiny) for ``--train-steps`` steps into ``--work/NAME`` (wall-clock
recorded) and adds it to the runs; a failing variant stops the benchmark with its error.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.record import record_printed
from common.backbone import build_backbone, load_backbone
from pretrain.probe import extract_features, knn_predict, lowshot_accuracy, single_object_images

log = logging.getLogger("bench_pretrain_quality")
SHOTS = (1, 2, 5)


def pixel_features(images: torch.Tensor, size: int) -> np.ndarray:
    x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True).flatten(1)
    x = x - x.mean(dim=1, keepdim=True)
    return F.normalize(x, dim=-1).numpy()


def evaluate(name, train_f, train_y, test_f, test_y, seeds: int) -> dict:
    row: dict = {"name": name}
    for shots in SHOTS:
        res = [lowshot_accuracy(train_f, train_y, test_f, test_y, shots, s) for s in range(seeds)]
        for key in ("logreg", "knn"):
            vals = np.array([r[key] for r in res]) * 100
            row[f"{key}_{shots}"] = (float(vals.mean()), float(vals.std()))
    full = knn_predict(train_f, train_y, test_f, k=20, temperature=0.07)
    row["knn20_all"] = float((full == test_y).mean() * 100)
    return row


def run_name(path: Path) -> str:
    summary = path / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        return f"{path.name} ({s['train_seconds'] / 60:.1f} min, {s['steps']} steps)"
    return path.name


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/fashion_scenes", help="FashionScenes root")
    parser.add_argument("--runs", nargs="*", default=[], help="run dirs or export folders")
    parser.add_argument("--variants", nargs="*", default=[], help='"NAME=k=v k=v" to train first')
    parser.add_argument("--base-config", default="fashion_tiny", help="config the variants modify")
    parser.add_argument("--train-steps", type=int, default=100, help="steps per variant")
    parser.add_argument("--work", default="runs/bench_pretrain", help="variant run directories")
    parser.add_argument("--seeds", type=int, default=5, help="seeded low-shot splits per setting")
    parser.add_argument("--pooling", default="cls", choices=["cls", "avg", "cls_avg"])
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--record", default=None, help="record_result NAME for the table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    runs = list(args.runs)
    for spec in args.variants:
        name, _, overrides = spec.partition("=")
        out = Path(args.work) / name
        cmd = [
            sys.executable,
            "-m",
            "pretrain",
            "--config",
            args.base_config,
            "--output-dir",
            str(out),
            "--force",
            f"train.max_steps={args.train_steps}",
            "eval.every=0",
            f"data.root={args.data}",
            *shlex.split(overrides),
        ]
        log.info("training variant %s: %s", name, " ".join(cmd[2:]))
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            sys.exit(f"variant {name!r} failed (exit {done.returncode}):\n{tail}")
        runs.append(str(out))
    if not runs:
        parser.error("give --runs and/or --variants")

    train_x, train_y = single_object_images(args.data, "train")
    test_x, test_y = single_object_images(args.data, "val")
    log.info("%d labelled train / %d test single-object scenes", len(train_y), len(test_y))
    rows = []
    first, info = load_backbone(runs[0])
    size = int(info["timm_kwargs"]["img_size"])
    rows.append(
        evaluate(
            f"raw pixels ({size}px)",
            pixel_features(train_x, size),
            train_y,
            pixel_features(test_x, size),
            test_y,
            args.seeds,
        )
    )
    random_vit = build_backbone(info["timm_kwargs"]).eval()
    rows.append(
        evaluate(
            "random-init ViT (same kwargs as the first run)",
            extract_features(random_vit, train_x, size, args.pooling),
            train_y,
            extract_features(random_vit, test_x, size, args.pooling),
            test_y,
            args.seeds,
        )
    )
    for run in runs:
        model, info = load_backbone(run)
        size = int(info["timm_kwargs"]["img_size"])
        rows.append(
            evaluate(
                run_name(Path(run)),
                extract_features(model, train_x, size, args.pooling),
                train_y,
                extract_features(model, test_x, size, args.pooling),
                test_y,
                args.seeds,
            )
        )
    table = markdown(rows, args.seeds, len(train_y), len(test_y), args.pooling)
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    if args.record:
        from benchmarks.record import record_result

        record_result(args.record, tables={"quality": as_table(rows)})
    return rows


def as_table(rows: list[dict]) -> dict:
    """The rows as a results table: mean accuracies (%) rounded to one decimal."""
    columns = ["features"] + [f"logreg {s}-shot" for s in SHOTS]
    columns += [f"1-NN {s}-shot" for s in SHOTS] + ["20-NN all labels"]
    out = []
    for r in rows:
        cells = [r["name"]] + [round(r[f"logreg_{s}"][0], 1) for s in SHOTS]
        cells += [round(r[f"knn_{s}"][0], 1) for s in SHOTS] + [round(r["knn20_all"], 1)]
        out.append(cells)
    return {"columns": columns, "rows": out}


def markdown(rows: list[dict], seeds: int, n_train: int, n_test: int, pooling: str) -> str:
    head = ["features"] + [f"logreg {s}-shot" for s in SHOTS] + [f"1-NN {s}-shot" for s in SHOTS]
    head.append("20-NN all labels")
    lines = [
        f"Accuracy (%) on {n_test} single-object test scenes; shots drawn from {n_train} "
        f"single-object train scenes, mean ± std over {seeds} seeds; features: {pooling} token.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["name"]]
        cells += [f"{r[f'logreg_{s}'][0]:.1f} ± {r[f'logreg_{s}'][1]:.1f}" for s in SHOTS]
        cells += [f"{r[f'knn_{s}'][0]:.1f} ± {r[f'knn_{s}'][1]:.1f}" for s in SHOTS]
        cells.append(f"{r['knn20_all']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def margins(rows: list[dict]) -> dict[str, str]:
    """The first run's lead over raw pixels and over the random ViT, lowest-highest over the
    low-shot columns (logistic regression and 1-NN at every shot count), in points."""
    if len(rows) < 3:
        return {}
    run = rows[2]
    cells = [f"{m}_{s}" for m in ("logreg", "knn") for s in SHOTS]
    out = {}
    for base, key in ((rows[0], "margin_over_raw_pixels"), (rows[1], "margin_over_random_vit")):
        diffs = [run[c][0] - base[c][0] for c in cells]
        out[key] = f"{min(diffs):.1f} to {max(diffs):.1f}"
    return out


if __name__ == "__main__":
    with record_printed(
        "pretrain_quality_variants" if "--variants" in sys.argv else "pretrain_quality",
        ["variants"] if "--variants" in sys.argv else ["fashion_tiny"],
    ) as values:
        values.update(margins(main()))
