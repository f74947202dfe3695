"""``python -m launch``: run a stage, a pipeline or a sweep on SLURM, locally or in-process.

python -m launch STAGE --config FILE [--executor slurm|local|inline] [slurm.KEY=V] [key=value]
python -m launch pipeline --config configs/pipeline/fashion_tiny.yaml [--executor ...]
python -m launch sweep --stage STAGE --config FILE key=v1,v2 other=a,b [slurm.KEY=V]
python -m launch status RUN_DIR
python -m launch cancel RUN_DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from common.cli import add_debug_flag, run_cli
from common.config import load_config
from common.preemption import Preempted
from common.rundir import setup_logging
from launch.options import EXECUTORS, load_launch_options, split_overrides
from launch.slurm import LaunchError
from launch.stages import STAGES

log = logging.getLogger("launch")
COMMANDS = ("pipeline", "sweep", "status", "cancel")
EPILOG = f"""\
Stages: {", ".join(STAGES)}. Commands: {", ".join(COMMANDS)}.

Launch options are slurm.KEY=VALUE (all of them, with why their defaults are what they are, in
configs/launch/default.yaml): partition, nodes, gpus_per_node (one task per GPU),
cpus_per_task, mem_gb, time (HH:MM:SS), account, qos, constraint, exclude, signal_delay_s,
max_requeues, array_parallelism, setup, additional.<sbatch option>. Every other key=value is
the stage's own config override.

Executors: slurm (sbatch through submitit), local (a separate process on this machine; a
pipeline runs its stages one after the other), inline (this process, for debugging). Inside a
SLURM allocation (srun python -m launch ...) a stage runs directly, without resubmitting.

Examples:
  python -m launch pretrain --config fashion_tiny --executor local
  python -m launch pretrain --config configs/pretrain/dino.yaml --executor slurm \\
      slurm.partition=gpu slurm.nodes=2 slurm.gpus_per_node=8 slurm.cpus_per_task=10 \\
      slurm.time=48:00:00 data.root=/data/imagenet/train model.arch=vit_small
  python -m launch pipeline --config configs/pipeline/fashion_tiny.yaml --executor slurm
  python -m launch sweep --stage pretrain --config fashion_tiny train.lr=1e-3,3e-3 seed=0,1
  python -m launch status runs/pipeline/fashion_tiny
"""


USAGE = """\
python -m launch STAGE --config FILE [--executor slurm|local|inline] [slurm.KEY=V] [key=value]
       python -m launch pipeline --config FILE [--executor ...] [STAGE.key=value ...]
       python -m launch sweep --stage STAGE --config FILE key=v1,v2 [other=a,b] [slurm.KEY=V]
       python -m launch status|cancel RUN_DIR
       python -m launch TARGET --help   (the help of one stage or command)"""

# `python -m launch <target> --help`: what that target does, its arguments and an example.
SUBCOMMAND_HELP = {
    "pipeline": """\
usage: python -m launch pipeline --config FILE [--executor slurm|local|inline] [--output-dir DIR]
                                 [--force] [--no-wait] [slurm.KEY=V ...] [STAGE.key=value ...]

Run the stages a pipeline file lists (configs/pipeline/), each after the ones whose artifacts
it reads (${stage.artifact} references; afterok on SLURM). The local executor runs them one
after the other. While it waits it logs each running stage's step, ETA and log path every
30 s; at the end a table gives each stage's headline metric and its baseline in %, and
report.md in the pipeline directory adds loss curves and figures. STAGE.key=value overrides
one stage's config.

Example:
  python -m launch pipeline --config configs/pipeline/fashion_tiny.yaml --executor local
""",
    "sweep": """\
usage: python -m launch sweep --stage STAGE --config FILE key=v1,v2 [other=a,b ...]
                              [--executor slurm|local|inline] [slurm.KEY=V ...] [key=value ...]

Run a stage once per point of the grid of the comma-separated values (a SLURM job array on
slurm); key=value without a comma is fixed for every point. A YAML list is one value:
model.layers=[8,10] stays whole. Results of every point are tabulated at the end.

Example:
  python -m launch sweep --stage pretrain --config fashion_tiny train.lr=1e-3,3e-3 seed=0,1
