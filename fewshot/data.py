"""Image pools for FS-CS: per-image frozen features, masks and image-level labels in memory.

Episodes index into a pool, so one backbone pass per image serves every episode (features
are cached on disk by ``fewshot.features``). Masks are held at the network input size.
Under CST's weak setting a pool has no supervision masks (``masks`` None) and, for
training, the last-block queries and keys its query targets are made from (``pseudo``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from common.datasets.coco import COCOSegmentation
from common.datasets.items import check_masks_exist
from common.datasets.mask_folder import MaskFolderSegmentation
from common.datasets.palette import read_mask
from common.datasets.voc import VOCSegmentation, labels_of_mask
from fewshot.cst_weak import LastBlockKeys
from fewshot.features import FrozenBackbone, cached, extract

log = logging.getLogger(__name__)


@dataclass
class ImagePool:
    """Images of one split: ``tokens`` [N, L, 1 + h*w, C] (head-normalised, fp16) or None
    when they are computed per batch by ``backbone``; ``masks`` uint8 [N, H, W] (the
    supervision source; None: no masks, CST's weak setting), ``gt`` uint8 [N, H, W] (ground
    truth), ``labels`` ground-truth image-level labels, ``dataset`` for reading images,
    ``pseudo`` the source of on-the-fly query targets when ``masks`` is None."""

    ids: list[str]
    tokens: torch.Tensor | None
    masks: torch.Tensor | None
    gt: torch.Tensor
    labels: list[list[int]]
    dataset: Dataset
    backbone: FrozenBackbone | None = None
    layers: list[int] | None = None
    pseudo: LastBlockKeys | None = None

    def image(self, index: int) -> torch.Tensor:
        return self.dataset[index]["image"]

    def tokens_of(self, index: torch.Tensor) -> torch.Tensor:
        """Tokens [B, L, 1 + h*w, C] of images ``index`` (from memory or a backbone pass)."""
        if self.tokens is not None:
            return self.tokens[index]
        images = torch.stack([self.image(int(i)) for i in index])
        return self.backbone.layer_tokens(images, self.layers)


DATASET_FORMATS = {
    "voc": VOCSegmentation,
    "coco": COCOSegmentation,
    "folder": MaskFolderSegmentation,
}


def open_split(
    root: str | Path,
    split: str,
    image_size: int,
    max_images: int | None,
    fmt: str = "voc",
    **folder_kw,
) -> Dataset:
    """The first ``max_images`` items of a split (VOC layout, COCO 2014 or an ``images/`` +
    ``masks/`` folder: ``folder_kw`` are its ``mask_dir``, ``gt_masks``, ``class_names``),
    resized."""
    if fmt not in DATASET_FORMATS:
        raise ValueError(f"data.format must be one of {sorted(DATASET_FORMATS)}, got {fmt!r}")
    kw = folder_kw if fmt == "folder" else {}
    ds = DATASET_FORMATS[fmt](root, split, image_size=image_size, **kw)
    if max_images is not None and max_images < len(ds):
        return Subset(ds, range(max_images))
    return ds


def base_dataset(ds: Dataset) -> VOCSegmentation | COCOSegmentation:
    """The VOCSegmentation under an optional Subset."""
    return ds.dataset if isinstance(ds, Subset) else ds


def split_ids(ds: Dataset) -> list[str]:
    base = base_dataset(ds)
    return [base.ids[i] for i in ds.indices] if isinstance(ds, Subset) else list(base.ids)


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))


def read_gt_masks(ds: Dataset, size: int) -> torch.Tensor:
    """uint8 [N, size, size] ground-truth masks of a split (nearest resize)."""
    base = base_dataset(ds)
    index = list(ds.indices) if isinstance(ds, Subset) else range(len(base))
    return torch.from_numpy(np.stack([_resize_mask(base.read_mask(i), size) for i in index]))


def load_masks(ids: list[str], folder: Path, size: int, what: str) -> torch.Tensor:
    """uint8 [N, size, size] masks ``<folder>/<id>.png`` (nearest resize); every id must exist."""
    check_masks_exist(
        folder,
        ids,
        f"images ({what})",
        "re-run the distill stage on this dataset split, or point pseudo_masks at the matching run",
    )
    out = np.empty((len(ids), size, size), dtype=np.uint8)
    for n, name in enumerate(ids):
        out[n] = _resize_mask(read_mask(folder / f"{name}.png"), size)
    return torch.from_numpy(out)


def cache_key(ds: Dataset, kind: str, **extra: object) -> tuple[str, dict]:
    """Cache file name and record of features of ``kind`` for a split (root, ids, size)."""
    base = base_dataset(ds)
    ids = split_ids(ds)
    record = {
        "kind": kind,
        "root": str(Path(base.root).resolve()),
        "split": base.split,
        "image_size": list(base.image_size or ()),
        "ids_sha": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
        **extra,
    }
    key = hashlib.sha256(repr(sorted(record.items())).encode()).hexdigest()[:10]
    return f"{kind}_{base.split}_{key}", record


def build_pool(
    ds: Dataset,
    backbone: FrozenBackbone,
    layers: list[int],
    cache_dir: str | Path,
    mask_dir: Path | None,
    batch_size: int,
    cache_features: bool = True,
) -> ImagePool:
    """Features (cached on disk, or computed per batch when ``cache_features`` is off: the
    full-size benchmarks), supervision masks (GT or ``mask_dir``), GT masks and labels."""
    base = base_dataset(ds)
    ids = split_ids(ds)
    size = base.image_size[0]
    gt = read_gt_masks(ds, size)
    masks = gt if mask_dir is None else load_masks(ids, Path(mask_dir), size, "pseudo-mask")
    labels = [labels_of_mask(m) for m in gt.numpy()]
    tokens = None
    if cache_features:
        name, record = cache_key(ds, "layer_tokens", layers=list(layers))
        tokens = cached(
            cache_dir,
            backbone.hash,
            name,
            record,
            lambda: extract(
                ds,
                lambda x: {"tokens": backbone.layer_tokens(x, layers)},
                batch_size,
                desc=f"features {base.split}",
            ),
        )["tokens"]
    return ImagePool(
        ids=ids,
        tokens=tokens,
        masks=masks,
        gt=gt,
        labels=labels,
        dataset=ds,
        backbone=backbone,
        layers=list(layers),
    )


def build_last_block_keys(
    ds: Dataset,
    backbone: FrozenBackbone,
    cache_dir: str | Path,
    batch_size: int,
    cache_features: bool = True,
) -> LastBlockKeys:
    """Last-block cls queries and patch keys of a split (cached like the tokens, in fp32 so
    the 0.4 threshold sees the backbone's values), or per batch without the cache."""
    if not cache_features:
        return LastBlockKeys(backbone, ds)
    base = base_dataset(ds)
    name, record = cache_key(ds, "last_block_qk")
    out = cached(
        cache_dir,
        backbone.hash,
        name,
        record,
        lambda: extract(
            ds,
            backbone.last_block_qk,
            batch_size,
            desc=f"last-block keys {base.split}",
            dtype=torch.float32,
        ),
    )
    return LastBlockKeys(backbone, ds, out["cls_query"], out["patch_keys"])
