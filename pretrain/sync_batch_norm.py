"""Batch norm over the global batch for the backbone's batch-norm layers (the conv stem).

``torch.nn.SyncBatchNorm`` runs on GPUs only; this equivalent runs wherever the process
group does (gloo on CPU included), so the multi-process equality tests cover the code that
trains. In training mode with several processes, the mean and variance are those of the
global batch and the gradient reaches every process's rows (:mod:`pretrain.cross_rank`);
the running statistics are updated with the global statistics, so they stay identical on
every process. Without running statistics it normalises with the global batch in eval mode
too; one row normalises to the bias and an empty batch stays empty (torch refuses both).
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.cross_rank import all_reduce_sum


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``BatchNorm{1,2,3}d`` with global-batch statistics; the same parameters and buffers."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.track_running_stats:
            return super().forward(x)  # the running statistics: nothing to share
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        # Two passes (mean, then squared deviations), as torch's batch norm: no cancellation.
        count = torch.full((1,), x.numel() / max(x.shape[1], 1), device=x.device)
        sums = all_reduce_sum(torch.cat([xf.sum(dims), count]))
        n = sums[-1].detach()  # a tensor: no host sync on an accelerator
        mean = sums[:-1] / n.clamp_min(1)
        var = all_reduce_sum(((xf - mean.view(shape)) ** 2).sum(dims)) / n.clamp_min(1)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        """torch's rule: momentum (or the cumulative average when None), unbiased variance."""
        self.num_batches_tracked.add_(1)
        momentum = self.momentum
        if momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked)
        unbiased = var * n / (n - 1).clamp_min(1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def sync_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every batch-norm layer of ``module`` in place by :class:`GlobalBatchNorm`
    (same parameters, buffers and mode); returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, GlobalBatchNorm
        ):
            norm = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=_device_of(child),
            )
            norm.load_state_dict(child.state_dict())
            norm.train(child.training)
            setattr(module, name, norm)
        else:
            sync_batch_norm(child)
    return module


def _device_of(module: nn.Module) -> torch.device | None:
    tensor = next(iter([*module.parameters(), *module.buffers()]), None)
    return tensor.device if tensor is not None else None
