"""DINO cls-token clustering loss (Caron et al., 2021, "Emerging Properties in Self-Supervised
Vision Transformers")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOLoss(nn.Module):
    """Cross-entropy between teacher targets and student predictions over pairs of views.

    ``L = mean_{(t, s): t != s} mean_b sum_k -q_t[b, k] log softmax(z_s[b] / tau_s)[k]``
    where ``t`` runs over the teacher's (global) views and ``s`` over all student views;
    a teacher view is never paired with the student's copy of the same crop.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(
        self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]
    ) -> torch.Tensor:
        """``student_logits``: [B, K] per view, globals first; ``teacher_probs``: per global."""
        if len(student_logits) < 2:
            raise ValueError(
                "the DINO loss compares different views and needs at least 2 crops "
                f"(got {len(student_logits)}); set crops.num_global >= 2 or add local crops"
            )
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        pairs = 0
        for ti, q in enumerate(teacher_probs):
            for si, z in enumerate(student_logits):
                if si == ti:
                    continue
                log_p = F.log_softmax(z.float() / self.student_temp, dim=-1)
                total = total + (-q * log_p).sum(dim=-1).mean()
                pairs += 1
        return total / pairs
