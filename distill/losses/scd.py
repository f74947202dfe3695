"""Self-correspondence distillation (SCD) loss, after Xu et al., AAAI 2023.

Two views a, b of the same images (b is a rescaled copy of a) each have a pseudo-label
map P (e.g. one-hot pseudo-masks or CAMs, [B, K, H, W]) and the trained model's logits S
([B, K', H', W']). At N sampled positions x_1..x_N of view a and y_1..y_N of view b
(normalised coordinates, so position u means the same image point in both views):

    T_ij = cos(P_a(x_i), P_b(y_j)),      Q_ij = cos(S_a(x_i), S_b(y_j)),
    L    = - mean_ij (T_ij - mean(T)) * max(Q_ij, 0)

with the mean of T taken per image. The target correspondence is centred, so pairs more
alike than average pull the logits together and the rest push them apart (down to
orthogonal); the clamp stops the loss from rewarding anti-correlated logits without
bound. The target is a constant: gradients flow only into the logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def sample_points(batch: int, num_points: int, generator: torch.Generator | None = None):
    """Uniform random positions [B, N, 2] in [-1, 1] (grid_sample's x, y order)."""
    return torch.rand(batch, num_points, 2, generator=generator) * 2 - 1


def read_points(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``maps`` [B, K, H, W] at ``points`` [B, N, 2]: [B, N, K]."""
    grid = points.to(maps.device, maps.dtype)[:, :, None, :]
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=False)[..., 0].transpose(1, 2)


class SCDLoss(nn.Module):
    """Correlation loss between the two-view correspondences of pseudo-labels and logits."""

    def __init__(self, num_points: int = 64) -> None:
        super().__init__()
        if num_points < 2:
            raise ValueError(f"SCD needs at least 2 sampled points per view, got {num_points}")
        self.num_points = num_points

    def forward(
        self,
        target_a: torch.Tensor,
        target_b: torch.Tensor,
        logits_a: torch.Tensor,
        logits_b: torch.Tensor,
        points_a: torch.Tensor | None = None,
        points_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss; ``points_*`` [B, N, 2] fix the sampled positions (random otherwise)."""
        maps = {"target_a": target_a, "target_b": target_b, "logits_a": logits_a}
        maps["logits_b"] = logits_b
        for name, m in maps.items():
            if m.dim() != 4:
                raise ValueError(f"SCD {name} must be [B, K, H, W], got {tuple(m.shape)}")
        if len({m.shape[0] for m in maps.values()}) != 1:
            raise ValueError(
                "SCD inputs differ in batch size: "
                + ", ".join(f"{k} {tuple(v.shape)}" for k, v in maps.items())
            )
        if target_a.shape[1] != target_b.shape[1] or logits_a.shape[1] != logits_b.shape[1]:
            raise ValueError("the two views must have the same channels for targets and logits")
        b = target_a.shape[0]
        if points_a is None:
            points_a = sample_points(b, self.num_points).to(logits_a.device)
        if points_b is None:
            points_b = sample_points(b, self.num_points).to(logits_a.device)
        with torch.no_grad():
            ta = F.normalize(read_points(target_a.float(), points_a), dim=-1)
            tb = F.normalize(read_points(target_b.float(), points_b), dim=-1)
            t = ta @ tb.transpose(1, 2)
            t = t - t.mean(dim=(1, 2), keepdim=True)
        qa = F.normalize(read_points(logits_a, points_a), dim=-1)
        qb = F.normalize(read_points(logits_b, points_b), dim=-1)
        q = qa @ qb.transpose(1, 2)
        return -(t * q.clamp_min(0)).mean()
