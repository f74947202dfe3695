"""Public self-supervised ViT checkpoints in their original layouts, read safely and exactly.

Formats read (the file is detected by its contents, not its name):
- DINO: ``*_pretrain.pth`` (a plain backbone state dict), or a training checkpoint with
  ``teacher`` / ``student`` (``module.`` / ``backbone.`` prefixes, ``head.*``, ``args``);
- DINOv2: hub backbones (``mask_token``, ``register_tokens``, layer scale ``ls1/ls2``), or a
  training checkpoint with ``teacher`` (``backbone.`` prefix, chunked ``blocks.i.j.``);
- iBOT: ``state_dict`` teacher checkpoints, or training checkpoints whose student holds
  ``masked_embed``;
- MSN: ``target_encoder`` (``module.`` prefix, ``fc.*`` projector);
- timm state dicts (e.g. the file behind a ``timm:`` name).

Every file is read with ``torch.load(weights_only=True)``: only tensors, containers and the
allowlisted ``argparse.Namespace`` (DINO's ``args``) are unpickled, nothing is executed.
The backbone's timm kwargs are read off its weights; conversion goes through timm's own
``checkpoint_filter_fn`` (DINOv2's registers, layer scale and SwiGLU); the load is strict.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from common.checkpoint import CheckpointError, load_torch_file

log = logging.getLogger(__name__)

FORMATS = (
    "our export folder (backbone.json + backbone.pth) or a pretrain run directory",
    "timm:<name>[.<pretrained tag>] (optionally with backbone.weights=FILE)",
    "DINO *_pretrain.pth or training checkpoint (teacher/student, args)",
    "DINOv2 hub backbone or training checkpoint (teacher)",
    "iBOT checkpoint (state_dict, or teacher/student with masked_embed)",
    "MSN checkpoint (target_encoder)",
)
# Entries that hold the backbone, in order of preference: the teacher is what DINO, iBOT
# and DINOv2 evaluate; MSN's target encoder is its teacher.
CONTAINERS = ("teacher", "target_encoder", "state_dict", "model", "student", "encoder")
# Projection heads and training-only tokens inside the backbone's own namespace.
NOT_BACKBONE = re.compile(r"^(head\.|fc\.|fc_norm\.|masked_embed$)")
# Published DINO / DINOv2 / iBOT / MSN ViTs all use 64-dimensional attention heads.
HEAD_DIM = 64


@dataclass(frozen=True)
class Converted:
    """A backbone read from a checkpoint: its timm state dict, kwargs and provenance."""

    state: dict[str, torch.Tensor]
    kwargs: dict
    source_format: str
    dropped: tuple[str, ...]


def read_checkpoint(path: str | Path) -> object:
    """``load_torch_file`` (our allowlist plus ``argparse.Namespace``), or safetensors."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return load_torch_file(path, extra_globals=[argparse.Namespace])
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc})") from None


def _tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and any(torch.is_tensor(v) for v in obj.values())


def _pick_container(obj: object, path: Path) -> tuple[Mapping, str]:
    """The state dict holding the backbone, and the entry it came from."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict. Formats we read: "
            + "; ".join(FORMATS)
        )
    for key in CONTAINERS:
        if _tensor_dict(obj.get(key)):
            return obj[key], key
    if _tensor_dict(obj):
        return obj, ""
    raise CheckpointError(
        f"{path}: unrecognised checkpoint layout (top-level keys {sorted(obj)[:10]}). "
        "Formats we read: " + "; ".join(FORMATS)
    )


def _backbone_prefix(keys: list[str], path: Path) -> str:
    """The prefix in front of ``cls_token`` (``module.backbone.`` ...); the teacher's first."""
    found = sorted(k[: -len("cls_token")] for k in keys if k.endswith("cls_token"))
    if not found:
        raise CheckpointError(
            f"{path}: no ViT found (no 'cls_token' among {len(keys)} keys, e.g. "
            f"{sorted(keys)[:5]}). Formats we read: " + "; ".join(FORMATS)
        )
    teacher = [p for p in found if "teacher" in p]
    return (teacher or found)[0]


def _group(key: str, prefix: str) -> str:
    """``module.head.mlp.0.weight`` outside ``module.backbone.`` -> ``module.head.*``."""
    parts, pre = key.split("."), prefix.split(".")
    n = next((i for i, (a, b) in enumerate(zip(parts, pre, strict=False)) if a != b), len(pre) - 1)
    return ".".join(parts[: n + 1]) + (".*" if n + 1 < len(parts) else "")


