"""Fixtures of the fewshot tests: a tiny random backbone export and a run's overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.backbone import backbone_kwargs, build_backbone, export_backbone


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT (32 px, patch 8, dim 48, 2 blocks, 3 heads) in the export format."""
    torch.manual_seed(0)
    kwargs = backbone_kwargs("custom", 32, 8, embed_dim=48, depth=2, num_heads=3)
    return export_backbone(build_backbone(kwargs), kwargs, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="session")
def other_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape as ``tiny_export`` with other weights (a different backbone hash)."""
    torch.manual_seed(1)
    kwargs = backbone_kwargs("custom", 32, 8, embed_dim=48, depth=2, num_heads=3)
    return export_backbone(build_backbone(kwargs), kwargs, tmp_path_factory.mktemp("export2"))
