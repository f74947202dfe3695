"""Gradient clipping: per parameter (DINO / iBOT) or by the global norm.

- ``per_param``: DINO's ``clip_gradients``. Each parameter's gradient is scaled by
  ``min(1, c / (||g|| + 1e-6))`` on its own, so one exploding tensor (early on, the
  prototypes or the patch embedding) is tamed without shrinking every other update.
- ``global``: ``torch.nn.utils.clip_grad_norm_`` over all student gradients together (the
  common choice elsewhere): one scale for all, the direction of the update is kept.
"""

from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor

from common.config import ConfigError
from common.distributed import all_reduce_sum
from pretrain.sharding import full_tensor

CLIP_MODES = ("per_param", "global")


def check_clip_mode(mode: str) -> str:
    if mode not in CLIP_MODES:
        raise ConfigError(f"train.clip must be one of {list(CLIP_MODES)}, got {mode!r}")
    return mode


def grad_norms(params: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each parameter's whole gradient [P].

    Sharded gradients (FSDP2: every tensor split on dim 0 over all processes) sum their
    shards' squared norms in one all-reduce, not one collective per tensor.
    """
    grads = [p.grad for p in params]
    if not any(isinstance(g, DTensor) for g in grads):
        return torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    if not all(isinstance(g, DTensor) for g in grads):
        raise RuntimeError("per-parameter clipping needs every gradient sharded or none")
    local = [torch.linalg.vector_norm(g.to_local().float()) for g in grads]
    return all_reduce_sum(torch.stack(local).square()).sqrt()


@torch.no_grad()
def clip_gradients(params: list[torch.Tensor], max_norm: float, mode: str) -> torch.Tensor:
    """Clip the gradients of ``params`` in place; returns the global norm before clipping.

    ``max_norm <= 0`` disables clipping (the norm is still measured and returned).
    """
    params = [p for p in params if p.grad is not None]
    if mode == "global" or not params:
        clip = max_norm if max_norm > 0 else math.inf
        return full_tensor(torch.nn.utils.clip_grad_norm_(params, clip))
    norms = grad_norms(params)
    if max_norm > 0:
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for p, s in zip(params, scale.tolist(), strict=True):
            if s < 1.0:
                p.grad.mul_(s)
    return norms.square().sum().sqrt()
