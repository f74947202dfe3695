"""CST's weak setting (``supervision: cst_weak``): no support mask, query targets on the fly.

After CST (Kang et al., CVPR 2023; dahyun-kang/cst, ``model/cst.py``, its ``pseudo``
supervision). The model never sees a support mask, at training or test. A training query's
target is made per (query, support) pair from the frozen backbone's last attention block:
the cosine of the support image's cls query with each query patch key, per head, averaged
over heads, resized bilinearly (``align_corners=True``) to the input size, mapped to
[0, 1] by (x + 1) / 2 and thresholded at 0.4; it is zero where the image-level labels say
the query does not show the class. Test queries are still scored against ground truth.

Our ``weak`` is another setting: stage-2 pseudo-masks per image for training and
ground-truth support masks at test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fewshot.features import FrozenBackbone

CST_THRESHOLD = 0.4  # CST's threshold on the (x + 1) / 2 head-mean cosine


def query_saliency(cls_query: torch.Tensor, patch_keys: torch.Tensor, size: int) -> torch.Tensor:
    """(x + 1) / 2 of the head-mean cosine between a support cls query and query patch keys.

    ``cls_query`` [B, heads, d] (support images) and ``patch_keys`` [B, heads, h*w, d]
    (query images), any norm; returns [B, size, size] at pixels (bilinear,
    ``align_corners=True``).
    """
    b, _, p, _ = patch_keys.shape
    g = round(p**0.5)
    if g * g != p:
        raise ValueError(f"{p} patch keys are not a square grid")
    q = F.normalize(cls_query.float(), dim=-1)
    k = F.normalize(patch_keys.float(), dim=-1)
    cos = torch.einsum("bnpc,bnc->bnp", k, q).mean(dim=1).reshape(b, 1, g, g)
    cos = F.interpolate(cos, (size, size), mode="bilinear", align_corners=True)[:, 0]
    return (cos + 1.0) * 0.5


def query_pseudo_masks(
    cls_query: torch.Tensor, patch_keys: torch.Tensor, present: torch.Tensor, size: int
) -> torch.Tensor:
    """Bool [B, size, size]: saliency above ``CST_THRESHOLD``, all False where not ``present``."""
    mask = query_saliency(cls_query, patch_keys, size) > CST_THRESHOLD
    return mask & present.bool().to(mask.device).view(-1, 1, 1)


@dataclass
class LastBlockKeys:
    """Last-block cls queries [N, heads, d] and patch keys [N, heads, h*w, d] of a split,
    held in memory or (both None) computed per batch by ``backbone``."""

    backbone: FrozenBackbone
    dataset: Dataset
    cls_query: torch.Tensor | None = None
    patch_keys: torch.Tensor | None = None

    def of(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cls queries, patch keys) of images ``index``."""
        if self.cls_query is not None and self.patch_keys is not None:
            return self.cls_query[index], self.patch_keys[index]
        images = torch.stack([self.dataset[int(i)]["image"] for i in index])
        out = self.backbone.last_block_qk(images)
        return out["cls_query"].cpu(), out["patch_keys"].cpu()

    def query_masks(
        self, queries: torch.Tensor, supports: torch.Tensor, present: torch.Tensor, size: int
    ) -> torch.Tensor:
        """Bool [B, size, size] pseudo-masks of each query for its support's class."""
        cls_query, _ = self.of(supports)
        _, patch_keys = self.of(queries)
        return query_pseudo_masks(cls_query, patch_keys, present, size)
