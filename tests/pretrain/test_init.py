"""Continued pretraining from a public checkpoint (``model.init``)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from common.backbone import load_backbone
from common.cli import run_stage
from common.config import ConfigError
from pretrain.init import load_init
from pretrain.model import MetaArch
from pretrain.stage import run
from tests.fixtures.public_checkpoints import reference_vit, write

# The tiny preset sets the architecture; with model.init it must come from the checkpoint.
ARCH_FROM_CHECKPOINT = [
    "model.arch=vit_small",
    "model.embed_dim=null",
    "model.depth=null",
    "model.num_heads=null",
    "model.patch_size=16",
]


@pytest.fixture
def dinov2_file(tmp_path):
    ref = reference_vit(registers=4, layer_scale=True)
    return ref, write("dinov2_hub", ref, tmp_path / "dinov2_vits8_reg4_pretrain.pth")


def test_both_encoders_start_from_the_checkpoint(tiny_config, dinov2_file):
    ref, path = dinov2_file
    cfg = tiny_config("ibot", *ARCH_FROM_CHECKPOINT, f"model.init={path}")
    init = load_init(cfg)
    assert (cfg.model.embed_dim, cfg.model.patch_size, cfg.model.num_register_tokens) == (128, 8, 4)
    model = MetaArch(cfg, init).eval()
    x = torch.randn(2, 3, 16, 16)  # the training size: position embeddings resampled to it
    with torch.no_grad():
        want = ref.forward_features(x)
        for enc in (model.student, model.teacher):
            torch.testing.assert_close(enc.backbone.forward_features(x), want, atol=1e-5, rtol=0)


def test_continued_run_exports_the_checkpoint_architecture(tiny_config, dinov2_file, tmp_path):
    _, path = dinov2_file
    cfg = tiny_config("dino", *ARCH_FROM_CHECKPOINT, f"model.init={path}", "train.max_steps=2")
    run_stage("pretrain", run, cfg, tmp_path / "run")
    model, info = load_backbone(tmp_path / "run")
    kw = info["timm_kwargs"]
    assert (kw["embed_dim"], kw["reg_tokens"], kw["no_embed_class"]) == (128, 4, True)
    assert info["meta"]["init"] == str(path)
    before = torch.load(tmp_path / "run" / "export" / "backbone.pth", weights_only=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain.export", str(tmp_path / "run")], capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    after = torch.load(tmp_path / "run" / "export" / "backbone.pth", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_architecture_key_that_contradicts_the_checkpoint_is_named(tiny_config, dinov2_file):
    _, path = dinov2_file
    cfg = tiny_config("dino", *ARCH_FROM_CHECKPOINT, "model.depth=6", f"model.init={path}")
    with pytest.raises(ConfigError, match=r"sets model.depth=6\. With model.init"):
        load_init(cfg)


def test_crops_must_tile_into_the_checkpoint_patches(tiny_config, dinov2_file):
    _, path = dinov2_file
    cfg = tiny_config(
        "dino", *ARCH_FROM_CHECKPOINT, "crops.global_size=20", "crops.local_size=8",
        f"model.init={path}",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="multiples of the patch size 8"):
        load_init(cfg)
