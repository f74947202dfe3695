import dataclasses
import inspect

import pytest
import torch

from common.checkpoint import CheckpointError
from common.config import load_config
from common.preemption import Preempted, clear_stop, request_stop
from distill.enhancer import Enhancer, EnhancerTrainConfig, _loss, train_enhancer

# EnhancerTrainConfig fields read from the config's `train` section; the others from `enhancer`.
TRAIN_KEYS = ("max_steps", "batch_size")


def _cfg(**overrides) -> EnhancerTrainConfig:
    """The defaults of configs/distill/default.yaml, with test-sized overrides."""
    cfg = load_config("distill")
    values = {
        f.name: (cfg.train if f.name in TRAIN_KEYS else cfg.enhancer)[f.name]
        for f in dataclasses.fields(EnhancerTrainConfig)
    }
    return EnhancerTrainConfig(**{**values, **overrides})


def _data(n: int = 24, seed: int = 0):
    """Inputs whose head channel shows the true square; the coarse mask is shifted off it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, 16, 16, generator=g) * 0.1
    y = torch.zeros(n, 32, 32, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(2, 9, (2,), generator=g).tolist()
        x[i, 3, r : r + 6, c : c + 6] = 1.0
        x[i, 5] = 0.2
        x[i, 5, r : r + 6, max(c - 3, 0) : c + 3] = 0.8
        y[i, 2 * r : 2 * r + 12, 2 * c : 2 * c + 12] = 1
    return x, y


def test_untrained_enhancer_reproduces_the_coarse_mask():
    x, _ = _data(2)
    out = Enhancer(6, 8, 4)(x)
    assert torch.allclose(out.sigmoid(), x[:, -1].clamp(1e-3, 1 - 1e-3), atol=1e-5)


def test_training_lowers_the_loss_and_beats_the_coarse_mask():
    x, y = _data()
    cfg = _cfg(max_steps=40, batch_size=8, lr=1e-2, eval_every=20, patience=10, channels=8)
    torch.manual_seed(0)
    before = _loss(Enhancer(6, cfg.channels, cfg.depth), x, y).item()
    model, summary = train_enhancer(x, y, cfg, seed=0)
    assert _loss(model, x, y).item() < 0.8 * before
    assert summary["val_fg_iou_best"] > summary["val_fg_iou_initial"]


def test_resume_after_preemption_gives_the_uninterrupted_result(tmp_path):
    x, y = _data()
    cfg = _cfg(max_steps=20, batch_size=4, lr=1e-2, eval_every=10, patience=10, channels=8)
    torch.manual_seed(0)
    ref, _ = train_enhancer(x, y, cfg, tmp_path / "a.pt", seed=0)
    # Stop after the first steps (the flag is polled before each step), then resume.
    short = dataclasses.replace(cfg, max_steps=10)
    torch.manual_seed(0)
    train_enhancer(x, y, short, tmp_path / "b.pt", seed=0)
    request_stop("test")
    try:
        with pytest.raises(Preempted):
            train_enhancer(x, y, cfg, tmp_path / "b.pt", seed=0)
    finally:
        clear_stop()
    resumed, summary = train_enhancer(x, y, cfg, tmp_path / "b.pt", seed=0)
    assert summary["steps"] == 20
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b)


def test_zero_gt_images_is_a_clear_error():
    with pytest.raises(ValueError, match="0 images with masks"):
        train_enhancer(torch.zeros(0, 6, 8, 8), torch.zeros(0, 8, 8), _cfg())


def test_resume_with_other_head_signs_is_refused(tmp_path):
    x, y = _data()
    cfg = _cfg(max_steps=4, batch_size=4, eval_every=2, channels=8)
    ckpt = tmp_path / "e.pt"
    train_enhancer(x, y, cfg, ckpt, seed=0, context={"head_signs": [1.0, -1.0]})
    longer = dataclasses.replace(cfg, max_steps=6)
    with pytest.raises(
        CheckpointError, match=r"was written with context=\{'head_signs': \[1.0, -1.0\]\}"
    ):
        train_enhancer(x, y, longer, ckpt, seed=0, context={"head_signs": [1.0, 1.0]})
    _, summary = train_enhancer(x, y, longer, ckpt, seed=0, context={"head_signs": [1.0, -1.0]})
    assert summary["steps"] == 6


def test_the_yaml_is_the_only_source_of_the_enhancer_defaults():
    fields = dataclasses.fields(EnhancerTrainConfig)
    assert all(
        f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        for f in fields
    ), "a default of EnhancerTrainConfig belongs in configs/distill/default.yaml"
    params = list(inspect.signature(Enhancer).parameters.values())
    assert all(p.default is inspect.Parameter.empty for p in params)
    cfg = load_config("distill")
    for f in fields:  # each setting is a key of the section it is read from
        assert f.name in (cfg.train if f.name in TRAIN_KEYS else cfg.enhancer), f.name
    assert _cfg().channels == cfg.enhancer.channels and _cfg().max_steps == cfg.train.max_steps