""",
    "status": """\
usage: python -m launch status RUN_DIR

Jobs of a run, pipeline or sweep directory: their state, last logged step, loss, images/s
and metrics, the ETA of a running job, and log paths.

Example:
  python -m launch status runs/pipeline/fashion_tiny
""",
    "cancel": """\
usage: python -m launch cancel RUN_DIR

Cancel the SLURM jobs (or local processes) a run, pipeline or sweep directory started.

Example:
  python -m launch cancel runs/pipeline/fashion_tiny
""",
}
STAGE_HELP = """\
usage: python -m launch {stage} --config FILE [--executor slurm|local|inline] [--output-dir DIR]
       [--force] [--no-wait] [--time HH:MM:SS] [slurm.KEY=V ...] [key=value ...]

Run `python -m {module}` as a SLURM job, a local process or in this process. slurm.KEY=V are
launch options (configs/launch/default.yaml); every other key=value overrides the stage's
config (`python -m {module} --help` lists its keys).

Example:
  python -m launch {stage} --config fashion_tiny --executor local
"""


def subcommand_help(argv: Sequence[str]) -> str | None:
    """The help of ``python -m launch <target> --help``; None without --help or a target."""
    if not {"-h", "--help"} & set(argv):
        return None
    targets = [a for a in argv if not a.startswith("-")]
    if not targets:
        return None
    if targets[0] in SUBCOMMAND_HELP:
        return SUBCOMMAND_HELP[targets[0]]
    if targets[0] in STAGES:
        return STAGE_HELP.format(stage=targets[0], module=targets[0].replace("/", "."))
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch",
        usage=USAGE,
        description="Submit a stage, the whole pretrain -> distill -> fewshot chain, or a "
        "sweep as SLURM jobs (submitit), local processes, or in this process.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="a stage name, or pipeline / sweep / status / cancel")
    p.add_argument("run_dir", nargs="?", help="status/cancel: a run, pipeline or sweep directory")
    p.add_argument("--config", help="stage or pipeline YAML (a path or a preset name)")
    p.add_argument("--stage", help="sweep: the stage to sweep")
    p.add_argument("--executor", default="local", choices=EXECUTORS, help="default: local")
    p.add_argument("--output-dir", help="run / pipeline / sweep directory (default under runs/)")
    p.add_argument("--force", action="store_true", help="reuse an output dir with another config")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm: return after submitting (follow with `python -m launch status DIR`)",
    )
    p.add_argument(
        "--signal-delay",
        type=int,
        metavar="S",
        help="seconds of warning before the time limit (same as slurm.signal_delay_s)",
    )
    p.add_argument("--time", metavar="HH:MM:SS", help="time limit (same as slurm.time)")
    add_debug_flag(p)
    return p


def _launch_args(args: argparse.Namespace, overrides: list[str]) -> list[str]:
    extra = []
    if args.signal_delay is not None:
        extra.append(f"slurm.signal_delay_s={args.signal_delay}")
    if args.time is not None:
        extra.append(f"slurm.time={args.time}")
    return overrides + extra


def _run_stage(args: argparse.Namespace, overrides: list[str]) -> int:
    from launch.job import StageJob
    from launch.stages import check_stage
    from launch.submit import (
        check_artifacts,
        check_run_dir,
        effective_executor,
        preflight,
        submit_stage,
        wait_jobs,
    )

    stage = check_stage(args.target)
    launch_cli, stage_cli = split_overrides(overrides)
    slurm = load_launch_options((), launch_cli).slurm
    cfg = load_config(stage, args.config, stage_cli)
    name = Path(args.config).stem if args.config else "default"
    out = Path(args.output_dir or Path("runs") / stage / name).resolve()
    check_artifacts(stage, cfg)
    if not args.force:
        check_run_dir(out, stage, cfg)
    executor = effective_executor(args.executor)
    preflight(executor, slurm, f"labelfew-{stage.replace('/', '-')}")
    job = StageJob(stage, dict(cfg), str(out), args.force, slurm["max_requeues"])
    try:
        sub = submit_stage(job, executor, slurm)
    except Preempted as exc:
        log.warning("%s; run the same command again to resume", exc)
        return 3
    if executor == "inline":
        _print_summary(stage, sub.summary or {})
        return 0
    if executor == "slurm" and args.no_wait:
        print(f"submitted job {sub.job_id}; follow it with: python -m launch status {out}")
        return 0
    state = wait_jobs([sub])[sub.job_id]
    if state != "COMPLETED":
        from launch.status import collect, format_status

        print(format_status(collect(out)), file=sys.stderr)
        return 1
    from launch.report import read_summary

    _print_summary(stage, read_summary(out))
    return 0


def _print_summary(stage: str, summary: dict) -> None:
    from launch.report import results_table

    print(results_table([(stage, stage, summary.get("state", "COMPLETED"), summary)]))


def _run_pipeline(args: argparse.Namespace, overrides: list[str]) -> int:
    from launch.pipeline import load_pipeline_file, plan, submit_pipeline, sync_statuses
    from launch.report import write_report
    from launch.status import collect
    from launch.submit import effective_executor, wait_jobs

    if not args.config:
        raise LaunchError("pipeline needs --config, e.g. configs/pipeline/fashion_tiny.yaml")
    data = load_pipeline_file(args.config)
    name = data.get("name") or Path(data["_path"]).stem
    out = Path(args.output_dir or Path("runs") / "pipeline" / name).resolve()
    executor = effective_executor(args.executor)
    planned = plan(data, out, overrides, force=args.force)
    subs = submit_pipeline(planned, out, executor, data, force=args.force)
    if executor == "slurm":
        if args.no_wait:
            print(f"submitted {len(subs)} jobs; follow them with: python -m launch status {out}")
            return 0
        wait_jobs(subs)
    rows = collect(out)
    sync_statuses(out, rows)
    stages = [
        {"name": r.name, "stage": p.stage, "state": r.state, "run_dir": str(p.run_dir)}
        for r, p in zip(rows, planned, strict=True)
    ]
    table, report = write_report(out, stages, data["bars"])
    print(table)
    print(f"\nreport: {report}")
    return 0 if all(s["state"] == "COMPLETED" for s in stages) else 1


def _run_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    from launch.stages import check_stage
    from launch.submit import effective_executor, wait_jobs
    from launch.sweep import parse_axes, plan_sweep, submit_sweep, sweep_table

    if not args.stage:
        raise LaunchError("sweep needs --stage, e.g. --stage pretrain")
    stage = check_stage(args.stage)
    launch_cli, stage_cli = split_overrides(overrides)
    slurm = load_launch_options((), launch_cli).slurm
    axes, fixed = parse_axes(stage_cli)
    name = Path(args.config).stem if args.config else "default"
    out = Path(args.output_dir or Path("runs") / "sweep" / stage / name).resolve()
    points = plan_sweep(stage, args.config, axes, fixed, out)
    executor = effective_executor(args.executor)
    subs = submit_sweep(stage, points, out, executor, slurm, force=args.force)
    if executor == "slurm":
        if args.no_wait:
            print(f"submitted {len(subs)} array tasks; follow with: python -m launch status {out}")
            return 0
        wait_jobs(subs)
    print(sweep_table(out))
    return 0


def _main(argv: list[str]) -> int:
    text = subcommand_help(argv)
    if text is not None:
        print(text, end="")
        return 0
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognised options: {' '.join(unknown)}")
    overrides = list(rest)
    if args.run_dir and args.target not in ("status", "cancel"):
        overrides.insert(0, args.run_dir)
    # The same labelled console handler a stage installs, so it replaces it instead of doubling.
    setup_logging(None)
    if args.target in ("status", "cancel"):
        from launch.status import cancel_runs, collect, format_status

        if not args.run_dir:
            raise LaunchError(f"{args.target} needs a run directory")
        if args.target == "cancel":
            ids = cancel_runs(args.run_dir)
            print(f"cancelled {len(ids)} job(s): {' '.join(ids) or '-'}")
            return 0
        print(format_status(collect(args.run_dir)))
        return 0
    overrides = _launch_args(args, overrides)
    if args.target == "pipeline":
        return _run_pipeline(args, overrides)
    if args.target == "sweep":
        return _run_sweep(args, overrides)
    return _run_stage(args, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input (config, stage, cluster) exits with code 2 and one line."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
