"""The published recipes' step pieces: per-parameter clipping, DINO's position interpolation,
the cls-token init, iBOT's patch centre and head sharing, and model.init's position rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from common.backbone import add_pos_embed, resample_pos, trained_pos_interp
from common.config import ConfigError
from pretrain.clipping import clip_gradients
from pretrain.init import load_init
from pretrain.model import MetaArch, encode_tokens
from tests.fixtures.public_checkpoints import reference_vit, write


def _planted(norms: list[float]) -> list[torch.nn.Parameter]:
    params = []
    for i, n in enumerate(norms):
        p = torch.nn.Parameter(torch.zeros(3 + i))
        g = torch.randn(3 + i, generator=torch.Generator().manual_seed(i))
        p.grad = g / g.norm() * n
        params.append(p)
    return params


def test_per_param_clipping_scales_each_tensor_on_its_own():
    params = _planted([6.0, 1.0, 3.5, 0.2])
    before = [p.grad.clone() for p in params]
    total = clip_gradients(params, 3.0, "per_param")
    assert float(total) == pytest.approx(math.sqrt(36 + 1 + 3.5**2 + 0.04), rel=1e-5)
    # DINO's clip_gradients: scale by 3 / (norm + 1e-6) where that is below 1, else untouched.
    for p, g, n in zip(params, before, [6.0, 1.0, 3.5, 0.2], strict=True):
        want = g * (3.0 / (n + 1e-6)) if n > 3.0 else g
        torch.testing.assert_close(p.grad, want, rtol=1e-6, atol=0)
    assert [round(float(p.grad.norm()), 4) for p in params] == [3.0, 1.0, 3.0, 0.2]


def test_global_clipping_scales_every_tensor_alike():
    params = _planted([6.0, 1.0, 3.5, 0.2])
    total = float(clip_gradients(params, 3.0, "global"))
    for p, n in zip(params, [6.0, 1.0, 3.5, 0.2], strict=True):
        assert float(p.grad.norm()) == pytest.approx(n * 3.0 / total, rel=1e-4)
    unclipped = _planted([6.0, 1.0])
    clip_gradients(unclipped, 0.0, "per_param")  # 0 = off
    assert float(unclipped[0].grad.norm()) == pytest.approx(6.0)


def _cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _published_rule(grid: np.ndarray, out: int) -> np.ndarray:
    """DINO's rule written out: bicubic (Keys, a = -0.75, edge-clamped taps), output pixel
    ``i`` sampled at ``(i + 0.5) / s - 0.5`` with ``s = (out + 0.1) / n``, per axis."""
    n = grid.shape[0]
    s = (out + 0.1) / n
    weights = np.zeros((out, n))
    for i in range(out):
        x = (i + 0.5) / s - 0.5
        x0 = math.floor(x)
        for k in range(x0 - 1, x0 + 3):
            weights[i, min(max(k, 0), n - 1)] += _cubic(x - k)
    return np.einsum("ij,jkc,lk->ilc", weights, grid, weights)


@pytest.mark.parametrize("old,new", [(14, 6), (4, 2), (7, 3)])
def test_local_crop_positions_follow_dinos_published_rule(old, new):
    grid = torch.randn(
        old, old, 5, generator=torch.Generator().manual_seed(old), dtype=torch.float64
    )
    got = resample_pos(grid.reshape(1, old * old, 5), (old, old), (new, new))
    want = _published_rule(grid.numpy(), new).reshape(1, new * new, 5)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-10)
    # timm's antialiased resize to the size is another grid altogether.
    vit = VisionTransformer(
        img_size=16 * old,
        patch_size=16,
        embed_dim=5,
        depth=0,
        num_heads=1,
        dynamic_img_size=True,
        class_token=False,
        global_pool="avg",
    )
    vit.pos_embed.data = grid.float().reshape(1, old * old, 5)
    x = torch.zeros(1, new, new, 5)
    with torch.no_grad():
        timm_pos = add_pos_embed(vit, x, "timm")
        dino_pos = add_pos_embed(vit, x, "dino")
    np.testing.assert_allclose(dino_pos.numpy(), want.astype(np.float32), atol=1e-5)
    assert (timm_pos - dino_pos).abs().max() > 0.05


def test_presets_use_dinos_positions_and_cls_init(tiny_config):
    model = MetaArch(tiny_config("dino", "model.embed_dim=64", "model.num_heads=4"))
    assert model.student.pos_interp == "dino"
    cls = model.student.backbone.cls_token
    assert 0.01 < float(cls.detach().std()) < 0.03  # trunc-normal 0.02 (timm draws 1e-6)
    local = torch.randn(2, 3, 8, 8)
    enc = model.student
    with torch.no_grad():
        got = enc.encode(local)
        timm = encode_tokens(enc.backbone, local, pos_interp="timm")
    assert not torch.allclose(got, timm)


def test_ibot_patch_centre_uses_every_patch_and_the_loss_every_crop(tiny_config):
    cfg = tiny_config("ibot", "crops.num_local=0", "loss.center_momentum=0.5")
    model = MetaArch(cfg)
    b, grid = 2, cfg.crops.global_size // cfg.model.patch_size
    torch.manual_seed(0)
    globals_ = torch.randn(2, b, 3, cfg.crops.global_size, cfg.crops.global_size)
    masks = torch.zeros(2, b, grid, grid, dtype=torch.bool)
    masks[0, 0, 0, :] = True  # one masked crop of four, one row of patches
    _, stats = model({"global_crops": globals_, "masks": masks}, teacher_temp=0.04)
    teacher = model.teacher
    with torch.no_grad():
        tokens = teacher.encode(globals_.flatten(0, 1))[:, teacher.prefix :]
        all_logits = teacher.patch_logits(tokens.flatten(0, 1))
    centre = model.patch_targets.center
    torch.testing.assert_close(centre, 0.5 * all_logits.mean(0, keepdim=True), atol=1e-6, rtol=0)
    # The loss counts the three unmasked crops as 0: 1/4 of the masked crop's mean.
    s_out = model.student(globals_.flatten(0, 1), masks.flatten(0, 1), None, True)
    t_probs = torch.softmax(all_logits[masks.flatten()] / 0.04, dim=-1)  # centre was 0
    ce = -(t_probs * torch.log_softmax(s_out["patch_logits"] / 0.1, dim=-1)).sum(-1).mean()
    assert stats["loss_ibot"] == pytest.approx(ce.item() / 4, rel=1e-4)


def test_patch_head_sharing(tiny_config):
    mlp = MetaArch(tiny_config("ibot", "heads.patch.share=mlp", "heads.patch.out_dim=32"))
    enc = mlp.student
    assert enc.patch_head is None and enc.patch_prototypes is not None
    tokens = torch.randn(5, enc.backbone.embed_dim)
    assert enc.patch_logits(tokens).shape == (5, 32)
    assert enc.patch_prototypes in enc.last_layers  # frozen with the cls prototypes
    shared = MetaArch(tiny_config("ibot", "heads.patch.share=all")).student
    torch.testing.assert_close(shared.patch_logits(tokens), shared.cls_head(tokens))
    with pytest.raises(ValueError, match="heads.patch.share"):
        MetaArch(tiny_config("ibot", "heads.patch.share=yes"))


def test_model_init_takes_the_position_rule_of_the_checkpoint(tiny_config, tmp_path):
    ref = reference_vit()
    path = write("dino_pretrain", ref, tmp_path / "dino_deitsmall8_pretrain.pth")
    arch = [
        "model.arch=vit_small",
        "model.embed_dim=null",
        "model.depth=null",
        "model.num_heads=null",
        "model.patch_size=16",
    ]
    cfg = tiny_config("dino", *arch, f"model.init={path}", "model.pos_interp=timm")
    with pytest.raises(ConfigError, match="model.pos_interp=timm"):
        load_init(cfg)
    cfg = tiny_config("dino", *arch, f"model.init={path}")
    load_init(cfg)
    assert cfg.model.pos_interp == "dino"
    assert trained_pos_interp({"meta": {"source": "timm:vit_small_patch16_224"}}) == "timm"
    assert trained_pos_interp({"meta": {"stage": "pretrain", "config": {}}}) == "timm"
    run_meta = {"stage": "pretrain", "config": {"model": {"pos_interp": "dino"}}}
    assert trained_pos_interp({"meta": run_meta}) == "dino"
