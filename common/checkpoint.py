"""Checkpoint files: atomic writes, safe reads, and resume that survives a damaged ``last.pt``."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from common.distributed import barrier, is_main_process
from common.errors import UserError

log = logging.getLogger(__name__)

# What our checkpoints hold besides tensors and plain containers: NumPy's RNG state (an
# array of uint32, common.runtime.rng_state) and NumPy scalars (e.g. a learning rate a
# schedule computed with np.cos). These rebuild data only; anything else is refused.
SAFE_GLOBALS = [
    np._core.multiarray._reconstruct,
    np._core.multiarray.scalar,
    np.ndarray,
    np.dtype,
    *(type(np.dtype(t)) for t in (np.uint32, np.int64, np.float32, np.float64, np.bool_)),
]


# errno values of a write that ran out of room: no space left, disk quota exceeded.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """``write(fh)`` into a temp file in the same folder, fsync, then rename over ``path``.

    The previous ``path`` stays intact on any failure; a full disk is a CheckpointError
    saying how much was written before it filled and how much is free.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _disk_full(exc):
            raise CheckpointError(
                f"disk full while writing {path}: more than {_mib(written)} needed, "
                f"{_mib(shutil.disk_usage(path.parent).free)} free on that disk; the previous "
                f"{path.name} is intact. Free space (or move --output-dir) and run again."
            ) from None
        raise
    return path


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an error it was raised while handling, is a full disk: torch.save's
    zip writer turns ENOSPC into a RuntimeError when it closes the archive."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def load_torch_file(
    path: str | Path, map_location: str | torch.device = "cpu", extra_globals: Sequence = ()
) -> Any:
    """``torch.load(weights_only=True)`` with our allowlist; a bad file -> CheckpointError.

    A damaged file is named as such; one that needs arbitrary unpickling (code could run
    while loading it) is refused. ``extra_globals`` widens the allowlist (e.g. the
    ``argparse.Namespace`` that public DINO checkpoints hold).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([*SAFE_GLOBALS, *extra_globals]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if "Weights only load failed" not in str(exc) or found is None:
            raise _unreadable(path, exc) from None
        raise CheckpointError(
            f"checkpoint {path} holds a {found.group(1)} object, which only arbitrary "
            "unpickling can load (it could run code), so it is refused. labelfew's own "
            "checkpoints and exports never need it: re-export the backbone "
            "(python -m pretrain.export RUN_DIR) or load only files you wrote."
        ) from None
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    reason = " ".join(str(exc).split())[:200]
    return CheckpointError(
        f"checkpoint {path} is unreadable, probably truncated ({type(exc).__name__}: {reason})"
    )


def step_copies(ckpt_dir: str | Path) -> list[Path]:
    """The rolling ``step_*.pt`` copies in ``ckpt_dir``, newest first."""
    return sorted(Path(ckpt_dir).glob("step_*.pt"), reverse=True)


def load_resume_checkpoint(
    last: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[Any, Path] | None:
    """The state a run resumes from and its file; None when the run has no checkpoint yet.

    ``last`` is read first; when it is missing or damaged (a node died mid-copy, a full
    disk), the newest readable ``step_*.pt`` beside a ``last.pt`` is used, with a warning
    naming both. When none can be read the error names them all: a run with checkpoints
    never silently starts from scratch.
    """
    last = Path(last)
    fallbacks = step_copies(last.parent) if last.name == "last.pt" else []
    candidates = ([last] if last.is_file() else []) + fallbacks
    if not candidates:
        return None
    failed: list[tuple[Path, CheckpointError]] = []
    for path in candidates:
        try:
            state = load_torch_file(path, map_location)
        except CheckpointError as exc:
            failed.append((path, exc))
            continue
        if path != last:
            why = str(failed[0][1]) if failed else f"{last} is missing"
            log.warning("%s; resuming from the older %s instead", why, path)
        return state, path
    names = " and ".join(str(p) for p, _ in failed)
    raise CheckpointError(
        f"no readable checkpoint to resume from: {names} cannot be loaded ({failed[0][1]}). "
        f"Delete {last.parent} to start the run over, or use another --output-dir."
    )


def save_checkpoint(state: dict, ckpt_dir: str | Path, step: int, keep: int = 2) -> Path:
    """Write ``last.pt`` atomically and keep the ``keep`` most recent ``step_*.pt`` copies."""
    ckpt_dir = Path(ckpt_dir)
    last = atomic_torch_save(state, ckpt_dir / "last.pt")
    if keep > 0:
        atomic_torch_save(state, ckpt_dir / f"step_{step:08d}.pt")
        for old in step_copies(ckpt_dir)[keep:]:
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


# Sharded checkpoints (torch.distributed.checkpoint): a folder per checkpoint holding every
# rank's shard files, DCP's ``.metadata`` and ``trainer.pt`` (the small non-tensor state).
SHARDED_LAST = "last"
SHARDED_META = "trainer.pt"


def _is_sharded_checkpoint(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / SHARDED_META).is_file()


def sharded_step_copies(ckpt_dir: str | Path) -> list[Path]:
    """The rolling ``step_*`` checkpoint folders in ``ckpt_dir``, newest first."""
    return sorted((p for p in Path(ckpt_dir).glob("step_*") if p.is_dir()), reverse=True)


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (files of a checkpoint are never rewritten), or a copy where links fail."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def save_sharded_checkpoint(
    tensors: dict, meta: dict, ckpt_dir: str | Path, step: int, keep: int = 2
) -> Path:
    """Every rank writes its shards of ``tensors``; rank 0 adds ``meta`` and publishes ``last``.

    All ranks must call it. The shards go to a temporary folder first, which replaces
    ``last`` by renames only once complete: at every moment ``last`` (or, for the instant
    between the two renames, ``.last.old``) is a whole checkpoint. ``keep`` ``step_*``
    copies are hard links of ``last``'s files (no second write) where the disk allows.
    """
    ckpt_dir = Path(ckpt_dir)
    tmp, last, old = (ckpt_dir / n for n in (".last.tmp", SHARDED_LAST, ".last.old"))
    if is_main_process():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a save interrupted earlier
    barrier()
    dcp.save(tensors, checkpoint_id=tmp)  # returns once every rank's shards are written
    if is_main_process():
        atomic_torch_save(meta, tmp / SHARDED_META)
        _fsync_dir(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if last.exists():
            os.replace(last, old)
        os.replace(tmp, last)
        _fsync_dir(ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
        if keep > 0:
            copy = ckpt_dir / f"step_{step:08d}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(last, copy, copy_function=_link_or_copy)
            for stale in sharded_step_copies(ckpt_dir)[keep:]:
                shutil.rmtree(stale)
    barrier()
    return last


def find_sharded_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The sharded checkpoint a run resumes from: ``last``, else the newest complete copy."""
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / SHARDED_LAST
    for path in (last, ckpt_dir / ".last.old", *sharded_step_copies(ckpt_dir)):
        if _is_sharded_checkpoint(path):
            if path != last:
                log.warning("%s is missing or incomplete; resuming from %s instead", last, path)
            return path
    return None


def sharded_keys(path: str | Path) -> set[str]:
    """The flattened keys (``model.student.…``) a sharded checkpoint holds."""
    return set(dcp.FileSystemReader(path).read_metadata().state_dict_metadata)


def load_sharded_checkpoint(tensors: dict, path: str | Path) -> dict:
    """Fill ``tensors`` (shaped and sharded as this run wants them) from the sharded checkpoint
    at ``path``, resharding as needed; returns its ``meta``. All ranks must call it.

    Without a process group (one process) the whole tensors are read.
    """
    path = Path(path)
    meta = load_torch_file(path / SHARDED_META)
    try:
        dcp.load(tensors, checkpoint_id=path)
    except Exception as exc:  # DCP wraps the failing rank's error in its own types
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(
            f"sharded checkpoint {path} cannot be loaded into this model ({reason}). Build "
            "the model with the config the checkpoint was trained with (its config.yaml)."
        ) from None
    return meta
