"""The images `distill` and `distill.segment` read: a VOC or COCO set, or your own folder.

``data.format``:
- ``voc`` / ``coco``: a benchmark layout; every image of a split has a mask.
- ``folder``: images anywhere under ``data.root`` (nested folders, symlinks followed),
  image-level labels from ``data.labels`` (a CSV ``image,labels``, a JSON, or ``folders``),
  and masks for any subset of them in ``data.masks`` (``<image id>.png``, image's own size).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch.utils.data import Dataset

from common.config import Config, ConfigError
from common.datasets.errors import DatasetNotFoundError
from common.datasets.labelled_folder import LabelledFolder

log = logging.getLogger(__name__)
FORMATS = ("voc", "coco", "folder")


@dataclass
class DistillData:
    """The train images, and where ground truth to score against lives (None: nowhere)."""

    train: Dataset
    eval: Dataset | None
    eval_indices: list[int]
    # Indices of ``train`` whose masks are real (folder: those in data.masks; benchmarks: all).
    masked: list[int]
    benchmark: bool  # every train image has a mask (VOC / COCO)


def _benchmark_split(cfg: Config, split: str, **kwargs) -> Dataset:
    d = cfg.data
    if d.format == "coco":
        from common.datasets.coco import COCOSegmentation

        return COCOSegmentation(d.root, split, image_size=d.image_size, **kwargs)
    from common.datasets.voc import VOCSegmentation

    return VOCSegmentation(d.root, split, image_size=d.image_size, **kwargs)


def check_data_config(d: Config) -> None:
    """Refuse a ``data`` section that cannot be read, naming the fix."""
    if d.format not in FORMATS:
        raise ConfigError(f"data.format must be one of {FORMATS}, got {d.format!r}")
    if d.format == "folder" and not d.labels:
        raise ConfigError(
            "data.format=folder needs data.labels: a labels.csv (image,labels), a .json or "
            "'folders' (docs/your_data.md)"
        )
    if d.image_size and d.short_side:
        raise ConfigError("set data.image_size (fixed size) or data.short_side, not both")


def open_folder(cfg: Config, masks: str | None = None) -> LabelledFolder:
    """``data.root`` with ``data.labels`` as a LabelledFolder; ``masks`` replaces data.masks."""
    d = cfg.data
    return LabelledFolder(
        d.root,
        d.labels,
        masks=masks if masks is not None else d.masks,
        image_size=d.image_size,
        short_side=d.short_side,
        classes=d.classes,
        on_corrupt=d.on_corrupt,
    )


def open_distill_data(cfg: Config) -> DistillData:
    """The train images and the evaluation images of the distill stage."""
    d = cfg.data
    check_data_config(d)
    if d.format == "folder":
        train = open_folder(cfg)
        masked = [i for i in range(len(train)) if train.has_mask(i)]
        return DistillData(train, train if masked else None, masked, masked, benchmark=False)
    train = _benchmark_split(cfg, d.train_split)
    try:
        eval_ds = _benchmark_split(cfg, d.eval_split)
    except DatasetNotFoundError as err:
        log.info("no evaluation split with masks (%s)", err)
        eval_ds = None
    indices = list(range(len(eval_ds))) if eval_ds is not None else []
    return DistillData(train, eval_ds, indices, list(range(len(train))), benchmark=True)
