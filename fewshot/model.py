"""The FS-CS model on cached tokens: correlation + correlation-transformer head, 1-way 1-shot.

N-way K-shot prediction runs N*K 1-way 1-shot passes (as in CST): presence and foreground
probabilities are averaged over the K shots; a pixel takes the class with the highest
foreground probability, or background when that is below 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.metrics import IGNORE_INDEX
from fewshot.correlation import correlate, patch_mask, resized_support_tokens, support_tokens
from fewshot.data import ImagePool
from fewshot.episodes import Episode
from fewshot.head import CorrelationTransformer

# ours: mask-pooled support tokens and our head; cst: CST's support tokens and head.
PROTOCOLS = ("ours", "cst")


class FSCSModel(nn.Module):
    """1-way 1-shot forward on cached tokens: (presence logits [B, 2], mask logits [B, 2, H, W])."""

    def __init__(
        self,
        num_layers: int,
        num_heads: int,
        patch_size: int,
        image_size: int,
        channels: Sequence[int],
        pool_sizes: Sequence[int],
        attn_heads: int,
        protocol: str = "ours",
    ) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.num_heads, self.patch_size, self.image_size = num_heads, patch_size, image_size
        self.grid = image_size // patch_size
        self.cst = protocol == "cst"
        self.head = CorrelationTransformer(
            num_layers * num_heads, tuple(channels), tuple(pool_sizes), attn_heads, cst=self.cst
        )
        # CST resizes the support grid to the head's, so any grid fits; ours pools it.
        if not self.cst and self.grid % self.head.support_grid:
            raise ValueError(
                f"head.pool_sizes {list(pool_sizes)} multiply to {self.head.support_grid}, "
                f"which does not divide the {self.grid}x{self.grid} patch grid "
                f"(image size {image_size} / patch {patch_size}); pick sizes whose product "
                f"divides {self.grid}"
            )

    def forward(
        self, query: torch.Tensor, support: torch.Tensor, support_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query``/``support``: [B, L, 1 + h*w, C] tokens; ``support_mask``: [B, H, W] bool,
        or None (CST's weak setting): every support position counts, so no key is masked
        (CST's head skips its masking) and ours pools over the whole support image."""
        if support_mask is None:
            size = (support.shape[0], self.image_size, self.image_size)
            support_mask = torch.ones(size, dtype=torch.bool, device=support.device)
        if self.cst:
            s_tok = resized_support_tokens(support.float(), self.head.support_grid, self.num_heads)
            s_mask = support_mask
        else:
            pmask = patch_mask(support_mask, self.patch_size)
            s_tok, s_mask = support_tokens(
                support.float(), pmask, self.head.support_grid, self.num_heads
            )
        corr = correlate(query.float(), s_tok, self.num_heads)
        presence, seg = self.head(corr, s_mask, (self.grid, self.grid))
        seg = F.interpolate(
            seg, size=support_mask.shape[-2:], mode="bilinear", align_corners=self.cst
        )
        return presence, seg


def one_way_batch(
    pool: ImagePool, pairs: Sequence[tuple[int, int, int]], device: torch.device
) -> dict[str, torch.Tensor]:
    """Tensors for 1-way 1-shot passes given (query, support, class) triples.

    The query target is 1 where the supervision mask shows the class, 255 where it is ignore,
    0 elsewhere; presence comes from the ground-truth image-level labels. A pool without
    masks (CST's weak setting) gives ``support_mask`` None and the query's pseudo-mask for
    its support (``fewshot.cst_weak``) as the target.
    """
    q = torch.tensor([p[0] for p in pairs])
    s = torch.tensor([p[1] for p in pairs])
    c = torch.tensor([p[2] for p in pairs]).view(-1, 1, 1)
    presence = torch.tensor([p[2] in pool.labels[p[0]] for p in pairs]).long()
    if pool.masks is None:
        if pool.pseudo is None:
            raise ValueError("a pool without masks needs its last-block keys (pool.pseudo)")
        target = pool.pseudo.query_masks(q, s, presence, pool.gt.shape[-1]).long()
        support_mask = None
    else:
        qmask = pool.masks[q].long()
        target = (qmask == c).long()
        target[qmask == IGNORE_INDEX] = IGNORE_INDEX
        support_mask = (pool.masks[s].long() == c).to(device)
    return {
        "query": pool.tokens_of(q).to(device),
        "support": pool.tokens_of(s).to(device),
        "support_mask": support_mask,
        "target": target.to(device),
        "presence": presence.to(device),
    }


def loss_fn(
    presence_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    cls_weight: float,
    seg_weight: float,
    fg_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted presence cross-entropy + per-pixel segmentation cross-entropy (ignore 255);
    ``fg_weight`` weighs foreground pixels against background ones (CST: 1)."""
    cls_loss = F.cross_entropy(presence_logits, batch["presence"])
    pixel_weights = mask_logits.new_tensor([1.0, fg_weight])
    seg_loss = F.cross_entropy(
        mask_logits, batch["target"], weight=pixel_weights, ignore_index=IGNORE_INDEX
    )
    total = cls_weight * cls_loss + seg_weight * seg_loss
    return total, {"cls_loss": float(cls_loss.detach()), "seg_loss": float(seg_loss.detach())}


@torch.no_grad()
def episode_probabilities(
    model: FSCSModel,
    pool: ImagePool,
    episodes: Sequence[Episode],
    device: torch.device,
    batch_size: int = 64,
    support_pool: ImagePool | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per episode: presence probabilities [N] and foreground probabilities [N, H, W]
    (shot-averaged), from N*K 1-way 1-shot passes batched together.

    ``support_pool`` supplies support tokens/masks (default ``pool``); it lets evaluation
    read ground-truth support masks while training used pseudo-masks. A support pool without
    masks (CST's weak setting) passes None.
    """
    model.eval()
    sp = support_pool or pool
    passes = [
        (e_idx, n, ep.query, s, c)
        for e_idx, ep in enumerate(episodes)
        for n, (c, shots) in enumerate(zip(ep.classes, ep.supports, strict=True))
        for s in shots
    ]
    pres: dict[tuple[int, int], list[torch.Tensor]] = {}
    fg: dict[tuple[int, int], list[torch.Tensor]] = {}
    for start in range(0, len(passes), batch_size):
        chunk = passes[start : start + batch_size]
        q = torch.tensor([p[2] for p in chunk])
        s = torch.tensor([p[3] for p in chunk])
        c = torch.tensor([p[4] for p in chunk]).view(-1, 1, 1)
        s_mask = None if sp.masks is None else (sp.masks[s].long() == c).to(device)
        p_logits, m_logits = model(pool.tokens_of(q).to(device), sp.tokens_of(s).to(device), s_mask)
        p_prob = p_logits.softmax(-1)[:, 1].cpu()
        m_prob = m_logits.softmax(1)[:, 1].cpu()
        for i, (e_idx, n, *_rest) in enumerate(chunk):
            pres.setdefault((e_idx, n), []).append(p_prob[i])
            fg.setdefault((e_idx, n), []).append(m_prob[i])
    out = []
    for e_idx, ep in enumerate(episodes):
        n_way = range(len(ep.classes))
        out.append(
            (
                torch.stack([torch.stack(pres[(e_idx, n)]).mean(0) for n in n_way]),
                torch.stack([torch.stack(fg[(e_idx, n)]).mean(0) for n in n_way]),
            )
        )
    return out
