"""Image-level labels as users keep them: a CSV, a JSON, or one folder per class.

- CSV: a header with columns ``image`` and ``labels``; several labels in one cell are
  separated by ``;`` or ``|`` (``cat;dog``); an empty cell means the image shows no object.
- JSON: ``{"<image>": ["cat", "dog"], ...}``, or ``{"labels": {...}, "classes": [...]}``
  (the FashionScenes ``meta.json``, labels as class ids).
- ``folders``: each image's label is the name of the top folder it sits in.

An image is named by its path relative to the image folder, with or without its extension
(``shop/a/img1.jpg`` or ``shop/a/img1``), or by its file name alone when that is unique.
Class ids count from 1 in the order of ``classes`` (given, or the sorted label names);
0 is background, as in every mask the project reads and writes.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.folder import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)
FOLDERS = "folders"
_SEPARATORS = re.compile(r"[;|]")


@dataclass(frozen=True)
class ImageLabels:
    """Class names (background first) and the class ids of each labelled image id."""

    class_names: list[str]
    labels: dict[str, list[int]]


def image_key(name: str) -> str:
    """An image reference as an id: a relative posix path without an image extension."""
    text = name.strip().replace("\\", "/")
    while text.startswith(("./", "/")):
        text = text[1:] if text.startswith("/") else text[2:]
    path = PurePosixPath(text)
    return str(path.with_suffix("")) if path.suffix.lower() in IMAGE_EXTENSIONS else str(path)


class IdMatcher:
    """Finds the image id a label or mask file names: by relative path, else by unique stem."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = set(ids)
        by_stem: dict[str, list[str]] = {}
        for i in ids:
            by_stem.setdefault(PurePosixPath(i).name, []).append(i)
        self.by_stem = by_stem

    def find(self, name: str) -> str | None:
        key = image_key(name)
        if key in self.ids:
            return key
        found = self.by_stem.get(PurePosixPath(key).name, [])
        return found[0] if len(found) == 1 else None


def _split_cell(cell: str) -> list[str]:
    return [s.strip() for s in _SEPARATORS.split(cell or "") if s.strip()]


def _read_csv(path: Path) -> dict[str, list[str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        if "image" not in header or "labels" not in header:
            raise CorruptDataError(
                f"labels file {path} needs a header with columns image,labels (found "
                f"{','.join(reader.fieldnames or []) or 'no header'}); one row per image, "
                "several labels separated by ';'"
            )
        rows = {}
        for row in reader:
            row = {k.strip().lower(): v for k, v in row.items() if k is not None}
            if row.get("image"):
                rows[row["image"]] = _split_cell(row.get("labels") or "")
        return rows


def _read_json(path: Path) -> tuple[dict[str, list], list[str] | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CorruptDataError(f"labels file {path} is not valid JSON: {err}") from err
    names = None
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        names = data.get("classes") or data.get("class_names")
        data = data["labels"]
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise CorruptDataError(
            f"labels file {path} must map each image to a list of labels, "
            '{"img1.jpg": ["cat", "dog"], ...}'
        )
    return data, names


def _class_ids(
    rows: dict[str, list], classes: Sequence[str] | None, source: str
) -> tuple[list[str], dict[str, list[int]]]:
    """Label names or ids -> (class names with background first, ids per image)."""
    values = {v for labs in rows.values() for v in labs}
    if values and all(isinstance(v, int) for v in values):
        names = list(classes or [f"class_{i}" for i in range(1, max(values) + 1)])
        names = names if names[0] == "background" else ["background", *names]
        return names, {k: sorted(set(v)) for k, v in rows.items()}
    values = {str(v) for v in values}
    if classes:
        order = [c for c in classes if c != "background"]
        unknown = sorted(values - set(order))
        if unknown:
            raise CorruptDataError(
                f"{source} uses labels {unknown[:5]} that are not in data.classes; add them "
                "there or fix the labels"
            )
    else:
        order = sorted(values, key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0, v))
    index = {name: i + 1 for i, name in enumerate(order)}
    return ["background", *order], {
        k: sorted({index[str(v)] for v in labs}) for k, labs in rows.items()
    }


def read_image_labels(
    source: str | Path, ids: Sequence[str], classes: Sequence[str] | None = None
) -> ImageLabels:
    """Labels of the images ``ids`` (relative paths without extension) from ``source``.

    ``source`` is a ``.csv`` or ``.json`` file or ``folders``. Images the source does not
    name are left out (the caller logs how many); names that match no image are counted in
    one warning.
    """
    if str(source) == FOLDERS:
        rows = {}
        for i in ids:
            parts = PurePosixPath(i).parts
            if len(parts) < 2:
                raise CorruptDataError(
                    f"data.labels=folders reads each image's class from its folder, but {i!r} "
                    "sits at the top of the image folder; move it into a class folder"
                )
            rows[i] = [parts[0]]
        names, labels = _class_ids(rows, classes, "the class folders")
        return ImageLabels(names, labels)
    path = Path(source)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"labels file {path} does not exist; set data.labels to a .csv (image,labels), a "
            ".json or 'folders'"
        )
    if path.suffix.lower() == ".csv":
        rows, names = _read_csv(path), None
    elif path.suffix.lower() == ".json":
        rows, names = _read_json(path)
    else:
        raise CorruptDataError(
            f"labels file {path}: expected a .csv (image,labels) or a .json, got {path.suffix!r}"
        )
    class_names, by_name = _class_ids(rows, classes or names, str(path))
    matcher = IdMatcher(ids)
    labels, unmatched = {}, []
    for name, labs in by_name.items():
        found = matcher.find(str(name))
        if found is None:
            unmatched.append(str(name))
        else:
            labels[found] = labs
    if unmatched:
        log.warning(
            "%d of %d rows of %s name no image under the image folder (e.g. %s); they are ignored",
            len(unmatched),
            len(by_name),
            path,
            ", ".join(unmatched[:3]),
        )
    if not labels:
        raise CorruptDataError(
            f"no row of {path} names an image of the image folder (e.g. {unmatched[:3]}); the "
            "image column holds paths relative to data.root, like shop/img1.jpg"
        )
    return ImageLabels(class_names, labels)
