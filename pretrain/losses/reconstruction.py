"""Masked pixel reconstruction (MaskCluster; the l1 variant of MAE/SimMIM's objective)."""

from __future__ import annotations

import torch
from torch import nn

from pretrain.losses.ibot import per_image_mean


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, h*w, p*p*C] patch pixel vectors in row-major patch order."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


class PixelReconstructionLoss(nn.Module):
    """``L = mean_i (1 / M_i) sum_{p masked in i} mean_j |x_hat[p, j] - x[p, j]|``.

    With ``norm_pix`` the target patch is standardised by its own mean and std first (MAE),
    so the head predicts structure rather than brightness.
    """

    def __init__(self, norm_pix: bool = True) -> None:
        super().__init__()
        self.norm_pix = norm_pix

    def forward(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        crop_index: torch.Tensor,
        num_crops: int,
    ) -> torch.Tensor:
        """``prediction``/``target``: [P, p*p*C] for the masked patches; ``crop_index`` [P]."""
        target = target.float()
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (prediction.float() - target).abs().mean(dim=-1)
        return per_image_mean(per_patch, crop_index, num_crops)
