"""``python -m pretrain.attention``: per-head self-attention maps of the last block (DINO figure).

For each image: the input, each head's cls-to-patch attention as a heatmap over the image,
and each head's thresholded mask keeping the patches that hold ``--mass`` of the attention
(DINO keeps 60 %), with how many heads keep each patch, written as one PNG grid per image.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from common.backbone import last_block_attention, load_backbone
from common.cli import add_debug_flag, run_cli
from common.datasets.errors import CorruptDataError
from common.rundir import setup_logging
from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)


def mass_threshold_masks(attn: torch.Tensor, mass: float) -> torch.Tensor:
    """Boolean masks keeping, per map, the largest values that sum to ``mass`` of the total.

    ``attn``: [..., N] non-negative weights. DINO's visualisation uses ``mass = 0.6``.
    """
    if not 0 < mass <= 1:
        raise ValueError(f"--mass must be in (0, 1], got {mass}")
    values, order = attn.sort(dim=-1, descending=True)
    cum = values.cumsum(dim=-1) / values.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    # Keep a patch while the mass before it is below the target (so at least one is kept).
    keep_sorted = (cum - values / values.sum(dim=-1, keepdim=True).clamp_min(1e-12)) < mass
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def native_size(path: Path, patch: int) -> tuple[int, int]:
    """An image file's (height, width), each rounded to the nearest multiple of ``patch``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise CorruptDataError(f"cannot read image {path}: {exc}") from None
    return tuple(max(patch, round(side / patch) * patch) for side in (height, width))


def load_image(path: Path, size: int | tuple[int, int]) -> torch.Tensor:
    """An image file as a [3, H, W] float tensor in [0, 1] (``size``: side or (H, W))."""
    from PIL import Image, UnidentifiedImageError

    height, width = (size, size) if isinstance(size, int) else size
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((width, height), Image.BICUBIC)
    except (OSError, UnidentifiedImageError) as exc:
        raise CorruptDataError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255.0


def attention_panels(image: torch.Tensor, attn: torch.Tensor, mass: float) -> Figure:
    """A 2 x (heads + 1) matplotlib figure.

    Top row: the image, then each head's cls-to-patch attention over it, on one colour scale
    (the colour bar: share of the head's attention per patch). Bottom row: how many heads keep
    each patch in their top-``mass`` mask (colour bar: 0..heads), then each head's mask.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads, h, w = attn.shape
    size = tuple(image.shape[-2:])
    up = F.interpolate(attn[None], size=size, mode="nearest")[0]
    masks = mass_threshold_masks(attn.flatten(1), mass).reshape(heads, h, w).float()
    masks = F.interpolate(masks[None], size=size, mode="nearest")[0]
    rgb = image.permute(1, 2, 0).numpy()
    pct = int(round(mass * 100))
    fig, axes = plt.subplots(
        2, heads + 1, figsize=(2 * (heads + 1) + 1, 4.6), squeeze=False, layout="constrained"
    )
    axes[0, 0].imshow(rgb)
    axes[0, 0].set_title("image", fontsize=8)
    # How many heads agree on a patch: a union of every head's mask covers nearly all of it.
    axes[1, 0].imshow(rgb)
    agree = axes[1, 0].imshow(
        masks.sum(0).numpy(),
        alpha=0.6,
        cmap=plt.get_cmap("viridis", heads + 1),
        vmin=-0.5,
        vmax=heads + 0.5,
    )
    axes[1, 0].set_title(f"heads keeping a patch\n(top {pct} % each)", fontsize=8)
    heat = None
    vmax = float(attn.max())
    for i in range(heads):
        axes[0, i + 1].imshow(rgb)
        heat = axes[0, i + 1].imshow(up[i].numpy(), alpha=0.6, cmap="inferno", vmin=0.0, vmax=vmax)
        axes[0, i + 1].set_title(f"head {i}: attention", fontsize=8)
        axes[1, i + 1].imshow(rgb * masks[i].numpy()[..., None])
        axes[1, i + 1].set_title(f"head {i}: top {pct} % mass", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.colorbar(heat, ax=list(axes[0]), fraction=0.02, pad=0.01, label="cls attention")
    bar = fig.colorbar(agree, ax=list(axes[1]), fraction=0.02, pad=0.01, label="heads")
    bar.set_ticks(range(heads + 1))
    return fig


def attention_figure(image: torch.Tensor, attn: torch.Tensor, mass: float, out: Path) -> None:
    """Save :func:`attention_panels` as a PNG."""
    import matplotlib.pyplot as plt

    fig = attention_panels(image, attn, mass)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_attention_figures(
    model: torch.nn.Module,
    images: list[Path],
    out: Path,
    size: int | None,
    mass: float = 0.6,
    patch: int = 1,
) -> list[Path]:
    """One DINO-style attention grid per image file; returns the PNG paths.

    ``size`` None: each image at its own size rounded to the ``patch`` grid.
    """
    out.mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    written = []
    # Named by the path below the images' common folder: two photo1.jpg in different folders
    # write two figures.
    common = Path(os.path.commonpath([p.parent.resolve() for p in images])) if images else None
    for path in images:
        image = load_image(path, size if size is not None else native_size(path, patch))
        attn = last_block_attention(model, ((image - mean) / std)[None])["attn"][0]
        rel = path.parent.resolve().relative_to(common) / path.stem
        target = out / f"{rel}_attention.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        attention_figure(image, attn, mass, target)
        written.append(target)
    return written


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.attention",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="the backbone: a pretraining run directory or its export/ folder, timm:<name>, "
        "or a DINO / DINOv2 / iBOT / MSN checkpoint file",
    )
    parser.add_argument(
        "--weights", default=None, help="weights file of a timm: name (offline machines)"
    )
    parser.add_argument("--images", nargs="+", required=True, help="image files to visualise")
    parser.add_argument("--out", required=True, help="folder for the PNG grids")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="square input side, a multiple of the patch size (default: each image at its own "
        "size, rounded to the patch grid)",
    )
    parser.add_argument(
        "--mass", type=float, default=0.6, help="attention mass kept by the masks (DINO: 0.6)"
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not 0 < args.mass <= 1:
        parser.error(f"--mass must be in (0, 1], got {args.mass}")
    setup_logging(None)
    model, info = load_backbone(args.checkpoint, weights=args.weights)
    patch = int(info["timm_kwargs"]["patch_size"])
    if args.size is not None and args.size % patch:
        parser.error(f"--size {args.size} is not a multiple of the patch size {patch}")
    written = write_attention_figures(
        model, [Path(p) for p in args.images], Path(args.out), args.size, args.mass, patch
    )
    for target in written:
        log.info("wrote %s", target)
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; a bad checkpoint or image is one line on stderr, exit code 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
