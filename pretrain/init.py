"""Continued pretraining: student and teacher start from a public or exported backbone.

``model.init=SOURCE`` (any backbone source, as in every stage) fixes the architecture: its
kwargs are read off the checkpoint, the ``model`` keys are rewritten to match (so crops,
masks and the saved config agree), and a ``model`` key the config sets to something else is
an error. Position embeddings are resampled to ``crops.global_size`` by timm's
``checkpoint_filter_fn``; local crops then use the position rule the checkpoint was trained
with (``model.pos_interp``: DINO's for DINO / DINOv2 / iBOT files, MSN's for MSN files, timm's
for timm models, the recorded one for our exports). Heads and the mask token start fresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from common.backbone import (
    ARCH_PRESETS,
    EMBED_LAYERS,
    build_backbone,
    load_backbone,
    trained_pos_interp,
)
from common.checkpoint import load_state_dict_strict
from common.checkpoint_formats import to_timm_state
from common.config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

# model.<key> -> the timm kwarg it sets
ARCH_KEYS = {
    "embed_dim": "embed_dim",
    "depth": "depth",
    "num_heads": "num_heads",
    "patch_size": "patch_size",
    "num_register_tokens": "reg_tokens",
}


@dataclass(frozen=True)
class InitBackbone:
    """The starting backbone: kwargs at the training size and a state dict that fits them."""

    kwargs: dict
    state: dict[str, torch.Tensor]
    meta: dict


def _conflicts(model_cfg: Config, defaults: Config, kwargs: dict, pos_interp: str) -> list[str]:
    """``model.<key>=<value>`` entries the config sets (away from the defaults) that the
    checkpoint contradicts."""
    out = []
    preset = ARCH_PRESETS.get(model_cfg.arch, {})
    if model_cfg.arch != defaults.arch and any(preset[k] != kwargs[k] for k in preset):
        out.append(f"model.arch={model_cfg.arch}")
    for key, kw in ARCH_KEYS.items():
        value = model_cfg[key]
        if value is not None and value != defaults[key] and value != kwargs[kw]:
            out.append(f"model.{key}={value}")
    ckpt_stem = "conv" if kwargs.get("embed_layer") in EMBED_LAYERS else "patch"
    if model_cfg.stem != defaults.stem and model_cfg.stem != ckpt_stem:
        out.append(f"model.stem={model_cfg.stem}")
    if model_cfg.pos_interp != defaults.pos_interp and model_cfg.pos_interp != pos_interp:
        out.append(f"model.pos_interp={model_cfg.pos_interp} (trained with {pos_interp})")
    return out


def load_init(cfg: Config) -> InitBackbone | None:
    """Read ``model.init`` (None when unset) and rewrite ``cfg.model`` to its architecture."""
    source = cfg.model.init.source
    if not source:
        return None
    weights = cfg.model.init.weights
    model, info = load_backbone(str(source), weights=str(weights) if weights else None)
    kwargs = dict(info["timm_kwargs"])
    pos_interp = trained_pos_interp(info)
    conflicts = _conflicts(cfg.model, load_config("pretrain").model, kwargs, pos_interp)
    if conflicts:
        arch = ", ".join(f"{k} {kwargs[kw]}" for k, kw in ARCH_KEYS.items())
        raise ConfigError(
            f"model.init={source} is a ViT with {arch}, but the config sets "
            f"{', '.join(conflicts)}. With model.init the architecture is the checkpoint's: "
            "drop those keys (or pick a preset that does not set them)."
        )
    size = int(cfg.crops.global_size)
    if size % kwargs["patch_size"] or int(cfg.crops.local_size) % kwargs["patch_size"]:
        raise ConfigError(
            f"crops.global_size={size} and crops.local_size={cfg.crops.local_size} must be "
            f"multiples of the patch size {kwargs['patch_size']} of model.init={source}"
        )
    cfg.model.update(
        arch="custom",
        stem="conv" if kwargs.get("embed_layer") in EMBED_LAYERS else "patch",
        pos_interp=pos_interp,
        **{key: int(kwargs[kw]) for key, kw in ARCH_KEYS.items()},
    )
    kwargs.update(img_size=size, drop_path_rate=float(cfg.model.drop_path_rate))
    target = build_backbone(kwargs)
    state = to_timm_state(model.state_dict(), target)  # resamples pos_embed to the new grid
    load_state_dict_strict(target, state, f"model.init={source}")
    log.info(
        "model.init: starting from %s (%s): dim %d, depth %d, heads %d, patch %d, %d registers, "
        "%s position interpolation",
        source,
        info["meta"].get("source_format", "export"),
        *(kwargs[kw] for kw in ARCH_KEYS.values()),
        pos_interp,
    )
    meta = {"init": str(source), **{k: v for k, v in info["meta"].items() if k == "normalize"}}
    return InitBackbone(kwargs, target.state_dict(), meta)
