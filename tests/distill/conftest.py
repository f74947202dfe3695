"""Fixtures of the distill tests: a tiny random-init ViT export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.backbone import backbone_kwargs, build_backbone, export_backbone


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init ViT (depth 2, dim 48, 4 heads, patch 8, 64 px) in the export format."""
    torch.manual_seed(0)
    kwargs = backbone_kwargs("custom", 64, 8, embed_dim=48, depth=2, num_heads=4)
    return export_backbone(build_backbone(kwargs), kwargs, tmp_path_factory.mktemp("export"))
