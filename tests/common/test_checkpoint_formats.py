"""Public checkpoints in their original layouts load exactly and strictly, or fail clearly."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from common.backbone import backbone_hash, export_backbone, load_backbone
from common.checkpoint import CheckpointError
from common.checkpoint_formats import infer_kwargs, unwrap
from tests.fixtures.public_checkpoints import FORMATS, SIZE, reference_vit, write

ROOT = Path(__file__).resolve().parents[2]


def _features(model, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        return model.forward_features(x)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_matches_the_source_model(tmp_path, fmt):
    registers, layer_scale = FORMATS[fmt]
    ref = reference_vit(registers, layer_scale)
    path = write(fmt, ref, tmp_path / f"{fmt}.pth")
    model, info = load_backbone(path)
    assert info["timm_kwargs"]["reg_tokens"] == registers
    assert info["timm_kwargs"]["img_size"] == SIZE
    for size in (SIZE, 48):  # native size, and another (interpolated position embeddings)
        torch.testing.assert_close(_features(model, size), _features(ref, size), atol=1e-5, rtol=0)


def test_formats_are_named_and_heads_dropped(tmp_path):
    ref = reference_vit()
    expected = {
        "dino_train": ("DINO training checkpoint (teacher)", ["head.*"]),
        "ibot_student": ("iBOT checkpoint (student)", ["masked_embed", "module.head.*"]),
        "msn": ("MSN checkpoint (target_encoder)", ["fc.bn1.weight", "fc.fc1.weight"]),
        "dinov2_train": ("DINOv2 training checkpoint (teacher)", ["dino_head.*", "ibot_head.*"]),
    }
    for fmt, (name, some_dropped) in expected.items():
        obj = torch.load(write(fmt, ref, tmp_path / f"{fmt}.pth"), weights_only=False)
        _, detected, dropped = unwrap(obj, fmt)
        assert detected == name
        assert set(some_dropped) <= set(dropped)


def test_dinov2_registers_are_not_patches(tmp_path):
    """Registers stay prefix tokens: the patch grid after them is the image's."""
    ref = reference_vit(registers=4, layer_scale=True)
    model, _ = load_backbone(write("dinov2_hub", ref, tmp_path / "v2.pth"))
    assert model.num_prefix_tokens == 5
    assert _features(model, 48).shape[1] == 5 + 6 * 6


def test_dinov2_giant_swiglu_layout(tmp_path):
    """ViT-g's SwiGLU MLP (w12 / w3 in DINOv2's names) is recognised and converted exactly."""
    ref = reference_vit(registers=4, layer_scale=True, swiglu=True)
    model, info = load_backbone(write("dinov2_hub", ref, tmp_path / "g.pth"))
    assert info["timm_kwargs"]["mlp_layer"] == "swiglu_packed"
    torch.testing.assert_close(_features(model, 48), _features(ref, 48), atol=1e-5, rtol=0)
    # The export names the layer, so a fresh process rebuilds it from backbone.json.
    export_backbone(model, info["timm_kwargs"], tmp_path / "export")
    again, _ = load_backbone(tmp_path / "export")
    torch.testing.assert_close(_features(again, 48), _features(ref, 48), atol=1e-5, rtol=0)


def test_export_of_a_converted_checkpoint_round_trips_strictly(tmp_path):
    ref = reference_vit(registers=4, layer_scale=True)
    src = write("dinov2_train", ref, tmp_path / "teacher_checkpoint.pth")
    out = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.export", "--from", str(src), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "backbone.json").read_text())
    assert info["meta"]["source_format"] == "DINOv2 training checkpoint (teacher)"
    fresh = VisionTransformer(**info["timm_kwargs"])
    fresh.load_state_dict(torch.load(out / "backbone.pth", weights_only=True), strict=True)
    torch.testing.assert_close(_features(fresh.eval(), 48), _features(ref, 48), atol=1e-5, rtol=0)
    assert backbone_hash(out) != backbone_hash(src)


def test_inferred_kwargs_read_the_architecture():
    ref = reference_vit(registers=4, layer_scale=True)
    kwargs = infer_kwargs(ref.state_dict())
    assert (kwargs["embed_dim"], kwargs["depth"], kwargs["num_heads"]) == (128, 2, 2)
    assert kwargs["no_embed_class"] and kwargs["init_values"] and kwargs["patch_size"] == 8


def test_unknown_layout_lists_the_formats_we_read(tmp_path):
    torch.save({"epoch": 3, "weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="Formats we read: .*DINOv2.*MSN"):
        load_backbone(tmp_path / "odd.pth")


def test_truncated_file_is_named(tmp_path):
    path = write("dino_pretrain", reference_vit(), tmp_path / "t.pth")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="t.pth is unreadable"):
        load_backbone(path)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    torch.save({"model": functools.partial(print, "hi")}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="functools.partial object, which only arbitrary"):
        load_backbone(tmp_path / "evil.pth")


def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.txt is unreadable"):
        load_backbone(tmp_path / "notes.txt")


def test_missing_keys_name_the_detected_format(tmp_path):
    state = reference_vit().state_dict()
    state.pop("blocks.1.attn.proj.bias")
    torch.save({"target_encoder": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"MSN checkpoint.*missing keys.*blocks.1.attn.proj"):
        load_backbone(tmp_path / "m.pth")


def test_timm_name_with_a_weights_file_matches_timm(tmp_path):
    import timm

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pth")  # a timm file, classifier included
    model, info = load_backbone("timm:vit_tiny_patch16_224", weights=str(tmp_path / "w.pth"))
    assert info["timm_kwargs"]["num_heads"] == 3
    torch.testing.assert_close(_features(model, 224), _features(ref, 224), atol=1e-5, rtol=0)


def test_safetensors_file_is_read(tmp_path):
    from safetensors.torch import save_file

    ref = reference_vit(registers=4, layer_scale=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "m.safetensors")
    model, info = load_backbone(tmp_path / "m.safetensors")
    assert info["timm_kwargs"]["reg_tokens"] == 4
    torch.testing.assert_close(_features(model, 48), _features(ref, 48), atol=1e-5, rtol=0)


def test_timm_name_offline_without_weights_says_what_to_pass():
    code = (
        "from common.backbone import load_backbone\n"
        "load_backbone('timm:vit_tiny_patch16_224.augreg_in21k')"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "backbone.weights=FILE" in proc.stderr


def test_unknown_timm_name_suggests_close_ones():
    with pytest.raises(CheckpointError, match="vit_small_patch16_224"):
        load_backbone("timm:vit_smal_patch16_224.dino")
