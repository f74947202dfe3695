"""Backbone construction, export round-trip and attention access."""

import json
import shutil

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from common.backbone import (
    backbone_hash,
    backbone_kwargs,
    build_backbone,
    capture_qk,
    export_backbone,
    last_block_attention,
    load_backbone,
)
from common.checkpoint import CheckpointError
from tests.fixtures.small_disk import small_disk


def tiny_kwargs(**kw):
    return backbone_kwargs("custom", 32, 8, embed_dim=48, depth=2, num_heads=3, **kw)


def test_export_round_trip_is_strict_and_identical(tmp_path):
    model = build_backbone(tiny_kwargs(num_register_tokens=2)).eval()
    export_backbone(model, tiny_kwargs(num_register_tokens=2), tmp_path / "export")
    info = json.loads((tmp_path / "export" / "backbone.json").read_text())
    fresh = VisionTransformer(**info["timm_kwargs"])
    fresh.load_state_dict(torch.load(tmp_path / "export" / "backbone.pth"), strict=True)
    fresh.eval()
    loaded, _ = load_backbone(tmp_path)  # a run directory containing export/ works too
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), fresh.forward_features(x))
        assert torch.equal(model.forward_features(x), loaded.forward_features(x))


def test_mismatched_export_names_the_problem(tmp_path):
    model = build_backbone(tiny_kwargs())
    export_backbone(model, tiny_kwargs(), tmp_path)
    info = json.loads((tmp_path / "backbone.json").read_text())
    info["timm_kwargs"]["embed_dim"] = 60
    (tmp_path / "backbone.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_backbone(tmp_path)


def test_missing_export_says_how_to_make_one(tmp_path):
    with pytest.raises(CheckpointError, match="pretrain.export"):
        load_backbone(tmp_path)


def test_hash_changes_with_weights(tmp_path):
    model = build_backbone(tiny_kwargs())
    export_backbone(model, tiny_kwargs(), tmp_path)
    first = backbone_hash(tmp_path)
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(1.0)
    export_backbone(model, tiny_kwargs(), tmp_path)
    assert backbone_hash(tmp_path) != first


def test_image_not_divisible_by_patch_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        backbone_kwargs("vit_tiny", 30, 8)


def test_attention_matches_manual_computation():
    model = build_backbone(tiny_kwargs(num_register_tokens=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    out = last_block_attention(model, x)
    assert out["attn"].shape == (2, 3, 4, 4) and out["cosine"].shape == (2, 3, 4, 4)
    # Recompute the last block's attention by hand from its input tokens.
    with torch.no_grad():
        t = model.patch_embed(x)
        t = model._pos_embed(t)
        t = model.norm_pre(t)
        for blk in model.blocks[:-1]:
            t = blk(t)
        attn = model.blocks[-1].attn
        z = model.blocks[-1].norm1(t)
        qkv = attn.qkv(z).reshape(2, t.shape[1], 3, 3, 16).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        weights = ((q @ k.transpose(-2, -1)) * 16**-0.5).softmax(-1)
    torch.testing.assert_close(out["attn"].flatten(2), weights[:, :, 0, 2:])
    assert (out["cosine"].abs() <= 1 + 1e-6).all()


def test_capture_hooks_are_removed_after_the_context():
    model = build_backbone(tiny_kwargs())
    with capture_qk(model, (0, -1)) as store:
        model.forward_features(torch.randn(1, 3, 32, 32))
    assert set(store) == {0, 1}
    assert not model.blocks[0].attn._forward_pre_hooks


def test_export_on_a_full_disk_keeps_the_previous_export(tmp_path):
    model = build_backbone(tiny_kwargs())
    with small_disk(tmp_path / "disk", mib=1) as disk:
        export_backbone(model, tiny_kwargs(), disk / "export", meta={"step": 1})
        before = (disk / "export" / "backbone.pth").read_bytes()
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"x" * (free - len(before) // 2))  # half a backbone left
        with pytest.raises(CheckpointError, match=r"disk full while writing .*backbone.pth"):
            export_backbone(model, tiny_kwargs(), disk / "export", meta={"step": 2})
        assert json.loads((disk / "export" / "backbone.json").read_text())["meta"] == {"step": 1}
        assert (disk / "export" / "backbone.pth").read_bytes() == before
        assert sorted(p.name for p in (disk / "export").iterdir()) == [
            "backbone.json",
            "backbone.pth",
        ]
