"""iBOT masked patch-token clustering loss (Zhou et al., 2022, "iBOT: Image BERT
Pre-Training with Online Tokenizer")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.collapse import global_mean


class IBOTPatchLoss(nn.Module):
    """Cross-entropy on masked patches only, normalised per image.

    ``L = mean_{i: M_i > 0} (1 / M_i) sum_{p masked in i} CE(q[p], softmax(z[p] / tau_s))``
    with ``M_i`` the number of masked patches of crop ``i``; the teacher sees the unmasked
    crop, the student the masked one.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        crop_index: torch.Tensor,
        num_crops: int,
    ) -> torch.Tensor:
        """Inputs are the masked patches only: [P, K] logits/targets and their crop index [P]."""
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        per_patch = (-teacher_probs * log_p).sum(dim=-1)
        return per_image_mean(per_patch, crop_index, num_crops)


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
