"""Collapse avoidance for the teacher targets of one head: centering, Sinkhorn-Knopp, ME-MAX.

- ``centering`` (DINO): subtract an EMA centre of the teacher logits before the sharpened
  softmax; the centre's batch mean is all-reduced so every process shares one centre.
- ``sinkhorn`` (SwAV, iBOT/DINOv2 variant): Sinkhorn-Knopp iterations make the target
  matrix of the *global* batch have uniform prototype marginals.
- ``memax`` (MSN): plain sharpened softmax targets; the student is pushed to spread its
  batch-mean prediction by the ME-MAX term ``log K - H(mean_b p_b)`` (see :func:`memax_term`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common import distributed as dist
from pretrain.cross_rank import all_reduce_sum

COLLAPSE_METHODS = ("centering", "sinkhorn", "memax")


def global_count(n: int, device: torch.device) -> int:
    """Number of rows summed over every process."""
    t = torch.tensor([float(n)], device=device)
    return int(dist.all_reduce_sum(t).item())


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iters: int = 3) -> torch.Tensor:
    """Target probabilities [B, K] with uniform prototype marginals over the global batch.

    ``Q = exp(logits / temp)``, then :func:`sinkhorn_balance`.
    """
    logits = logits.float()
    # Subtracting the global max keeps exp() finite without changing the normalised result.
    peak = logits.max().detach().clone()
    if dist.is_dist():
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    return sinkhorn_balance(torch.exp((logits - peak) / temp), iters)


@torch.no_grad()
def sinkhorn_balance(q: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """Balance positive scores [B, K] into assignments: ``iters`` rounds of scaling each
    prototype's column to total ``1 / K``, then each sample's row to total ``1 / B``; rows
    are finally rescaled to sum to 1. Column sums are all-reduced, so ``B`` is the global
    batch (MSN's ``distributed_sinkhorn``, the SwAV / DINOv2 iterations)."""
    n_rows = global_count(q.shape[0], q.device)
    if n_rows < 2:
        raise ValueError(
            "Sinkhorn-Knopp needs at least 2 samples in the global batch (got "
            f"{n_rows}); raise train.batch_size or use collapse=centering"
        )
    k = q.shape[1]
    q = q.float().t()  # [K, B]
    q = q / dist.all_reduce_sum(q.sum().clone())
    for _ in range(iters):
        q /= dist.all_reduce_sum(q.sum(dim=1, keepdim=True).clone())
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n_rows
    return (q * n_rows).t()


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of the global batch: the same value on every process, and under
    DDP/FSDP's gradient averaging the gradient one process with the whole batch would get
    (see :mod:`pretrain.cross_rank`)."""
    n = max(global_count(x.shape[0], x.device), 1)  # an empty global batch gives zeros
    return all_reduce_sum(x.sum(dim=0)) / n


def memax_term(student_probs: torch.Tensor) -> torch.Tensor:
    """ME-MAX (MSN): ``log K - H(p_mean)``, zero when the batch-mean prediction is uniform."""
    mean = global_mean(student_probs.float())
    entropy = -(mean * torch.log(mean.clamp_min(1e-12))).sum()
    return math.log(student_probs.shape[-1]) - entropy


class TeacherTargets(nn.Module):
    """Turns teacher logits into target probabilities with one collapse-avoidance method."""

    def __init__(
        self,
        method: str,
        out_dim: int,
        center_momentum: float = 0.9,
        sinkhorn_iters: int = 3,
    ) -> None:
        super().__init__()
        if method not in COLLAPSE_METHODS:
            raise ValueError(
                f"unknown collapse method {method!r}; choose one of {COLLAPSE_METHODS}"
            )
        self.method = method
        self.center_momentum = center_momentum
        self.sinkhorn_iters = sinkhorn_iters
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(
        self, logits: torch.Tensor, temp: float, center_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Target probabilities [B, K]; ``centering`` also updates the centre afterwards,
        from ``center_logits`` when given (iBOT: every patch, not only the targeted ones)."""
        logits = logits.float()
        if global_count(logits.shape[0], logits.device) == 0:
            if self.method == "centering" and center_logits is not None:
                self.update_center(center_logits)  # iBOT centres even before masking starts
            return logits.softmax(dim=-1)  # nothing to target anywhere (no masked patch)
        if self.method == "sinkhorn":
            return sinkhorn_knopp(logits, temp, self.sinkhorn_iters)
        if self.method == "memax":
            return F.softmax(logits / temp, dim=-1)
        probs = F.softmax((logits - self.center) / temp, dim=-1)
        self.update_center(logits if center_logits is None else center_logits)
        return probs

    @torch.no_grad()
    def update_center(self, logits: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean_b(logits)`` with the mean over the global batch."""
        batch_mean = global_mean(logits.float()).unsqueeze(0)
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)
