"""SCD's variation-aware refine module (VARM) as released (`refine.method: varm`).

Xu et al., "Self Correspondence Distillation for End-to-End Weakly-Supervised Semantic
Segmentation", AAAI 2023; code: Rongtao-Xu/RepresentationLearning,
SCD-AAAI2023/network/VARM.py. For pixel i and its N = 8 * len(dilations) neighbours j on
dilated 8-neighbourhoods (replicate padding, dilations 1, 2, 4, 8, 12, 24 -> N = 48):

    a_ij = softmax_j( -mean_c (4 |I_jc - I_ic| / (s_ic + 1e-8))^2 ) - 0.01 softmax_j( g_ij )

``s_ic`` is the spread of channel c: the (unbiased) std of I_jc over the N neighbours.
``g_ij`` is the variation at neighbour j: on each neighbour map n_j (the image shifted by
j's offset), mean_c of (n_j(y, x) - n_j(y + 1, x))^2 + (n_j(y, x) - n_j(y, x + 1))^2, the
last row / column repeated. The variation term is subtracted after the softmax, so rows
sum to 0.99 and masks shrink by 1% per step, as released. Masks are resized to the image
with bilinear ``align_corners=True`` and propagated 10 times: m_i <- sum_j a_ij m_j.
The released module also builds a position term (neighbour distances) and a weight 0.3
that its forward never uses; neither is here. SCD refines at half the image size, per
image; that is the caller's choice (our pipeline refines at the image size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.refine import check_inputs, dilated_neighbours, propagate

SCD_DILATIONS = (1, 2, 4, 8, 12, 24)


def _next_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x shifted by one towards lower indices along ``dim``, the last slice repeated."""
    n = x.shape[dim]
    return torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim=dim)


class VARM(nn.Module):
    """SCD's VARM: appearance affinity over the neighbours' spread minus a variation term."""

    def __init__(
        self,
        dilations: Sequence[int] = SCD_DILATIONS,
        num_iter: int = 10,
        appearance_scale: float = 4.0,
        variation_weight: float = 0.01,
    ) -> None:
        super().__init__()
        if not dilations or min(dilations) < 1:
            raise ValueError(f"VARM dilations must be positive integers, got {dilations}")
        if num_iter < 0:
            raise ValueError(f"VARM num_iter must be >= 0, got {num_iter}")
        self.dilations = tuple(int(d) for d in dilations)
        self.num_iter = num_iter
        self.appearance_scale = appearance_scale
        self.variation_weight = variation_weight

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 1, N, H, W] weights a_ij of ``image`` [B, C, H, W] (rows sum to 1 - 0.01)."""
        nb = dilated_neighbours(image, self.dilations)
        spread = nb.std(dim=2, keepdim=True)
        z = (nb - image[:, :, None]).abs_().div_(spread + 1e-8).mul_(self.appearance_scale)
        appearance = z.square_().mean(dim=1, keepdim=True).neg_()
        grad = (nb - _next_along(nb, 3)).square_() + (nb - _next_along(nb, 4)).square_()
        variation = grad.mean(dim=1, keepdim=True)
        return appearance.softmax(dim=2) - self.variation_weight * variation.softmax(dim=2)

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Refine ``masks`` [B, K, h, w] (any resolution) guided by ``images`` [B, C, H, W]."""
        check_inputs(images, masks)
        dtype = torch.promote_types(images.dtype, torch.float32)
        masks = F.interpolate(
            masks.to(dtype), size=images.shape[-2:], mode="bilinear", align_corners=True
        )
        out = []
        # One image at a time, as SCD does: the [C, N, H, W] neighbour stacks of a whole
        # batch would not fit in memory at VOC sizes.
        for img, m in zip(images.to(dtype), masks, strict=True):
            aff = self.affinity(img[None])
            weights = [w.contiguous() for w in aff.unbind(dim=2)]
            m = m[None]
            for _ in range(self.num_iter):
                m = propagate(m, weights, self.dilations)
            out.append(m)
        return torch.cat(out)
