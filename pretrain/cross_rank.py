"""Collectives that give a batch-global term the gradient it has in one process.

Under DDP and FSDP every process back-propagates its own loss, and the parameter gradients
are then *averaged* over the N processes. A term that depends on the whole global batch
(ME-MAX's batch-mean prediction, batch-norm statistics, the per-crop mean of the patch
losses, KoLeo's nearest neighbours) is computed from rows summed or gathered over the
processes, so every process holds the same value. For the averaged gradient to equal the
one-process gradient, each process's rows must receive the gradient of *every* process's
copy of the term: the backward pass of these collectives sums the incoming gradients over
the processes, which the averaging then divides by N again. A backward that let only the
local copy through would leave 1/N of the gradient.

Every process must call these collectives in the same order, in forward and in backward.
With one process they are the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from common.distributed import get_rank, get_world_size, is_dist


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        torch_dist.all_reduce(out, op=torch_dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        return grad


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(get_world_size())]
        torch_dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM)
        start = get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the processes (a new tensor); its backward sums gradients likewise."""
    return _AllReduceSum.apply(x) if is_dist() else x


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``x`` [n, ...] stacked in rank order [N * n, ...].

    Each process must hold the same number of rows (the per-process batch); the gradient of
    the local rows is the sum, over the processes, of the gradients of their gathered copies.
    """
    if not is_dist():
        return x
    # Maximum and minus minimum in one call: every process sees a mismatch and raises.
    rows = torch.tensor([x.shape[0], -x.shape[0]], device=x.device)
    torch_dist.all_reduce(rows, op=torch_dist.ReduceOp.MAX)
    most, fewest = int(rows[0]), -int(rows[1])
    if most != fewest:
        raise ValueError(
            "all_gather_rows needs the same number of rows on every process, got between "
            f"{fewest} and {most}"
        )
    return _AllGatherRows.apply(x)
