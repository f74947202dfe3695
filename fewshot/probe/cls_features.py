"""cls-token features of a labelled split, extracted once into a memory-mapped store.

The store is keyed by the backbone hash, the preprocessing (resize, crop, interpolation),
where the cls token is read (after or before the final norm) and the image listing, so
two protocols share features only when all of these agree. Each rank of a sharded run
(``RANK``/``WORLD_SIZE`` or SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``) writes its own shards.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from common.datasets.classification import LabelledDataset, LabelledImages, eval_transform
from common.distributed import detect_env
from common.feature_store import FeatureStore, fill
from fewshot.features import FrozenBackbone

log = logging.getLogger(__name__)

CLS_POSITIONS = ("after_norm", "before_norm")


@torch.no_grad()
def cls_tokens(backbone: FrozenBackbone, images: torch.Tensor, position: str) -> torch.Tensor:
    """cls token [B, C] after the final norm (DINO, DINOv2) or of the last block before it
    (MSN's ``forward_blocks``)."""
    if position not in CLS_POSITIONS:
        raise ValueError(f"cls position must be one of {CLS_POSITIONS}, got {position!r}")
    if position == "after_norm":
        return backbone.model.forward_features(backbone.prepare(images))[:, 0]
    store = {}
    hook = backbone.model.blocks[-1].register_forward_hook(
        lambda _m, _i, out: store.__setitem__("x", out)
    )
    try:
        backbone.model.forward_features(backbone.prepare(images))
    finally:
        hook.remove()
    return store["x"][:, 0]


def fill_own_shards(
    images: LabelledImages,
    backbone: FrozenBackbone,
    prep: dict,
    position: str,
    cache_dir: Path,
    batch_size: int,
    num_workers: int,
    dtype: str,
    shard_size: int,
) -> FeatureStore:
    """The store of ``images`` with this rank's shards written (all of them on one rank)."""
    record = {
        "backbone_hash": backbone.hash,
        "preprocess": dict(prep),
        "cls": position,
        "split": images.split,
        "listing": images.listing_sha(),
    }
    store = FeatureStore(cache_dir, record, len(images), backbone.dim, dtype, shard_size)
    env = detect_env()
    dataset = LabelledDataset(images, eval_transform(**prep))
    todo = store.missing(env.rank, env.world_size)
    if env.world_size > 1:
        log.info(
            "rank %d/%d writes %d shard(s) of %s into %s: %s",
            env.rank,
            env.world_size,
            len(todo),
            images.split,
            store.dir,
            ",".join(map(str, todo)),
        )
    bar = tqdm(total=sum(len(store.rows(s)) for s in todo), desc=f"features {images.split}")

    def compute(rows: range) -> np.ndarray:
        loader = DataLoader(Subset(dataset, rows), batch_size=batch_size, num_workers=num_workers)
        out = [cls_tokens(backbone, b["image"], position).float().cpu() for b in loader]
        return torch.cat(out).numpy()

    fill(store, compute, env.rank, env.world_size, bar.update)
    bar.close()
    return store


def wait_and_read(store: FeatureStore, poll_s: float = 1.0, log_s: float = 60.0) -> np.ndarray:
    """Every row of ``store`` (memory-mapped) once all ranks have written their shards.

    Polls the shard markers every ``poll_s`` (a few hundred stat calls at ImageNet size) and
    says what it waits for every ``log_s``."""
    logged = -float("inf")
    while not store.complete():
        if time.monotonic() - logged >= log_s:
            log.info(
                "waiting for %d shard(s) of other ranks in %s", len(store.missing()), store.dir
            )
            logged = time.monotonic()
        time.sleep(poll_s)
    return store.read()
