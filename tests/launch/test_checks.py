"""Bad input is refused before anything is submitted, with a message naming the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import load_config, save_config
from launch.__main__ import main as launch_main
from launch.testing.cluster import unavailable_reason

TINY = str(Path(__file__).with_name("pretrain_tiny.yaml"))


def main(argv: list[str]) -> int | str | None:
    """The exit code of ``python -m launch argv`` (an error exits through SystemExit)."""
    try:
        return launch_main(argv)
    except SystemExit as exc:
        return exc.code


def _pipeline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(text)
    return path


def test_missing_sbatch_suggests_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    code = main(
        ["pretrain", "--config", TINY, "--executor", "slurm", "--output-dir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "sbatch" in err and "--executor local" in err
    assert not (tmp_path / "r" / "launch.json").exists()


def test_run_dir_with_another_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config("pretrain", TINY), run / "config.yaml")
    code = main(
        ["pretrain", "--config", TINY, "--executor", "local", "--output-dir", str(run), "seed=7"]
    )
    assert code == 2
    assert "different config (keys differ: seed)" in capsys.readouterr().err
    assert not (run / "launch.json").exists()


def test_stage_with_missing_backbone_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(
        [
            "distill",
            "--executor",
            "local",
            "--output-dir",
            str(tmp_path / "d"),
            f"backbone={tmp_path}/nope",
        ]
    )
    assert code == 2
    assert "backbone=" in capsys.readouterr().err


def test_pipeline_missing_artifact_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pipe = _pipeline(
        tmp_path,
        f"""
stages:
  pretrain: {{stage: pretrain, config: {TINY}}}
  distill:
    stage: distill
    overrides: {{backbone: {tmp_path}/missing/export}}
""",
    )
    code = main(["pipeline", "--config", str(pipe), "--output-dir", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2
    assert "pipeline stage 'distill': backbone=" in err and "does not exist" in err
    assert not (tmp_path / "p" / "manifest.json").exists()


def test_pipeline_reference_to_a_later_stage_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pipe = _pipeline(
        tmp_path,
        f"""
stages:
  distill: {{stage: distill, overrides: {{backbone: "${{pretrain.export}}"}}}}
  pretrain: {{stage: pretrain, config: {TINY}}}
""",
    )
    assert main(["pipeline", "--config", str(pipe), "--output-dir", str(tmp_path / "p")]) == 2
    assert "not an earlier stage" in capsys.readouterr().err


def test_pipeline_typos_name_the_closest_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pipe = _pipeline(tmp_path, f"stages:\n  pretrain: {{stage: pretrain, confg: {TINY}}}\n")
    assert main(["pipeline", "--config", str(pipe), "--output-dir", str(tmp_path / "p")]) == 2
    assert "Did you mean 'config'" in capsys.readouterr().err
    pipe = _pipeline(tmp_path, "stages:\n  pretrain: {stage: pretrian}\n")
    assert main(["pipeline", "--config", str(pipe), "--output-dir", str(tmp_path / "p")]) == 2
    assert "Did you mean pretrain" in capsys.readouterr().err


def test_unknown_stage_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["pretrain", "--config", TINY, "--output-dir", str(tmp_path / "r"), "train.lrr=1"])
    assert code == 2
    assert "train.lr" in capsys.readouterr().err


@pytest.mark.slurm
def test_partition_rejected_by_slurm_shows_sbatch_message(
    slurm_cluster: object, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert unavailable_reason() is None
    out = tmp_path / "r"
    code = main(
        [
            "pretrain",
            "--config",
            TINY,
            "--executor",
            "slurm",
            "--output-dir",
            str(out),
            "slurm.partition=nosuch",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "SLURM rejected the job" in err and "invalid partition" in err.lower()
    assert not (out / "launch.json").exists()
