"""Attention figures: the mass threshold and the CLI on a real export."""

import subprocess
import sys

import torch
from PIL import Image

from common.backbone import backbone_kwargs, build_backbone, export_backbone
from pretrain.attention import attention_panels, mass_threshold_masks, native_size


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


def test_default_size_is_the_image_rounded_to_the_patch_grid(tmp_path):
    Image.new("RGB", (70, 45)).save(tmp_path / "x.png")  # width 70, height 45
    assert native_size(tmp_path / "x.png", 8) == (48, 72)
    Image.new("RGB", (3, 3)).save(tmp_path / "tiny.png")
    assert native_size(tmp_path / "tiny.png", 8) == (8, 8)


def test_every_panel_is_titled_and_both_rows_have_a_colour_bar():
    torch.manual_seed(0)
    attn = torch.rand(3, 4, 6).softmax(dim=-1)
    fig = attention_panels(torch.rand(3, 32, 48), attn, 0.6)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(panels) == 2 * 4 and all(ax.get_title() for ax in panels)
    assert [ax.get_ylabel() for ax in bars] == ["cls attention", "heads"]
    assert "heads keeping a patch" in panels[4].get_title()
    # The agreement panel counts heads: its values span 0..heads, not a single colour.
    counts = panels[4].images[-1].get_array()
    assert counts.min() >= 0 and counts.max() <= 3 and len(set(counts.flatten().tolist())) > 1
