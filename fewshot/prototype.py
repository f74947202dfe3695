"""Prototype baseline: cosine of query patches to the mean support foreground feature.

No training. Per class, the prototype is the mean last-layer patch token over the support
foreground (all K shots); the foreground score of a query pixel is the cosine of its patch
to the prototype (bilinearly upsampled) and the presence score is the highest patch cosine.
Both thresholds are chosen on validation episodes (training classes), never on the test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fewshot.correlation import patch_mask
from fewshot.data import ImagePool
from fewshot.episodes import Episode
from fewshot.evaluate import score

THRESHOLDS = tuple(np.round(np.arange(-0.2, 1.0, 0.05), 3).tolist())


def _patches(pool: ImagePool, index: int) -> torch.Tensor:
    """Last-layer patch tokens [h*w, C], unit norm (the pool stores per-head norms)."""
    return F.normalize(pool.tokens_of(torch.tensor([index]))[0, -1, 1:].float(), dim=-1)


def prototype_scores(
    pool: ImagePool,
    episodes: Sequence[Episode],
    patch_size: int,
    support_pool: ImagePool | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per episode: (presence scores [N], foreground scores [N, H, W]) as cosines."""
    sp = support_pool or pool
    size = pool.gt.shape[-1]
    grid = size // patch_size
    out = []
    for ep in episodes:
        query = _patches(pool, ep.query)
        pres, fg = [], []
        for c, shots in zip(ep.classes, ep.supports, strict=True):
            feats = []
            for s in shots:
                tok = _patches(sp, s)
                if sp.masks is None:  # CST's weak setting has no support mask: the whole image
                    feats.append(tok)
                    continue
                m = patch_mask((sp.masks[s].long() == c)[None], patch_size).flatten()
                # An empty support mask falls back to the whole image.
                feats.append(tok[m] if m.any() else tok)
            proto = F.normalize(torch.cat(feats).mean(0), dim=0)
            cos = (query @ proto).view(1, 1, grid, grid)
            pres.append(cos.max())
            fg.append(F.interpolate(cos, size=(size, size), mode="bilinear")[0, 0])
        # CPU like the heads' probabilities: the metrics and label maps live there.
        out.append((torch.stack(pres).cpu(), torch.stack(fg).cpu()))
    return out


def choose_thresholds(
    episodes: Sequence[Episode],
    scores: Sequence[tuple[torch.Tensor, torch.Tensor]],
    gt_masks: torch.Tensor,
    num_classes: int,
) -> tuple[float, float]:
    """(presence, foreground) thresholds maximising exact ratio and mIoU on these episodes."""
    best_cls = max(
        THRESHOLDS,
        key=lambda t: score(episodes, scores, gt_masks, num_classes, t, 2.0)["exact_ratio"],
    )
    best_seg = max(
        THRESHOLDS,
        key=lambda t: score(episodes, scores, gt_masks, num_classes, 2.0, t)["miou"],
    )
    return float(best_cls), float(best_seg)
