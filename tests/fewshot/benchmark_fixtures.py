"""Pascal-5i / COCO-20i shaped datasets big enough for episodes (the shared fixtures in
tests/fixtures hold a handful of images, too few for a support plus a query per class)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from common.datasets.palette import write_mask
from tests.fixtures.coco import CATEGORY_IDS


def _scene(rng: np.random.Generator, classes: list[int], size: int):
    """A noisy image with one filled rectangle per class, and its class mask."""
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes = []
    for c in classes:
        h, w = rng.integers(size // 4, size // 2, size=2)
        top, left = rng.integers(0, size - h), rng.integers(0, size - w)
        image[top : top + h, left : left + w] = (37 * c) % 256, (91 * c) % 256, (53 * c) % 256
        mask[top : top + h, left : left + w] = c
        boxes.append((int(top), int(left), int(h), int(w)))
    return image, mask, boxes


def _draws(rng: np.random.Generator, classes: list[int], n: int) -> list[list[int]]:
    """``n`` label sets of 1-2 classes, every class at least 3 times."""
    out = [[c] for c in classes for _ in range(3)]
    while len(out) < n:
        out.append(sorted(set(rng.choice(classes, size=rng.integers(1, 3)).tolist())))
    return out


def build_pascal_like(root: Path, classes: list[int], n_train: int = 40, n_val: int = 30) -> Path:
    """``root/VOC2012`` with JPEGImages, SegmentationClassAug and trainaug/val lists."""
    voc = root / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("trainaug", n_train), ("val", n_val)):
        ids = []
        for k, labels in enumerate(_draws(rng, classes, n)):
            name = f"{split}_{k:04d}"
            image, mask, _ = _scene(rng, labels, 48)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            write_mask(voc / "SegmentationClassAug" / f"{name}.png", mask)
            ids.append(name)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def build_coco_like(root: Path, classes: list[int], n_train: int = 40, n_val: int = 30) -> Path:
    """``train2014/``, ``val2014/`` and polygon annotations; ``classes`` in 1..80 numbering."""
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": c, "name": f"category_{c}", "supercategory": "x"} for c in CATEGORY_IDS]
    rng = np.random.default_rng(0)
    ann_id = 1
    for split, folder, n in (("train", "train2014", n_train), ("val", "val2014", n_val)):
        (root / folder).mkdir()
        images, annotations = [], []
        for k, labels in enumerate(_draws(rng, classes, n)):
            image_id = k + (100000 if split == "val" else 1)
            file_name = f"COCO_{folder}_{image_id:012d}.jpg"
            image, _, boxes = _scene(rng, labels, 48)
            Image.fromarray(image).save(root / folder / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": 48, "width": 48})
            for c, (top, left, h, w) in zip(labels, boxes, strict=True):
                poly = [left, top, left + w, top, left + w, top + h, left, top + h]
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": CATEGORY_IDS[c - 1],
                        "iscrowd": 0,
                        "segmentation": [[float(v) for v in poly]],
                        "area": float(h * w),
                        "bbox": [left, top, w, h],
                    }
                )
                ann_id += 1
        payload = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(payload))
    return root
