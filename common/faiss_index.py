"""Exact inner-product search on a GPU faiss index when faiss has GPU support, else the CPU one.

Both are exact (flat) indexes: a GPU changes the speed, not the neighbours (up to float32
rounding of near-equal similarities). ``faiss-cpu`` reports no GPU, so it always searches
on the CPU; ``pip install -e '.[gpu]'`` brings ``faiss-gpu-cu12``.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from common.faiss_quiet import faiss

log = logging.getLogger(__name__)

# faiss's GPU k-selection handles at most this many neighbours; larger k search on the CPU.
GPU_MAX_K = 2048


@functools.cache
def gpu_resources() -> faiss.StandardGpuResources | None:
    """faiss's GPU memory and streams, shared by every search; None when faiss sees no GPU.

    Decided (and logged) once per process.
    """
    gpus = faiss.get_num_gpus()
    if gpus == 0:
        log.info("faiss: searching on the CPU (this faiss build sees no GPU)")
        return None
    log.info("faiss: searching on the GPU (%d visible to faiss)", gpus)
    return faiss.StandardGpuResources()


def flat_ip_index(dim: int, k: int) -> faiss.Index:
    """An empty exact inner-product index of ``dim``-d vectors for ``k``-neighbour searches."""
    resources = gpu_resources()
    if resources is not None and k <= GPU_MAX_K:
        return faiss.GpuIndexFlatIP(resources, dim)
    return faiss.IndexFlatIP(dim)


def search_ip(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarities [Q, k] and bank indices [Q, k] of each query's ``k`` largest inner products,
    best first (``k`` is capped at the bank size)."""
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(bank))
    index = flat_ip_index(bank.shape[1], k)
    index.add(bank)
    return index.search(queries, k)
