"""Query/support token correlations of a frozen ViT, one channel per (layer, head).

Tokens arrive L2-normalised within each head's channel slice (``FrozenBackbone.layer_tokens``),
so a per-head dot product is a cosine. The support side is its cls token plus its patch
tokens shrunk to a ``g x g`` grid, which keeps the support axis short. Two ways:
``support_tokens`` (ours) averages the foreground patches of each cell, so background never
enters the support side; ``resized_support_tokens`` is CST's (Kang et al., CVPR 2023):
the whole patch grid resized bilinearly (``align_corners=True``, e.g. 50x50 -> 12x12) with
no mask, the mask acting later on the head's attention keys. CST normalises per head after
the resize; our cached tokens are normalised before it and again after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.head import masked_pool


def patch_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Pixel foreground mask [B, H, W] -> patch mask [B, H/p, W/p]: any foreground pixel."""
    return F.max_pool2d(mask[:, None].float(), patch_size)[:, 0] > 0


def support_tokens(
    tokens: torch.Tensor, mask: torch.Tensor, grid: int, heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support cls + mask-pooled patches.

    ``tokens``: [B, L, 1 + h*w, C]; ``mask``: [B, h, w] bool. Returns tokens
    [B, L, 1 + grid^2, C] (per-head unit norm; all-background cells are zero) and the pooled
    mask [B, grid^2].
    """
    b, n_layers, t, c = tokens.shape
    h, w = mask.shape[-2:]
    if h != w or h * w != t - 1:
        raise ValueError(f"support tokens {tuple(tokens.shape)} do not match mask grid {h}x{w}")
    if h % grid:
        raise ValueError(
            f"the {h}x{h} patch grid cannot be pooled to {grid}x{grid}; choose a head.pool_sizes "
            f"whose product divides {h}"
        )
    x = tokens.permute(0, 1, 3, 2).reshape(b, n_layers * c, 1, t)
    pooled, pmask = masked_pool(x, mask.reshape(b, -1), h // grid)
    pooled = pooled.reshape(b, n_layers, c, -1).permute(0, 1, 3, 2)
    pooled = pooled.reshape(*pooled.shape[:3], heads, c // heads)
    return F.normalize(pooled, dim=-1).reshape(b, n_layers, -1, c), pmask


def resized_support_tokens(tokens: torch.Tensor, grid: int, heads: int) -> torch.Tensor:
    """CST's support side: cls + the patch grid resized to ``grid x grid`` (bilinear,
    ``align_corners=True``), per-head unit norm. [B, L, 1 + h*w, C] -> [B, L, 1 + grid^2, C]."""
    b, n_layers, t, c = tokens.shape
    h = round((t - 1) ** 0.5)
    if h * h != t - 1:
        raise ValueError(f"support tokens {tuple(tokens.shape)} are not a square patch grid")
    x = tokens[:, :, 1:].reshape(b * n_layers, h, h, c).permute(0, 3, 1, 2)
    x = F.interpolate(x, (grid, grid), mode="bilinear", align_corners=True)
    x = x.permute(0, 2, 3, 1).reshape(b, n_layers, grid * grid, c)
    out = torch.cat([tokens[:, :, :1], x], dim=2)
    out = out.reshape(*out.shape[:3], heads, c // heads)
    return F.normalize(out, dim=-1).reshape(b, n_layers, -1, c)


def correlate(query: torch.Tensor, support: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, 1 + Q, C] query tokens x [B, L, S, C] support tokens -> [B, L*heads, Q, S]."""
    b, n_layers, _, c = query.shape
    q = query[:, :, 1:].reshape(b, n_layers, -1, heads, c // heads)
    s = support.reshape(b, n_layers, support.shape[2], heads, c // heads)
    corr = torch.einsum("blqhc,blshc->blhqs", q, s)
    return corr.reshape(b, n_layers * heads, q.shape[2], s.shape[2])
