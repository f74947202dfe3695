"""``train.parallel=fsdp``: FSDP2 sharding of student and teacher, activation checkpointing,
local-shard views for the EMA, and the full (gathered) state for export and checkpoints.

Each transformer block is one FSDP unit (its parameters are all-gathered just before it runs
and freed after), the rest of an encoder (patch embedding, tokens, final norm, heads) is the
root unit. Student and teacher are sharded the same way, so the EMA pairs up local shards
without any communication.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from common.config import ConfigError

PARALLEL = ("ddp", "fsdp")


def check_parallel(train_cfg) -> str:
    """The ``train.parallel`` mode, refusing combinations FSDP does not support here."""
    mode = str(train_cfg.parallel)
    if mode not in PARALLEL:
        raise ConfigError(f"train.parallel must be one of {list(PARALLEL)}, got {mode!r}")
    if mode == "fsdp" and train_cfg.precision == "fp16":
        raise ConfigError(
            "train.parallel=fsdp runs fp32 or bf16 (bf16 parameters, fp32 gradient reduction); "
            "set train.precision=bf16 or fp32, not fp16"
        )
    if mode == "fsdp" and train_cfg.compile:
        raise ConfigError(
            "train.compile=true is not supported with train.parallel=fsdp; set "
            "train.compile=false (or use train.parallel=ddp)"
        )
    return mode


def checkpoint_blocks(backbone: nn.Module) -> None:
    """Recompute each transformer block's activations in the backward pass (in place).

    ``checkpoint_wrapper`` keeps the state-dict keys of the unwrapped block, so checkpoints
    and exports do not depend on this option.
    """
    for i, block in enumerate(backbone.blocks):
        backbone.blocks[i] = checkpoint_wrapper(block)


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """bf16 parameters in forward/backward with fp32 gradient reduction; fp32 otherwise."""
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def _call_teacher(teacher: nn.Module, *args):
    return teacher.teacher_forward(*args)


def shard_meta_arch(model: nn.Module, device: torch.device, precision: str) -> None:
    """Shard ``model.student`` and ``model.teacher`` (a :class:`pretrain.model.MetaArch`) in place.

    Rank 0's student is broadcast first and the teacher set to it, as DDP does, so every
    rank's shards come from one set of weights.
    """
    for tensor in model.student.state_dict().values():
        dist.broadcast(tensor, src=0)
    model.teacher.load_state_dict(model.student.state_dict())
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = mixed_precision(precision)
    for encoder in (model.student, model.teacher):
        for block in encoder.backbone.blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        # The teacher has no backward to reshard it: its root must free the gathered
        # parameters after its forward too, which also leaves shards for the EMA.
        fully_shard(
            encoder, mesh=mesh, mp_policy=policy, reshard_after_forward=encoder is model.teacher
        )
    # The teacher runs through teacher_forward, not forward: FSDP must unshard its root there.
    register_fsdp_forward_method(model.teacher, "teacher_forward")
    model.teacher_forward = _call_teacher


def local_shards(tensors) -> list[torch.Tensor]:
    """Each tensor's local shard (a view: in-place updates reach the parameter)."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (a collective), or ``t`` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on the CPU of rank 0 (empty elsewhere); every rank must call."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Model and optimizer state as (possibly sharded) tensors, keyed by unwrapped names."""
    return {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model.student, optimizer),
    }


def drop_unsaved_optimizer_state(state: dict, saved: set[str]) -> None:
    """Remove from a :func:`training_state` the optimizer state of parameters it lacks in the
    checkpoint whose keys are ``saved``: parameters that had no gradient yet (the frozen
    prototypes) must resume without state, as they would have continued."""
    per_param = state["optimizer"]["state"]
    for name in [
        n for n, s in per_param.items() if not any(f"optimizer.state.{n}.{k}" in saved for k in s)
    ]:
        del per_param[name]


def load_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Put a :func:`training_state` (filled by a checkpoint load) back into model and optimizer."""
    set_model_state_dict(model, state["model"])
    # Not strict: parameters without a gradient so far have no optimizer state to restore.
    options = StateDictOptions(strict=False)
    set_optimizer_state_dict(model.student, optimizer, state["optimizer"], options=options)
