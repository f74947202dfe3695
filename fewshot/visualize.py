"""PNG grids of FS-CS episodes: supports (with masks), query, prediction, ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.datasets.palette import voc_palette  # noqa: E402
from fewshot.data import ImagePool  # noqa: E402
from fewshot.episodes import Episode  # noqa: E402
from fewshot.evaluate import episode_target  # noqa: E402

_PALETTE = np.array(voc_palette(), dtype=np.float32).reshape(256, 3) / 255.0


def _overlay(image: torch.Tensor, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB [H, W, 3] image with class colours blended in (0 and 255 left clear)."""
    rgb = image.permute(1, 2, 0).numpy().astype(np.float32)
    colour = _PALETTE[labels]
    on = ((labels > 0) & (labels != 255))[..., None]
    return np.where(on, (1 - alpha) * rgb + alpha * colour, rgb)


def episode_grid(
    path: Path,
    pool: ImagePool,
    support_pool: ImagePool,
    episodes: Sequence[Episode],
    predictions: Sequence[torch.Tensor],
    presence: Sequence[torch.Tensor],
    class_names: Sequence[str],
) -> Path:
    """One row per episode; ``predictions`` are label maps in dataset class ids."""
    n_sup = max(len(e.classes) * len(e.supports[0]) for e in episodes)
    cols = n_sup + 3
    fig, axes = plt.subplots(
        len(episodes), cols, figsize=(1.6 * cols, 1.7 * len(episodes)), squeeze=False
    )
    for row, (ep, pred, pres) in enumerate(zip(episodes, predictions, presence, strict=True)):
        col = 0
        for c, shots in zip(ep.classes, ep.supports, strict=True):
            for s in shots:
                m = (support_pool.masks[s].numpy() == c) * c
                axes[row, col].imshow(_overlay(support_pool.image(s), m))
                axes[row, col].set_title(f"support: {class_names[c]}", fontsize=6)
                col += 1
        query = pool.image(ep.query)
        truth = [class_names[c] for c, p in zip(ep.classes, ep.presence, strict=True) if p]
        said = [class_names[c] for c, p in zip(ep.classes, pres.tolist(), strict=True) if p]
        panels = (
            (query.permute(1, 2, 0).numpy(), "query"),
            (_overlay(query, pred.numpy()), f"pred: {', '.join(said) or 'none'}"),
            (
                _overlay(query, episode_target(pool.gt[ep.query], ep.classes).numpy()),
                f"true: {', '.join(truth) or 'none'}",
            ),
        )
        for k, (img, title) in enumerate(panels):
            axes[row, n_sup + k].imshow(img)
            axes[row, n_sup + k].set_title(title, fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
