"""Foreground rules that turn a soft saliency map into one threshold per image.

Every rule returns one threshold per image, so the same cut can be applied to the raw map
and to its refined version (see :func:`distill.refine.dual_threshold`).

- ``otsu`` (default): Otsu's cut per image, maximising the between-class variance of a
  histogram; it adapts to each image's contrast, which a fixed cut cannot
  (tests/distill/test_mask_rules.py plants maps whose level moves from image to image);
- ``value``: a fixed cut, 0.4 on the CST cosine map ((x + 1) / 2, head mean): the
  published CST recipe of configs/distill/cst_pascal.yaml.
"""

from __future__ import annotations

import torch

RULES = ("otsu", "value")


def value_threshold(maps: torch.Tensor, value: float) -> torch.Tensor:
    """The same cut ``value`` for every image of ``maps`` [B, ...]."""
    return torch.full((maps.shape[0],), float(value), dtype=maps.dtype, device=maps.device)


def otsu_threshold(maps: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """Per-image Otsu cut over ``bins`` histogram bins between each image's min and max."""
    flat = maps.flatten(1).float()
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    span = (hi - lo).clamp_min(1e-12)
    idx = ((flat - lo[:, None]) / span[:, None] * bins).long().clamp(0, bins - 1)
    hist = torch.zeros(flat.shape[0], bins, device=maps.device).scatter_add_(
        1, idx, torch.ones_like(flat)
    )
    p = hist / hist.sum(dim=1, keepdim=True)
    centres = torch.arange(bins, device=maps.device, dtype=torch.float32) + 0.5
    w0 = p.cumsum(dim=1)
    mu0 = (p * centres).cumsum(dim=1)
    mu_t = mu0[:, -1:]
    # Between-class variance for a cut after each bin; the last cut leaves class 1 empty.
    between = (mu_t * w0 - mu0) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    between[:, -1] = -1
    # Empty bins between two modes tie; cut in the middle of the tied run, not at its start.
    top = between >= between.amax(dim=1, keepdim=True) - 1e-9
    idx_f = torch.arange(bins, device=maps.device, dtype=torch.float32)
    best = (top * idx_f).sum(1) / top.sum(1) + 1.0
    return (lo + best / bins * span).to(maps.dtype)


def threshold_for(maps: torch.Tensor, rule: str, value: float = 0.4) -> torch.Tensor:
    """Per-image thresholds [B] of ``maps`` [B, H, W] under ``rule`` (otsu | value)."""
    if rule == "otsu":
        return otsu_threshold(maps)
    if rule == "value":
        return value_threshold(maps, value)
    raise ValueError(f"mask.rule must be one of {RULES}, got {rule!r}")
