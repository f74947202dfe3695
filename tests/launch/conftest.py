"""Fixtures for launch tests: a tiny pretrain config (the SLURM cluster is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_PRETRAIN = Path(__file__).with_name("pretrain_tiny.yaml")


@pytest.fixture
def tiny_pretrain(fashion_scenes_root: Path) -> list[str]:
    """Arguments of a pretrain run that takes seconds: config file + data root."""
    return ["--config", str(TINY_PRETRAIN), f"data.root={fashion_scenes_root}"]
