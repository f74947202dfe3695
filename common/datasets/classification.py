"""Labelled images for classification: ImageNet / torchvision ``ImageFolder`` layout, a CSV
of ``path,label``, the single-object scenes of a VOC-layout folder (FashionScenes), or your
own folder with its ``image,labels`` file (docs/your_data.md).

Every format yields the same ``LabelledImages`` (paths, class indices, class ids and
names), read by the low-shot probes and by pretraining's k-NN monitor alike.

- ``imagefolder``: ``ROOT/<split>/<class>/<file>``; classes are the sorted folder names (as
  torchvision's ``ImageFolder``), files match an image extension in any case, sub-folders of
  a class folder count for it. DINOv2's ``ROOT/labels.txt`` (``wnid,name`` per line) names
  the classes when present.
- ``csv``: ``ROOT/<split>.csv`` with a header ``path,label``; paths relative to ROOT, labels
  any strings (classes are their sorted set in the train split).
- ``voc``: the scenes of ``ROOT/ImageSets/Segmentation/<split>.txt`` holding exactly one
  class; the class comes from the mask.
- ``folder``: images anywhere under ROOT with labels from a labels file read by
  ``common.datasets.labels`` (``image,labels`` CSV, JSON or ``folders``); a split is an id
  list, ``<split>`` itself when it ends in ``.txt``, else ``ROOT/<split>.txt``, one image a
  line, named as in the labels file; items keep the list's order. Only images with exactly
  one label are items; the others are counted in one log line.

Split files (SimCLR's / MSN's ``1percent.txt``, MSN's ``{1,2,5}imgs_class.txt``) are plain
lists of file names, one a line; ``split_indices`` maps them to items of a train split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from common.config import ConfigError
from common.datasets.errors import DatasetNotFoundError
from common.datasets.folder import IMAGE_EXTENSIONS, list_images
from common.datasets.items import load_rgb
from common.datasets.labelled_folder import LabelledFolder
from common.datasets.labels import IdMatcher

log = logging.getLogger(__name__)

FORMATS = ("auto", "imagefolder", "csv", "voc", "folder")
INTERPOLATIONS = {
    "bicubic": v2.InterpolationMode.BICUBIC,
    "bilinear": v2.InterpolationMode.BILINEAR,
}


@dataclass(frozen=True)
class LabelledImages:
    """One split: image ``paths``, class index per image ``labels`` (int64), the class ids
    ``classes`` (folder names / CSV labels; index = position) and their readable ``names``."""

    root: Path
    split: str
    fmt: str
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]
    names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> LabelledImages:
        index = np.asarray(index, dtype=np.int64)
        return replace(self, paths=[self.paths[i] for i in index], labels=self.labels[index])

    def listing_sha(self) -> str:
        """Hash of the (path, label) list: feature stores are keyed by it."""
        text = "\n".join(f"{p},{y}" for p, y in zip(self.paths, self.labels.tolist(), strict=True))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def spread_indices(n: int, max_items: int | None) -> np.ndarray:
    """At most ``max_items`` of ``range(n)``, evenly spaced: a class-sorted list keeps every
    class instead of its first few."""
    if max_items is None or max_items >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_items).round().astype(np.int64))


def detect_format(root: str | Path, split: str) -> str:
    """``csv`` when ``ROOT/<split>.csv`` exists, ``imagefolder`` when ``ROOT/<split>`` is a
    folder of folders, ``voc`` when ROOT holds ``JPEGImages``; else a one-line error."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"data folder {root} does not exist")
    if (root / f"{split}.csv").is_file():
        return "csv"
    split_dir = root / split
    if split_dir.is_dir():
        if any(p.is_dir() and not p.name.startswith(".") for p in split_dir.iterdir()):
            return "imagefolder"
        raise DatasetNotFoundError(
            f"{split_dir} holds no class folders; the ImageFolder layout is "
            f"{root}/{split}/<class>/<image> (or give {root}/{split}.csv with path,label)"
        )
    if (root / "JPEGImages").is_dir() or (root / "VOCdevkit").is_dir():
        return "voc"
    raise DatasetNotFoundError(
        f"{root} is not a labelled dataset: found neither {split}/<class>/<image> folders, "
        f"{split}.csv (path,label) nor a VOC layout (JPEGImages/); see docs/lowshot.md"
    )


