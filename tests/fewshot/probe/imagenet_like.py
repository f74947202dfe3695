"""A tiny ImageNet-layout folder built from the embedded Fashion-MNIST images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.datasets.fashion_mnist import load_fashion_mnist

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
NAMES = ["tench", "goldfish", "shark", "ray"]
EXTENSIONS = [".JPEG", ".jpg", ".jpeg", ".PNG"]


def write_imagenet_like(root: Path, train_per_class: int = 6, val_per_class: int = 3) -> Path:
    """``root/{train,val}/<wnid>/<wnid>_<i>.<ext>``: Fashion-MNIST classes 0-3 upscaled to
    assorted sizes around 500 x 375 (some portrait), extensions in several cases, plus a
    DINOv2-style ``labels.txt``."""
    images, labels = load_fashion_mnist("train")
    rng = np.random.default_rng(0)
    for split, count, offset in (("train", train_per_class, 0), ("val", val_per_class, 100)):
        for c, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            members = np.flatnonzero(labels == c)[offset : offset + count]
            for n, i in enumerate(members):
                w, h = int(rng.integers(440, 540)), int(rng.integers(330, 420))
                if n % 3 == 2:
                    w, h = h, w
                gray = Image.fromarray(images[i]).resize((w, h), Image.BILINEAR)
                tint = np.asarray(gray, np.float32)[..., None] * [1.0, 0.8 + 0.05 * c, 0.6]
                ext = EXTENSIONS[n % len(EXTENSIONS)]
                Image.fromarray(tint.clip(0, 255).astype(np.uint8)).save(
                    folder / f"{wnid}_{offset + n}{ext}", quality=90
                )
    (root / "labels.txt").write_text(
        "\n".join(f"{w},{name}" for w, name in zip(WNIDS, NAMES, strict=True))
    )
    return root
