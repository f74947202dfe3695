"""``python -m pretrain.export``: write a backbone in our export format.

- ``RUN_DIR``: (re-)export the teacher of a pretraining run from ``checkpoints/last.pt``, or
  the sharded ``checkpoints/last/`` of a ``train.parallel=fsdp`` run (or ``--checkpoint``),
  into ``RUN_DIR/export/``;
- ``--from SOURCE --out DIR``: convert any backbone source (``timm:<name>``, a DINO / DINOv2 /
  iBOT / MSN checkpoint file, an export) into ``DIR``.

Both write ``backbone.pth`` (a timm ``VisionTransformer`` state dict) + ``backbone.json``
(the kwargs that rebuild it), loadable with ``common.backbone.load_backbone`` (strict).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from common.backbone import export_backbone, load_backbone
from common.checkpoint import (
    SHARDED_META,
    CheckpointError,
    find_sharded_checkpoint,
    load_sharded_checkpoint,
    load_state_dict_strict,
    load_torch_file,
)
from common.cli import add_debug_flag, run_cli
from common.config import to_config
from common.rundir import RunDir, setup_logging
from pretrain.model import Encoder

log = logging.getLogger(__name__)


def _teacher_of(state: dict) -> Encoder:
    """The (randomly initialised) teacher a checkpoint's config and backbone kwargs describe."""
    cfg = to_config(state["config"])
    return Encoder(
        cfg.model,
        cfg.heads,
        int(cfg.crops.global_size),
        cfg.loss.ibot.weight > 0,
        cfg.loss.pixel.weight > 0,
        kwargs=state.get("backbone_kwargs"),
    )


def _checkpoint_of(run: RunDir, checkpoint: str | Path | None) -> Path:
    """``--checkpoint``, else ``last.pt``, else the sharded checkpoint of an fsdp run."""
    if checkpoint:
        return Path(checkpoint)
    if run.last_checkpoint.is_file():
        return run.last_checkpoint
    return find_sharded_checkpoint(run.root / "checkpoints") or run.last_checkpoint


def export_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Rebuild the teacher from a checkpoint's own config and export its backbone.

    A sharded checkpoint (a folder) is read whole by this one process: only the teacher's
    tensors are loaded.
    """
    run = RunDir(Path(run_dir))
    path = _checkpoint_of(run, checkpoint)
    if path.is_dir():
        state = load_torch_file(path / SHARDED_META)
        teacher = _teacher_of(state)
        tensors = {"model": {f"teacher.{k}": v for k, v in teacher.state_dict().items()}}
        load_sharded_checkpoint(tensors, path)
        teacher_state = {k[len("teacher.") :]: v for k, v in tensors["model"].items()}
    else:
        state = load_torch_file(path)
        if "model" not in state or "config" not in state:
            raise CheckpointError(
                f"{path} is not a pretraining checkpoint (no 'model'/'config' entries); "
                "pass a checkpoints/*.pt file written by `python -m pretrain`"
            )
        teacher = _teacher_of(state)
        prefix = "teacher."
        teacher_state = {
            k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)
        }
    load_state_dict_strict(teacher, teacher_state, f"teacher weights in {path}")
    meta = {"stage": "pretrain", "step": int(state["step"]), "config": state["config"]}
    out = export_backbone(teacher.backbone, teacher.kwargs, run.export, meta=meta)
    log.info("exported the teacher backbone of step %d to %s", state["step"], out)
    return out


def export_source(source: str, out: str | Path, weights: str | None = None) -> Path:
    """Convert any backbone source into an export folder ``out``."""
    model, info = load_backbone(source, weights=weights)
    out = export_backbone(model, info["timm_kwargs"], out, meta=info["meta"])
    log.info("exported %s (%s) to %s", source, info["meta"].get("source_format", "export"), out)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.export",
        description="Write a backbone as a timm state dict plus its kwargs (backbone.pth + "
        "backbone.json), for distill, fewshot and any tool that reads timm weights. Either "
        "RUN_DIR (a pretraining run: its teacher goes to RUN_DIR/export/) or --from SOURCE "
        "--out DIR (SOURCE: timm:<name>, a DINO / DINOv2 / iBOT / MSN checkpoint file, or an "
        "export).",
    )
    parser.add_argument("run_dir", nargs="?", help="a `python -m pretrain` run directory")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint to export: a .pt file or a sharded checkpoint folder (default "
        "RUN_DIR/checkpoints/last.pt, or checkpoints/last/ of a train.parallel=fsdp run)",
    )
    parser.add_argument("--from", dest="source", default=None, help="backbone to convert")
    parser.add_argument("--out", default=None, help="export folder to write (with --from)")
    parser.add_argument(
        "--weights", default=None, help="weights file for a timm: name (offline machines)"
    )
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    setup_logging(None)
    if (args.source is None) == (args.run_dir is None):
        parser.error("give either RUN_DIR or --from SOURCE --out DIR")
    if args.source is not None:
        if args.out is None:
            parser.error("--from needs --out DIR (the export folder to write)")
        export_source(args.source, args.out, args.weights)
    else:
        export_run(args.run_dir, args.checkpoint)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
