"""Shared fixtures: small real datasets on disk (FashionScenes, Pascal VOC, COCO layouts) and
the local SLURM clusters (one node on this host; two nodes in network namespaces)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.datasets.fashion_scenes import generate_fashion_scenes
from launch.testing.cluster import LocalSlurm, namespace_reason, unavailable_reason
from tests.fixtures.voc import build_voc

# Small enough to generate in well under a second, big enough that every class appears in
# both splits and 2-fold episodes can be sampled.
TINY_SCENES = {"size": 64, "n_train": 120, "n_test": 60, "seed": 0}


@pytest.fixture(scope="session")
def fashion_scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FashionScenes set (64 px, 120 train / 60 val scenes) in the VOC layout."""
    out = tmp_path_factory.mktemp("fashion_scenes")
    return generate_fashion_scenes(out, workers=1, progress=False, **TINY_SCENES)


@pytest.fixture(scope="session")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Pascal VOC 2012 tree (5 images); the folder that contains ``VOC2012/``."""
    return build_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny COCO 2014 tree (3 train + 3 val images, polygon / RLE / crowd annotations)."""
    # pycocotools is an optional extra (`.[coco]`): without it only the COCO tests skip.
    pytest.importorskip("pycocotools")
    from tests.fixtures.coco import build_coco

    return build_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurm]:
    """The local SLURM cluster (started or reused); SLURM_CONF points every client at it."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm()
    with cluster.session():
        old = os.environ.get("SLURM_CONF")
        os.environ.update(cluster.env)
        try:
            yield cluster
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="module")
def slurm_two_nodes() -> Iterator[LocalSlurm]:
    """A second local cluster whose two nodes are network namespaces (own address and host
    name each). Module-scoped: SLURM_CONF points at it only while its module runs, so the
    one-node tests of the same worker keep theirs."""
    reason = unavailable_reason() or namespace_reason()
    if reason:
        pytest.skip(f"two-node SLURM cluster unavailable: {reason}")
    cluster = LocalSlurm.multi_node(2)
    with cluster.session():
        old = os.environ.get("SLURM_CONF")
        os.environ.update(cluster.env)
        try:
            yield cluster
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old
