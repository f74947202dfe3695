"""A folder of images laid out as a user keeps them, built from the FashionScenes fixture.

``photos/`` holds JPEG and PNG images of 150 to 500 px in nested folders (two different
images share the name ``photo1`` in two folders), one folder reached through a symlink to
a folder outside, a macOS ``._`` file and a ``.DS_Store``; ``labels.csv`` names the images'
classes (several per image, separated by ';'), and ``masks/`` holds ten masks, each at its
image's size, named by the image's relative path or, when unique, its file name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from common.datasets.items import labels_of_mask
from common.datasets.palette import read_mask, write_mask
from common.datasets.voc import VOCSegmentation


def _place(n: int) -> str:
    """Relative path (no extension) of the n-th image: nested, with a duplicate name."""
    if n == 0:
        return "shop/a/photo1"
    if n == 1:
        return "shop/b/photo1"
    folder = ("shop/a", "shop/b", "street", "street/night", "linked")[n % 5]
    return f"{folder}/img_{n:03d}"


def build_user_folder(scenes_root: Path, out: Path, count: int = 30, masks: int = 10) -> Path:
    """Write the user's folder under ``out`` from ``count`` FashionScenes train scenes."""
    scenes = VOCSegmentation(scenes_root, "train")
    rng = np.random.default_rng(0)
    photos, extra, mask_dir = out / "photos", out / "elsewhere", out / "masks"
    rows, written = ["image,labels"], 0
    picked = [i for i in range(len(scenes)) if scenes.image_labels(i)][:count]
    for n, index in enumerate(picked):
        rel = _place(n)
        width, height = (int(v) for v in rng.integers(150, 501, size=2))
        image = Image.open(scenes.image_path(index)).convert("RGB")
        image = image.resize((width, height), Image.BILINEAR)
        mask = read_mask(scenes.mask_path(index))
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
        suffix = ".png" if n % 3 == 0 else (".jpeg" if n % 7 == 0 else ".jpg")
        base = extra if rel.startswith("linked/") else photos
        target = base / (rel.removeprefix("linked/") if base is extra else rel)
        target = target.with_name(target.name + suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90) if suffix != ".png" else image.save(target)
        names = [scenes.class_names[c] for c in labels_of_mask(mask)]
        rows.append(f"{rel}{suffix},{';'.join(names)}")
        if written < masks and n % 3 != 2:
            name = f"{rel}.png" if n < 2 else f"{Path(rel).name}.png"
            write_mask(mask_dir / name, mask)
            written += 1
    (photos / "linked").symlink_to(extra.resolve(), target_is_directory=True)
    (photos / "street" / "._img_002.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (photos / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    return out


def tree_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (links followed once)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_symlink() or path.is_dir():
            out[path.relative_to(root).as_posix() + "/"] = "dir"
    return out
