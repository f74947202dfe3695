"""ImageNet-scale pieces on small data: the chunked k-NN equals an exact search whatever the
memory budget, and the feature store resumes shard by shard and takes writes from ranks."""

from __future__ import annotations

import numpy as np
import pytest

from common.feature_store import FeatureStore, fill
from common.knn_chunked import chunk_sizes, knn_search, weighted_votes


def test_chunked_knn_equals_exact_search_on_a_memory_mapped_fp16_store(tmp_path):
    rng = np.random.default_rng(0)
    bank = np.lib.format.open_memmap(tmp_path / "b.npy", "w+", np.float16, (5000, 24))
    bank[:] = rng.normal(size=(5000, 24))
    queries = rng.normal(size=(70, 24)).astype(np.float32)
    ref_sims = queries @ np.asarray(bank, np.float32).T
    ref_idx = np.argsort(-ref_sims, axis=1, kind="stable")[:, :20]
    assert chunk_sizes(70, 24, 0.1)[1] < 1000  # several bank chunks of a few hundred rows
    sims, idx = knn_search(bank, queries, 20, memory_mb=0.1)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, np.take_along_axis(ref_sims, ref_idx, 1), rtol=1e-5)
    # Cosine: each chunk is normalised as it is read.
    unit = np.asarray(bank, np.float32)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    _, cos_idx = knn_search(bank, queries, 5, memory_mb=0.1, normalize=True)
    np.testing.assert_array_equal(cos_idx, np.argsort(-(queries @ unit.T), axis=1)[:, :5])
    # k larger than the bank is capped.
    assert knn_search(bank[:7], queries, 20)[1].shape == (70, 7)
    with pytest.raises(ValueError, match="too small"):
        chunk_sizes(4096, 384, 1)


def test_weighted_votes_by_hand():
    sims = np.array([[0.96, 0.936, 0.28]])
    nbrs = np.array([[0, 1, 2]])
    labels = np.array([1, 2, 2])
    votes = weighted_votes(sims, nbrs, labels, 3, 3, 0.07)
    assert votes[0, 0] == 0 and votes[0, 1] == pytest.approx(np.exp(0.96 / 0.07))
    assert votes[0, 2] == pytest.approx(np.exp(0.936 / 0.07) + np.exp(0.28 / 0.07))
    assert weighted_votes(sims, nbrs, labels, 1, 3, 0.07)[0].argmax() == 1


def test_feature_store_resumes_and_takes_each_ranks_shards(tmp_path):
    values = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    record = {"backbone_hash": "abc", "preprocess": {"resize": 256, "crop": 224}}
    calls = []

    def compute(rows):
        calls.append(rows.start)
        if rows.start == 8 and len(calls) == 3:
            raise KeyboardInterrupt  # killed while computing the last shard
        return values[rows.start : rows.stop]

    store = FeatureStore(tmp_path, record, 10, 3, "float16", shard_size=4)
    assert store.num_shards == 3
    with pytest.raises(KeyboardInterrupt):
        fill(store, compute)
    assert store.missing() == [2] and not store.complete()
    again = FeatureStore(tmp_path, record, 10, 3, "float16", shard_size=4)
    assert fill(again, compute) == 1 and calls == [0, 4, 8, 8]
    np.testing.assert_array_equal(again.read(), values)
    assert again.read().dtype == np.float16
    # Two ranks of a sharded extraction fill one store: rank r writes shards s % 2 == r.
    other = FeatureStore(tmp_path, {**record, "preprocess": {"resize": 224}}, 10, 3, shard_size=4)
    assert other.dir != store.dir
    assert fill(other, compute, rank=1, world=2) == 1 and other.missing() == [0, 2]
    assert fill(other, compute, rank=0, world=2) == 2
    np.testing.assert_array_equal(np.load(other.dir / "features.npy"), values)