def _detect_format(obj: Mapping, container: str, state: Mapping) -> str:
    if container == "target_encoder":
        return "MSN checkpoint (target_encoder)"
    if "mask_token" in state or "register_tokens" in state:
        kind = "training checkpoint (teacher)" if container else "hub backbone"
        return f"DINOv2 {kind}"
    if container == "state_dict" or "masked_embed" in state:
        return f"iBOT checkpoint ({container or 'student'})"
    if container:
        return f"DINO training checkpoint ({container})"
    return "DINO / timm backbone state dict"


def unwrap(obj: object, path: str | Path) -> tuple[dict[str, torch.Tensor], str, tuple]:
    """(backbone state dict in the source's own key names, format name, dropped keys)."""
    path = Path(path)
    container, entry = _pick_container(obj, path)
    prefix = _backbone_prefix(list(container), path)
    state = {k[len(prefix) :]: v for k, v in container.items() if k.startswith(prefix)}
    # DINOv2 trains with chunked blocks (blocks.<chunk>.<global index>.); the index is global.
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    fmt = _detect_format(obj, entry, state)
    dropped = sorted(
        {k for k in state if NOT_BACKBONE.match(k)}
        | {_group(k, prefix) for k in container if not k.startswith(prefix)}
    )
    state = {k: v for k, v in state.items() if not NOT_BACKBONE.match(k)}
    return state, fmt, tuple(dropped)


def _grid(tokens: int) -> int | None:
    side = round(tokens**0.5)
    return side if side * side == tokens and side > 0 else None


def infer_kwargs(state: Mapping[str, torch.Tensor], num_heads: int | None = None) -> dict:
    """timm ``VisionTransformer`` kwargs read off a backbone state dict (source key names)."""
    proj = state["patch_embed.proj.weight"]
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    regs = state.get("register_tokens", state.get("reg_token"))
    num_reg = 0 if regs is None else int(regs.shape[1])
    pos_tokens = int(state["pos_embed"].shape[1])
    # Prefix tokens with a position in pos_embed. DINOv2 gives the cls token one (timm's
    # converter folds it into the token: no_embed_class); a square pos_embed has none.
    dinov2_regs = "register_tokens" in state
    embedded = 1 if dinov2_regs else (0 if _grid(pos_tokens) else 1 + num_reg)
    no_embed_class = dinov2_regs or embedded == 0
    grid = _grid(pos_tokens - embedded)
    if grid is None:
        raise CheckpointError(
            f"pos_embed with {pos_tokens} tokens is not a square patch grid (plus {embedded} "
            "prefix tokens); only square position embeddings are read"
        )
    kwargs: dict = {
        "img_size": grid * patch,
        "patch_size": patch,
        "in_chans": in_chans,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": num_heads or max(1, dim // HEAD_DIM),
        "num_classes": 0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "reg_tokens": num_reg,
        "no_embed_class": no_embed_class,
        "dynamic_img_size": True,  # stages feed other sizes: interpolate position embeddings
    }
    if "blocks.0.ls1.gamma" in state:
        kwargs["init_values"] = 1.0  # layer scale on; the loaded gammas replace the init
    if "blocks.0.attn.q_norm.weight" in state:
        kwargs["qk_norm"] = True
    if "norm_pre.weight" in state:
        kwargs["pre_norm"] = True
    # SwiGLU (DINOv2 ViT-g): w12/w3 in DINOv2's names; in timm's, fc1 is twice fc2's input.
    fc1 = state.get("blocks.0.mlp.w12.weight", state.get("blocks.0.mlp.fc1.weight"))
    fc2 = state.get("blocks.0.mlp.w3.weight", state.get("blocks.0.mlp.fc2.weight"))
    if fc1.shape[0] == 2 * fc2.shape[1]:
        kwargs["mlp_layer"] = "swiglu_packed"
    kwargs["mlp_ratio"] = fc1.shape[0] / dim
    return kwargs


def to_timm_state(
    state: dict[str, torch.Tensor], model: VisionTransformer
) -> dict[str, torch.Tensor]:
    """Source keys -> the model's keys through timm's ``checkpoint_filter_fn`` (which also
    resamples position embeddings to the model's grid, bicubic, when they differ)."""
    return checkpoint_filter_fn(dict(state), model)
