"""train.parallel=fsdp on CPU with 2 gloo processes: the same training as DDP, sharded
checkpoints that resume with 2 or 1 processes, DDP's export; activation checkpointing; the
ViT-L / ViT-g presets."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from common.backbone import load_backbone
from common.checkpoint import CheckpointError, load_torch_file
from common.cli import run_stage
from common.config import ConfigError, load_config
from common.rundir import RunDir, read_metrics
from pretrain.export import export_run
from pretrain.model import MetaArch
from pretrain.sharding import check_parallel, checkpoint_blocks
from pretrain.stage import run
from pretrain.train import Trainer
from tests.pretrain.conftest import TINY

# TINY with a small iBOT head (fast checkpoints), 4 steps, checkpoints at steps 2 and 4, and
# the k-NN probe of the teacher (gathered on rank 0 under fsdp) at step 4.
SMALL = [
    "heads.patch.out_dim=64",
    "heads.patch.hidden_dim=64",
    "heads.patch.bottleneck_dim=16",
    "train.max_steps=4",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "eval.every=4",
    "train.clip=per_param",  # each tensor's norm over its shards (fsdp) or whole (ddp)
    "train.clip_grad=0.05",  # low enough that tensors get clipped
]
FSDP = ["train.parallel=fsdp", "train.activation_checkpointing=true"]


def _launch(out: Path, nproc: int, data_root: Path, *overrides: str) -> list[subprocess.Popen]:
    """``python -m pretrain`` (maskcluster: DINO + iBOT + pixel) as ``nproc`` gloo processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "pretrain",
        "--config",
        "maskcluster",
        "--output-dir",
        str(out),
        *TINY,
        f"data.root={data_root}",
        *SMALL,
        *overrides,
    ]
    procs = []
    for rank in range(nproc):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    return procs


