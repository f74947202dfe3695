"""Our refine of soft masks (`refine.method: par_variation`): PAR plus a variation term.

Not SCD's VARM (that is :mod:`distill.varm`). The core is PAR, the pixel-adaptive refine
of the AFA codebase (Ru et al., "Learning Affinity from Attention", CVPR 2022), computed
with box-filter variances; the variation penalty inside the softmax is our own. Each
pixel i repeatedly takes a weighted mean of its neighbours j on dilated 8-neighbourhoods
(dilations ``d`` give 8 * len(d) neighbours). The weights are

    a_ij = softmax_j( -mean_c (|I_ic - I_jc| / (sigma_ic * w_app))^2  -  w_var * v_j / mean(v) )
           + w_pos * softmax_j( -(dist_ij / (sigma_dist * w_app))^2 )

where ``sigma_ic`` is the std of channel c in the window around i that the neighbours
span (so the kernel adapts to local contrast), and ``v_j`` is the local variation of
pixel j (the mean absolute colour difference to its 8 direct neighbours). The variation
term is what makes the refine "variation-aware": edge pixels, whose own value mixes both
sides, spread their label less, so masks snap to image edges instead of leaking across
them. ``w_pos`` adds a small preference for near neighbours, independent of appearance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The 8 neighbour offsets (dy, dx) of a 3x3 window, centre excluded.
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def dilated_neighbours(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, 8 * len(dilations), H, W]: values at the dilated 8 neighbours."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        pad = F.pad(x, [d] * 4, mode="replicate")
        for dy, dx in _OFFSETS:
            out.append(pad[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w])
    return torch.stack(out, dim=2)


def local_variation(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 1, H, W]: mean absolute difference to the 8 direct neighbours."""
    nb = dilated_neighbours(images, (1,))
    return (nb - images[:, :, None]).abs().mean(dim=(1, 2))[:, None]


def check_inputs(images: torch.Tensor, masks: torch.Tensor) -> None:
    """Raise unless ``images`` is [B, C, H, W] and ``masks`` [B, K, h, w] with the same B."""
    if images.dim() != 4 or masks.dim() != 4 or images.shape[0] != masks.shape[0]:
        raise ValueError(
            f"refine expects images [B, 3, H, W] and masks [B, K, h, w] with the same B, "
            f"got {tuple(images.shape)} and {tuple(masks.shape)}"
        )


def propagate(
    x: torch.Tensor, weights: list[torch.Tensor], dilations: Sequence[int]
) -> torch.Tensor:
    """One step m_i <- sum_j a_ij m_j over the dilated neighbours, accumulated in place.

    Same result as ``(dilated_neighbours(x, dilations) * aff).sum(2)`` without materialising
    the [B, K, N, H, W] stack, which makes a refine several times faster on a CPU.
    """
    h, w = x.shape[-2:]
    m = max(dilations)
    pad = F.pad(x, [m] * 4, mode="replicate")
    out = torch.zeros_like(x)
    k = 0
    for d in dilations:
        for dy, dx in _OFFSETS:
            sl = pad[..., m + dy * d : m + dy * d + h, m + dx * d : m + dx * d + w]
            out.addcmul_(sl, weights[k])
            k += 1
    return out


class ParVariationRefine(nn.Module):
    """PAR-style affinity propagation of soft masks with our local-variation penalty."""

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4),
        num_iter: int = 10,
        appearance_weight: float = 0.3,
        position_weight: float = 0.01,
        variation_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not dilations or min(dilations) < 1:
            raise ValueError(f"refine.dilations must be positive integers, got {dilations}")
        if num_iter < 0:
            raise ValueError(f"refine.num_iter must be >= 0, got {num_iter}")
        self.dilations = tuple(int(d) for d in dilations)
        self.num_iter = num_iter
        self.appearance_weight = appearance_weight
        self.position_weight = position_weight
        self.variation_weight = variation_weight

    def affinity(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1, N, H, W] propagation weights over the N dilated neighbours (rows sum to ~1)."""
        # Local colour variance from box filters over the neighbourhood's extent: the same
        # contrast normalisation as the variance over the neighbours, at a fraction of the cost.
        k = 2 * max(self.dilations) + 1
        mean = F.avg_pool2d(images, k, stride=1, padding=k // 2, count_include_pad=False)
        sq = F.avg_pool2d(images.square(), k, stride=1, padding=k // 2, count_include_pad=False)
        # The floor (colour std 0.01) keeps flat regions from giving huge logits whose
        # exponentials underflow to denormals, which are very slow on CPUs.
        inv = 1.0 / ((sq - mean.square()).clamp_min(0) + 1e-4) / self.appearance_weight**2
        inv = inv / images.shape[1]  # the mean over channels
        var_term = None
        if self.variation_weight > 0:
            v = local_variation(images)
            v = v / v.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-8)
            var_term = dilated_neighbours(self.variation_weight * v, self.dilations)[:, 0]
        # One neighbour offset at a time: never materialise the [B, C, N, H, W] stack.
        h, w = images.shape[-2:]
        m = max(self.dilations)
        pad = F.pad(images, [m] * 4, mode="replicate")
        logits = []
        for d in self.dilations:
            for dy, dx in _OFFSETS:
                sl = pad[..., m + dy * d : m + dy * d + h, m + dx * d : m + dx * d + w]
                logits.append(-((sl - images).square_().mul_(inv)).sum(dim=1))
        logits = torch.stack(logits, dim=1)[:, None]
        if var_term is not None:
            logits = logits - var_term[:, None]
        aff = logits.softmax(dim=2)
        if self.position_weight > 0:
            dist = torch.tensor(
                [d * (2**0.5 if dy and dx else 1.0) for d in self.dilations for dy, dx in _OFFSETS],
                dtype=images.dtype,
                device=images.device,
            )
            pos = -((dist / (dist.std() + 1e-8) / self.appearance_weight) ** 2)
            aff = aff + self.position_weight * pos.softmax(0)[None, None, :, None, None]
            aff = aff / aff.sum(dim=2, keepdim=True)
        return aff

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Refine ``masks`` [B, K, h, w] (any resolution) guided by ``images`` [B, 3, H, W]."""
        check_inputs(images, masks)
        if masks.shape[-2:] != images.shape[-2:]:
            masks = F.interpolate(
                masks, size=images.shape[-2:], mode="bilinear", align_corners=False
            )
        aff = self.affinity(images.float())
        weights = [w.contiguous() for w in aff.unbind(dim=2)]
        out = masks.float()
        for _ in range(self.num_iter):
            out = propagate(out, weights, self.dilations)
        return out


def dual_threshold(
    raw: torch.Tensor,
    refined: torch.Tensor,
    thresholds: torch.Tensor,
    band: float,
    ignore_disagreement: bool = True,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Foreground (1) / background (0) / ignore labels from a raw and a refined soft mask.

    ``band`` is a share of each image's raw value range (maps differ in contrast): a pixel
    is foreground when ``refined >= t + band * range``, background when
    ``refined < t - band * range`` and ignored in between; with ``ignore_disagreement`` it
    is also ignored where the raw map, cut at the same ``t``, says the opposite.
    """
    shape = (-1,) + (1,) * (refined.dim() - 1)
    t = thresholds.reshape(shape)
    flat = raw.flatten(1)
    band = band * (flat.amax(1) - flat.amin(1)).reshape(shape)
    out = torch.full(refined.shape, ignore_index, dtype=torch.long, device=refined.device)
    out[refined >= t + band] = 1
    out[refined < t - band] = 0
    if ignore_disagreement:
        out[(raw >= t) != (refined >= t)] = ignore_index
    return out
