"""iBOT masked patch-token clustering loss (Zhou et al., 2022, "iBOT: Image BERT
Pre-Training with Online Tokenizer")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.config import ConfigError
from pretrain.collapse import global_mean

# loss.ibot.normalise values: how the per-crop means are averaged (see IBOTPatchLoss).
NORMALISE = ("all_crops", "masked_crops")


class IBOTPatchLoss(nn.Module):
    """Cross-entropy on masked patches only, averaged per crop, then over crops.

    ``l_i = (1 / max(M_i, 1)) sum_{p masked in i} CE(q[p], softmax(z[p] / tau_s))`` with
    ``M_i`` the number of masked patches of crop ``i`` (the teacher sees the unmasked crop,
    the student the masked one). ``all_crops`` (iBOT): ``L = mean_i l_i`` over every global
    crop, an unmasked one counting 0, so the term's weight scales with the masked share.
    ``masked_crops``: ``L = mean_{i: M_i > 0} l_i``, the same weight whatever that share.
    Both means span the global batch of every process.
    """

    def __init__(self, student_temp: float = 0.1, normalise: str = "all_crops") -> None:
        super().__init__()
        if normalise not in NORMALISE:
            raise ConfigError(
                f"loss.ibot.normalise must be one of {list(NORMALISE)}, got {normalise!r}"
            )
        self.student_temp = student_temp
        self.normalise = normalise

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        crop_index: torch.Tensor,
        num_crops: int,
    ) -> torch.Tensor:
        """Inputs are the masked patches only: [P, K] logits/targets and their crop index [P]."""
        # No early return without masked patches: every process must run the same
        # collectives and touch the same parameters (DDP's buckets, global_mean).
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        per_patch = (-teacher_probs * log_p).sum(dim=-1)
        if self.normalise == "masked_crops":
            return per_image_mean(per_patch, crop_index, num_crops)
        sums = per_patch.new_zeros(num_crops).index_add(0, crop_index, per_patch)
        counts = torch.bincount(crop_index, minlength=num_crops).to(per_patch.dtype)
        return global_mean(sums / counts.clamp_min(1.0))


def per_image_mean(
    per_patch: torch.Tensor, crop_index: torch.Tensor, num_crops: int
) -> torch.Tensor:
    """Average per crop, then over the global batch's crops that have a masked patch.

    The second mean spans every process (a collective: each process calls it, with or
    without masked patches), so it is the mean one process would take over the whole batch.
    """
    sums = per_patch.new_zeros(num_crops).index_add(0, crop_index, per_patch)
    counts = torch.bincount(crop_index, minlength=num_crops).to(per_patch.dtype)
    has = counts > 0
    return global_mean(sums[has] / counts[has])
