"""A no-learning saliency baseline: colour contrast against the image border.

Scene photos (and FashionScenes) mostly frame objects away from the border, so the mean
colour of a thin border strip estimates the background; the saliency of a pixel is the
distance of its (box-blurred) colour from that estimate, scaled to [0, 1] per image. Cut
with Otsu, it is the reference that attention pseudo-labels must beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def border_contrast_saliency(images: torch.Tensor, border: int = 2, blur: int = 3) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> saliency [B, H, W] in [0, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images [B, 3, H, W], got {tuple(images.shape)}")
    x = F.avg_pool2d(images, blur, stride=1, padding=blur // 2, count_include_pad=False)
    strip = torch.ones(images.shape[-2:], dtype=torch.bool, device=images.device)
    strip[border:-border, border:-border] = False
    bg = x[:, :, strip].mean(dim=-1)
    dist = (x - bg[:, :, None, None]).norm(dim=1)
    lo = dist.flatten(1).amin(1)[:, None, None]
    hi = dist.flatten(1).amax(1)[:, None, None]
    return (dist - lo) / (hi - lo).clamp_min(1e-8)