def read_label_names(root: Path, classes: Sequence[str]) -> list[str]:
    """Readable names from DINOv2's ``labels.txt`` (``wnid,name``); else the class ids."""
    path = root / "labels.txt"
    if not path.is_file():
        return list(classes)
    names = {}
    for line in path.read_text().splitlines():
        wnid, sep, name = line.partition(",")
        if sep:
            names[wnid.strip()] = name.strip()
    return [names.get(c, c) for c in classes]


def _image_folder(root: Path, split: str, classes: Sequence[str] | None) -> LabelledImages:
    split_dir = root / split
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    known = list(classes) if classes is not None else [p.name for p in folders]
    index = {c: i for i, c in enumerate(known)}
    unknown = [p.name for p in folders if p.name not in index]
    if unknown:
        raise DatasetNotFoundError(
            f"{len(unknown)} class folder(s) of {split_dir} are not in the train split "
            f"(e.g. {', '.join(unknown[:5])}); remove them or add them to train"
        )
    paths, labels = [], []
    for folder in folders:
        try:
            files = list_images(folder, quiet=True)
        except DatasetNotFoundError:
            raise DatasetNotFoundError(
                f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}, any "
                "case); add images or remove the folder"
            ) from None
        paths.extend(files)
        labels.extend([index[folder.name]] * len(files))
    # One line per split, not one per class folder (ImageNet has 1,000).
    log.info("found %d images in %d class folders of %s", len(paths), len(folders), split_dir)
    return LabelledImages(
        root, split, "imagefolder", paths, np.asarray(labels, np.int64), known, []
    )


def _csv(root: Path, split: str, classes: Sequence[str] | None) -> LabelledImages:
    path = root / f"{split}.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetNotFoundError(f"{path} needs a header 'path,label' and one row per image")
    known = list(classes) if classes is not None else sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(known)}
    unknown = sorted({r["label"] for r in rows} - set(index))
    if unknown:
        raise DatasetNotFoundError(
            f"{path} has {len(unknown)} label(s) not in the train split "
            f"(e.g. {', '.join(unknown[:5])}); every label must occur in train"
        )
    paths = [root / r["path"] for r in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of {len(paths)} files in {path} do not exist (e.g. "
            f"{', '.join(missing[:3])}); paths are relative to {root}"
        )
    labels = np.asarray([index[r["label"]] for r in rows], np.int64)
    return LabelledImages(root, split, "csv", paths, labels, known, [])


def _voc(root: Path, split: str, classes: Sequence[str] | None) -> LabelledImages:
    from common.datasets.voc import VOCSegmentation

    ds = VOCSegmentation(root, split)
    paths, labels = [], []
    for i in range(len(ds)):
        present = ds.image_labels(i)
        if len(present) == 1:
            paths.append(ds.image_path(i))
            labels.append(present[0] - 1)  # background is not a class here
    names = ds.class_names[1:]
    return LabelledImages(root, split, "voc", paths, np.asarray(labels, np.int64), names, names)


def split_list(root: Path, split: str) -> Path:
    """The id list of a ``folder`` split: ``split`` when it names a ``.txt``, else
    ``ROOT/<split>.txt``."""
    path = Path(split) if split.endswith(".txt") else root / f"{split}.txt"
    if not path.is_file():
        raise DatasetNotFoundError(
            f"split list {path} does not exist; with data.format=folder set data.train_split "
            "and data.test_split to text files naming your images, one a line (docs/your_data.md)"
        )
    return path


def _folder(
    root: Path, split: str, classes: Sequence[str] | None, labels: str | Path | None
) -> LabelledImages:
    if not labels:
        raise ConfigError(
            "data.format=folder needs data.labels: a labels.csv (image,labels), a .json or "
            "'folders' (docs/your_data.md)"
        )
    ds = LabelledFolder(root, labels, classes=classes)
    listed = split_list(root, split)
    wanted = [w.strip() for w in listed.read_text().splitlines() if w.strip()]
    matcher = IdMatcher(ds.ids)
    found = [matcher.find(w) for w in wanted]
    missing = [w for w, f in zip(wanted, found, strict=True) if f is None]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of {len(wanted)} images named in {listed} are not labelled images "
            f"of {root} (e.g. {', '.join(missing[:3])}); name them as in {labels}"
        )
    position = {i: n for n, i in enumerate(ds.ids)}
    items = list(dict.fromkeys(position[f] for f in found if f is not None))  # listed order
    single = [n for n in items if len(ds.image_labels(n)) == 1]
    if len(single) < len(items):
        several = sum(len(ds.image_labels(n)) > 1 for n in items)
        log.warning(
            "split %s: %d of %d images have several labels and %d none; the single-label "
            "probes use the %d with exactly one",
            listed,
            several,
            len(items),
            len(items) - len(single) - several,
            len(single),
        )
    names = ds.class_names[1:]  # background is not a class here
    y = np.asarray([ds.image_labels(n)[0] - 1 for n in single], np.int64)
    return LabelledImages(root, split, "folder", [ds.paths[n] for n in single], y, names, names)


