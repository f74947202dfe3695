"""KoLeo regulariser (Sablayrolles et al., 2019; used by DINOv2) on student cls tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.cross_rank import all_gather_rows


class KoLeoLoss(nn.Module):
    """``L = -mean_i log(eps + min_{j != i} ||x_i - x_j||)`` on L2-normalised features.

    Spreads features uniformly. ``eps`` keeps duplicates (distance 0) finite. The nearest
    neighbours are searched in the global batch (every process's rows), so N processes
    compute what one process computes; DINOv2 searches each process's batch alone, which
    changes the term with the number of processes.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = all_gather_rows(features)
        if features.shape[0] < 2:
            raise ValueError(
                "KoLeo needs at least 2 samples in the global batch to find nearest neighbours "
                f"(got {features.shape[0]}); raise train.batch_size or set loss.koleo_weight=0"
            )
        x = F.normalize(features.float(), dim=-1, eps=self.eps)
        with torch.no_grad():
            sim = x @ x.t()
            sim.fill_diagonal_(-2.0)  # below any cosine, so a sample never picks itself
            nearest = sim.argmax(dim=1)
        # pairwise_distance adds eps inside the norm: finite value and gradient for duplicates.
        dist = F.pairwise_distance(x, x[nearest], eps=self.eps)
        return -torch.log(dist + self.eps).mean()
