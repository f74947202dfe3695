"""The GPU-scale chain (configs/pipeline/fashion_gpu.yaml): its plan at full size, a run on the
CPU with tiny settings whose report shows the chain's bars, and the GPU checks script."""

from __future__ import annotations

import json
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from common.datasets.fashion_scenes import generate_fashion_scenes
from launch.__main__ import main
from launch.pipeline import load_pipeline_file, plan

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "configs" / "pipeline" / "fashion_gpu.yaml"
SCRIPT = REPO / "benchmarks" / "gpu_checks.sh"
FEWSHOT = ("fscs0", "fscs1")

# Per stage: what shrinks the chain to seconds on 2 CPU cores (the GPU sizes are the files').
TINY = {
    "pretrain": [
        "model.embed_dim=32",
        "model.depth=2",
        "model.num_heads=2",
        "heads.cls.out_dim=64",
        "heads.cls.hidden_dim=64",
        "heads.cls.bottleneck_dim=32",
        "heads.pixel.hidden_dim=32",
        "crops.global_size=32",
        "crops.local_size=16",
        "crops.num_local=1",
        "train.batch_size=8",
        "train.max_steps=4",
        "train.precision=fp32",
        "train.num_threads=1",
        "data.num_workers=0",
        "eval.every=0",
        "eval.attention_images=0",
    ],
    "distill": [
        "assign.max_images=40",
        "mixed.num_gt_images=10",
        "train.max_steps=4",
        "quality.max_images=12",
        "quality.gt_counts=[10]",
        "refine.method=par_variation",
        "figures.num_images=2",
    ],
    "segment": [
        "train.max_steps=4",
        "train.batch_size=8",
        "compare_gt=false",
        "figures.num_images=2",
    ],
    "probe": [
        "data.image_size=32",
        "logreg.shots=[1]",
        "logreg.num_splits=1",
        "multilabel.percent=50.0",
        "train.max_steps=5",
        "threads=1",
    ],
    "fewshot": [
        "data.image_size=32",
        "data.val_fraction=0.5",
        "head.layers=[0, 1]",
        "head.pool_sizes=[2, 2]",
        "head.channels=[16, 16]",
        "head.attn_heads=2",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.eval_every=4",
        "episodes.val_episodes=8",
        "episodes.test_episodes=4",
        "eval.visualize=0",
        "threads=1",
    ],
}


@pytest.fixture(scope="module")
def mosaic_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mosaic-background FashionScenes set, as the GPU chain's scenes are made."""
    out = tmp_path_factory.mktemp("mosaic")
    return generate_fashion_scenes(
        out, size=64, n_train=120, n_test=60, workers=1, progress=False, background="mosaic"
    )


def test_full_size_plan_is_the_gpu_chain(tmp_path: Path) -> None:
    data = load_pipeline_file(PIPELINE)
    planned = {p.name: p for p in plan(data, tmp_path / "pipe")}
    assert list(planned) == ["pretrain", "distill", "segment", "probe", *FEWSHOT]
    pre = planned["pretrain"].cfg
    assert (pre.model.embed_dim, pre.model.depth, pre.model.num_heads) == (384, 12, 6)
    assert (pre.model.patch_size, pre.crops.global_size) == (8, 64)
    assert pre.train.precision == "bf16" and pre.heads.cls.use_bn
    roots = {name: p.cfg.data.root for name, p in planned.items()}
    assert set(roots.values()) == {"data/fashion_scenes_mosaic"}, roots
    assert [planned[n].cfg.fold for n in FEWSHOT] == [0, 1]
    assert all(planned[n].cfg.supervision == "weak" for n in FEWSHOT)
    assert planned["segment"].cfg.pseudo_masks.endswith("distill/pseudo_masks/weak")
    assert not planned["segment"].cfg.model.freeze_backbone
    assert planned["segment"].cfg.model.backbone_lr_scale == 0.1
    assert data["bars"] == [
        "weak_beats_saliency",
        "weak_beats_random",
        "heads_beat_random_head",
        "segment_beats_pseudo",
    ]


