"""A memory-mapped feature store: one ``[N, D]`` array on disk, written shard by shard.

Layout of ``<cache_dir>/<key>/``: ``record.json`` (what the features are: backbone hash,
preprocessing, image listing), ``features.npy`` (a ``.npy`` file, so ``np.load(...,
mmap_mode="r")`` reads it without this code), ``labels.npy`` and ``done/<shard>`` markers.
The key is a hash of the record, so a store is never read for another backbone or another
preprocessing. A shard's marker is written only after its rows are flushed: a killed run
resumes at the first missing shard, and each rank of a sharded extraction writes its own
shards (shard ``s`` belongs to rank ``s % world``) into the one file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DTYPES = ("float16", "float32")


def store_key(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _create_once(path: Path, make: Callable[[Path], None]) -> None:
    """Create ``path`` with ``make(tmp)`` unless another process already did (atomic link)."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    make(tmp)
    try:
        os.link(tmp, path)  # fails when another rank created it first: theirs is kept
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


class FeatureStore:
    """``n`` feature rows of width ``dim`` in ``dtype`` for the images described by ``record``."""

    def __init__(
        self,
        cache_dir: str | Path,
        record: dict,
        n: int,
        dim: int,
        dtype: str = "float32",
        shard_size: int = 4096,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"feature store dtype must be one of {DTYPES}, got {dtype!r}")
        self.record = {**record, "n": n, "dim": dim, "dtype": dtype, "shard_size": shard_size}
        self.dir = Path(cache_dir) / store_key(self.record)
        self.n, self.dim, self.shard_size = n, dim, shard_size
        self.num_shards = max(1, -(-n // shard_size))
        (self.dir / "done").mkdir(parents=True, exist_ok=True)
        _create_once(
            self.dir / "record.json",
            lambda p: p.write_text(json.dumps(self.record, indent=1, sort_keys=True)),
        )
        _create_once(
            self.dir / "features.npy",
            lambda p: np.lib.format.open_memmap(p, "w+", dtype, (n, dim)).flush(),
        )

    def rows(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.n, (shard + 1) * self.shard_size))

    def done(self, shard: int) -> bool:
        return (self.dir / "done" / f"{shard:06d}").exists()

    def missing(self, rank: int = 0, world: int = 1) -> list[int]:
        """Shards of ``rank`` (``s % world == rank``) not written yet."""
        return [s for s in range(rank, self.num_shards, world) if not self.done(s)]

    def write(self, shard: int, values: np.ndarray) -> None:
        """Rows of ``shard``, flushed to disk before its marker is written."""
        rows = self.rows(shard)
        if values.shape != (len(rows), self.dim):
            raise ValueError(f"shard {shard} needs {(len(rows), self.dim)}, got {values.shape}")
        on_disk = np.load(self.dir / "features.npy", mmap_mode="r")  # the header: offset, dtype
        offset, data = on_disk.offset, np.ascontiguousarray(values, dtype=on_disk.dtype)
        del on_disk
        # Written as a byte range, not through a shared memory map: a shard's first and last
        # pages hold rows of other ranks' shards, and a network file system writes back whole
        # dirty pages of a map, so two nodes could undo each other's rows there.
        with (self.dir / "features.npy").open("r+b") as fh:
            fh.seek(offset + rows.start * self.dim * data.itemsize)
            fh.write(data.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        (self.dir / "done" / f"{shard:06d}").touch()

    def complete(self) -> bool:
        return not self.missing()

    def read(self) -> np.ndarray:
        """The whole store, memory-mapped read-only (every shard must be written)."""
        todo = self.missing()
        if todo:
            raise RuntimeError(f"feature store {self.dir} misses {len(todo)} shard(s)")
        return np.load(self.dir / "features.npy", mmap_mode="r")


def fill(
    store: FeatureStore,
    compute: Callable[[range], np.ndarray],
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Compute and write every missing shard of ``rank``; returns how many were written."""
    todo = store.missing(rank, world)
    if len(todo) < len(range(rank, store.num_shards, world)):
        log.info("feature store %s: resuming, %d shard(s) left", store.dir, len(todo))
    for shard in todo:
        store.write(shard, compute(store.rows(shard)))
        if progress is not None:
            progress(len(store.rows(shard)))
    return len(todo)
