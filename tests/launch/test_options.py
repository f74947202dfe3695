"""Launch options: slurm.* keys apart from stage keys, strict, with sbatch's spelling."""

from __future__ import annotations

import pytest

from common.config import ConfigError
from launch.options import (
    format_time,
    load_launch_options,
    sbatch_parameters,
    split_overrides,
    time_minutes,
)


def test_split_keeps_slurm_keys_apart_from_stage_keys() -> None:
    launch, stage = split_overrides(["slurm.nodes=2", "train.lr=0.1", "slurm.qos=high", "seed=3"])
    assert launch == ["slurm.nodes=2", "slurm.qos=high"]
    assert stage == ["train.lr=0.1", "seed=3"]


def test_unknown_slurm_key_names_the_closest() -> None:
    with pytest.raises(ConfigError, match="slurm.partition"):
        load_launch_options((), ["slurm.partiton=gpu"])


def test_wrong_type_is_refused() -> None:
    with pytest.raises(ConfigError, match="slurm.nodes"):
        load_launch_options((), ["slurm.nodes=two"])


def test_time_stays_a_string_and_layers_apply_in_order() -> None:
    opts = load_launch_options(
        [({"nodes": 4, "time": "02:00:00"}, "pipeline"), ({"nodes": 2}, "stage")],
        ["slurm.time=01:30:00", "slurm.gpus_per_node=8"],
    ).slurm
    assert opts.time == "01:30:00"
    assert opts.nodes == 2
    assert time_minutes(opts.time, 0) == 90


@pytest.mark.parametrize(
    ("value", "minutes"), [("1-00:00:00", 1440), ("45:30", 45.5), (90, 90), ("00:00:30", 0.5)]
)
def test_time_formats(value: object, minutes: float) -> None:
    assert time_minutes(format_time(value), 0) == pytest.approx(minutes)


def test_bad_time_says_how_to_write_it() -> None:
    with pytest.raises(ConfigError, match="HH:MM:SS"):
        load_launch_options((), ["slurm.time=soon"])


def test_sbatch_parameters_one_task_per_gpu() -> None:
    opts = load_launch_options(
        (),
        [
            "slurm.nodes=2",
            "slurm.gpus_per_node=8",
            "slurm.cpus_per_task=10",
            "slurm.mem_gb=480",
            "slurm.time=48:00:00",
            "slurm.account=vision",
            "slurm.additional.reservation=demo",
        ],
    ).slurm
    params = sbatch_parameters(opts, "labelfew-pretrain")
    assert params["ntasks_per_node"] == 8
    assert params["nodes"] == 2
    assert params["mem"] == "480GB"
    assert params["time"] == 48 * 60
    assert params["account"] == "vision"
    assert params["additional_parameters"] == {"reservation": "demo"}
    assert "partition" not in params  # unset keys are left to the cluster's defaults


def test_cpu_job_runs_one_task_unless_told() -> None:
    opts = load_launch_options((), ["slurm.tasks_per_node=2"]).slurm
    assert sbatch_parameters(opts, "x")["ntasks_per_node"] == 2
    assert sbatch_parameters(load_launch_options().slurm, "x")["ntasks_per_node"] == 1
