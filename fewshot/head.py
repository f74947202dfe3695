"""The correlation-transformer head for few-shot classification + segmentation (FS-CS).

After CST (Kang et al., "Distilling Self-Supervised Vision Transformers for Weakly-Supervised
Few-Shot Classification & Segmentation", CVPR 2023), our implementation. The input is a
correlation tensor ``[B, C, Q, 1 + S]``: for each of the ``Q`` query patch tokens, its
cosine with the support cls token and with ``S = g*g`` support patch tokens, one channel per
(layer, head). Blocks attend along the support axis (one small sequence per query token),
shrink the support image tokens by mask-aware pooling, and end with two tokens per query
position: the cls-correlation token (-> class presence) and the image-correlation token
(-> foreground mask).

Support-mask semantics (ours): background support positions are masked as attention keys
and left out of every pooling, so the output never depends on the correlations at masked
positions; the cls token is never masked (an empty support mask still leaves it).
With ``cst=True`` the head follows CST's released code (model/module/cst.py,
corrtrblock.py): the pixel support mask is resized (bilinear, ``align_corners=True``) to each
block's key grid and keys are masked where it is 0, queries and the shortcut are pooled
over every position, attention logits are not scaled by 1/sqrt(d), the mixing has two
layers, the presence branch pools (3x3, stride 2) before its last two 1x1 layers, and the
mask branch has four 3x3 convolutions around an ``align_corners=True`` upsampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_pool(
    x: torch.Tensor, mask: torch.Tensor, kernel: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the support image tokens over ``kernel x kernel`` windows, foreground only.

    ``x``: [B, C, Q, 1 + g*g] (token 0 is cls, passed through); ``mask``: [B, g*g] bool.
    A window with no foreground gives a zero token and a False pooled mask entry.
    Returns (x [B, C, Q, 1 + (g/k)^2], mask [B, (g/k)^2]).
    """
    b, c, q, s = x.shape
    g = round((s - 1) ** 0.5)
    if g * g != s - 1 or g % kernel:
        raise ValueError(
            f"support axis of {s - 1} image tokens is not a square grid divisible by {kernel}"
        )
    m = mask.to(x.dtype).reshape(b, 1, 1, g, g)
    img = x[..., 1:].reshape(b, c, q, g, g) * m
    gk = g // kernel
    # Sum over each window by reshaping: [.., gk, k, gk, k] -> sum over the k axes.
    num = img.reshape(b, c, q, gk, kernel, gk, kernel).sum(dim=(4, 6))
    cnt = m.reshape(b, 1, 1, gk, kernel, gk, kernel).sum(dim=(4, 6))
    pooled = (num / cnt.clamp(min=1)).reshape(b, c, q, gk * gk)
    new_mask = cnt.reshape(b, gk * gk) > 0
    return torch.cat([x[..., :1], pooled], dim=-1), new_mask


class CorrelationAttention(nn.Module):
    """Self-attention along the support axis, queries pooled by ``kernel`` (mask-aware)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, heads: int, groups: int, cst: bool = False
    ) -> None:
        super().__init__()
        hidden = out_ch // 2
        if hidden % heads:
            raise ValueError(f"out channels {out_ch} // 2 must be divisible by heads {heads}")
        self.kernel, self.heads, self.cst = kernel, heads, cst
        self.qkv = nn.Conv2d(in_ch, 3 * hidden, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.shortcut_norm = nn.Sequential(nn.GroupNorm(groups, out_ch), nn.ReLU())
        self.agg = nn.Sequential(
            nn.GroupNorm(groups, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.GroupNorm(groups, out_ch),
            nn.ReLU(),
        )
        self.out_norm = nn.GroupNorm(groups, out_ch)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask``: support grid mask [B, g*g] bool (ours) or pixel mask [B, H, W] (CST)."""
        b, _, qn, s = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        if self.cst:
            g = round((s - 1) ** 0.5)
            resized = F.interpolate(
                mask[:, None].float(), (g, g), mode="bilinear", align_corners=True
            )
            keys = resized.flatten(1) != 0
            pool_mask = torch.ones_like(keys)
        else:
            keys = pool_mask = mask
        q, pooled_mask = masked_pool(q, pool_mask, self.kernel)
        short, _ = masked_pool(self.shortcut(x), pool_mask, self.kernel)
        short = self.shortcut_norm(short)

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, C, Q, S] -> [B, g, Q, S, C/g]
            return t.reshape(b, self.heads, -1, qn, t.shape[-1]).permute(0, 1, 3, 4, 2)

        qh, kh, vh = split(q), split(k), split(v)
        # Keys: cls always visible, image tokens only where the support mask is foreground.
        visible = torch.cat([keys.new_ones(b, 1), keys], dim=1).bool()
        attn_mask = visible[:, None, None, None, :]  # broadcast over heads, Q, and query tokens
        scale = 1.0 if self.cst else None  # CST's logits are plain dot products
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=attn_mask, scale=scale)
        out = out.permute(0, 1, 4, 2, 3).reshape(b, -1, qn, out.shape[3])
        # CST resizes the pixel mask again in every block; ours carries the pooled mask on.
        return self.out_norm(self.agg(out) + short), mask if self.cst else pooled_mask


