"""MSN's prototype-matching loss (Assran et al., 2022, "Masked Siamese Networks for
Label-Efficient Learning")."""

from __future__ import annotations

import torch
from torch import nn

from pretrain.collapse import sinkhorn_balance


def smooth(probs: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Probabilities over label-smoothed prototype labels: MSN's ``softmax(.) @ labels`` with
    one-hot labels smoothed to ``1 - s + s / K`` and ``s / K``, i.e. ``(1 - s) p + s / K``."""
    if smoothing == 0:
        return probs
    return (1.0 - smoothing) * probs + smoothing / probs.shape[-1]


class MSNLoss(nn.Module):
    """Cross-entropy of every student view's prototype probabilities against the teacher's
    sharpened assignment of the same image.

    Logits are cosines between L2-normalised embeddings and prototypes. The student's
    probabilities are ``smooth(softmax(logits / tau))``; the targets are the teacher's, raised
    to ``1 / T`` and renormalised, then balanced by Sinkhorn-Knopp over the global batch
    when ``sinkhorn_iters > 0``.
    """

    def __init__(self, temp: float, sharpen: float, smoothing: float, sinkhorn_iters: int) -> None:
        super().__init__()
        self.temp = temp
        self.sharpen = sharpen
        self.smoothing = smoothing
        self.sinkhorn_iters = sinkhorn_iters

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return smooth(torch.softmax(logits.float() / self.temp, dim=-1), self.smoothing)

    @torch.no_grad()
    def targets(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """Sharpened (and balanced) targets [B, K] of the teacher's view."""
        p = self.probs(teacher_logits) ** (1.0 / self.sharpen)
        p = p / p.sum(dim=-1, keepdim=True)
        return sinkhorn_balance(p, self.sinkhorn_iters) if self.sinkhorn_iters > 0 else p

    def forward(self, student_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``student_probs`` [V*B, K], views stacked view-major; ``targets`` [B, K]."""
        views = student_probs.shape[0] // targets.shape[0]
        repeated = targets.repeat(views, 1)
        return -(repeated * torch.log(student_probs)).sum(dim=-1).mean()
