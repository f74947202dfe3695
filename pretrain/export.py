"""``python -m pretrain.export RUN_DIR``: (re-)export the teacher backbone of a pretraining run.

Reads ``checkpoints/last.pt`` (or ``--checkpoint``) and writes ``export/backbone.pth`` +
``export/backbone.json``, loadable with ``common.backbone.load_backbone`` (strict).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common.backbone import export_backbone
from common.checkpoint import CheckpointError, load_state_dict_strict, load_torch_file
from common.config import to_config
from common.rundir import RunDir, setup_logging
from pretrain.model import Encoder

log = logging.getLogger(__name__)


def export_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Rebuild the teacher from a checkpoint's own config and export its backbone."""
    run = RunDir(Path(run_dir))
    path = Path(checkpoint) if checkpoint else run.last_checkpoint
    state = load_torch_file(path)
    if "model" not in state or "config" not in state:
        raise CheckpointError(
            f"{path} is not a pretraining checkpoint (no 'model'/'config' entries); "
            "pass a checkpoints/*.pt file written by `python -m pretrain`"
        )
    cfg = to_config(state["config"])
    teacher = Encoder(
        cfg.model,
        cfg.heads,
        int(cfg.crops.global_size),
        cfg.loss.ibot.weight > 0,
        cfg.loss.pixel.weight > 0,
    )
    prefix = "teacher."
    teacher_state = {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}
    load_state_dict_strict(teacher, teacher_state, f"teacher weights in {path}")
    meta = {"stage": "pretrain", "step": int(state["step"]), "config": state["config"]}
    out = export_backbone(teacher.backbone, teacher.kwargs, run.export, meta=meta)
    log.info("exported the teacher backbone of step %d to %s", state["step"], out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.export",
        description="Export the teacher backbone of a pretraining run as a timm state dict "
        "plus its kwargs (RUN_DIR/export/), for distill and fewshot.",
    )
    parser.add_argument("run_dir", help="a `python -m pretrain` run directory")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint to export (default RUN_DIR/checkpoints/last.pt)",
    )
    args = parser.parse_args(argv)
    setup_logging(None)
    try:
        export_run(args.run_dir, args.checkpoint)
    except CheckpointError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
