"""Backbones that are not our exports: ``timm:<name>`` and public checkpoint files.

Both end as a timm ``VisionTransformer`` built from kwargs read off the weights and loaded
with ``strict=True``, plus the same ``info`` an export's ``backbone.json`` holds, so every
stage (and ``pretrain.export --from``) treats them exactly like our own exports.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from common.backbone import EXPORT_FORMAT, build_backbone
from common.checkpoint import CheckpointError, load_state_dict_strict
from common.checkpoint_formats import (
    NOT_BACKBONE,
    infer_kwargs,
    read_checkpoint,
    to_timm_state,
    unwrap,
)

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
IMAGENET_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _info(kwargs: dict, source: str, fmt: str, normalize: dict, dropped=()) -> dict:
    meta = {"source": source, "source_format": fmt, "normalize": normalize}
    if dropped:
        meta["dropped_keys"] = list(dropped)
    return {"format": EXPORT_FORMAT, "timm_kwargs": kwargs, "meta": meta}


def _load_converted(model: VisionTransformer, state: dict, what: str) -> VisionTransformer:
    """Source keys converted by timm for ``model``, then loaded strictly; eval mode."""
    try:
        converted = to_timm_state(state, model)
    except Exception as exc:  # noqa: BLE001 - timm's converter assumes well-formed input
        raise CheckpointError(
            f"{what}: timm could not convert it ({type(exc).__name__}: {exc})"
        ) from None
    load_state_dict_strict(model, converted, what)
    return model.eval()


def _rebuild(state: dict, kwargs: dict, what: str) -> VisionTransformer:
    """Our ViT from ``kwargs`` with the source weights loaded."""
    return _load_converted(build_backbone(kwargs), state, what)


def from_checkpoint_file(path: str | Path) -> tuple[VisionTransformer, dict]:
    """A DINO / DINOv2 / iBOT / MSN / timm checkpoint file as (model, info)."""
    if not Path(path).exists():
        raise CheckpointError(
            f"backbone {path} not found. Name a backbone by an export folder or pretrain run "
            "directory, a checkpoint file (DINO, DINOv2, iBOT, MSN, timm), or timm:<name>."
        )
    state, fmt, dropped = unwrap(read_checkpoint(path), path)
    kwargs = infer_kwargs(state)
    model = _rebuild(state, kwargs, f"{path} (detected: {fmt})")
    log.info(
        "backbone %s: %s, %d blocks, dim %d, patch %d, %d registers%s",
        path,
        fmt,
        kwargs["depth"],
        kwargs["embed_dim"],
        kwargs["patch_size"],
        kwargs["reg_tokens"],
        f"; dropped {', '.join(dropped)}" if dropped else "",
    )
    return model, _info(kwargs, str(path), fmt, IMAGENET_NORMALIZE, dropped)


def _create_timm(name: str, weights: str | None):
    """The timm model of ``name`` with its pretrained weights, or those of ``weights``."""
    import timm

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models("vit_*"), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CheckpointError(f"backbone=timm:{name}: timm has no model '{arch}'.{hint}")
    # dynamic_img_size: the numerical check below runs at a small input size.
    if weights:
        model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
        state, fmt, _ = unwrap(read_checkpoint(weights), weights)
        what = f"backbone.weights={weights} (detected: {fmt}) for timm:{name}"
        return _load_converted(model, state, what)
    try:
        # Default num_classes: timm then loads strictly (it relaxes the check otherwise).
        model = timm.create_model(name, pretrained=True, dynamic_img_size=True)
    except Exception as exc:  # noqa: BLE001 - hub errors differ online, offline, gated
        raise CheckpointError(
            f"backbone=timm:{name}: timm could not get its pretrained weights "
            f"({type(exc).__name__}: {str(exc).split('. ')[0][:160]}). Offline, download the "
            "weights file elsewhere and pass it: backbone.weights=FILE (model.init.weights=FILE "
            "for pretrain, --weights FILE for pretrain.export and pretrain.attention)."
        ) from None
    model.reset_classifier(0)
    return model


def from_timm(name: str, weights: str | None = None) -> tuple[VisionTransformer, dict]:
    """``timm:<name>`` as (model, info): rebuilt from inferred kwargs and checked numerically."""
    src = _create_timm(name, weights)
    if not isinstance(src, VisionTransformer):
        raise CheckpointError(
            f"backbone=timm:{name} is a {type(src).__name__}; the stages need a timm "
            "VisionTransformer (vit_*, e.g. vit_small_patch16_224.dino)"
        )
    state = {k: v for k, v in src.state_dict().items() if not NOT_BACKBONE.match(k)}
    kwargs = infer_kwargs(state, num_heads=src.blocks[0].attn.num_heads)
    model = _rebuild(state, kwargs, f"timm:{name}")
    # Guard against a kwarg the weights cannot reveal (e.g. a new block option); a 4x4 patch
    # grid keeps it cheap for ViT-g on a CPU.
    side = 4 * kwargs["patch_size"]
    x = torch.randn(1, kwargs["in_chans"], side, side)
    with torch.no_grad():
        diff = (src.eval().forward_features(x) - model.forward_features(x)).abs().max().item()
    if diff > 1e-4:
        raise CheckpointError(
            f"timm:{name} uses an option our rebuilt ViT lacks (outputs differ by {diff:.2g}); "
            "pick a plain ViT model"
        )
    cfg = src.pretrained_cfg or {}
    normalize = {k: list(cfg.get(k, v)) for k, v in IMAGENET_NORMALIZE.items()}
    source = TIMM_PREFIX + name + (f" + {weights}" if weights else "")
    return model, _info(kwargs, source, "timm", normalize)


def source_hash(source: str, weights: str | None = None) -> str:
    """A short content hash of a non-export source (file bytes, or timm name + weights)."""
    h = hashlib.sha256(source.encode())
    files = [weights] if weights else []
    if not source.startswith(TIMM_PREFIX):
        files.append(source)
    for name in files:
        with open(name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