def _conv_gn_relu(ch: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ch, ch, 1), nn.GroupNorm(groups, ch), nn.ReLU())


class FeedForward(nn.Module):
    """Point-wise two-layer MLP with a residual and GroupNorm."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.ff = nn.Sequential(
            nn.Conv2d(ch, ch // 2, 1, bias=False),
            nn.GroupNorm(groups, ch // 2),
            nn.ReLU(),
            nn.Conv2d(ch // 2, ch, 1, bias=False),
        )
        self.norm = nn.GroupNorm(groups, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.ff(x))


class CorrelationTransformer(nn.Module):
    """Correlation blocks + presence head (cls token) + mask head (image token).

    ``forward(corr [B, C_in, Q, 1 + g*g], support_mask, grid (h, w))`` returns presence
    logits [B, 2] and mask logits [B, 2, 2h, 2w] (upsample to pixels outside);
    ``support_mask`` is [B, g*g] bool, or with ``cst`` the pixel mask [B, H, W].
    The product of ``pool_sizes`` must equal the support grid ``g`` so that exactly one
    image-correlation token is left per query position.
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, ...] = (32, 64),
        pool_sizes: tuple[int, ...] = (2, 2),
        attn_heads: int = 4,
        groups: int = 4,
        cst: bool = False,
    ) -> None:
        super().__init__()
        self.cst = cst
        if len(channels) != len(pool_sizes):
            raise ValueError(f"channels {channels} and pool_sizes {pool_sizes} differ in length")
        self.pool_sizes = tuple(pool_sizes)
        self.attn = nn.ModuleList()
        self.ff = nn.ModuleList()
        prev = in_channels
        for ch, k in zip(channels, pool_sizes, strict=True):
            self.attn.append(CorrelationAttention(prev, ch, k, attn_heads, groups, cst))
            self.ff.append(FeedForward(ch, groups))
            prev = ch
        half = prev // 2
        if cst:
            self.mix = nn.Sequential(*[_conv_gn_relu(prev, groups) for _ in range(2)])
            self.cls_head = nn.Sequential(
                nn.Conv2d(prev, prev, 1), nn.ReLU(), nn.Conv2d(prev, half, 1), nn.ReLU()
            )
            self.cls_pool = nn.AvgPool2d(3, stride=2, padding=1)
            self.cls_out = nn.Sequential(nn.Conv2d(half, half, 1), nn.ReLU(), nn.Conv2d(half, 2, 1))
            self.seg_head = nn.Sequential(
                nn.Conv2d(prev, prev, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(prev, half, 3, padding=1),
                nn.ReLU(),
            )
            self.seg_out = nn.Sequential(
                nn.Conv2d(half, half, 3, padding=1), nn.ReLU(), nn.Conv2d(half, 2, 3, padding=1)
            )
        else:
            self.mix = _conv_gn_relu(prev, groups)
            self.cls_head = nn.Sequential(
                nn.Conv2d(prev, half, 1), nn.ReLU(), nn.Conv2d(half, half, 1), nn.ReLU()
            )
            self.cls_pool = nn.Identity()
            self.cls_out = nn.Conv2d(half, 2, 1)
            self.seg_head = nn.Sequential(
                nn.Conv2d(prev, half, 3, padding=1), nn.ReLU(), nn.Conv2d(half, half, 3, padding=1)
            )
            self.seg_out = nn.Sequential(nn.ReLU(), nn.Conv2d(half, 2, 3, padding=1))

    @property
    def support_grid(self) -> int:
        g = 1
        for k in self.pool_sizes:
            g *= k
        return g

    def forward(
        self, corr: torch.Tensor, support_mask: torch.Tensor, grid: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, q, s = corr.shape
        h, w = grid
        if h * w != q:
            raise ValueError(f"query grid {grid} does not hold {q} query tokens")
        if s != 1 + self.support_grid**2:
            raise ValueError(
                f"support axis has {s} tokens, expected 1 + {self.support_grid}^2 "
                f"(the product of pool_sizes {self.pool_sizes})"
            )
        x = corr
        mask = support_mask if self.cst else support_mask.reshape(b, -1).bool()
        for attn, ff in zip(self.attn, self.ff, strict=True):
            x, mask = attn(x, mask)
            x = ff(x)
        x = self.mix(x)  # [B, C, Q, 2]
        cls_tok = x[..., 0].reshape(b, -1, h, w)
        img_tok = x[..., 1].reshape(b, -1, h, w)
        # Ours applies its last (linear) layer after the mean, which is the same thing.
        presence = self.cls_out(self.cls_pool(self.cls_head(cls_tok))).mean(dim=(2, 3))
        seg = self.seg_head(img_tok)
        seg = F.interpolate(seg, scale_factor=2, mode="bilinear", align_corners=self.cst)
        return presence, self.seg_out(seg)