def _overrides(root: Path) -> list[str]:
    out = []
    for name in ("pretrain", "distill", "segment", "probe", *FEWSHOT):
        keys = TINY["fewshot" if name in FEWSHOT else name] + [f"data.root={root}"]
        out += [f"{name}.{key}" for key in keys]
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def test_tiny_chain_on_cpu_reports_the_bars(
    mosaic_scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "gpu_chain"
    args = ["pipeline", "--config", str(PIPELINE), "--executor", "inline", "--output-dir", str(out)]
    assert main([*args, *_overrides(mosaic_scenes)]) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ")]

    def row(check: str) -> list[str]:
        found = [r for r in rows if r.startswith(f"| {check}")]
        assert len(found) == 1, (check, rows)
        return [cell.strip() for cell in found[0].strip("|").split("|")]

    distill = json.loads((out / "distill" / "results.json").read_text())
    quality = {r["method"]: r for r in distill["quality"]["rows"]}
    weak = quality["attention + refine"]
    for check, other in (
        ("weak pseudo-masks vs colour saliency", "colour saliency (no learning)"),
        ("weak pseudo-masks vs random-init backbone", "random-init ViT + refine"),
    ):
        cells = row(check)
        ref = quality[other]
        assert cells[1] == f"{_pct(weak['miou'])} / {_pct(weak['fb_iou'])} mIoU / FB-IoU"
        assert cells[2] == f"{_pct(ref['miou'])} / {_pct(ref['fb_iou'])}"
        beats = weak["miou"] > ref["miou"] and weak["fb_iou"] > ref["fb_iou"]
        assert cells[3] == ("bar: **met**" if beats else "bar: **not met**")
    for fold, name in enumerate(FEWSHOT):
        cells = row(f"{name} (fold {fold}): FS-CS head vs random-backbone head")
        test = json.loads((out / name / "results.json").read_text())["test"]
        head = [_pct(test[w]["head"][m]) for w in ("1way", "2way") for m in ("exact_ratio", "miou")]
        assert cells[1] == " / ".join(head)
        assert cells[3].startswith("bar: **")
        prototype = row(f"{name} (fold {fold}): FS-CS head vs prototype baseline")
        assert prototype[3].startswith("reference: ")
    segment = row("WSSS decoder (val) vs its pseudo-masks (train)")
    assert segment[3].startswith("bar: **")
    assert row("enhancer (10 GT) vs weak pseudo-masks")[3].startswith("reference: ")
    assert "Positive controls (recorded, not re-measured)" in report
    assert "so the weak pseudo-masks must beat it" in report  # saliency is a bar here
    assert "| weak pseudo-masks vs colour saliency |" in printed


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_gpu_checks_commands_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Every command of the GPU script parses its arguments: each runs here with `--help`
    last, so a wrong choice or type fails before the help exits (bash -n checks the script)."""
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path / "out"), "PY": sys.executable}
    listed = subprocess.run(
        ["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(listed) == 5, listed
    assert "--device cuda" in listed[0] and "pipeline" in listed[-1]
    monkeypatch.chdir(REPO)
    for line in listed:
        python, *cmd = shlex.split(line)
        assert python == sys.executable
        module = cmd[1] if cmd[0] == "-m" else None
        args = cmd[2:] if module else cmd[1:]
        monkeypatch.setattr(sys, "argv", [module or cmd[0], *args, "--help"])
        with pytest.raises(SystemExit) as done:
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(REPO / cmd[0]), run_name="__main__")
        assert done.value.code in (0, None), line
        assert "usage" in capsys.readouterr().out, line
    usage = subprocess.run(["bash", str(SCRIPT), "nonsense"], env=env, capture_output=True)
    assert usage.returncode == 2
