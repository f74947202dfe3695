"""Fashion-MNIST IDX reader: real files, lookup order, missing and corrupt data."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.fashion_mnist import (
    SYSTEM_ROOT,
    find_fashion_mnist_root,
    load_fashion_mnist,
    read_idx,
)


def test_reads_the_installed_files() -> None:
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    assert find_fashion_mnist_root() == SYSTEM_ROOT


def test_torchvision_layout_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(SYSTEM_ROOT / name) as src:  # torchvision keeps unpacked copies too
            (raw / name.removesuffix(".gz")).write_bytes(src.read())
    shutil.copy(SYSTEM_ROOT / "train-labels-idx1-ubyte.gz", raw)
    assert find_fashion_mnist_root(tmp_path) == raw
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(tmp_path))
    assert find_fashion_mnist_root() == raw
    images, _ = load_fashion_mnist("test")
    assert np.array_equal(images, load_fashion_mnist("test", SYSTEM_ROOT)[0])


def test_missing_data_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_fashion_mnist("val")


def _copy_with(tmp_path: Path, name: str, payload: bytes, compress: bool = True) -> Path:
    shutil.copy(SYSTEM_ROOT / "train-labels-idx1-ubyte.gz", tmp_path)
    target = tmp_path / name
    target.write_bytes(gzip.compress(payload) if compress else payload)
    return target


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    with gzip.open(SYSTEM_ROOT / "t10k-labels-idx1-ubyte.gz") as src:
        good = src.read()
    truncated = _copy_with(tmp_path, "t10k-labels-idx1-ubyte.gz", good[:-100])
    with pytest.raises(CorruptDataError, match=r"t10k-labels-idx1-ubyte\.gz.*truncated"):
        read_idx(truncated, "labels")
    bad_magic = _copy_with(tmp_path, "t10k-labels-idx1-ubyte.gz", b"\x00\x00\x08\x03" + good[4:])
    with pytest.raises(CorruptDataError, match="magic number"):
        read_idx(bad_magic, "labels")
    not_gzip = _copy_with(tmp_path, "t10k-labels-idx1-ubyte.gz", good, compress=False)
    with pytest.raises(CorruptDataError, match=r"cannot decompress .*t10k-labels"):
        read_idx(not_gzip, "labels")
    cut_gzip = tmp_path / "t10k-images-idx3-ubyte.gz"
    cut_gzip.write_bytes((SYSTEM_ROOT / "t10k-images-idx3-ubyte.gz").read_bytes()[:5000])
    with pytest.raises(CorruptDataError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist("test", tmp_path)
