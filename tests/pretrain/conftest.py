"""Tiny pretraining configs on the shared tiny FashionScenes fixture."""

from __future__ import annotations

import pytest
import torch

from common.config import load_config

TINY = [
    "device=cpu",
    "eval.attention_images=0",
    "model.arch=custom",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.patch_size=8",
    "heads.cls.out_dim=64",
    "heads.cls.hidden_dim=64",
    "heads.cls.bottleneck_dim=16",
    "heads.pixel.hidden_dim=32",
    "crops.global_size=16",
    "crops.local_size=8",
    "crops.num_local=2",
    "train.batch_size=8",
    "train.epochs=2",
    "train.warmup_epochs=1",
    "train.log_every=2",
    "train.checkpoint_every=100",
    "data.num_workers=0",
    "eval.every=0",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tests run two per core under xdist: one torch thread each avoids oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config(fashion_scenes_root):
    """``make(preset, *overrides)`` -> a resolved tiny config reading the fixture scenes."""

    def make(preset: str = "maskcluster", *overrides: str):
        return load_config(
            "pretrain", preset, [*TINY, f"data.root={fashion_scenes_root}", *overrides]
        )

    return make
