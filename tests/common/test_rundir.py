"""Run directory layout, config protection, metrics lines and rank-aware logging."""

import logging

import pytest
import yaml

from common.cli import run_stage
from common.config import ConfigError, load_config
from common.rundir import MetricsLogger, prepare_run_dir, read_metrics, setup_logging

DEFAULTS = {
    "stage": "toy",
    "seed": 0,
    "device": "auto",
    "data": {"root": "d", "num_workers": 1},
    "train": {"max_steps": None, "batch_size": 2},
}


@pytest.fixture()
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    (root / "toy").mkdir()
    (root / "toy" / "default.yaml").write_text(yaml.safe_dump(DEFAULTS))
    return root


def test_run_dir_layout_and_config_written(tmp_path, root):
    cfg = load_config("toy", config_root=root)
    run = prepare_run_dir(tmp_path / "run", cfg, "toy", config_root=root)
    assert load_config("toy", run.config, config_root=root) == cfg
    # Folders appear when a stage first uses them, not before.
    assert sorted(p.name for p in run.root.iterdir()) == ["config.yaml"]
    assert run.figures.is_dir() and not (run.root / "export").exists()
    assert not run.last_checkpoint.parent.exists()


def test_different_config_refused_unless_forced(tmp_path, root):
    cfg = load_config("toy", config_root=root)
    prepare_run_dir(tmp_path, cfg, "toy", config_root=root)
    changed = load_config("toy", None, ["seed=123"], config_root=root)
    with pytest.raises(ConfigError, match="seed"):
        prepare_run_dir(tmp_path, changed, "toy", config_root=root)
    prepare_run_dir(tmp_path, changed, "toy", force=True, config_root=root)
    # Changing only the step budget is a resume, not a different run.
    longer = load_config("toy", None, ["seed=123", "train.max_steps=7"], config_root=root)
    prepare_run_dir(tmp_path, longer, "toy", config_root=root)


def test_metrics_lines_have_step_and_survive_torn_line(tmp_path):
    logger = MetricsLogger(tmp_path / "metrics.jsonl")
    logger.log(1, loss=0.5)
    logger.log(2, loss=float("nan"), lr=1e-3)
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "lo')  # a crash mid-line
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["loss"] == "nan" and records[1]["lr"] == 1e-3


def test_only_rank_zero_logs_to_console(tmp_path, capsys, root):
    cfg = load_config("toy", config_root=root)
    run = prepare_run_dir(tmp_path, cfg, "toy", config_root=root)
    setup_logging(run, rank=1)
    logging.getLogger("t").info("from rank one")
    assert "from rank one" not in capsys.readouterr().err
    assert "from rank one" in (tmp_path / "log.rank1.txt").read_text()
    setup_logging(run, rank=0)
    logging.getLogger("t").info("from rank zero")
    assert "from rank zero" in capsys.readouterr().err
    assert "from rank zero" in run.log.read_text()


def _fail_after(cfg, run, write: str | None = None):
    if write:
        (run.root / write).write_text("output")
    raise ConfigError("fold=5 but the dataset has 2 folds")


def test_a_failed_command_leaves_a_new_run_dir_uncreated(tmp_path, root):
    cfg = load_config("toy", config_root=root)
    with pytest.raises(ConfigError):
        run_stage("toy", _fail_after, cfg, tmp_path / "run", config_root=root)
    assert not (tmp_path / "run").exists()


def test_a_failed_forced_command_keeps_the_old_config(tmp_path, root):
    cfg = load_config("toy", config_root=root)
    run = prepare_run_dir(tmp_path / "run", cfg, "toy", config_root=root)
    (run.checkpoints / "last.pt").write_text("weights")
    before = run.config.read_bytes()
    changed = load_config("toy", None, ["seed=5"], config_root=root)
    with pytest.raises(ConfigError):
        run_stage("toy", _fail_after, changed, run.root, force=True, config_root=root)
    assert run.config.read_bytes() == before
    assert (run.checkpoints / "last.pt").read_text() == "weights"
    # The corrected command is not refused as "a different config".
    assert run_stage("toy", lambda c, r: {"ok": 1}, cfg, run.root, config_root=root) == {"ok": 1}


def test_a_command_whose_stage_wrote_an_output_keeps_its_config(tmp_path, root):
    cfg = load_config("toy", None, ["seed=9"], config_root=root)
    with pytest.raises(ConfigError):
        run_stage(
            "toy",
            lambda c, r: _fail_after(c, r, "metrics.jsonl"),
            cfg,
            tmp_path / "run",
            config_root=root,
        )
    assert load_config("toy", tmp_path / "run" / "config.yaml", config_root=root) == cfg
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_force_logs_the_keys_it_replaced(tmp_path, root):
    cfg = load_config("toy", config_root=root)
    prepare_run_dir(tmp_path / "run", cfg, "toy", config_root=root)
    changed = load_config("toy", None, ["seed=5"], config_root=root)
    run_stage("toy", lambda c, r: {}, changed, tmp_path / "run", force=True, config_root=root)
    log_text = (tmp_path / "run" / "log.txt").read_text()
    assert "--force" in log_text and "keys differ: seed" in log_text


@pytest.mark.parametrize("stage, warned", [("toy", True), ("pretrain", False)])
def test_resuming_with_another_max_steps_warns_where_it_is_the_schedule(
    tmp_path, root, stage, warned
):
    (root / stage).mkdir(exist_ok=True)
    (root / stage / "default.yaml").write_text(yaml.safe_dump({**DEFAULTS, "stage": stage}))
    first = load_config(stage, None, ["train.max_steps=4"], config_root=root)
    run = prepare_run_dir(tmp_path / "run", first, stage, config_root=root)
    (run.checkpoints / "last.pt").write_text("weights")
    longer = load_config(stage, None, ["train.max_steps=8"], config_root=root)
    run_stage(stage, lambda c, r: {}, longer, run.root, config_root=root)
    log_text = run.log.read_text()
    assert ("train.max_steps=8 (it was 4)" in log_text) == warned
