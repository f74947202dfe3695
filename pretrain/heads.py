"""Projection heads: the DINO prototype head and the light pixel-reconstruction head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from pretrain.sync_batch_norm import GlobalBatchNorm


class BatchStatNorm(GlobalBatchNorm):
    """Batch normalisation that always uses the statistics of the current global batch.

    DINO's ``use_bn_in_head`` (SyncBatchNorm in the projection MLP). No running statistics:
    the teacher's head weights are an EMA of the student's, and both heads normalise with the
    batch at hand. Under DDP/FSDP the mean, variance and gradients are those of the global
    batch (:class:`pretrain.sync_batch_norm.GlobalBatchNorm`).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__(dim, eps, track_running_stats=False)


class DINOHead(nn.Module):
    """MLP -> bottleneck -> L2 normalisation -> weight-normalised prototypes (no bias).

    The prototype layer's norm is fixed to 1 when ``norm_last_layer`` (DINO's default; it
    makes the logits cosines, which stabilises training of small models). ``use_bn`` puts
    :class:`BatchStatNorm` after each hidden layer (DINO's ``use_bn_in_head``): the MLP can
    then no longer map every image to one bottleneck vector (head collapse).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"head nlayers must be >= 1, got {nlayers}")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        for i in range(nlayers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < nlayers - 1:
                if use_bn:
                    layers.append(BatchStatNorm(dims[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.apply(_init_linear)
        self.last_layer = prototype_layer(bottleneck_dim, out_dim, norm_last_layer)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck vectors the prototypes score."""
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(x))


def prototype_layer(bottleneck_dim: int, out_dim: int, norm_last_layer: bool) -> nn.Module:
    """Weight-normalised prototypes without bias; their norm is fixed to 1 when
    ``norm_last_layer`` (the logits are then cosines)."""
    layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
    layer.parametrizations.weight.original0.data.fill_(1.0)
    if norm_last_layer:
        layer.parametrizations.weight.original0.requires_grad = False
    return layer


class PixelHead(nn.Module):
    """Two-layer MLP from a patch token to its ``patch_size**2 * 3`` pixel values."""

    def __init__(self, in_dim: int, patch_size: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, patch_size**2 * 3)
        )
        self.apply(_init_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