READERS = {"imagefolder": _image_folder, "csv": _csv, "voc": _voc}


def open_labelled(
    root: str | Path,
    split: str,
    fmt: str = "auto",
    classes: Sequence[str] | None = None,
    labels: str | Path | None = None,
) -> LabelledImages:
    """The labelled images of ``split``; ``classes`` (the train split's) fixes the indices
    of another split, where an unknown class is an error. ``labels`` is the labels file of
    the ``folder`` format."""
    if fmt not in FORMATS:
        raise ConfigError(f"data format must be one of {FORMATS}, got {fmt!r}")
    if labels and fmt != "folder":
        raise ConfigError(
            f"data.labels is read with data.format=folder (your images + {labels}); set it, "
            "or drop data.labels for the path,label CSV and ImageFolder layouts"
        )
    root = Path(root)
    found = detect_format(root, split) if fmt == "auto" else fmt
    if fmt == "auto":
        log.info("%s/%s: detected the %s format", root, split, found)
    if found == "folder":
        images = _folder(root, split, classes, labels)
    else:
        images = READERS[found](root, split, classes)
    if len(images) == 0:
        raise DatasetNotFoundError(
            f"split {split!r} of {root} ({found} format) has no labelled images"
        )
    if not images.names:
        images = replace(images, names=read_label_names(root, images.classes))
    return images


def split_indices(images: LabelledImages, split_file: str | Path) -> np.ndarray:
    """Items of ``images`` named by a split file (one file name, or ``class/file``, a line).

    The class of a listed file is the folder it lives in; a name that matches no image is
    an error that counts them and shows a few.
    """
    split_file = Path(split_file)
    if not split_file.is_file():
        raise DatasetNotFoundError(f"split file {split_file} does not exist")
    wanted = [s.strip() for s in split_file.read_text().splitlines() if s.strip()]
    if not wanted:
        raise DatasetNotFoundError(f"split file {split_file} lists no file names")
    by_name: dict[str, int] = {}
    for i, path in enumerate(images.paths):
        by_name.setdefault(path.name, i)
        by_name.setdefault(f"{path.parent.name}/{path.name}", i)
    missing = [w for w in wanted if w not in by_name]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of {len(wanted)} files named in {split_file} are not in "
            f"{images.root}/{images.split} (e.g. {', '.join(missing[:5])}); point "
            "data.root at the full train folder the split file was made for"
        )
    return np.asarray(sorted({by_name[w] for w in wanted}), dtype=np.int64)


def eval_transform(resize: int, crop: int, interpolation: str) -> Callable:
    """PIL image -> float [3, crop, crop] in [0, 1]: short side to ``resize``, centre crop."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}"
        )
    return v2.Compose(
        [
            # On the PIL image, as the published scripts do (PIL's resampling filters).
            v2.Resize(resize, interpolation=INTERPOLATIONS[interpolation]),
            v2.CenterCrop(crop),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


class LabelledDataset(Dataset):
    """Items ``{"image": transform(PIL RGB), "label": int, "index": int}`` of ``images``."""

    def __init__(self, images: LabelledImages, transform: Callable[[Image.Image], torch.Tensor]):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = load_rgb(self.images.paths[i])
        return {"image": self.transform(image), "label": int(self.images.labels[i]), "index": i}
