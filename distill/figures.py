"""PNG grids: image, attention per head, saliency, pseudo-masks and ground truth per row."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from common.datasets.palette import voc_palette

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colour_mask(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """Class-index mask [H, W] -> RGB uint8 [H, W, 3] in the VOC palette."""
    return _PALETTE[np.asarray(mask, dtype=np.int64).clip(0, 255)]


def overlay(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.55) -> np.ndarray:
    """Blend a palette-coloured mask over an image [3, H, W] in [0, 1] (background kept)."""
    img = (image.permute(1, 2, 0).cpu().numpy() * 255).astype(np.float32)
    col = colour_mask(mask.cpu()).astype(np.float32)
    fg = (np.asarray(mask.cpu()) > 0)[..., None]
    return np.where(fg, (1 - alpha) * img + alpha * col, img).clip(0, 255).astype(np.uint8)


def save_grid(
    path: Path,
    images: torch.Tensor,
    heads: torch.Tensor | None,
    masks: Mapping[str, torch.Tensor],
    row_titles: list[str] | None = None,
) -> Path:
    """One row per image: image, each head's map [B, K, H, W] (viridis), then each mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = images.shape[0]
    k = 0 if heads is None else heads.shape[1]
    cols = 1 + k + len(masks)
    fig, axes = plt.subplots(b, cols, figsize=(1.3 * cols, 1.3 * b), squeeze=False)
    for i in range(b):
        panels: list[tuple[str, np.ndarray, str | None]] = [
            ("image", images[i].permute(1, 2, 0).cpu().numpy(), None)
        ]
        panels += [(f"head {h}", heads[i, h].cpu().numpy(), "viridis") for h in range(k)]
        panels += [(name, overlay(images[i], m[i]), None) for name, m in masks.items()]
        for j, (title, data, cmap) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(data, cmap=cmap, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
        if row_titles:
            axes[i, 0].set_ylabel(row_titles[i], fontsize=6)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
