"""COCO 2014 instance annotations as semantic masks in contiguous 1..80 class numbering.

Layout under ``root``: ``train2014/``, ``val2014/`` (images) and
``annotations/instances_{train,val}2014.json``. Masks are drawn from the polygons / RLE with
pycocotools (``pip install -e .[coco]``); larger instances are drawn first so smaller ones
stay visible, and crowd regions take their class, as the usual COCO-20i conversions do.
Without pycocotools, pre-converted palette PNGs (``<image stem>.png``, written by
``python -m common.datasets.coco`` elsewhere) are read from ``mask_dir``; the JSON still
lists the images and their image-level labels.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.items import as_hw, check_masks_exist, load_rgb, segmentation_item
from common.datasets.palette import read_mask, write_mask

log = logging.getLogger(__name__)

SPLIT_FOLDERS = {"train": "train2014", "val": "val2014"}


def _annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{SPLIT_FOLDERS[split]}.json"


def _import_coco_api():
    try:
        from pycocotools.coco import COCO
    except ImportError as err:
        raise ImportError(
            "reading COCO annotations needs pycocotools: `pip install -e .[coco]`, or pass "
            "mask_dir= with masks converted on a machine that has it "
            "(`python -m common.datasets.coco --root ROOT --split SPLIT --out DIR`)"
        ) from err
    return COCO


class COCOSegmentation(Dataset):
    """COCO 2014 images with class-index masks; same item dict as ``VOCSegmentation``.

    Items: ``{"image": float [3, H, W] in [0, 1], "mask": int64 [H, W] (0 background,
    1..80), "labels": classes present in the mask, "id": image file stem}``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        mask_dir: str | Path | None = None,
        image_size: int | Sequence[int] | None = None,
        transform: Callable[[dict], dict] | None = None,
    ) -> None:
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"COCO split must be one of {sorted(SPLIT_FOLDERS)}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.image_dir = self.root / SPLIT_FOLDERS[split]
        if not self.image_dir.is_dir():
            raise DatasetNotFoundError(
                f"COCO images not found at {self.image_dir}; download COCO 2014 "
                "(train2014.zip, val2014.zip, annotations_trainval2014.zip) and unpack them "
                f"into {self.root} (see docs/datasets.md)"
            )
        self.image_size = as_hw(image_size)
        self.transform = transform
        self.mask_dir = None if mask_dir is None else Path(mask_dir)
        ann_file = _annotation_file(self.root, split)
        if not ann_file.is_file():
            raise DatasetNotFoundError(
                f"{ann_file} is missing; unpack annotations_trainval2014.zip into {self.root}"
            )
        self._load_annotations(ann_file)
        if self.mask_dir is not None:
            self._check_masks_exist()

    def _load_annotations(self, ann_file: Path) -> None:
        try:
            raw = json.loads(ann_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CorruptDataError(f"cannot parse {ann_file}: {err}; re-download it") from err
        categories = sorted(raw.get("categories", []), key=lambda c: c["id"])
        if not categories or "images" not in raw:
            raise CorruptDataError(f"{ann_file} has no 'categories' or 'images'; not COCO format")
        # COCO ids run 1..90 with gaps; few-shot folds number the 80 classes 1..80.
        self.category_to_class = {c["id"]: i + 1 for i, c in enumerate(categories)}
        self.class_names = ["background", *(c["name"] for c in categories)]
        self.num_classes = len(self.class_names)
        images = sorted(raw["images"], key=lambda im: im["file_name"])
        self.ids = [Path(im["file_name"]).stem for im in images]
        self._images = images
        self._anns: dict[int, list[dict]] = {im["id"]: [] for im in images}
        for ann in raw.get("annotations", []):
            self._anns.setdefault(ann["image_id"], []).append(ann)
        self._coco = None
        if self.mask_dir is None:
            coco = _import_coco_api()()
            coco.dataset = raw
            coco.createIndex()
            self._coco = coco

    def _check_masks_exist(self) -> None:
        check_masks_exist(
            self.mask_dir,
            self.ids,
            f"COCO {self.split} images",
            "convert them with `python -m common.datasets.coco`",
        )

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self._images[index]["file_name"]

    def image_labels(self, index: int) -> list[int]:
        """Classes annotated in image ``index`` (from the annotations, no mask decoding)."""
        anns = self._anns[self._images[index]["id"]]
        return sorted({self.category_to_class[a["category_id"]] for a in anns})

    def read_mask(self, index: int) -> np.ndarray:
        """The class-index mask of image ``index``, ``uint8 [H, W]``."""
        if self.mask_dir is not None:
            return read_mask(self.mask_dir / f"{self.ids[index]}.png")
        info = self._images[index]
        mask = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        anns = sorted(self._anns[info["id"]], key=lambda a: -a.get("area", 0.0))
        for ann in anns:
            try:
                with warnings.catch_warnings():
                    # pycocotools' decoder trips NumPy 2's copy-keyword deprecation; harmless.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pixels = self._coco.annToMask(ann).astype(bool)
            except (KeyError, TypeError, ValueError, IndexError) as err:
                raise CorruptDataError(
                    f"annotation {ann.get('id')} of image {info['file_name']} has an unreadable "
                    f"segmentation: {err}"
                ) from err
            mask[pixels] = self.category_to_class[ann["category_id"]]
        return mask

    def __getitem__(self, index: int) -> dict:
        image_path = self.image_path(index)
        source = (
            str(self.mask_dir / f"{self.ids[index]}.png")
            if self.mask_dir is not None
            else f"from {_annotation_file(self.root, self.split).name}"
        )
        item = segmentation_item(
            load_rgb(image_path),
            self.read_mask(index),
            self.ids[index],
            self.image_size,
            image_path,
            source,
        )
        return self.transform(item) if self.transform is not None else item


def convert_masks(root: str | Path, split: str, out: str | Path) -> Path:
    """Write every mask of a COCO split as ``<out>/<image stem>.png`` (palette, 0..80)."""
    data = COCOSegmentation(root, split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(len(data)), desc=f"COCO {split} masks", unit="mask"):
        write_mask(out / f"{data.ids[index]}.png", data.read_mask(index))
    log.info("wrote %d masks to %s", len(data), out)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: pre-convert COCO annotations to PNG masks (for machines without pycocotools)."""
    parser = argparse.ArgumentParser(
        prog="python -m common.datasets.coco",
        description="Convert COCO 2014 instance annotations to class-index PNG masks "
        "(1..80 contiguous, 0 background), read later with mask_dir=OUT.",
    )
    parser.add_argument("--root", required=True, type=Path, help="folder with train2014/ etc.")
    parser.add_argument("--split", required=True, choices=sorted(SPLIT_FOLDERS))
    parser.add_argument("--out", required=True, type=Path, help="folder for <image stem>.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    convert_masks(args.root, args.split, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
