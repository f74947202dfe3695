"""The shared stage command line: ``python -m <stage> --config FILE [--output-dir DIR] [k=v]``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from common.artifacts import check_run_inputs
from common.config import CONFIG_ROOT, TYPES_KEY, Config, load_config
from common.errors import UserError
from common.rundir import (
    CONSOLE_SKIP,
    RunDir,
    changed_config_keys,
    prepare_run_dir,
    restore_run_dir,
    schedule_change,
    setup_logging,
    snapshot_run_dir,
)
from common.runtime import seed_everything

log = logging.getLogger(__name__)
StageFn = Callable[[Config, RunDir], dict]
T = TypeVar("T")
DEBUG_ENV = "LABELFEW_DEBUG"


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the traceback of an expected error too."""
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"on an error, show the full traceback (same as {DEBUG_ENV}=1)",
    )


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def user_message(exc: BaseException) -> str:
    """The error's message on one line, without the worker traceback a DataLoader adds."""
    text = str(exc)
    if "\nOriginal Traceback" in text:
        # torch re-raises a worker's error with its traceback as the message; the original
        # message is the text after the type on the last line.
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def exit_with_error(exc: BaseException) -> NoReturn:
    """Print ``error: <message>`` (and ``hint: ...``) on stderr, log it to the files, exit 2."""
    message = user_message(exc)
    hint = getattr(exc, "hint", None)
    if logging.getLogger().handlers:  # else logging's last-resort handler would print it twice
        # The log file keeps the error too; the console gets the plain line below instead.
        log.error("%s", message, extra={CONSOLE_SKIP: True})
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    sys.exit(2)


def run_cli(main: Callable[[list[str]], T], argv: Sequence[str] | None = None) -> T:
    """Run ``main(argv)``; an expected error exits 2 with one line unless debugging."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(args)
    except UserError as exc:  # a user mistake or damaged input: the message is the story
        if debug_requested(args):
            raise
        exit_with_error(exc)


def _backbone_epilog(stage: str) -> str:
    """The three ways to name a backbone, for the stages that read one (docs/backbones.md)."""
    from common.backbone import BACKBONE_HELP

    defaults = load_config(stage)
    if "backbone" in defaults:
        return f"\nThe backbone, three ways: {BACKBONE_HELP}."
    if "init" in defaults.get("model", {}):
        return f"\nmodel.init=SOURCE continues pretraining from a backbone: {BACKBONE_HELP}."
    return ""


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


def _comment(rest: str) -> str:
    """The text after `` # `` on a YAML line (defaults files keep ``#`` out of values)."""
    return rest.split(" #", 1)[1].strip() if " #" in rest else ""


def defaults_key_list(stage: str, config_root: Path = CONFIG_ROOT) -> str:
    """Every leaf key of a stage's defaults file with its default and the first line of its
    comment (on the key's line, else just above it), read from the file so ``--help`` cannot
    drift from it."""
    cfg = load_config(stage, config_root=config_root)
    lines: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is inside
    above: list[str] = []  # the comment block right above the current line
    for line in (config_root / stage / "default.yaml").read_text().splitlines():
        if line.strip().startswith("#"):
            above.append(line.strip().lstrip("#").strip())
            continue
        m = _KEY_LINE.match(line)
        comment = (_comment(m["rest"]) if m else "") or (above[0] if above else "")
        above = []
        if not m:
            continue
        indent, key = len(m["indent"]), m["key"]
        stack = [(i, k) for i, k in stack if i < indent]
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        if path[0] in ("stage", TYPES_KEY) or key.startswith("_"):
            continue
        value: object = cfg
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            continue
        shown = "null" if value is None else json.dumps(value)
        lines.append(f"  {'.'.join(path)}={shown}  {comment}".rstrip())
    return "\n".join(lines)


def build_parser(stage: str, description: str) -> argparse.ArgumentParser:
    defaults = CONFIG_ROOT / stage / "default.yaml"
    presets = ", ".join(sorted(p.stem for p in defaults.parent.glob("*.yaml")))
    parser = argparse.ArgumentParser(
        prog=f"python -m {stage.replace('/', '.')}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Overrides are dotted key=value pairs parsed as YAML, e.g. train.lr=5e-4 "
            "train.max_steps=100 data.root=/data/scenes.\nUnknown keys and wrong types are "
            "errors that name the closest valid key."
            + _backbone_epilog(stage)
            + f"\n\nKeys, their defaults and why (from {defaults}):\n"
            + defaults_key_list(stage)
            + f"\n\nPresets in that folder: {presets}."
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
        help="reuse an output dir that holds a different config: the log names the keys that "
        "differ, its checkpoints are resumed, and a command that fails before the stage writes "
        "anything leaves the old config.yaml in place",
    )
    add_debug_flag(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, before or after the flags",
    )
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
    config_root: Path = CONFIG_ROOT,
) -> dict:
    """Prepare the run directory, logging and seeds, then run the stage function.

    A command that fails before its stage writes an output leaves the run directory as it
    was (config.yaml and inputs.json restored, new folders removed), so the corrected command
    is not refused as "a different config".
    """
    from common.distributed import detect_env

    rank = detect_env().rank if rank is None else rank
    if rank != 0:
        run = RunDir(Path(output_dir)).make()
        setup_logging(run, rank=rank)
        seed_everything(int(cfg.seed) + rank)
        log.info("%s: run directory %s", stage, run.root.resolve())
        return fn(cfg, run)
    before = snapshot_run_dir(output_dir)
    replaced = changed_config_keys(output_dir, cfg, stage, config_root) if force else []
    schedule_warning = schedule_change(output_dir, cfg, stage, config_root)
    try:
        run = prepare_run_dir(output_dir, cfg, stage, force=force, config_root=config_root)
        check_run_inputs(run.root, cfg, force=force)
        setup_logging(run, rank=rank)
        seed_everything(int(cfg.seed) + rank)
        log.info("%s: run directory %s", stage, run.root.resolve())
        if replaced:
            log.warning(
                "--force: %s held a run with another config (keys differ: %s); config.yaml "
                "now holds this one and its checkpoints, if any, are resumed from",
                run.root,
                ", ".join(replaced),
            )
        if schedule_warning:
            log.warning("%s", schedule_warning)
        return fn(cfg, run)
    except BaseException:
        if restore_run_dir(before):
            log.info("%s: nothing was produced; %s is left as it was", stage, before.root)
        raise


def stage_main(
    stage: str, fn: StageFn, description: str, argv: Sequence[str] | None = None
) -> dict:
    """Parse arguments, load the config and run ``fn``; expected errors exit with code 2."""
    parser = build_parser(stage, description)

    def main(args: list[str]) -> dict:
        # Intermixed: `--output-dir D key=v` after flags reads as the user meant it.
        ns = parser.parse_intermixed_args(args)
        cfg = load_config(stage, ns.config, ns.overrides)
        out = ns.output_dir or default_output_dir(stage, ns.config)
        return run_stage(stage, fn, cfg, out, force=ns.force)

    return run_cli(main, argv)
