"""Per-iteration schedules: DINO's formulas (utils.cosine_scheduler) at named steps."""

import math

import numpy as np
import pytest

from common.config import load_config
from pretrain.schedules import build_schedules, cosine_schedule, per_epoch_warmup


def test_cosine_warmup_includes_its_endpoint_and_cosine_runs_over_i_over_n():
    s = cosine_schedule(1.0, 0.1, total_steps=20, warmup_steps=5)
    assert len(s) == 20
    # Warm-up: linspace(0, 1, 5) with the endpoint: step 4 already holds the peak.
    assert np.allclose(s[:5], [0.0, 0.25, 0.5, 0.75, 1.0])
    # Cosine: step 5 + t takes 0.1 + 0.45 (1 + cos(pi t / 15)) for t = 0..14.
    for t in (0, 1, 7, 14):
        assert s[5 + t] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * t / 15)))
    assert s[5] == 1.0  # the warm-up's last value repeats once
    assert s[-1] > 0.1  # one step short of the end value
    mid = cosine_schedule(1.0, 0.0, total_steps=10)
    assert mid[5] == pytest.approx(0.5)


def test_warmup_longer_than_training_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        cosine_schedule(1.0, 0.0, total_steps=5, warmup_steps=6)


def test_teacher_temperature_steps_once_per_epoch():
    t = per_epoch_warmup(0.04, 0.07, epochs=5, steps_per_epoch=3, warmup_epochs=3)
    # linspace(0.04, 0.07, 3) = 0.04, 0.055, 0.07, each held for one epoch of 3 steps.
    assert np.allclose(t, [0.04] * 3 + [0.055] * 3 + [0.07] * 9)
    # A warm-up longer than the run is cut off where the run ends.
    short = per_epoch_warmup(0.04, 0.07, epochs=2, steps_per_epoch=2, warmup_epochs=4)
    assert np.allclose(short, [0.04, 0.04, 0.05, 0.05])


def test_build_schedules_at_named_steps():
    cfg = load_config(
        "pretrain",
        None,
        ["train.epochs=3", "train.warmup_epochs=1", "loss.warmup_teacher_temp_epochs=2"],
    )
    s = build_schedules(cfg.train, cfg.loss, steps_per_epoch=10, global_batch=512)
    assert len(s) == 30
    peak = cfg.train.lr * 2  # linear scaling: 512 / 256
    assert s.at(0)["lr"] == 0.0
    assert s.at(9)["lr"] == pytest.approx(peak)  # end of the warm-up: the peak
    assert s.at(10)["lr"] == pytest.approx(peak)
    assert s.at(20)["lr"] == pytest.approx(1e-6 + (peak - 1e-6) * (1 + math.cos(math.pi / 2)) / 2)
    assert s.at(0)["wd"] == pytest.approx(0.04)
    assert s.at(15)["wd"] == pytest.approx(0.4 - 0.36 * (1 + math.cos(math.pi / 2)) / 2)
    assert s.at(29)["momentum"] == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi * 29 / 30)) / 2)
    assert [s.at(i)["teacher_temp"] for i in (0, 9, 10, 29)] == pytest.approx(
        [0.04, 0.04, 0.07, 0.07]
    )
    assert s.at(10_000)["lr"] == s.at(29)["lr"]  # past the end: last value


def test_patch_temperature_has_its_own_schedule_and_start_epoch():
    cfg = load_config(
        "pretrain",
        None,
        [
            "train.epochs=4",
            "train.warmup_epochs=0",
            "loss.warmup_teacher_temp_epochs=2",
            "loss.ibot.warmup_teacher_temp=0.02",
            "loss.ibot.teacher_temp=0.05",
            "loss.ibot.start_epoch=1",
        ],
    )
    s = build_schedules(cfg.train, cfg.loss, steps_per_epoch=2, global_batch=256)
    # Held at 0.02 through epoch 0, then linspace(0.02, 0.05, 2) over epochs 1-2, then 0.05.
    assert s.patch_temp.tolist() == pytest.approx([0.02] * 4 + [0.05] * 4)
    assert s.teacher_temp.tolist() == pytest.approx([0.04] * 2 + [0.07] * 6)
