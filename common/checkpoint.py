"""Atomic checkpoint files: a crash mid-write never leaves a broken ``last.pt``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_torch_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint, turning truncation/corruption into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}). It is probably "
            "truncated; delete it to restart, or point at an older file in checkpoints/."
        ) from None


def save_checkpoint(state: dict, ckpt_dir: str | Path, step: int, keep: int = 2) -> Path:
    """Write ``last.pt`` atomically and keep the ``keep`` most recent ``step_*.pt`` copies."""
    ckpt_dir = Path(ckpt_dir)
    last = atomic_torch_save(state, ckpt_dir / "last.pt")
    if keep > 0:
        atomic_torch_save(state, ckpt_dir / f"step_{step:08d}.pt")
        for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
            old.unlink()
    return last


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict, what: str) -> None:
    """``load_state_dict(strict=True)`` with a message that lists the mismatch plainly."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:5]}")
        raise CheckpointError(
            f"{what} does not match the model architecture: {'; '.join(parts)}. "
            "Build the model with the config the checkpoint was trained with "
            "(its run directory's config.yaml / export/backbone.json)."
        )
    module.load_state_dict(state_dict, strict=True)
