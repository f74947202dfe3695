"""The shared stage command line: ``python -m <stage> --config FILE [--output-dir DIR] [k=v]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from common.config import CONFIG_ROOT, Config, ConfigError, load_config
from common.rundir import RunDir, prepare_run_dir, setup_logging
from common.runtime import seed_everything

log = logging.getLogger(__name__)
StageFn = Callable[[Config, RunDir], dict]


def build_parser(stage: str, description: str) -> argparse.ArgumentParser:
    defaults = CONFIG_ROOT / stage / "default.yaml"
    presets = ", ".join(sorted(p.stem for p in defaults.parent.glob("*.yaml")))
    parser = argparse.ArgumentParser(
        prog=f"python -m {stage.replace('/', '.')}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"Every key and its default (with comments on why) is in {defaults}.\n"
            f"Presets in that folder: {presets}.\n"
            "Overrides are dotted key=value pairs parsed as YAML, e.g. train.lr=5e-4 "
            "train.max_steps=100 data.root=/data/scenes.\nUnknown keys and wrong types are "
            "errors that name the closest valid key."
        ),
    )
    parser.add_argument(
        "--config",
        default=None,
        help=f"experiment YAML (a path, or a preset name from configs/{stage}/); "
        "it names a `base` and holds only overrides",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help=f"run directory (default runs/{stage}/<config name>); an existing one is resumed",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="reuse an output dir that holds a different config (overwrites its config.yaml)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def default_output_dir(stage: str, config: str | None) -> Path:
    name = Path(config).stem if config else "default"
    return Path("runs") / stage / name


def run_stage(
    stage: str,
    fn: StageFn,
    cfg: Config,
    output_dir: str | Path,
    force: bool = False,
    rank: int | None = None,
) -> dict:
    """Prepare the run directory, logging and seeds, then run the stage function."""
    from common.distributed import detect_env

    rank = detect_env().rank if rank is None else rank
    run = (
        prepare_run_dir(output_dir, cfg, stage, force=force)
        if rank == 0
        else RunDir(Path(output_dir))
    )
    if rank != 0:
        run.make()
    setup_logging(run, rank=rank)
    seed_everything(int(cfg.seed) + rank)
    log.info("%s: run directory %s", stage, run.root.resolve())
    return fn(cfg, run)


def stage_main(
    stage: str, fn: StageFn, description: str, argv: Sequence[str] | None = None
) -> dict:
    """Parse arguments, load the config and run ``fn``; config errors exit with code 2."""
    parser = build_parser(stage, description)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(stage, args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    out = args.output_dir or default_output_dir(stage, args.config)
    try:
        return run_stage(stage, fn, cfg, out, force=args.force)
    except ConfigError as exc:
        logging.getLogger(stage).error("%s", exc)
        sys.exit(2)
