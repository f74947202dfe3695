"""Exact k-nearest neighbours by inner product with memory bounded by a budget, any bank size.

The bank (e.g. a memory-mapped feature store, fp16 or fp32) is read in chunks; each chunk
is searched for every query (a matrix product and ``topk``, on the CPU or a GPU) and the
chunk's best ``k`` are merged into a running top-k per query. On this project's CPU the
matrix product with torch's BLAS is faster than faiss's flat search over the same chunk
(benchmarks/bench_lowshot_scale.py), so faiss is not used here.
No ``queries x bank`` matrix of the whole bank is ever formed: peak memory is about one
fp32 bank chunk plus one ``query chunk x bank chunk`` block, both sized from
``memory_mb``.
"""

from __future__ import annotations

import numpy as np
import torch


def chunk_sizes(num_queries: int, dim: int, memory_mb: float) -> tuple[int, int]:
    """(query chunk, bank chunk) whose fp32 working set fits ``memory_mb``."""
    budget = memory_mb * 2**20 / 4  # floats
    q = min(num_queries, 4096)
    b = int(budget // (q + dim))
    if b < 256:
        raise ValueError(
            f"knn memory budget {memory_mb} MB is too small for {q} queries of width {dim}"
        )
    return q, b


def _merge(best_s, best_i, s, i, k):
    """Running top-k: the k largest of the current best and a chunk's candidates."""
    s = torch.cat([best_s, s], dim=1)
    i = torch.cat([best_i, i], dim=1)
    top, pos = s.topk(min(k, s.shape[1]), dim=1)
    return top, i.gather(1, pos)


def _chunk_search(q: torch.Tensor, b: torch.Tensor, k: int):
    return (q @ b.T).topk(k, dim=1)


def knn_search(
    bank: np.ndarray,
    queries: np.ndarray,
    k: int,
    memory_mb: float = 512.0,
    device: str | torch.device = "cpu",
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Similarities [Q, k] (float32) and bank indices [Q, k] (int64) of each query's ``k``
    largest inner products, best first; ``k`` is capped at the bank size. ``normalize``
    L2-normalises queries and each bank chunk as it is read (cosine similarity) so that a
    raw store is never copied whole."""
    n, dim = bank.shape
    k = min(k, n)
    qc, bc = chunk_sizes(len(queries), dim, memory_mb)
    device = torch.device(device)
    q_all = torch.from_numpy(np.array(queries, dtype=np.float32))  # a copy: stores are read-only
    if normalize:
        q_all = torch.nn.functional.normalize(q_all, dim=1)
    best_s = torch.full((len(queries), 0), -torch.inf)
    best_i = torch.zeros((len(queries), 0), dtype=torch.int64)
    for start in range(0, n, bc):
        chunk = torch.from_numpy(np.array(bank[start : start + bc], dtype=np.float32))
        chunk = chunk.to(device)
        if normalize:  # in place: a second chunk-sized copy would double the working set
            chunk.div_(chunk.norm(dim=1, keepdim=True).clamp_min(1e-12))
        kk = min(k, len(chunk))
        parts_s, parts_i = [], []
        for qs in range(0, len(queries), qc):
            s, i = _chunk_search(q_all[qs : qs + qc].to(device), chunk, kk)
            parts_s.append(s.cpu())
            parts_i.append(i.cpu().to(torch.int64) + start)
        best_s, best_i = _merge(best_s, best_i, torch.cat(parts_s), torch.cat(parts_i), k)
        del chunk  # before the next chunk is read, or two chunks would be alive at once
    return best_s.numpy(), best_i.numpy()


def weighted_votes(
    sims: np.ndarray,
    neighbours: np.ndarray,
    bank_labels: np.ndarray,
    k: int,
    num_classes: int,
    temperature: float,
) -> np.ndarray:
    """DINO's vote [Q, num_classes]: each of the ``k`` nearest adds ``exp(sim / T)`` to its
    class (``sims`` and ``neighbours`` sorted best first)."""
    if temperature <= 0:
        raise ValueError(f"k-NN temperature must be > 0, got {temperature}")
    k = min(k, sims.shape[1])
    votes = np.zeros((len(sims), num_classes), dtype=np.float64)
    rows = np.repeat(np.arange(len(sims)), k)
    np.add.at(
        votes,
        (rows, bank_labels[neighbours[:, :k]].ravel()),
        np.exp(sims[:, :k] / temperature).ravel(),
    )
    return votes
