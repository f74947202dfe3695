"""``python -m fewshot`` end to end on the tiny FashionScenes fixture, and its bad inputs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from common.cli import stage_main
from common.datasets.voc import read_split_ids
from fewshot.stage import run

TINY = [
    "data.image_size=32",
    "data.val_fraction=0.3",
    "head.channels=[16, 32]",
    "head.pool_sizes=[2, 2]",
    "head.attn_heads=2",
    "train.max_steps=4",
    "train.batch_size=4",
    "train.eval_every=2",
    "train.ckpt_every=2",
    "episodes.val_episodes=6",
    "episodes.test_episodes=6",
    "eval.visualize=2",
    "threads=1",
]


def _argv(root: Path, export: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--output-dir",
        str(out),
        f"data.root={root}",
        f"backbone={export}",
        f"data.cache_dir={out.parent / 'cache'}",
        *TINY,
        *extra,
    ]


@pytest.fixture(scope="module")
def pseudo_masks(fashion_scenes_root, tmp_path_factory) -> Path:
    """A distill-like run dir whose weak pseudo-masks are the ground truth of the train split."""
    run_dir = tmp_path_factory.mktemp("distill_run")
    weak = run_dir / "pseudo_masks" / "weak"
    weak.mkdir(parents=True)
    for name in read_split_ids(fashion_scenes_root, "train"):
        shutil.copy(fashion_scenes_root / "SegmentationClassAug" / f"{name}.png", weak)
    return run_dir


def test_fscs_cli_end_to_end(fashion_scenes_root, tiny_export, pseudo_masks, tmp_path):
    out = tmp_path / "run"
    argv = _argv(fashion_scenes_root, tiny_export, out, "way=2", "supervision=weak")
    results = stage_main("fewshot", run, "test", argv + [f"pseudo_masks={pseudo_masks}"])
    assert set(results["test"]) == {"1way", "2way"}
    for way in ("1way", "2way"):
        assert set(results["test"][way]) == {"head", "random_head", "prototype"}
        for m in results["test"][way].values():
            assert 0.0 <= m["exact_ratio"] <= 1.0 and 0.0 <= m["miou"] <= 1.0
    assert results["setting"]["test_classes"] == [1, 2, 3, 4, 5]
    assert json.loads((out / "results.json").read_text())["setting"]["supervision"] == "weak"
    assert (out / "figures" / "episodes_2way.png").stat().st_size > 1000
    assert (out / "checkpoints" / "head" / "best.pt").is_file()
    # Re-running the same command resumes (nothing left to train) and gives the same numbers.
    again = stage_main("fewshot", run, "test", argv + [f"pseudo_masks={pseudo_masks}"])
    assert again["test"] == results["test"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["fold=2"], "fold 2 is out of range"),
        (["way=6"], "way=6 but fold 0"),
        (["shot=40"], "shot=40 needs 1 classes with at least 41 images each"),
        (["supervision=weak"], "needs pseudo-masks"),
        (["supervision=mixed", "pseudo_masks=/nonexistent"], "no 'mixed' pseudo-masks"),
        (["backbone=/nonexistent"], "backbone /nonexistent not found"),
    ],
)
def test_fscs_bad_settings_exit_with_a_message(
    fashion_scenes_root, tiny_export, tmp_path, caplog, extra, message
):
    argv = _argv(fashion_scenes_root, tiny_export, tmp_path / "run", *extra)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exc:
        stage_main("fewshot", run, "test", argv)
    assert exc.value.code == 2
    assert message in caplog.text


def test_fscs_missing_pseudo_masks_are_named(
    fashion_scenes_root, tiny_export, pseudo_masks, tmp_path, caplog
):
    partial = tmp_path / "partial"
    shutil.copytree(pseudo_masks / "pseudo_masks", partial)
    gone = sorted((partial / "weak").iterdir())[:3]
    for path in gone:
        path.unlink()
    argv = _argv(fashion_scenes_root, tiny_export, tmp_path / "run", "supervision=weak") + [
        f"pseudo_masks={partial}"
    ]
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit):
        stage_main("fewshot", run, "test", argv)
    assert "3 of 120 images (pseudo-mask) have no mask" in caplog.text
    assert gone[0].name in caplog.text
