"""The training loop end to end on tiny runs: resume, NaN guard, export, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from common.backbone import load_backbone
from common.checkpoint import load_torch_file
from common.cli import run_stage
from common.config import ConfigError
from common.optim import NonFiniteLossError
from common.rundir import read_metrics
from pretrain.stage import run


def _teacher(path):
    state = load_torch_file(path / "checkpoints" / "last.pt")["model"]
    return {k: v for k, v in state.items() if k.startswith(("teacher.", "student."))}


def test_resume_gives_the_same_weights_as_a_straight_run(tiny_config, tmp_path):
    # Interrupt inside epoch 1 (15 steps/epoch) so the resume must skip consumed batches.
    straight = tiny_config("maskcluster", "train.max_steps=20")
    run_stage("pretrain", run, straight, tmp_path / "a")
    run_stage("pretrain", run, tiny_config("maskcluster", "train.max_steps=18"), tmp_path / "b")
    summary = run_stage("pretrain", run, straight, tmp_path / "b")
    assert summary["steps"] == 20
    a, b = _teacher(tmp_path / "a"), _teacher(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    records = read_metrics(tmp_path / "a" / "metrics.jsonl")
    logged = {k for r in records for k in r}
    expected = {"loss_dino", "loss_ibot", "loss_pixel", "lr", "wd", "momentum", "teacher_temp"}
    assert (
        expected
        | {
            "teacher_entropy",
            "teacher_head_agreement",
            "center_norm",
            "images_per_s",
            "peak_memory_mb",
        }
        <= logged
    )


def test_compiled_run_trains_like_the_eager_one(tiny_config, tmp_path):
    eager = tiny_config("maskcluster", "train.max_steps=2", "train.log_every=1")
    run_stage("pretrain", run, eager, tmp_path / "eager")
    compiled = tiny_config(
        "maskcluster", "train.max_steps=2", "train.log_every=1", "train.compile=true"
    )
    run_stage("pretrain", run, compiled, tmp_path / "compiled")
    losses = [
        [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]
        for name in ("eager", "compiled")
    ]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    a, b = _teacher(tmp_path / "eager"), _teacher(tmp_path / "compiled")
    assert a.keys() == b.keys()  # compiled in place: checkpoints keep the eager names
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    load_backbone(tmp_path / "compiled")  # strict load of the compiled run's export


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_resume_on_the_gpu(tiny_config, tmp_path, precision):
    def cfg(max_steps: int):
        overrides = ("device=cuda", f"train.precision={precision}", f"train.max_steps={max_steps}")
        return tiny_config("maskcluster", *overrides)

    run_stage("pretrain", run, cfg(20), tmp_path / "a")
    run_stage("pretrain", run, cfg(18), tmp_path / "b")
    summary = run_stage("pretrain", run, cfg(20), tmp_path / "b")
    assert summary["steps"] == 20
    a, b = _teacher(tmp_path / "a"), _teacher(tmp_path / "b")
    for key in a:  # GPU kernels may reorder sums: equal up to rounding, not bit for bit
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5)


def test_export_round_trip_is_strict_and_identical(tiny_config, tmp_path):
    cfg = tiny_config("dino", "train.max_steps=3")
    run_stage("pretrain", run, cfg, tmp_path)
    model, info = load_backbone(tmp_path)
    assert info["timm_kwargs"]["embed_dim"] == 32
    teacher = load_torch_file(tmp_path / "checkpoints" / "last.pt")["model"]
    x = torch.randn(2, 3, 16, 16)
    from pretrain.model import Encoder

    enc = Encoder(cfg.model, cfg.heads, 16, False, False)
    enc.load_state_dict({k[8:]: v for k, v in teacher.items() if k.startswith("teacher.")})
    enc.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), enc.backbone.forward_features(x))
    # The CLI re-export of the run writes the same weights.
    before = torch.load(tmp_path / "export" / "backbone.pth")
    subprocess.run(
        [sys.executable, "-m", "pretrain.export", str(tmp_path)], check=True, capture_output=True
    )
    after = torch.load(tmp_path / "export" / "backbone.pth")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_run_draws_attention_maps_of_the_export(tiny_config, tmp_path):
    cfg = tiny_config("dino", "train.max_steps=1", "eval.attention_images=4")
    run_stage("pretrain", run, cfg, tmp_path)
    grids = sorted((tmp_path / "figures").glob("*_attention.png"))
    assert len(grids) == 4 and all(p.stat().st_size > 1000 for p in grids)
    off = tiny_config("dino", "train.max_steps=1", "eval.attention_images=0")
    run_stage("pretrain", run, off, tmp_path / "off")
    assert not list((tmp_path / "off" / "figures").glob("*_attention.png"))


def test_mismatched_checkpoint_is_a_clear_error(tiny_config, tmp_path):
    from common.checkpoint import CheckpointError

    run_stage("pretrain", run, tiny_config("dino", "train.max_steps=2"), tmp_path)
    bigger = tiny_config("dino", "train.max_steps=4", "model.embed_dim=48")
    with pytest.raises(CheckpointError, match="does not match the model architecture"):
        run_stage("pretrain", run, bigger, tmp_path, force=True)


def test_nonfinite_loss_stops_with_intact_checkpoint(tiny_config, tmp_path):
    # A huge learning rate blows the weights up after the first update.
    cfg = tiny_config(
        "dino",
        "train.lr=1.0e+30",
        "train.warmup_epochs=0.0",
        "train.checkpoint_every=1",
        "train.clip_grad=0.0",
        "train.freeze_last_layer_epochs=0",
    )
    with pytest.raises(NonFiniteLossError, match="last good state"):
        run_stage("pretrain", run, cfg, tmp_path)
    state = load_torch_file(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nonfinite_skip_mode_keeps_going(tiny_config, tmp_path):
    cfg = tiny_config(
        "dino",
        "train.lr=1.0e+30",
        "train.warmup_epochs=0.0",
        "train.max_steps=6",
        "train.clip_grad=0.0",
        "train.freeze_last_layer_epochs=0",
        "train.on_nonfinite=skip",
    )
    summary = run_stage("pretrain", run, cfg, tmp_path)
    assert summary["steps"] == 6
    assert summary["skipped_steps"] >= 1


def test_crop_not_divisible_by_patch(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        run_stage("pretrain", run, tiny_config("dino", "crops.local_size=12"), tmp_path)


def test_empty_data_folder(tiny_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = tiny_config("dino", f"data.root={empty}")
    with pytest.raises(FileNotFoundError, match=f"data.root {empty} is an empty folder"):
        run_stage("pretrain", run, cfg, tmp_path / "run")
    assert not any(empty.iterdir())  # never filled with generated scenes


def test_output_dir_with_other_config_is_refused(tiny_config, tmp_path):
    run_stage("pretrain", run, tiny_config("dino", "train.max_steps=1"), tmp_path)
    other = tiny_config("dino", "train.max_steps=1", "train.lr=0.1")
    with pytest.raises(ConfigError, match="--force"):
        run_stage("pretrain", run, other, tmp_path)
    summary = run_stage("pretrain", run, other, tmp_path, force=True)
    assert summary["steps"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 1


def test_koleo_with_one_image_per_process_is_refused_before_training(tiny_config, tmp_path):
    cfg = tiny_config("dino", "train.batch_size=1", "loss.koleo_weight=0.1")
    with pytest.raises(ConfigError, match=r"train.batch_size >= 2 per process \(got 1\)"):
        run_stage("pretrain", run, cfg, tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.pt"))  # stopped before any step


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "pretrain", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "maskcluster" in out and "collapse" in out and "fashion_tiny" in out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_on_cpu(fashion_scenes_root, tmp_path):
    import os
    import re

    from tests.pretrain.conftest import TINY

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "pretrain",
        "--config",
        "maskcluster",
        "--output-dir",
        str(tmp_path),
        *TINY,
        f"data.root={fashion_scenes_root}",
        "train.max_steps=3",
        "loss.dino.collapse=sinkhorn",
        "heads.cls.use_bn=true",  # batch statistics all-reduced inside the heads
        "heads.patch.use_bn=true",
        "model.stem=conv",  # batch norm in the backbone: teacher statistics averaged over ranks
    ]
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    outs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    log0 = (tmp_path / "log.txt").read_text()
    log1 = (tmp_path / "log.rank1.txt").read_text()
    assert "global batch 16" in log0
    sums = [re.search(r"teacher checksum (\S+)", text).group(1) for text in (log0, log1)]
    assert sums[0] == sums[1]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3


def test_preemption_checkpoints_then_resumes(tiny_config, tmp_path):
    from common.preemption import Preempted, clear_stop, request_stop

    cfg = tiny_config("dino", "train.max_steps=4")
    request_stop("test")
    try:
        with pytest.raises(Preempted) as info:
            run_stage("pretrain", run, cfg, tmp_path)
    finally:
        clear_stop()
    assert info.value.step == 1
    assert load_torch_file(tmp_path / "checkpoints" / "last.pt")["step"] == 1
    assert run_stage("pretrain", run, cfg, tmp_path)["steps"] == 4


def test_trains_on_a_plain_image_folder(fashion_scenes_root, tiny_config, tmp_path):
    import shutil

    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    for path in sorted((fashion_scenes_root / "JPEGImages").glob("*.jpg"))[:16]:
        shutil.copy(path, folder / path.name)
    cfg = tiny_config("dino", f"data.root={tmp_path / 'images'}", "train.max_steps=2")
    assert run_stage("pretrain", run, cfg, tmp_path / "run")["steps"] == 2
