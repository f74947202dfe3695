"""Every CLI on every user mistake: one `error:` line naming the culprit, exit code 2, no
traceback, nothing written to the user's input folders; damaged runs resume or stop cleanly.

Each case runs the real command in a subprocess, as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from common.backbone import backbone_kwargs, build_backbone, export_backbone
from common.checkpoint import load_torch_file

REPO = Path(__file__).resolve().parents[1]
PRETRAIN_TINY = REPO / "tests" / "launch" / "pretrain_tiny.yaml"
FEWSHOT_TINY = [
    "data.image_size=32",
    "head.channels=[16, 32]",
    "head.pool_sizes=[2, 2]",
    "head.attn_heads=2",
    "train.max_steps=2",
    "threads=1",
]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m <args>`` from the repository root, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        # A debugging user's LABELFEW_DEBUG=1 would turn every expected error into a traceback.
        env={**{k: v for k, v in os.environ.items() if k != "LABELFEW_DEBUG"}, **(env or {})},
        timeout=300,
    )


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    """Every file under ``folder`` with its size and mtime: equal snapshots = untouched."""
    if not folder.exists():
        return []
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    )


def assert_one_error_line(proc: subprocess.CompletedProcess, *culprits: str) -> str:
    """Exit code 2, no traceback, an ``error:`` line naming every culprit; returns that line."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for culprit in culprits:
        assert culprit in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random-init ViT exports of different widths: ``small`` and ``wide``."""
    out = {}
    for name, dim in (("small", 48), ("wide", 96)):
        torch.manual_seed(0)
        kwargs = backbone_kwargs("custom", 32, 8, embed_dim=dim, depth=2, num_heads=3)
        folder = tmp_path_factory.mktemp(f"export_{name}")
        out[name] = export_backbone(build_backbone(kwargs), kwargs, folder)
    return out


@pytest.fixture(scope="session")
def mixed_export(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small export's description with the wide export's weights (another architecture)."""
    folder = tmp_path_factory.mktemp("mixed") / "export"
    shutil.copytree(exports["small"], folder)
    shutil.copy(exports["wide"] / "backbone.pth", folder / "backbone.pth")
    return folder


