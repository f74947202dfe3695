"""Low-shot evaluation at ImageNet scale on this machine, every method in the same process.

1. k-NN over a synthetic ImageNet-size store (1,281,167 x 384, fp16, memory-mapped):
   time and peak anonymous memory of the chunked search (``common.knn_chunked``, budget
   ``--memory-mb``), of the straightforward method (DINO's ``eval_knn.py``: the whole bank
   as one fp32 tensor, each chunk of queries times the whole bank, then top-k) and of one
   faiss flat search (``IndexFlatIP`` holding the bank in fp32).
2. Feature-extraction input: images/s of one data worker on 500 x 375 JPEGs (decode,
   Resize(256), CenterCrop(224)).

    python benchmarks/bench_lowshot_scale.py --queries 100

The logistic regressions at 1 % size are in bench_lowshot_logreg.py.

All k-NN methods do the same arithmetic per query, so their times scale with ``--queries``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.record import record_result
from common.datasets.classification import LabelledDataset, LabelledImages, eval_transform
from common.faiss_quiet import faiss
from common.knn_chunked import knn_search

IMAGENET_TRAIN = 1_281_167
DIM = 384


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """Peak anonymous resident memory above the level at entry (sampled every 5 ms)."""

    def __enter__(self) -> PeakMemory:
        self.base = rss_anon_mb()
        self.peak = self.base
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_anon_mb())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss_anon_mb())
        self.mb = self.peak - self.base


def synthetic_store(folder: Path, n: int, seed: int = 0) -> np.memmap:
    """[n, DIM] fp16 on disk: 1,000 class centres plus noise, written in chunks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM), dtype=np.float32)
    store = np.lib.format.open_memmap(folder / "bank.npy", "w+", np.float16, (n, DIM))
    for start in range(0, n, 200_000):
        m = min(200_000, n - start)
        cls = np.arange(start, start + m) % 1000
        store[start : start + m] = centres[cls] + 2 * rng.standard_normal((m, DIM), np.float32)
    store.flush()
    return np.load(folder / "bank.npy", mmap_mode="r")


def dino_straightforward(bank: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100):
    """DINO's eval_knn.py: all train features in memory, a chunk of queries x whole bank."""
    train = torch.nn.functional.normalize(torch.from_numpy(np.array(bank, np.float32)), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(queries), dim=1)
    out = [(q[s : s + chunk] @ train.T).topk(k, dim=1) for s in range(0, len(q), chunk)]
    return torch.cat([o.indices for o in out]).numpy()


def faiss_flat(bank: np.ndarray, queries: np.ndarray, k: int):
    train = np.array(bank, np.float32)
    faiss.normalize_L2(train)
    q = queries.copy()
    faiss.normalize_L2(q)
    index = faiss.IndexFlatIP(DIM)
    index.add(train)
    return index.search(q, k)[1]


def timed(fn):
    with PeakMemory() as mem:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    return out, seconds, mem.mb


def knn_rows(bank, queries, memory_mb) -> tuple[list, dict]:
    rows, idx = [], {}
    methods = {
        f"chunked (memory_mb={memory_mb})": lambda: knn_search(
            bank, queries, 20, memory_mb, normalize=True
        )[1],
        "straightforward (DINO eval_knn)": lambda: dino_straightforward(bank, queries, 20),
        "faiss IndexFlatIP": lambda: faiss_flat(bank, queries, 20),
    }
    for name, fn in methods.items():
        idx[name], seconds, mb = timed(fn)
        rows.append([name, round(seconds, 1), round(seconds / len(queries) * 1000, 1), round(mb)])
        print(rows[-1], flush=True)
    return rows, idx


def lowshot_data(n_per_class: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, DIM))
    y = np.repeat(np.arange(classes), n_per_class)[:12_811]
    x = centres[y] + 3 * rng.standard_normal((len(y), DIM))
    return x, y


def decode_rate(folder: Path, n: int = 60) -> float:
    """Images/s of one process: decode a 500 x 375 JPEG, Resize(256), CenterCrop(224)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        arr = np.asarray(Image.fromarray(arr).resize((50, 37)).resize((500, 375)))
        paths.append(folder / f"img{i}.JPEG")
        Image.fromarray(arr).save(paths[-1], quality=90)
    images = LabelledImages(folder, "x", "imagefolder", paths, np.zeros(n, np.int64), ["a"], ["a"])
    ds = LabelledDataset(images, eval_transform(256, 224, "bicubic"))
    t = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", type=int, default=IMAGENET_TRAIN)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--memory-mb", type=float, default=512.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        bank = synthetic_store(Path(tmp), args.bank)
        queries = np.random.default_rng(1).standard_normal((args.queries, DIM), np.float32)
        queries += np.asarray(bank[: args.queries], np.float32)
        rows, idx = knn_rows(bank, queries, args.memory_mb)
        names = list(idx)
        agree = float(
            np.mean(
                [np.array_equal(a, b) for a, b in zip(idx[names[0]], idx[names[2]], strict=True)]
            )
        )
        rate = decode_rate(Path(tmp))

    t_chunk, t_faiss = rows[0][1], rows[2][1]
    record_result(
        "lowshot_scale",
        tables={
            "knn": {
                "columns": ["method", "seconds", "ms per query", "peak extra memory (MB)"],
                "rows": rows,
            },
        },
        values={
            "bank": args.bank,
            "queries": args.queries,
            "memory_mb": args.memory_mb,
            "chunked_vs_faiss_time": round(t_chunk / t_faiss, 2),
            "same_neighbours_as_faiss": round(agree, 4),
            "decode_images_per_s_per_worker": round(rate, 1),
            "workers_for_3000_images_per_s": int(np.ceil(3000 / rate)),
        },
    )
    print(f"chunked / faiss time {t_chunk / t_faiss:.2f}, same neighbours {agree:.4f}")
    print(f"decode {rate:.1f} images/s per worker")


if __name__ == "__main__":
    main()
