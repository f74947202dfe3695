"""What the student does not see of a global crop: BEiT-style block-wise masks (iBOT,
MaskCluster) and MSN's token dropping."""

from __future__ import annotations

import math

import numpy as np
import torch


class BlockMaskGenerator:
    """Masks about ``ratio * h * w`` patches as a union of random rectangles.

    Each rectangle covers between ``min_patches`` and the patches still to mask, with an
    aspect ratio drawn log-uniformly in ``[min_aspect, 1 / min_aspect]`` (BEiT uses 0.3,
    i.e. 0.3 to 3.3). Rectangles are added until the target is reached or no rectangle
    adds new patches in ten tries, so the result can fall slightly short of the target.
    """

    def __init__(
        self, grid: tuple[int, int], min_patches: int = 4, min_aspect: float = 0.3
    ) -> None:
        if not 0 < min_aspect <= 1:
            raise ValueError(f"masking min_aspect must be in (0, 1], got {min_aspect}")
        self.height, self.width = grid
        self.min_patches = min_patches
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        for _ in range(10):
            area = rng.uniform(min(self.min_patches, budget), budget)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h <= self.height and 0 < w <= self.width:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                block = mask[top : top + h, left : left + w]
                added = int(h * w - block.sum())
                if 0 < added <= budget:
                    block[...] = True
                    return added
        return 0

    def __call__(self, ratio: float, rng: np.random.Generator) -> np.ndarray:
        """A boolean [h, w] mask with about ``ratio`` of the patches set."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        target = int(round(ratio * self.height * self.width))
        done = 0
        while done < target:
            added = self._add_block(mask, target - done, rng)
            if added == 0:
                break
            done += added
        return mask


def sample_masks(
    generator: BlockMaskGenerator,
    num_crops: int,
    share: float,
    ratio_range: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """[num_crops, h, w] masks: each crop is masked with probability ``share``.

    A masked crop's ratio is drawn uniformly in ``ratio_range`` (iBOT: [0.1, 0.5]); the
    others get an all-False mask (the student sees them whole).
    """
    out = np.zeros((num_crops, generator.height, generator.width), dtype=bool)
    for i in range(num_crops):
        if rng.random() < share:
            out[i] = generator(float(rng.uniform(*ratio_range)), rng)
    return out


def token_keep(num_patches: int, drop: float, seed: int, step: int) -> torch.Tensor:
    """Indices of the patch tokens MSN keeps: ``floor(num_patches * (1 - drop))`` of them, in
    the order of one random permutation, the same for the whole batch (MSN's
    ``patch_drop``). Drawn from ``(seed, step)``: every process and a resumed run agree."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    keep = int(math.floor(num_patches * (1.0 - drop)))
    return torch.randperm(num_patches, generator=g)[:keep]