@pytest.fixture(scope="session")
def image_folder(fashion_scenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain folder of 16 readable scenes and one corrupt JPEG (``broken.jpg``)."""
    folder = tmp_path_factory.mktemp("my_images")
    for path in sorted((fashion_scenes_root / "JPEGImages").glob("*.jpg"))[:16]:
        shutil.copy(path, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture(scope="session")
def user_folder(fashion_scenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own folder: photos/ (nested, a symlink), labels.csv, masks/ (ten)."""
    from tests.distill.user_folder import build_user_folder

    return build_user_folder(fashion_scenes_root, tmp_path_factory.mktemp("user"), count=12)


@pytest.fixture(scope="session")
def pretrain_run(fashion_scenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny pretraining run stopped at step 4 (last.pt, step_2 and step_4 copies)."""
    out = tmp_path_factory.mktemp("pretrain_run") / "run"
    proc = cli("pretrain", *pretrain_args(fashion_scenes_root, out), "train.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def pretrain_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(PRETRAIN_TINY), "--output-dir", str(out), f"data.root={root}", *extra]


class _MakesADirectory:
    """Unpickling it calls os.mkdir: what a malicious checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def evil_checkpoint(tmp: Path) -> Path:
    """A checkpoint that would create ``tmp/no_such`` if it were unpickled."""
    path = tmp / "evil.pt"
    torch.save({"step": 1, "model": _MakesADirectory(tmp / "no_such")}, path)
    return path


@dataclass
class Case:
    """One mistake: the command (built from the fixtures), the culprits its error must name,
    and the input folders it must leave untouched."""

    argv: Callable[[dict, Path], list[str]]
    culprits: Callable[[dict, Path], list[str]]
    inputs: Callable[[dict, Path], list[Path]] = field(default=lambda f, tmp: [])
    # Whether the stage got far enough to write outputs in its run directory (tmp/run).
    started: bool = False


def _pretrain(*extra: str) -> Callable[[dict, Path], list[str]]:
    return lambda f, tmp: ["pretrain", *pretrain_args(f["scenes"], tmp / "run", *extra)]


def _fewshot(*extra: str, stage: str = "fewshot") -> Callable[[dict, Path], list[str]]:
    return lambda f, tmp: [
        stage,
        "--output-dir",
        str(tmp / "run"),
        f"data.root={f['scenes']}",
        f"backbone={f['exports']['small']}",
        *(FEWSHOT_TINY if stage == "fewshot" else ["data.image_size=32", "threads=1"]),
        *extra,
    ]


def _own_folder(*extra: str, labels: bool = True) -> Callable[[dict, Path], list[str]]:
    """`distill` on the user's own folder (data.format=folder)."""
    return lambda f, tmp: [
        "distill",
        "--output-dir",
        str(tmp / "run"),
        f"backbone={f['exports']['small']}",
        "data.format=folder",
        f"data.root={f['user'] / 'photos'}",
        *([f"data.labels={f['user'] / 'labels.csv'}"] if labels else []),
        "quality.enabled=false",
        *extra,
    ]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _wrong_size_mask(tmp: Path) -> Path:
    from common.datasets.palette import write_mask

    write_mask(tmp / "masks" / "shop" / "a" / "photo1.png", torch.zeros(64, 64).byte().numpy())
    return tmp / "masks"


CASES = {
    "unknown key": Case(_pretrain("train.lrr=0.1"), lambda f, tmp: ["train.lrr", "train.lr"]),
    "wrong type": Case(_pretrain("train.max_steps=many"), lambda f, tmp: ["train.max_steps"]),
    "empty data.root": Case(
        lambda f, tmp: ["pretrain", *pretrain_args(tmp / "empty", tmp / "run")],
        lambda f, tmp: [f"data.root {tmp / 'empty'} is an empty folder"],
        lambda f, tmp: [tmp / "empty"],
    ),
    "missing data.root": Case(
        lambda f, tmp: ["pretrain", *pretrain_args(tmp / "no_such", tmp / "run")],
        lambda f, tmp: [f"data.root {tmp / 'no_such'} does not exist"],
    ),
    "missing data.root, distill": Case(
        lambda f, tmp: [
            "distill",
            "--output-dir",
            str(tmp / "run"),
            f"backbone={f['exports']['small']}",
            f"data.root={tmp / 'no_such'}",
        ],
        lambda f, tmp: [str(tmp / "no_such")],
    ),
    "missing data.root, fewshot": Case(
        _fewshot("data.root=/no/such/scenes"), lambda f, tmp: ["/no/such/scenes"]
    ),
    "corrupt image, on_corrupt=error": Case(
        lambda f, tmp: [
            "pretrain",
            *pretrain_args(f["images"], tmp / "run", "data.on_corrupt=error"),
            "data.num_workers=1",  # the error crosses a DataLoader worker
        ],
        lambda f, tmp: [str(f["images"] / "broken.jpg")],
        lambda f, tmp: [f["images"]],
        started=True,  # the broken image comes up after the first checkpoint
    ),
    "bad on_corrupt value": Case(
        _pretrain("data.on_corrupt=ignore"), lambda f, tmp: ["data.on_corrupt", "'ignore'"]
    ),
    "missing backbone, distill": Case(
        lambda f, tmp: [
            "distill",
            "--output-dir",
            str(tmp / "run"),
            f"data.root={f['scenes']}",
            f"backbone={tmp / 'missing'}",
        ],
        lambda f, tmp: [str(tmp / "missing")],
        lambda f, tmp: [f["scenes"]],
    ),
    "missing backbone, probe": Case(
        _fewshot("backbone=/no/export", stage="fewshot.probe"),
        lambda f, tmp: ["/no/export"],
    ),
    "export of another architecture": Case(
        lambda f, tmp: _fewshot(f"backbone={f['mixed']}")(f, tmp),
        lambda f, tmp: ["does not match the model architecture"],
        lambda f, tmp: [f["mixed"]],
    ),
    "way larger than a fold": Case(_fewshot("way=6"), lambda f, tmp: ["way=6"]),
    "shot larger than a class": Case(_fewshot("shot=500"), lambda f, tmp: ["shot=500"]),
    "missing pseudo-masks, fewshot": Case(
        _fewshot("supervision=weak"), lambda f, tmp: ["pseudo-masks"]
    ),
    "missing pseudo-masks, segment": Case(
        lambda f, tmp: [
            "distill.segment",
            "--output-dir",
            str(tmp / "run"),
            f"data.root={f['scenes']}",
            f"backbone={f['exports']['small']}",
        ],
        lambda f, tmp: ["pseudo_masks="],
    ),
    "NaN loss": Case(
        _pretrain(
            "train.lr=1.0e+30",
            "train.warmup_epochs=0.0",
            "train.clip_grad=0.0",
            "train.max_steps=4",
        ),
        lambda f, tmp: ["non-finite loss", "train.lr"],
        lambda f, tmp: [f["scenes"]],
        started=True,
    ),
    "attention: missing checkpoint": Case(
        lambda f, tmp: [
            "pretrain.attention",
            "--checkpoint",
            str(tmp / "gone"),
            "--images",
            str(f["images"] / "broken.jpg"),
            "--out",
            str(tmp / "figs"),
        ],
        lambda f, tmp: [str(tmp / "gone")],
    ),
    "attention: corrupt image": Case(
        lambda f, tmp: [
            "pretrain.attention",
            "--checkpoint",
            str(f["exports"]["small"]),
            "--images",
            str(f["images"] / "broken.jpg"),
            "--out",
            str(tmp / "figs"),
        ],
        lambda f, tmp: [str(f["images"] / "broken.jpg")],
        lambda f, tmp: [f["images"]],
    ),
    "generator: output folder with other files": Case(
        lambda f, tmp: [
            "common.datasets.fashion_scenes",
            "--out",
            str(f["images"]),
            "--train",
            "2",
            "--test",
            "1",
        ],
        lambda f, tmp: [str(f["images"]), "did not write"],
        lambda f, tmp: [f["images"]],
    ),
    "export: no run there": Case(
        lambda f, tmp: ["pretrain.export", str(tmp / "nope")],
        lambda f, tmp: [str(tmp / "nope" / "checkpoints" / "last.pt")],
    ),
    "export: a checkpoint needing arbitrary unpickling": Case(
        lambda f, tmp: ["pretrain.export", str(tmp), "--checkpoint", str(evil_checkpoint(tmp))],
        lambda f, tmp: [str(tmp / "evil.pt"), "posix.mkdir", "refused"],
    ),
    "own folder: data.labels missing": Case(
        _own_folder(labels=False),
        lambda f, tmp: ["data.format=folder needs data.labels"],
        lambda f, tmp: [f["user"]],
    ),
    "own folder: labels.csv without its header": Case(
        lambda f, tmp: _own_folder(
            "data.labels=" + str(_write(tmp / "bad.csv", "file,class\nx.jpg,cat\n"))
        )(f, tmp),
        lambda f, tmp: [str(tmp / "bad.csv"), "image,labels"],
        lambda f, tmp: [f["user"]],
    ),
    "own folder: mixed supervision without masks": Case(
        _own_folder(),
        lambda f, tmp: ["mixed supervision needs a few real masks", "data.masks"],
        lambda f, tmp: [f["user"]],
    ),
    "own folder: a mask of another size": Case(
        lambda f, tmp: _own_folder(f"data.masks={_wrong_size_mask(tmp)}")(f, tmp),
        lambda f, tmp: ["is 64x64 but image", "photo1"],
        lambda f, tmp: [f["user"]],
    ),
    "own folder: a corrupt image": Case(
        lambda f, tmp: _own_folder(
            f"data.root={f['images']}",
            "data.labels="
            + str(
                _write(
                    tmp / "labels.csv",
                    "image,labels\n"
                    + "".join(f"{p.name},cat\n" for p in sorted(f["images"].glob("*.jpg"))),
                )
            ),
            "mixed.enabled=false",
        )(f, tmp),
        lambda f, tmp: [str(f["images"] / "broken.jpg"), "data.on_corrupt=skip"],
        lambda f, tmp: [f["images"]],
    ),
    "fewshot: a benchmark's folds on fewer classes": Case(
        lambda f, tmp: [
            "fewshot",
            "--output-dir",
            str(tmp / "run"),
            f"backbone={f['exports']['small']}",
            "data.format=folder",
            f"data.root={f['user'] / 'photos'}",
            f"data.masks={f['user'] / 'masks'}",
            "data.benchmark=pascal",
            *FEWSHOT_TINY,
        ],
        lambda f, tmp: ["data.benchmark=pascal splits 20 classes", "data.folds"],
    ),
    "probe: your folder without split lists": Case(
        lambda f, tmp: [
            "fewshot.probe",
            "--config",
            "dino_knn",
            "--output-dir",
            str(tmp / "run"),
            f"backbone={f['exports']['small']}",
            "data.format=folder",
            f"data.root={f['user'] / 'photos'}",
            f"data.labels={f['user'] / 'labels.csv'}",
        ],
        lambda f, tmp: [str(f["user"] / "photos" / "train.txt"), "data.train_split"],
        lambda f, tmp: [f["user"]],
    ),
    "launch: unknown stage": Case(
        lambda f, tmp: ["launch", "pretrian", "--output-dir", str(tmp / "run")],
        lambda f, tmp: ["pretrian", "pretrain"],
    ),
    "launch: unknown key": Case(
        lambda f, tmp: [
            "launch",
            "pretrain",
            "--config",
            str(PRETRAIN_TINY),
            "--executor",
            "inline",
            "--output-dir",
            str(tmp / "run"),
            "train.lrr=1",
        ],
        lambda f, tmp: ["train.lrr"],
    ),
}


@pytest.fixture
def fixtures(fashion_scenes_root, exports, mixed_export, image_folder, user_folder) -> dict:
    return {
        "scenes": fashion_scenes_root,
        "exports": exports,
        "mixed": mixed_export,
        "images": image_folder,
        "user": user_folder,
    }


@pytest.mark.parametrize("name", list(CASES))
def test_a_mistake_is_one_line_naming_the_culprit(name: str, fixtures: dict, tmp_path: Path):
    case = CASES[name]
    (tmp_path / "empty").mkdir()
    inputs = [fixtures["scenes"], *case.inputs(fixtures, tmp_path)]
    before = [snapshot(p) for p in inputs]
    proc = cli(*case.argv(fixtures, tmp_path))
    assert_one_error_line(proc, *case.culprits(fixtures, tmp_path))
    assert [snapshot(p) for p in inputs] == before, "an input folder was written to"
    assert not (tmp_path / "no_such").exists()  # neither created as data nor by unpickling
    # A failed command leaves no run directory behind that the corrected one would trip on.
    assert (tmp_path / "run").exists() == case.started


def test_debug_flag_and_env_show_the_traceback(fashion_scenes_root: Path, tmp_path: Path):
    argv = ["pretrain", *pretrain_args(fashion_scenes_root, tmp_path / "run", "train.lrr=1")]
    for proc in (cli(*argv, "--debug"), cli(*argv, env={"LABELFEW_DEBUG": "1"})):
        assert proc.returncode != 0
        assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_flags_and_overrides_in_any_order(fashion_scenes_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    proc = cli(
        "pretrain",
        "--config",
        str(PRETRAIN_TINY),
        "train.max_steps=1",
        "--output-dir",
        str(out),
        f"data.root={fashion_scenes_root}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_torch_file(out / "checkpoints" / "last.pt")["step"] == 1


def test_corrupt_image_skipped_is_logged_once(image_folder: Path, tmp_path: Path):
    before = snapshot(image_folder)
    out = tmp_path / "run"
    proc = cli("pretrain", *pretrain_args(image_folder, out, "data.on_corrupt=skip"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert log.count(f"skipping unreadable image {image_folder / 'broken.jpg'}") == 1
    assert "1 skipped so far" in log
    assert snapshot(image_folder) == before


def test_a_different_config_in_the_same_output_dir(
    pretrain_run: Path, fashion_scenes_root: Path, tmp_path: Path
):
    run = shutil.copytree(pretrain_run, tmp_path / "run")
    proc = cli("pretrain", *pretrain_args(fashion_scenes_root, run, "train.max_steps=4", "seed=7"))
    assert_one_error_line(proc, str(run), "seed", "--force")


def test_a_failed_forced_run_keeps_the_old_config(
    pretrain_run: Path, fashion_scenes_root: Path, tmp_path: Path
):
    run = shutil.copytree(pretrain_run, tmp_path / "run")
    before = [f for f in snapshot(run) if f[0] != "log.txt"]
    forced = pretrain_args(fashion_scenes_root, run, "train.max_steps=4", "model.depth=2")
    assert_one_error_line(cli("pretrain", *forced, "--force"))
    assert [f for f in snapshot(run) if f[0] != "log.txt"] == before
    proc = cli("pretrain", *pretrain_args(fashion_scenes_root, run, "train.max_steps=4"))
    assert proc.returncode == 0, proc.stderr[-3000:]


def _damage(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def test_truncated_last_pt_resumes_from_the_newest_step_copy(
    pretrain_run: Path, fashion_scenes_root: Path, tmp_path: Path
):
    run = shutil.copytree(pretrain_run, tmp_path / "run")
    _damage(run / "checkpoints" / "last.pt")
    proc = cli("pretrain", *pretrain_args(fashion_scenes_root, run, "train.max_steps=6"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run / "log.txt").read_text()
    step4 = run / "checkpoints" / "step_00000004.pt"
    assert f"{run / 'checkpoints' / 'last.pt'} is unreadable" in log and str(step4) in log
    assert f"resumed from {step4} at step 4" in log
    assert load_torch_file(run / "checkpoints" / "last.pt")["step"] == 6


def test_no_readable_checkpoint_stops_naming_them(
    pretrain_run: Path, fashion_scenes_root: Path, tmp_path: Path
):
    run = shutil.copytree(pretrain_run, tmp_path / "run")
    damaged = [run / "checkpoints" / n for n in ("last.pt", "step_00000004.pt", "step_00000002.pt")]
    for path in damaged:
        _damage(path)
    proc = cli("pretrain", *pretrain_args(fashion_scenes_root, run, "train.max_steps=6"))
    assert_one_error_line(proc, *map(str, damaged))
    assert all(path.stat().st_size == 100 for path in damaged)  # never overwritten from scratch


def test_an_input_artifact_changed_under_a_run_is_refused(
    fashion_scenes_root: Path, exports: dict[str, Path], tmp_path: Path
):
    backbone = shutil.copytree(exports["small"], tmp_path / "export")
    argv = [
        "fewshot",
        "--output-dir",
        str(tmp_path / "run"),
        f"data.root={fashion_scenes_root}",
        f"backbone={backbone}",
        *FEWSHOT_TINY,
        "episodes.val_episodes=2",
        "episodes.test_episodes=2",
        "eval.visualize=0",
    ]
    first = cli(*argv)
    assert first.returncode == 0, first.stderr[-3000:]
    # Another backbone of the same shape written over the export the run started from.
    torch.manual_seed(1)
    kwargs = backbone_kwargs("custom", 32, 8, embed_dim=48, depth=2, num_heads=3)
    export_backbone(build_backbone(kwargs), kwargs, backbone)
    assert_one_error_line(cli(*argv), f"backbone {backbone}", "changed since this run")


@pytest.mark.slurm
def test_unknown_slurm_partition(slurm_cluster, fashion_scenes_root: Path, tmp_path: Path):
    proc = cli(
        "launch",
        "pretrain",
        *pretrain_args(fashion_scenes_root, tmp_path / "run"),
        "--executor",
        "slurm",
        "slurm.partition=nosuch",
    )
    assert_one_error_line(proc, "nosuch")
