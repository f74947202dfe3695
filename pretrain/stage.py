"""Stage 1 entry point: ``run(cfg, run) -> summary`` (called by the CLI and by ``launch``)."""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

from common.backbone import load_backbone
from common.config import Config
from common.datasets.errors import CorruptDataError, DatasetNotFoundError
from common.datasets.items import load_rgb
from common.distributed import is_main_process
from common.rundir import RunDir
from pretrain.attention import write_attention_figures
from pretrain.train import train

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def sample_images(root: Path, count: int) -> list[Path]:
    """The first ``count`` readable image files under ``root`` (VOC layouts: JPEGImages/).

    A figure is an illustration: an unreadable file is passed over with a warning naming it.
    """
    folder = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    files = (p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
    return list(islice(filter(_readable, files), count))


def _readable(path: Path) -> bool:
    try:
        load_rgb(path)
    except (CorruptDataError, DatasetNotFoundError):
        log.warning("attention figures: passing over unreadable image %s", path)
        return False
    return True


def run(cfg: Config, run: RunDir) -> dict:
    """Pretrain (or resume) in ``run``, export the teacher backbone, draw its attention maps."""
    summary = train(cfg, run)
    count = int(cfg.eval.attention_images)
    if count > 0 and is_main_process():
        model, info = load_backbone(run.export)
        images = sample_images(Path(cfg.data.root), count)
        size = int(info["timm_kwargs"]["img_size"])
        written = write_attention_figures(model, images, run.figures, size)
        log.info("attention maps of %d images in %s", len(written), run.figures)
    return summary
