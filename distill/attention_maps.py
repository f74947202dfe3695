"""Self-attention maps of an exported ViT, per head, upsampled to pixels.

One map per head comes from the captured queries and keys of a block: the cosine of the
cls query with each patch key, rescaled to [0, 1] by (x + 1) / 2 (the CST pseudo-label
recipe, thresholded at 0.4 after the head mean in configs/distill/cst_pascal.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from common.backbone import capture_qk, num_prefix_tokens, patch_grid
from common.checkpoint import CheckpointError


@dataclass
class AttentionOutput:
    """Per-image attention maps at patch resolution and the final patch tokens."""

    heads: torch.Tensor  # [B, layers * heads, h, w] cosine maps, in [0, 1]
    saliency: torch.Tensor  # [B, h, w] the map the foreground is cut from
    tokens: torch.Tensor  # [B, h, w, C] final-norm patch tokens


def _cls_maps(q: torch.Tensor, k: torch.Tensor, prefix: int) -> torch.Tensor:
    """[B, heads, P] cosine of the cls query with the P patch keys, rescaled to [0, 1]."""
    cos = F.cosine_similarity(q[:, :, :1], k[:, :, prefix:], dim=-1)
    return (cos + 1.0) / 2.0


def check_attention_access(model: torch.nn.Module) -> None:
    """Raise a CheckpointError unless every block exposes a fused qkv attention (timm ViT)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(getattr(b, "attn", None), "qkv") for b in blocks):
        raise CheckpointError(
            f"this backbone ({type(model).__name__}) gives no access to its attention: distill "
            "needs a timm VisionTransformer whose blocks have `attn.qkv`, as exported by "
            "`python -m pretrain` (common.backbone.export_backbone)"
        )


@torch.no_grad()
def extract_attention(
    model: VisionTransformer,
    images: torch.Tensor,
    layers: Sequence[int] = (-1,),
) -> AttentionOutput:
    """Attention maps of ``layers`` (per head) and patch tokens for a batch [B, 3, H, W]."""
    check_attention_access(model)
    with capture_qk(model, tuple(layers)) as store:
        tokens = model.forward_features(images)
    prefix = num_prefix_tokens(model)
    h, w = patch_grid(model, images.shape[-2], images.shape[-1])
    b = images.shape[0]
    depth = len(model.blocks)
    maps = [_cls_maps(*store[layer % depth], prefix) for layer in layers]
    heads = torch.cat(maps, dim=1).reshape(b, -1, h, w)
    patches = tokens[:, prefix:].reshape(b, h, w, tokens.shape[-1])
    return AttentionOutput(heads=heads, saliency=heads.mean(dim=1), tokens=patches)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of [B, h, w] or [B, K, h, w] patch maps to pixel ``size``."""
    squeeze = maps.dim() == 3
    x = maps[:, None] if squeeze else maps
    x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
    return x[:, 0] if squeeze else x
