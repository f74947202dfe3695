"""Foreground rules that turn a soft saliency map into a per-image threshold.

Every rule returns one threshold per image, so the same cut can be applied to the raw map
and to its refined version (see :func:`distill.refine.dual_threshold`).

- ``value``: a fixed cut, e.g. 0.4 on the CST cosine map ((x + 1) / 2, head mean);
- ``mass``: the DINO-paper rule, keep the highest pixels that together hold a share ``p``
  of the map's total mass;
- ``otsu``: Otsu's cut per image, maximising the between-class variance of a histogram.
"""

from __future__ import annotations

import torch

RULES = ("value", "mass", "otsu")


def value_threshold(maps: torch.Tensor, value: float) -> torch.Tensor:
    """The same cut ``value`` for every image of ``maps`` [B, ...]."""
    return torch.full((maps.shape[0],), float(value), dtype=maps.dtype, device=maps.device)


def mass_threshold(maps: torch.Tensor, mass: float) -> torch.Tensor:
    """Per-image cut keeping the top values that hold a share ``mass`` of the sum (DINO)."""
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mask.mass must be in (0, 1], got {mass}")
    flat = maps.flatten(1).clamp_min(0)
    vals, _ = flat.sort(dim=1, descending=True)
    cum = vals.cumsum(dim=1) / vals.sum(dim=1, keepdim=True).clamp_min(1e-12)
    # First index whose cumulative share reaches ``mass``: that value and above are kept.
    idx = (cum < mass).sum(dim=1).clamp(max=flat.shape[1] - 1)
    return vals.gather(1, idx[:, None])[:, 0]


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


def threshold_for(maps: torch.Tensor, rule: str, value: float = 0.4, mass: float = 0.6):
    """Per-image thresholds [B] of ``maps`` [B, H, W] under ``rule`` (value | mass | otsu)."""
    if rule == "value":
        return value_threshold(maps, value)
    if rule == "mass":
        return mass_threshold(maps, mass)
    if rule == "otsu":
        return otsu_threshold(maps)
    raise ValueError(f"mask.rule must be one of {RULES}, got {rule!r}")


def apply_threshold(maps: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Boolean foreground: ``maps`` [B, ...] >= the image's threshold."""
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return maps >= thresholds.reshape(shape)


def mirror(maps: torch.Tensor) -> torch.Tensor:
    """Each map (the last two dims) mirrored within its own range: ``min + max - x``."""
    flat = maps.flatten(-2)
    lo = flat.amin(-1)[..., None, None]
    hi = flat.amax(-1)[..., None, None]
    return lo + hi - maps


def border_polarity(maps: torch.Tensor, thresholds: torch.Tensor, border: int = 2) -> torch.Tensor:
    """Flip maps [B, H, W] whose foreground covers most of the image border (per image).

    Objects rarely fill the frame's edge, so when more than half of the border strip is
    above the threshold the map is taken to highlight the background (attention heads of
    weak backbones often do) and is mirrored, ``min + max - x``, keeping its value range.
    """
    strip = torch.ones(maps.shape[-2:], dtype=torch.bool, device=maps.device)
    strip[border:-border, border:-border] = False
    share = (maps[:, strip] >= thresholds[:, None]).float().mean(dim=1)
    flip = (share > 0.5)[:, None, None]
    return torch.where(flip, mirror(maps), maps)