def _wait(procs: list[subprocess.Popen]) -> None:
    outs = [p.communicate(timeout=300)[0].decode()[-3000:] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def _sharded(path: Path, tmp: Path) -> dict:
    """A sharded checkpoint read whole, as one nested dict (model, optimizer)."""
    out = tmp / f"{path.parent.parent.name}_{path.name}.pt"
    dcp_to_torch_save(path, out)
    return torch.load(out, weights_only=False)


def _at_step_2(src: Path, dst: Path) -> Path:
    """A copy of fsdp run ``src`` as if it had stopped after step 2 (only step_00000002 left)."""
    shutil.copytree(src, dst)
    for name in ("last", "step_00000004"):
        shutil.rmtree(dst / "checkpoints" / name)
    for name in ("metrics.jsonl", "summary.json"):
        (dst / name).unlink()
    shutil.rmtree(dst / "export")
    return dst


@pytest.fixture(scope="module")
def runs(fashion_scenes_root, tmp_path_factory) -> tuple[Path, Path]:
    """The same 4 steps from the same seed with ddp and with fsdp (+ activation checkpointing)."""
    base = tmp_path_factory.mktemp("sharded")
    procs = _launch(base / "ddp", 2, fashion_scenes_root)
    procs += _launch(base / "fsdp", 2, fashion_scenes_root, *FSDP)
    _wait(procs)
    return base / "ddp", base / "fsdp"


def test_fsdp_trains_like_ddp_and_writes_sharded_checkpoints(runs, tmp_path):
    ddp, fsdp = runs
    a, b = _losses(ddp), _losses(fsdp)
    assert list(a) == [1, 2, 3, 4]
    assert list(b.values()) == pytest.approx(list(a.values()), rel=1e-5)
    knn = [
        [r["knn_top1"] for r in read_metrics(d / "metrics.jsonl") if "knn_top1" in r] for d in runs
    ]
    assert len(knn[0]) >= 1 and knn[1] == pytest.approx(knn[0])

    ckpt = fsdp / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last", "step_00000002", "step_00000004"]
    files = {p.name for p in (ckpt / "last").iterdir()}
    assert files == {".metadata", "__0_0.distcp", "__1_0.distcp", "trainer.pt"}
    meta = load_torch_file(ckpt / "last" / "trainer.pt")
    assert (meta["step"], meta["world_size"], meta["parallel"]) == (4, 2, "fsdp")

    # Student, teacher and centres after 4 steps: the weights DDP reached.
    reference = load_torch_file(ddp / "checkpoints" / "last.pt")["model"]
    sharded = _sharded(ckpt / "last", tmp_path)["model"]
    assert sharded.keys() == reference.keys()  # activation checkpointing leaves names alone
    for key, value in reference.items():
        torch.testing.assert_close(sharded[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_fsdp_export_equals_ddp_export(runs):
    ddp, fsdp = runs
    a = torch.load(ddp / "export" / "backbone.pth")
    b = torch.load(fsdp / "export" / "backbone.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert b[key].dtype == a[key].dtype
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    info = [json.loads((r / "export" / "backbone.json").read_text()) for r in runs]
    assert info[0]["timm_kwargs"] == info[1]["timm_kwargs"]
    load_backbone(fsdp / "export")  # strict

    # `python -m pretrain.export RUN_DIR` reads the sharded checkpoint in one process and
    # writes exactly what the 2-process run gathered.
    export_run(fsdp)
    again = torch.load(fsdp / "export" / "backbone.pth")
    assert again.keys() == b.keys() and all(torch.equal(again[k], b[k]) for k in b)


def test_sharded_resume_with_two_processes_matches_the_straight_run(
    runs, fashion_scenes_root, tmp_path
):
    _, fsdp = runs
    resumed = _at_step_2(fsdp, tmp_path / "resumed")
    _wait(_launch(resumed, 2, fashion_scenes_root, *FSDP))
    log = (resumed / "log.txt").read_text()
    assert "resuming from" in log and "step_00000002" in log  # `last` was gone: the copy
    assert "at step 2" in log
    assert _losses(resumed) == pytest.approx({k: v for k, v in _losses(fsdp).items() if k > 2})
    a = _sharded(fsdp / "checkpoints" / "last", tmp_path)
    b = _sharded(resumed / "checkpoints" / "last", tmp_path)
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    states_a, states_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert states_a.keys() == states_b.keys()
    for name, state in states_a.items():
        for key, value in state.items():
            torch.testing.assert_close(states_b[name][key], value, rtol=1e-6, atol=1e-7)


def test_sharded_checkpoint_resumes_in_one_process(runs, tiny_config, tmp_path, caplog):
    ddp, fsdp = runs
    resumed = _at_step_2(fsdp, tmp_path / "one")
    cfg = tiny_config("maskcluster", *SMALL, *FSDP)
    trainer = Trainer(cfg, RunDir(resumed))
    assert trainer.resume() and trainer.step == 2
    # The 2 shards of every tensor, put back together: DDP's state at step 2.
    reference = load_torch_file(ddp / "checkpoints" / "step_00000002.pt")
    state = trainer.model.state_dict()
    assert state.keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    ours, theirs = trainer.optimizer.state_dict()["state"], reference["optimizer"]["state"]
    assert ours.keys() == theirs.keys()
    for index in theirs:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(ours[index][name], theirs[index][name], msg=name)

    summary = run_stage("pretrain", run, cfg, resumed)
    assert summary["steps"] == 4
    assert "written by 2 processes, resuming with 1" in (resumed / "log.txt").read_text()
    assert [r["step"] for r in read_metrics(resumed / "metrics.jsonl") if "loss" in r] == [3, 4]
    assert (resumed / "checkpoints" / "last" / "__0_0.distcp").is_file()
    assert not (resumed / "checkpoints" / "last" / "__1_0.distcp").exists()
    load_backbone(resumed / "export")


def test_a_run_resumes_only_with_the_parallel_mode_it_was_written_with(runs, tiny_config):
    ddp, _ = runs
    cfg = tiny_config("maskcluster", *SMALL, *FSDP)
    with pytest.raises(CheckpointError, match="resume with the train.parallel"):
        Trainer(cfg, RunDir(ddp)).resume()


def _batch(cfg, generator: torch.Generator) -> dict[str, torch.Tensor]:
    g, s, grid = int(cfg.crops.global_size), int(cfg.crops.local_size), 4
    return {
        "global_crops": torch.rand(2, 4, 3, g, g, generator=generator),
        "masks": torch.rand(2, 4, grid, grid, generator=generator) < 0.3,
        "local_crops": torch.rand(2, 4, 3, s, s, generator=generator),
    }


def test_activation_checkpointing_same_loss_and_grads_with_fewer_saved_activations(
    tiny_config,
):
    cfg = tiny_config(
        "maskcluster", *SMALL[:3], "model.depth=4", "crops.global_size=32", "crops.local_size=16"
    )
    torch.manual_seed(0)
    plain = MetaArch(cfg)
    checkpointed = copy.deepcopy(plain)
    checkpoint_blocks(checkpointed.student.backbone)
    batch = _batch(cfg, torch.Generator().manual_seed(0))
    results = []
    for model in (plain, checkpointed):
        model.train()
        saved: list[int] = []

        def pack(t: torch.Tensor, saved=saved) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        torch.manual_seed(1)  # the same drop-path draws in both
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = model(batch, 0.04)
        loss.backward()
        grads = {
            n.replace("_checkpoint_wrapped_module.", ""): p.grad
            for n, p in model.student.named_parameters()
        }
        results.append((loss.detach(), grads, sum(saved)))
    (loss_a, grads_a, bytes_a), (loss_b, grads_b, bytes_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # Only each block's input is kept: the attention and MLP activations inside are not.
    assert bytes_b < 0.5 * bytes_a, (bytes_a, bytes_b)


def test_fsdp_refuses_what_it_does_not_support(tiny_config):
    for overrides, message in (
        (["train.parallel=zero"], "train.parallel must be one of"),
        (["train.parallel=fsdp", "train.precision=fp16"], "fp16"),
        (["train.parallel=fsdp", "train.compile=true"], "train.compile"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_parallel(tiny_config("dino", *overrides).train)


@pytest.mark.parametrize(
    ("preset", "patch", "params"), [("vit_large", 14, 304e6), ("vit_giant", 14, 1.1e9)]
)
def test_presets_build_at_the_published_sizes_on_the_meta_device(preset, patch, params):
    cfg = load_config("pretrain", preset, ["device=cpu"])
    assert (cfg.train.parallel, cfg.train.precision) == ("fsdp", "bf16")
    assert cfg.train.activation_checkpointing
    with torch.device("meta"):  # no memory: shapes only
        model = MetaArch(cfg)
    assert all(p.is_meta for p in model.parameters())
    backbone = model.student.backbone
    count = sum(p.numel() for p in backbone.parameters())
    assert abs(count - params) / params < 0.04, count
    assert backbone.patch_embed.patch_size == (patch, patch)
    if preset == "vit_giant":
        import timm

        # DINOv2's ViT-g/14 layout exactly (its checkpoints load into it): SwiGLU, layer scale.
        with torch.device("meta"):
            reference = timm.create_model("vit_giant_patch14_dinov2", img_size=224)
        ours = {k: v.shape for k, v in backbone.state_dict().items()}
        assert ours == {k: v.shape for k, v in reference.state_dict().items()}
