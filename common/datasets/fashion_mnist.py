"""Fashion-MNIST from its IDX files (``*-idx{1,3}-ubyte[.gz]``), as the Debian package ships them.

Lookup order for the folder: an explicit ``root``, ``$FASHION_MNIST_ROOT``, then
``/usr/share/datasets/fashion-mnist`` (Debian ``dataset-fashion-mnist``). Each candidate may
hold the files directly or in torchvision's ``FashionMNIST/raw`` sub-folder.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.datasets.errors import CorruptDataError, DatasetNotFoundError

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FASHION_MNIST_ROOT"
_PREFIX = {"train": "train", "test": "t10k"}
# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), then the number of dimensions.
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
_INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (files land in "
    f"{SYSTEM_ROOT}), or on a machine with internet run "
    "`python -c \"import torchvision; torchvision.datasets.FashionMNIST('DIR', download=True)\"` "
    f"and pass root=DIR or set ${ENV_VAR}=DIR"
)


def _file_stem(split: str, kind: str) -> str:
    return f"{_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"


def _has_files(folder: Path) -> bool:
    stem = _file_stem("train", "labels")
    return (folder / f"{stem}.gz").is_file() or (folder / stem).is_file()


def find_fashion_mnist_root(root: str | Path | None = None) -> Path:
    """The folder holding the IDX files; raises DatasetNotFoundError with the install command."""
    if root is not None:
        candidates = [Path(root)]
    elif os.environ.get(ENV_VAR):
        candidates = [Path(os.environ[ENV_VAR])]
    else:
        candidates = [SYSTEM_ROOT]
    tried = []
    for base in candidates:
        for folder in (base, base / "FashionMNIST" / "raw"):
            tried.append(str(folder))
            if _has_files(folder):
                return folder
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found (looked in {', '.join(tried)}); {_INSTALL_HINT}"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptDataError(
            f"cannot decompress {path}: {err}; the file is truncated or not gzip, "
            f"re-install it ({_INSTALL_HINT})"
        ) from err


def read_idx(path: str | Path, kind: str) -> np.ndarray:
    """Decode one IDX file (``kind`` 'images' or 'labels') into a uint8 array, checking sizes."""
    path = Path(path)
    data = _read_bytes(path)
    ndim = 3 if kind == "images" else 1
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise CorruptDataError(f"{path} is {len(data)} bytes, shorter than an IDX header")
    magic = struct.unpack(">I", data[:4])[0]
    if magic != _MAGIC[kind]:
        raise CorruptDataError(
            f"{path} has magic number {magic:#010x}, expected {_MAGIC[kind]:#010x} for IDX "
            f"{kind}; the file is not Fashion-MNIST {kind} (re-install: {_INSTALL_HINT})"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(shape))
    if len(data) - header_len != expected:
        raise CorruptDataError(
            f"{path} holds {len(data) - header_len} data bytes but its header says shape "
            f"{shape} ({expected} bytes); the file is truncated (re-install: {_INSTALL_HINT})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def _locate(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DatasetNotFoundError(f"{folder / stem}.gz is missing; {_INSTALL_HINT}")


@lru_cache(maxsize=4)
def _load_cached(split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(_locate(folder, _file_stem(split, "images")), "images")
    labels = read_idx(_locate(folder, _file_stem(split, "labels")), "labels")
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise CorruptDataError(
            f"Fashion-MNIST {split} in {folder}: {images.shape[0]} images of "
            f"{images.shape[1:]} but {labels.shape[0]} labels; expected matching counts of "
            f"28x28 images (re-install: {_INSTALL_HINT})"
        )
    if labels.max(initial=0) >= len(CLASS_NAMES):
        raise CorruptDataError(f"{folder}: {split} labels exceed {len(CLASS_NAMES) - 1}")
    images.setflags(write=False)
    labels = labels.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` of ``split`` ('train' or 'test').

    The arrays are read-only and cached per process; copy them before modifying.
    """
    if split not in _PREFIX:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    return _load_cached(split, find_fashion_mnist_root(root).resolve())
