"""Attention figures: the mass threshold and the CLI on a real export."""

import subprocess
import sys

import torch

from common.backbone import backbone_kwargs, build_backbone, export_backbone
from pretrain.attention import mass_threshold_masks


def test_mass_threshold_keeps_the_top_patches_holding_the_mass():
    attn = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    assert mass_threshold_masks(attn, 0.6).tolist() == [[True, False, True, False]]
    assert mass_threshold_masks(attn, 0.8).tolist() == [[True, False, True, False]]
    assert mass_threshold_masks(attn, 0.81).tolist() == [[True, False, True, True]]
    assert mass_threshold_masks(attn, 0.1).tolist() == [[True, False, False, False]]


def test_attention_cli_writes_a_png_per_image(fashion_scenes_root, tmp_path):
    kwargs = backbone_kwargs("custom", 32, 8, embed_dim=32, depth=2, num_heads=2)
    export_backbone(build_backbone(kwargs), kwargs, tmp_path / "export")
    images = sorted((fashion_scenes_root / "JPEGImages").glob("*.jpg"))[:2]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain.attention",
            "--checkpoint",
            str(tmp_path),
            "--images",
            *map(str, images),
            "--out",
            str(tmp_path / "figs"),
        ],
        check=True,
        capture_output=True,
    )
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i.stem}_attention.png" for i in images]
    assert all(p.stat().st_size > 1000 for p in pngs)
