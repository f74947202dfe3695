"""Shared fixtures: small real datasets on disk (FashionScenes, Pascal VOC, COCO layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.datasets.fashion_scenes import generate_fashion_scenes

# Small enough to generate in well under a second, big enough that every class appears in
# both splits and 2-fold episodes can be sampled.
TINY_SCENES = {"size": 64, "n_train": 120, "n_test": 60, "seed": 0}


@pytest.fixture(scope="session")
def fashion_scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FashionScenes set (64 px, 120 train / 60 val scenes) in the VOC layout."""
    out = tmp_path_factory.mktemp("fashion_scenes")
    return generate_fashion_scenes(out, workers=1, progress=False, **TINY_SCENES)
