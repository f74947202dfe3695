"""Public backbones offline: conversion exactness per architecture, and position-embedding rules.

1. For each timm name (randomly initialised, as no weights can be downloaded here), save its
   weights as timm does and, for DINOv2 names, in DINOv2's own hub layout; load both through
   ``common.backbone.load_backbone`` and compare ``forward_features`` with timm's model at
   the native size and at another size. Reports the inferred architecture and max |diff|.
2. Position-embedding interpolation: timm's rule (bicubic to the target size, antialiased,
   what the stages use) against the original DINO / DINOv2 rule (bicubic with
   ``scale_factor = (new + 0.1) / old``, no antialias), on smooth 2-D sin-cos embeddings
   whose exact values at the target grid are known.

    python benchmarks/bench_public_backbones.py [--names ...] [--grids 37:16 37:28 37:57]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.record import record_printed  # noqa: E402
from common.backbone import load_backbone  # noqa: E402

log = logging.getLogger("bench_public_backbones")
NAMES = [
    "vit_small_patch16_224.dino",
    "vit_small_patch8_224.dino",
    "vit_base_patch16_224.dino",
    "vit_small_patch14_dinov2.lvd142m",
    "vit_small_patch14_reg4_dinov2.lvd142m",
    "vit_base_patch14_reg4_dinov2.lvd142m",
    "vit_giant_patch14_reg4_dinov2.lvd142m",
]


def dinov2_layout(model) -> dict[str, torch.Tensor]:
    """timm's DINOv2 weights back in DINOv2's hub layout (the inverse of timm's converter)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if "reg_token" in state:
        cls_pos = 0.02 * torch.randn(1, 1, state["cls_token"].shape[-1])
        state["register_tokens"] = state.pop("reg_token")
        state["cls_token"] = state["cls_token"] - cls_pos
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
    for k in [k for k in state if ".mlp.fc1." in k or ".mlp.fc2." in k]:
        if type(model.blocks[0].mlp).__name__ == "GluMlp":  # timm's SwiGLUPacked
            state[k.replace("fc1", "w12").replace("fc2", "w3")] = state.pop(k)
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return state


def max_diff(a, b, size: int) -> float:
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        return (a.forward_features(x) - b.forward_features(x)).abs().max().item()


def check_name(name: str, folder: Path) -> list[dict]:
    ref = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    patch = ref.patch_embed.patch_size[0]
    native = ref.patch_embed.img_size[0]
    other = patch * max(4, native // patch // 2)
    timm_file = folder / f"{name}.pth"
    torch.save(ref.state_dict(), timm_file)
    sources = [(f"timm:{name} + weights", f"timm:{name}", str(timm_file))]
    if "dinov2" in name:
        hub = folder / f"{name}_hub.pth"
        torch.save(dinov2_layout(ref), hub)
        sources.append(("DINOv2 hub file", str(hub), None))
    rows = []
    for label, source, weights in sources:
        t0 = time.perf_counter()
        model, info = load_backbone(source, weights=weights)
        secs = time.perf_counter() - t0
        kw = info["timm_kwargs"]
        rows.append(
            {
                "name": name,
                "source": label,
                "format": info["meta"]["source_format"],
                "arch": f"{kw['embed_dim']}d x{kw['depth']} h{kw['num_heads']} p{kw['patch_size']}"
                f" r{kw['reg_tokens']}" + (" swiglu" if kw.get("mlp_layer") else ""),
                "native": max_diff(ref, model, native) if kw["embed_dim"] < 1500 else None,
                "other": (other, max_diff(ref, model, other)),
                "load_s": secs,
            }
        )
    return rows


def sincos(grid: int, max_cycles: float, dim: int = 384) -> torch.Tensor:
    """[1, dim, grid, grid] 2-D sin-cos embedding over [0, 1] sampled at cell centres, with
    frequencies up to ``max_cycles`` per side (smooth: below both grids' Nyquist limit)."""
    pos = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    cycles = torch.linspace(0.25, max_cycles, dim // 4, dtype=torch.float64)
    ang = 2 * math.pi * pos[:, None] * cycles[None]  # [grid, dim/4]
    emb1d = torch.cat([ang.sin(), ang.cos()], dim=1)  # [grid, dim/2]
    y = emb1d[:, None, :].expand(grid, grid, -1)
    x = emb1d[None, :, :].expand(grid, grid, -1)
    return torch.cat([y, x], dim=-1).permute(2, 0, 1)[None].float()


def pos_rules(old: int, new: int) -> dict[str, float]:
    # A quarter of the smaller grid's Nyquist-limited band: what a learned table keeps smooth.
    max_cycles = min(old, new) / 8
    src, exact = sincos(old, max_cycles), sincos(new, max_cycles)
    timm_rule = F.interpolate(src, size=(new, new), mode="bicubic", antialias=True)
    scale = (new + 0.1) / old
    repo_rule = F.interpolate(src, scale_factor=(scale, scale), mode="bicubic")
    assert repo_rule.shape[-1] == new

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    return {
        "timm_vs_repo": rel(timm_rule, repo_rule),
        "timm_vs_exact": rel(timm_rule, exact),
        "repo_vs_exact": rel(repo_rule, exact),
    }


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="*", default=NAMES)
    parser.add_argument("--grids", nargs="*", default=["37:16", "37:28", "37:57", "14:28"])
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        "| timm name | loaded from | detected | architecture | max diff, native "
        "| max diff, other size | load s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            for r in check_name(name, Path(tmp)):
                native = "-" if r["native"] is None else f"{r['native']:.1e}"
                size, diff = r["other"]
                print(
                    f"| {r['name']} | {r['source']} | {r['format']} | {r['arch']} | {native} "
                    f"| {diff:.1e} ({size} px) | {r['load_s']:.1f} |"
                )
    print()
    print("| grid old -> new | timm vs original rule | timm vs exact | original vs exact |")
    print("| --- | --- | --- | --- |")
    for spec in args.grids:
        old, new = map(int, spec.split(":"))
        d = pos_rules(old, new)
        print(
            f"| {old} -> {new} | {d['timm_vs_repo']:.2%} | {d['timm_vs_exact']:.2%} "
            f"| {d['repo_vs_exact']:.2%} |"
        )


if __name__ == "__main__":
    with record_printed("public_backbones", ["parity", "pos_embed"]):
        main()
