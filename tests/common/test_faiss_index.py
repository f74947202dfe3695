"""The faiss search every k-NN probe uses: exact neighbours, and the CPU/GPU choice."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from common import faiss_index
from common.faiss_quiet import faiss


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_equals_a_brute_force_torch_top_k() -> None:
    bank, queries = _unit(300, 24, 0), _unit(40, 24, 1)
    sims, idx = faiss_index.search_ip(bank, queries, 7)
    full = torch.from_numpy(queries).double() @ torch.from_numpy(bank).double().T
    ref_sims, ref_idx = full.topk(7, dim=1)
    assert idx.shape == sims.shape == (40, 7)
    np.testing.assert_array_equal(idx, ref_idx.numpy())
    np.testing.assert_allclose(sims, ref_sims.numpy(), rtol=0, atol=1e-5)


def test_k_is_capped_at_the_bank_size() -> None:
    sims, idx = faiss_index.search_ip(_unit(5, 8, 2), _unit(3, 8, 3), 20)
    assert idx.shape == (3, 5)
    assert sorted(idx[0].tolist()) == [0, 1, 2, 3, 4]


def test_the_index_follows_faiss_gpu_support_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    faiss_index.gpu_resources.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="common.faiss_index"):
            first = faiss_index.flat_ip_index(8, 5)
            faiss_index.search_ip(_unit(10, 8, 4), _unit(2, 8, 5), 3)
        messages = [r.getMessage() for r in caplog.records if r.name == "common.faiss_index"]
        if faiss.get_num_gpus() == 0:  # faiss-cpu
            assert type(first) is faiss.IndexFlatIP
            assert messages == ["faiss: searching on the CPU (this faiss build sees no GPU)"]
        else:
            assert type(first) is faiss.GpuIndexFlatIP
            assert (
                type(faiss_index.flat_ip_index(8, faiss_index.GPU_MAX_K + 1)) is faiss.IndexFlatIP
            )
            assert len(messages) == 1 and "on the GPU" in messages[0]
    finally:
        faiss_index.gpu_resources.cache_clear()
