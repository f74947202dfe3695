"""Does a map's bright half or its dark half name the image's class? The sign criterion.

Heads of small self-supervised ViTs disagree: some attend to the objects, others to the
background, and which ones differs between two runs of one recipe (measured in
benchmarks/RESULTS.md). Their mean then cancels. A border prior cannot sort
them when objects touch the frame or a convolutional stem's padding marks the border.

The labels can. On each single-label image, split a map by rank into a bright and a dark
half (equal sizes, whatever the ties) and mean-pool the patch tokens of each half. The half
that holds the object carries its class: across images, its pooled tokens separate the
classes better. The separation is the Fisher ratio
``trace(between-class scatter) / trace(total scatter)`` of the L2-normalised pooled tokens.
:func:`distill.token_probe.search_signs` starts from the per-head answer and climbs the
same criterion on the foreground probe's map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class ClassSeparation:
    """Streaming Fisher ratio of labelled vectors: between-class over total scatter."""

    def __init__(self, num_classes: int, dim: int, groups: int) -> None:
        shape = (groups, num_classes, dim)
        self.class_sums = torch.zeros(shape, dtype=torch.float64)
        self.class_counts = torch.zeros(groups, num_classes, dtype=torch.float64)
        self.sq_norms = torch.zeros(groups, dtype=torch.float64)

    def add(self, vectors: torch.Tensor, labels: torch.Tensor) -> None:
        """``vectors`` [N, groups, dim] with one class id each in ``labels`` [N] (CPU tensors)."""
        v = vectors.double()
        self.class_sums.index_add_(1, labels, v.transpose(0, 1))
        self.class_counts.index_add_(1, labels, torch.ones_like(v[:, :, 0]).transpose(0, 1))
        self.sq_norms += (v * v).sum(dim=(0, 2))

    def ratio(self) -> torch.Tensor:
        """Fisher ratio per group [groups]; 0 where nothing varies."""
        n = self.class_counts.sum(1)
        total_sum = self.class_sums.sum(1)
        mean_sq = (total_sum * total_sum).sum(-1) / n.clamp_min(1)
        within_means = (self.class_sums * self.class_sums).sum(-1) / self.class_counts.clamp_min(1)
        between = within_means.sum(1) - mean_sq
        total = self.sq_norms - mean_sq
        return torch.where(total > 1e-12, between / total.clamp_min(1e-12), 0.0)


class HeadPolarity:
    """Accumulates, per head, how well the bright and the dark half of its map name the class."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.bright: ClassSeparation | None = None
        self.dark: ClassSeparation | None = None
        self.images = 0

    def add(
        self, heads: torch.Tensor, tokens: torch.Tensor, labels: Sequence[Sequence[int]]
    ) -> None:
        """A batch: head maps [B, K, h, w], patch tokens [B, h, w, C], labels per image.

        Only single-label images count: their object is known to be of that one class.
        """
        keep = [i for i, labs in enumerate(labels) if len(set(labs)) == 1]
        if not keep:
            return
        maps = heads[keep].flatten(2).float()  # [N, K, P]
        toks = tokens[keep].flatten(1, 2).float()  # [N, P, C]
        cls = torch.tensor([int(next(iter(labels[i]))) for i in keep])
        if self.bright is None:
            self.bright = ClassSeparation(self.num_classes, toks.shape[-1], maps.shape[1])
            self.dark = ClassSeparation(self.num_classes, toks.shape[-1], maps.shape[1])
        # By rank, not by value: both halves hold P/2 patches even on flat or tied maps.
        top = maps.argsort(dim=-1, descending=True, stable=True)[..., : maps.shape[-1] // 2]
        high = torch.zeros_like(maps).scatter_(-1, top, 1.0)
        for half, acc in ((high, self.bright), (1.0 - high, self.dark)):
            pooled = torch.einsum("nkp,npc->nkc", half, toks) / half.sum(-1, keepdim=True)
            acc.add(F.normalize(pooled, dim=-1).cpu(), cls)
        self.images += len(keep)

    def signs(self) -> torch.Tensor:
        """+1 for heads whose bright half names the class better, -1 for the others [K]."""
        if self.bright is None or self.dark is None:
            raise ValueError(
                "no single-label image was seen: head polarity from labels needs images with "
                "exactly one image-level label (or set mask.head_polarity=none)"
            )
        return torch.where(self.dark.ratio() > self.bright.ratio(), -1.0, 1.0).float()


def mirror(maps: torch.Tensor) -> torch.Tensor:
    """Each map (the last two dims) mirrored within its own range: ``min + max - x``."""
    flat = maps.flatten(-2)
    lo = flat.amin(-1)[..., None, None]
    hi = flat.amax(-1)[..., None, None]
    return lo + hi - maps


def apply_signs(heads: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Mirror the heads [B, K, h, w] with sign -1 within each map's own range (min + max - x)."""
    flip = (signs.to(heads.device) < 0)[None, :, None, None]
    return torch.where(flip, mirror(heads), heads)
