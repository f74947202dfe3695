"""Fixtures for launch tests: the real one-node SLURM cluster and a tiny pretrain config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch.testing.cluster import LocalSlurm, unavailable_reason

TINY_PRETRAIN = Path(__file__).with_name("pretrain_tiny.yaml")


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


@pytest.fixture
def tiny_pretrain(fashion_scenes_root: Path) -> list[str]:
    """Arguments of a pretrain run that takes seconds: config file + data root."""
    return ["--config", str(TINY_PRETRAIN), f"data.root={fashion_scenes_root}"]
