"""MSN's step as published: its schedules at named steps, token dropping, its position rule,
its loss written out as MSN's code computes it, per-crop-size batch norm, shared prototypes,
and the prototypes' weight-decay and clipping rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.backbone import resample_pos, trained_pos_interp
from common.config import ConfigError, load_config
from common.rundir import RunDir
from pretrain.collapse import memax_term
from pretrain.losses.msn import MSNLoss
from pretrain.masking import token_keep
from pretrain.model import MetaArch, encode_tokens
from pretrain.schedules import build_schedules
from pretrain.train import Trainer

# Printed by MSN's own WarmupCosineSchedule, CosineWDSchedule and momentum generator for 6
# epochs of 3 steps, warm-up 2 epochs, start_lr 2e-4, lr 5e-3, final_lr 1e-6, weight decay
# 0.04 -> 0.4, momentum 0.996 -> 1 (the values each step uses).
OFFICIAL_LR = [0.001, 0.0018, 0.0026, 0.0034, 0.0042, 0.005, 0.00495197, 0.00480974]
OFFICIAL_LR_LAST = 0.000733087
OFFICIAL_WD = [0.0418321, 0.0472913, 0.0562662, 0.0685744, 0.0839651, 0.102125, 0.122685]
OFFICIAL_WD_LAST = 0.371426
OFFICIAL_MOMENTUM = [0.996, 0.996178, 0.996356, 0.996533]
OFFICIAL_MOMENTUM_LAST = 0.999022


def test_msn_schedules_equal_the_official_values_at_every_named_step():
    cfg = load_config(
        "pretrain",
        "msn",
        [
            "train.epochs=6",
            "train.warmup_epochs=2",
            "train.lr=0.32",  # 0.005 at a global batch of 4
            "train.start_lr=0.0128",  # 2e-4 at 4
            "train.min_lr=1e-6",
        ],
    )
    s = build_schedules(cfg.train, cfg.loss, steps_per_epoch=3, global_batch=4)
    lr = [s.at(i)["lr"] for i in range(18)]
    wd = [s.at(i)["wd"] for i in range(18)]
    momentum = [s.at(i)["momentum"] for i in range(18)]
    assert lr[:8] == pytest.approx(OFFICIAL_LR, rel=1e-5)
    assert lr[-1] == pytest.approx(OFFICIAL_LR_LAST, rel=1e-5)
    assert wd[:7] == pytest.approx(OFFICIAL_WD, rel=1e-5)
    assert wd[-1] == pytest.approx(OFFICIAL_WD_LAST, rel=1e-5)
    assert momentum[:4] == pytest.approx(OFFICIAL_MOMENTUM, rel=1e-6)
    assert momentum[-1] == pytest.approx(OFFICIAL_MOMENTUM_LAST, rel=1e-6)
    # The horizons are 1.25x the run: it ends before the cosines' end values.
    assert lr[-1] > 1e-6 and wd[-1] < 0.4 and momentum[-1] < 1.0


def test_token_keep_is_one_permutation_per_step_shared_by_every_process():
    keep = token_keep(196, 0.15, seed=0, step=7)
    assert len(keep) == math.floor(196 * 0.85) == 166
    assert len(set(keep.tolist())) == 166 and int(keep.max()) < 196
    assert torch.equal(keep, token_keep(196, 0.15, seed=0, step=7))  # any rank, a resumed run
    assert not torch.equal(keep, token_keep(196, 0.15, seed=0, step=8))


def test_dropped_tokens_leave_the_kept_ones_with_their_positions(tiny_config):
    model = MetaArch(tiny_config("msn", "crops.global_size=32", "model.depth=0"))
    backbone = model.student.backbone
    images = torch.randn(2, 3, 32, 32)
    keep = torch.tensor([5, 0, 11, 3])
    with torch.no_grad():
        full = encode_tokens(backbone, images, pos_interp="msn")
        dropped = encode_tokens(backbone, images, pos_interp="msn", keep=keep)
    # Without blocks every token is normalised on its own: the kept ones are unchanged.
    torch.testing.assert_close(dropped, torch.cat([full[:, :1], full[:, 1 + keep]], dim=1))


@pytest.mark.parametrize("old,new", [(14, 6), (4, 2), (16, 7)])
def test_msn_positions_follow_msns_scale_factor(old, new):
    grid = torch.randn(1, old * old, 5, generator=torch.Generator().manual_seed(old))
    got = resample_pos(grid, (old, old), (new, new), "msn")
    # MSN's interpolate_pos_encoding: bicubic by scale factor sqrt(npatch / N), no antialias.
    image = grid.reshape(1, old, old, 5).permute(0, 3, 1, 2)
    scale = math.sqrt(new * new / (old * old))
    want = F.interpolate(image, scale_factor=scale, mode="bicubic").permute(0, 2, 3, 1)
    torch.testing.assert_close(got, want.reshape(1, new * new, 5), rtol=0, atol=1e-6)
    assert (got - resample_pos(grid, (old, old), (new, new), "dino")).abs().max() > 1e-3
    assert trained_pos_interp({"meta": {"source_format": "MSN checkpoint (target_encoder)"}}) == (
        "msn"
    )


def _official_msn(anchor, target, prototypes, views, tau, T, smoothing, iters=3):
    """MSN's loss as src/losses.py computes it: one-hot prototype labels smoothed, soft nearest
    neighbours, sharpening, distributed_sinkhorn (one process), log(p ** -t), ME-MAX."""
    k = prototypes.shape[0]
    labels = torch.full((k, k), smoothing / k)
    labels += torch.eye(k) * (1 - smoothing)

    def snn(q):
        q, s = F.normalize(q), F.normalize(prototypes)
        return torch.softmax(q @ s.T / tau, dim=1) @ labels

    probs = snn(anchor)
    with torch.no_grad():
        t = snn(target) ** (1.0 / T)
        t /= t.sum(dim=1, keepdim=True)
        q = t.T
        q /= q.sum()
        for _ in range(iters):
            q /= q.sum(dim=1, keepdim=True)
            q /= k
            q /= q.sum(dim=0, keepdim=True)
            q /= q.shape[1]
        targets = torch.cat([(q * q.shape[1]).T] * views)
    ce = torch.mean(torch.sum(torch.log(probs ** (-targets)), dim=1))
    avg = probs.mean(dim=0)
    memax = -torch.sum(torch.log(avg ** (-avg))) + math.log(k)
    return ce, memax


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_msn_loss_equals_msns_own_formulas(smoothing):
    g = torch.Generator().manual_seed(3)
    b, views, dim, k = 6, 3, 8, 16
    anchor = torch.randn(views * b, dim, generator=g)
    target = torch.randn(b, dim, generator=g)
    prototypes = torch.rand(k, dim, generator=g) - 0.5
    want_ce, want_memax = _official_msn(anchor, target, prototypes, views, 0.1, 0.25, smoothing)
    loss = MSNLoss(temp=0.1, sharpen=0.25, smoothing=smoothing, sinkhorn_iters=3)
    unit = F.normalize(prototypes)
    probs = loss.probs(F.normalize(anchor) @ unit.T)
    targets = loss.targets(F.normalize(target) @ unit.T)
    torch.testing.assert_close(loss(probs, targets), want_ce, rtol=1e-5, atol=0)
    torch.testing.assert_close(memax_term(probs), want_memax, rtol=1e-4, atol=1e-6)


def _batch(cfg, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = cfg.crops
    grid = c.global_size // cfg.model.patch_size
    return {
        "global_crops": torch.randn(2, b, 3, c.global_size, c.global_size, generator=g),
        "local_crops": torch.randn(c.num_local, b, 3, c.local_size, c.local_size, generator=g),
        "masks": torch.zeros(2, b, grid, grid, dtype=torch.bool),
        "keep": torch.tensor([2, 0, 1]),
    }


def test_batch_norm_per_crop_size_and_prototypes_shared_with_the_teacher(tiny_config):
    cfg = tiny_config("msn")
    model = MetaArch(cfg)
    batch = _batch(cfg)
    z = model.teacher.cls_head.bottleneck(
        model.teacher.summary(model.teacher.encode(batch["global_crops"][0]))
    )
    msn = {"keep": batch["keep"], "teacher_bottleneck": z}
    out = model.student(
        batch["global_crops"][1], None, batch["local_crops"].flatten(0, 1), False, msn=msn
    )
    other_locals = batch["local_crops"].flatten(0, 1) * 3 + 1
    again = model.student(batch["global_crops"][1], None, other_locals, False, msn=msn)
    b = batch["global_crops"].shape[1]
    # The global crop's head normalises with its own batch only (MSN: one head call per size).
    torch.testing.assert_close(out["cls_logits"][:b], again["cls_logits"][:b])
    assert not torch.allclose(out["cls_logits"][b:], again["cls_logits"][b:])
    # The targets score the teacher's vectors against the student's prototypes: the
    # teacher's copy of the last layer plays no part.
    with torch.no_grad():
        before, _ = model(batch, teacher_temp=0.04)
        model.teacher.cls_head.last_layer.parametrizations.weight.original1.mul_(-1)
        unchanged, _ = model(batch, teacher_temp=0.04)
        model.student.cls_head.last_layer.parametrizations.weight.original1.add_(1.0)
        changed, stats = model(batch, teacher_temp=0.04)
    assert float(unchanged) == float(before)
    assert float(changed) != pytest.approx(float(before))
    assert {k for k in stats if k.startswith("loss_")} == {"loss_msn", "loss_memax"}


def test_prototypes_are_neither_decayed_nor_clipped(tiny_config, tmp_path):
    cfg = tiny_config("msn", "train.clip_grad=1e-4")
    trainer = Trainer(cfg, RunDir(tmp_path / "run"))
    prototypes = trainer.model.student.cls_head.last_layer.parametrizations.weight.original1
    decayed = [p for g in trainer.optimizer.param_groups if g["apply_wd"] for p in g["params"]]
    assert all(p is not prototypes for p in decayed)
    assert any(p is trainer.model.student.cls_head.mlp[0].weight for p in decayed)
    batch = {k: v for k, v in _batch(cfg, b=8).items() if k != "keep"}
    captured = {}
    original = torch.optim.AdamW.step

    def capture(opt, *a, **k):
        captured["proto"] = float(prototypes.grad.norm())
        captured["encoder"] = float(trainer.model.student.cls_head.mlp[0].weight.grad.norm())
        return original(opt, *a, **k)

    torch.optim.AdamW.step = capture
    try:
        trainer.train_step(batch)
    finally:
        torch.optim.AdamW.step = original
    # Clipped at 1e-4 by the global norm: the encoder's gradients shrink, the prototypes' not.
    assert captured["encoder"] <= 1e-4 + 1e-9
    assert captured["proto"] > 1e-3


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss.dino.weight=1", "loss.msn runs alone: set loss.dino.weight=0"),
        ("masking.share=0.5", "set masking.share=0"),
        ("heads.cls.norm_last_layer=false", "heads.cls.norm_last_layer=true"),
        ("loss.msn.token_drop=1.0", "token_drop must be in"),
    ],
)
def test_msn_configuration_mistakes_are_one_line(tiny_config, override, message):
    with pytest.raises(ConfigError, match=message):
        MetaArch(tiny_config("msn", override))


def test_msn_preset_is_the_readme_recipe():
    cfg = load_config("pretrain", "msn")
    assert cfg.heads.cls.out_dim == 1024 and cfg.heads.cls.use_bn
    assert cfg.loss.msn.weight == 1 and cfg.loss.dino.weight == 0
    assert (cfg.loss.student_temp, cfg.loss.msn.sharpen, cfg.loss.msn.token_drop) == (
        0.1,
        0.25,
        0.15,
    )
    # lr 1e-3 and start_lr 2e-4 at MSN's 16 x 64 images.
    assert np.isclose(cfg.train.lr * 1024 / 256, 1e-3)
    assert np.isclose(cfg.train.start_lr * 1024 / 256, 2e-4)
    assert (cfg.train.clip, cfg.train.schedule, cfg.model.pos_interp) == ("global", "msn", "msn")
