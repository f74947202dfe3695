"""Stage 1 entry point: ``run(cfg, run) -> summary`` (called by the CLI and by ``launch``)."""

from __future__ import annotations

from common.config import Config
from common.rundir import RunDir
from pretrain.train import train


def run(cfg: Config, run: RunDir) -> dict:
    """Pretrain (or resume) in ``run`` and export the teacher backbone to ``run/export``."""
    return train(cfg, run)
