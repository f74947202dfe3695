"""A light segmentation decoder on a frozen ViT: patch tokens + a shallow image stem.

Patch tokens carry semantics at 1/patch resolution; a two-layer conv stem on the image at
half resolution carries the edges the patch grid cannot. Both meet at half resolution,
one 3x3 conv mixes them, and the logits are upsampled bilinearly to the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.backbone import forward_tokens


class SegmentationDecoder(nn.Module):
    """Logits [B, num_classes, H, W] from patch tokens [B, h, w, C] and images [B, 3, H, W]."""

    def __init__(self, embed_dim: int, num_classes: int, channels: int) -> None:
        super().__init__()
        self.tokens = nn.Sequential(
            nn.Conv2d(embed_dim, channels, 1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels // 2, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels // 2, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + channels // 2, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        low = self.stem(images)
        sem = self.tokens(tokens.permute(0, 3, 1, 2))
        sem = F.interpolate(sem, size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.fuse(torch.cat([sem, low], dim=1))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    """A (frozen or low-lr) timm ViT backbone plus :class:`SegmentationDecoder`."""

    def __init__(self, backbone: nn.Module, num_classes: int, channels: int, freeze: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.freeze = freeze
        self.decoder = SegmentationDecoder(backbone.embed_dim, num_classes, channels)
        if freeze:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> SegmentationModel:
        super().train(mode)
        if self.freeze:  # a frozen backbone keeps eval-mode behaviour (no dropout)
            self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            _, patches = forward_tokens(self.backbone, images)
        return self.decoder(patches, images)
