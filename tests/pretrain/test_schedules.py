"""Per-iteration schedules: warm-up, cosine end points, lengths."""

import numpy as np
import pytest

from common.config import load_config
from pretrain.schedules import build_schedules, cosine_schedule, warmup_then_constant


def test_cosine_with_warmup():
    s = cosine_schedule(1.0, 0.1, total_steps=20, warmup_steps=5)
    assert len(s) == 20
    assert s[0] == 0.0
    assert np.allclose(s[:5], [0.0, 0.2, 0.4, 0.6, 0.8])
    assert s[5] == pytest.approx(1.0)
    assert s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[5:]) <= 0)
    # Midpoint of the cosine part is the mean of start and end.
    mid = cosine_schedule(1.0, 0.0, total_steps=11)
    assert mid[5] == pytest.approx(0.5)


def test_warmup_longer_than_training_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        cosine_schedule(1.0, 0.0, total_steps=5, warmup_steps=6)


def test_teacher_temperature_ramp():
    t = warmup_then_constant(0.04, 0.07, total_steps=10, warmup_steps=4)
    assert np.allclose(t, [0.04, 0.0475, 0.055, 0.0625] + [0.07] * 6)


def test_build_schedules_scales_lr_with_global_batch():
    cfg = load_config("pretrain", None, ["train.epochs=3", "train.warmup_epochs=1"])
    s = build_schedules(cfg.train, cfg.loss, steps_per_epoch=10, global_batch=512)
    assert len(s) == 30
    assert s.lr.max() == pytest.approx(cfg.train.lr * 2)
    assert s.at(0)["lr"] == 0.0
    assert s.at(29)["momentum"] == pytest.approx(1.0)
    assert s.at(0)["wd"] == pytest.approx(0.04)
    assert s.at(10_000)["lr"] == s.at(29)["lr"]  # past the end: last value
