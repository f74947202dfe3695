"""ViT backbones (timm), their export format, and on-demand access to attention.

Export format (``export/``), read by every later stage:
- ``backbone.pth``: the backbone's state dict in timm ``VisionTransformer`` key format;
- ``backbone.json``: ``{"format": ..., "timm_kwargs": {...}, "meta": {...}}``; the kwargs
  rebuild the model with ``timm.models.vision_transformer.VisionTransformer(**kwargs)``,
  after which ``load_state_dict(..., strict=True)`` succeeds. One kwarg is a name, not a
  value: ``"embed_layer": "conv_stem"`` (present only for ``model.stem=conv``) stands for
  ``common.conv_stem.ConvStemEmbed``; ``build_backbone`` resolves it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer

from common.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write,
    load_state_dict_strict,
)
from common.config import ConfigError
from common.conv_stem import ConvStemEmbed, conv_stem_steps

EXPORT_FORMAT = "labelfew-backbone-v1"

# Sizes from the ViT / DeiT papers; "vit_tiny" is DeiT-Ti. "vit_giant" is DINOv2's ViT-g:
# a SwiGLU MLP of 2 x 4096 hidden units (timm's packed form) and layer scale from 1e-5.
ARCH_PRESETS: dict[str, dict[str, Any]] = {
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit_large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
    "vit_giant": {
        "embed_dim": 1536,
        "depth": 40,
        "num_heads": 24,
        "mlp_ratio": 8192 / 1536,
        "mlp_layer": "swiglu_packed",
        "init_values": 1e-5,
    },
}

STEMS = ("patch", "conv")  # ``model.stem`` values
# Layers by the name stored in the export's kwargs: ``model.stem=conv``, and DINOv2 ViT-g's
# SwiGLU MLP (timm's packed form, with SiLU).
EMBED_LAYERS = {"conv_stem": ConvStemEmbed}
MLP_LAYERS = {"swiglu_packed": (SwiGLUPacked, "silu")}


def backbone_kwargs(
    arch: str,
    img_size: int,
    patch_size: int,
    num_register_tokens: int = 0,
    drop_path_rate: float = 0.0,
    stem: str = "patch",
    **overrides: Any,
) -> dict:
    """The timm ``VisionTransformer`` kwargs of a preset; ``overrides`` set depth/dim/heads etc.

    ``stem`` is ``patch`` (the ViT's linear patch projection) or ``conv`` (``ConvStemEmbed``).
    """
    if arch not in ARCH_PRESETS and arch != "custom":
        raise ValueError(
            f"unknown backbone arch {arch!r}; choose one of {sorted(ARCH_PRESETS)} or 'custom' "
            "(then give embed_dim, depth and num_heads)"
        )
    if img_size % patch_size:
        raise ValueError(
            f"image size {img_size} is not divisible by patch size {patch_size}; "
            f"use e.g. {img_size - img_size % patch_size}"
        )
    if stem not in STEMS:
        raise ValueError(f"unknown model.stem {stem!r}; choose one of {sorted(STEMS)}")
    kwargs: dict[str, Any] = dict(ARCH_PRESETS.get(arch, {}))
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    missing = [k for k in ("embed_dim", "depth", "num_heads") if k not in kwargs]
    if missing:
        raise ValueError(f"backbone arch 'custom' needs {missing}")
    if kwargs["embed_dim"] % kwargs["num_heads"]:
        raise ValueError(
            f"embed_dim {kwargs['embed_dim']} is not divisible by num_heads {kwargs['num_heads']}"
        )
    kwargs.update(
        img_size=img_size,
        patch_size=patch_size,
        num_classes=0,
        reg_tokens=num_register_tokens,
        drop_path_rate=drop_path_rate,
        # Multi-crop feeds local crops smaller than img_size: interpolate position embeddings.
        dynamic_img_size=True,
    )
    if stem == "conv":
        conv_stem_steps(patch_size)  # fail at config time, not when the model is built
        kwargs["embed_layer"] = "conv_stem"
    return kwargs


def build_backbone(kwargs: dict) -> VisionTransformer:
    """A timm ViT from exported kwargs; attention goes through scaled_dot_product_attention."""
    kwargs = dict(kwargs)
    name = kwargs.pop("embed_layer", None)
    if name is not None:
        if name not in EMBED_LAYERS:
            raise CheckpointError(
                f"unknown embed_layer {name!r} in the backbone kwargs (known: "
                f"{sorted(EMBED_LAYERS)}); the export comes from a newer or other version"
            )
        kwargs["embed_layer"] = EMBED_LAYERS[name]
    mlp = kwargs.pop("mlp_layer", None)
    if mlp is not None:
        if mlp not in MLP_LAYERS:
            raise CheckpointError(f"unknown mlp_layer {mlp!r} in the backbone kwargs")
        kwargs["mlp_layer"], kwargs["act_layer"] = MLP_LAYERS[mlp]
    return VisionTransformer(**kwargs)


def num_prefix_tokens(model: VisionTransformer) -> int:
    return int(model.num_prefix_tokens)


POS_INTERP = ("dino", "msn", "timm")  # ``model.pos_interp`` values


def resample_pos(
    patch_pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], rule: str = "dino"
):
    """DINO's or MSN's position interpolation: [1, H0*W0, C] -> [1, h*w, C], no antialias.

    ``dino``: bicubic by scale factor ``(h + 0.1) / H0`` (the offset keeps the output size
    from rounding down), so the sampling points sit at ``(i + 0.5) * H0 / (h + 0.1) - 0.5``.
    ``msn``: MSN's scale factor ``sqrt(h * w / (H0 * W0))``, which for square grids samples
    exactly as a resize to ``(h, w)``. timm's ``resample_abs_pos_embed`` resizes to the size
    too, but with antialiasing.
    """
    if tuple(old) == tuple(new):
        return patch_pos
    (h0, w0), (h, w) = old, new
    dim = patch_pos.shape[-1]
    dtype = torch.promote_types(patch_pos.dtype, torch.float32)  # fp32 at least, as timm
    grid = patch_pos.to(dtype).reshape(1, h0, w0, dim).permute(0, 3, 1, 2)
    if rule == "msn":
        out = F.interpolate(grid, size=(h, w), mode="bicubic")
    else:
        out = F.interpolate(grid, scale_factor=((h + 0.1) / h0, (w + 0.1) / w0), mode="bicubic")
    return out.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(patch_pos.dtype)


def add_pos_embed(model: VisionTransformer, x: torch.Tensor, rule: str) -> torch.Tensor:
    """Prefix tokens plus position embeddings for patch embeddings ``x`` [B, h, w, C].

    ``rule`` is how a grid other than the training size gets its embeddings: ``timm``
    (the model's own ``_pos_embed``), ``dino`` or ``msn`` (:func:`resample_pos`).
    """
    if rule == "timm" or model.pos_embed is None:
        return model._pos_embed(x)
    b, h, w, c = x.shape
    prefix = [t.expand(b, -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
    embedded = 0 if model.no_embed_class else int(model.num_prefix_tokens)
    pos = model.pos_embed
    patch_pos = resample_pos(pos[:, embedded:], model.patch_embed.grid_size, (h, w), rule)
    x = x.reshape(b, h * w, c)
    if model.no_embed_class:
        return model.pos_drop(torch.cat([*prefix, x + patch_pos], dim=1))
    pos = torch.cat([pos[:, :embedded], patch_pos], dim=1)
    return model.pos_drop(torch.cat([*prefix, x], dim=1) + pos)


def trained_pos_interp(info: dict) -> str:
    """The position rule a backbone was trained with, from its ``backbone.json`` info.

    Our pretraining exports record ``model.pos_interp`` in their config (older ones used
    timm's rule); timm models use timm's; DINO, DINOv2 and iBOT checkpoints interpolate
    DINO's way, MSN checkpoints MSN's.
    """
    meta = info.get("meta") or {}
    model_cfg = (meta.get("config") or {}).get("model") or {}
    if "pos_interp" in model_cfg:
        return str(model_cfg["pos_interp"])
    if meta.get("stage") == "pretrain" or str(meta.get("source", "")).startswith("timm:"):
        return "timm"
    fmt = str(meta.get("source_format") or "")
    if not fmt:
        return "timm"
    return "msn" if fmt.startswith("MSN") else "dino"


def patch_grid(model: VisionTransformer, height: int, width: int) -> tuple[int, int]:
    ph, pw = model.patch_embed.patch_size
    return height // ph, width // pw


def split_tokens(model: VisionTransformer, tokens: torch.Tensor, height: int, width: int):
    """[B, N, C] normalised tokens -> (cls [B, C], patches [B, h, w, C])."""
    h, w = patch_grid(model, height, width)
    p = num_prefix_tokens(model)
    return tokens[:, 0], tokens[:, p:].reshape(tokens.shape[0], h, w, tokens.shape[-1])


def forward_tokens(model: VisionTransformer, images: torch.Tensor):
    """Final-norm cls token and patch-token grid of a batch of images."""
    tokens = model.forward_features(images)
    return split_tokens(model, tokens, images.shape[-2], images.shape[-1])


def export_backbone(
    model: VisionTransformer, kwargs: dict, export_dir: str | Path, meta: dict | None = None
) -> Path:
    """Write ``backbone.pth`` + ``backbone.json`` atomically (state dict on CPU)."""
    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(state, export_dir / "backbone.pth")
    info = {"format": EXPORT_FORMAT, "timm_kwargs": kwargs, "meta": meta or {}}
    text = json.dumps(info, indent=2).encode()
    atomic_write(export_dir / "backbone.json", lambda fh: fh.write(text))
    return export_dir


def resolve_export_dir(path: str | Path) -> Path:
    """Accept an export folder or a run directory that contains ``export/``."""
    path = Path(path)
    for cand in (path, path / "export"):
        if (cand / "backbone.json").is_file() and (cand / "backbone.pth").is_file():
            return cand
    raise CheckpointError(
        f"no exported backbone at {path} (expected backbone.json and backbone.pth there or in "
        f"{path / 'export'}). Run `python -m pretrain.export RUN_DIR` on a pretraining run."
    )


# The three ways to name a backbone, for errors and --help.
BACKBONE_HELP = (
    "backbone=RUN_DIR or EXPORT_DIR (ours); backbone=timm:<name> such as "
    "timm:vit_small_patch16_224.dino (offline: add backbone.weights=FILE); or backbone=FILE, "
    "an original DINO / DINOv2 / iBOT / MSN checkpoint"
)


def source_of(backbone_cfg: Any, stage: str) -> tuple[str, str | None]:
    """(source, weights) of a stage's ``backbone`` config section; a missing one is named."""
    source, weights = backbone_cfg.get("source"), backbone_cfg.get("weights")
    if not source:
        raise ConfigError(f"{stage} needs a backbone: {BACKBONE_HELP}")
    return str(source), (str(weights) if weights else None)


def check_input_size(info: dict, size: int | Sequence[int] | None, key: str) -> None:
    """Inputs must tile into whole patches: the patch grid is what every stage maps back.

    ``size`` is a side, [h, w], or None (images keep their files' size: not checked here).
    """
    patch = int(info["timm_kwargs"]["patch_size"])
    for side in [] if size is None else [size] if isinstance(size, int) else size:
        if side % patch:
            lower = side - side % patch
            raise ConfigError(
                f"{key}={size} is not a multiple of the backbone's patch size {patch}; use "
                f"e.g. {key}={lower or patch} or {key}={lower + patch}"
            )


def is_export(source: str | Path) -> bool:
    """Whether ``source`` names an export folder or a run directory holding one."""
    return not str(source).startswith("timm:") and Path(source).is_dir()


def load_backbone(
    source: str | Path, device: str | torch.device = "cpu", weights: str | None = None
) -> tuple[VisionTransformer, dict]:
    """Any backbone, strictly loaded, in eval mode; returns (model, info as backbone.json).

    ``source``: an export folder or run directory, ``timm:<name>`` (``weights`` = the file
    when offline), or a DINO / DINOv2 / iBOT / MSN / timm checkpoint file.
    """
    if not is_export(source):
        from common.backbone_sources import from_checkpoint_file, from_timm

        if str(source).startswith("timm:"):
            model, info = from_timm(str(source)[len("timm:") :], weights)
        else:
            if weights:
                raise CheckpointError(
                    f"backbone.weights={weights} is only for timm: names; backbone={source} "
                    "already names the weights"
                )
            model, info = from_checkpoint_file(source)
        return model.to(device).eval(), info
    export_dir = resolve_export_dir(source)
    info = json.loads((export_dir / "backbone.json").read_text())
    if info.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{export_dir}/backbone.json has format {info.get('format')!r}, expected "
            f"{EXPORT_FORMAT!r}; re-export it with `python -m pretrain.export RUN_DIR`"
        )
    model = build_backbone(info["timm_kwargs"])
    state = torch.load(export_dir / "backbone.pth", map_location="cpu", weights_only=True)
    load_state_dict_strict(model, state, f"exported backbone {export_dir}")
    return model.to(device).eval(), info


def backbone_hash(source: str | Path, weights: str | None = None) -> str:
    """A short content hash of a backbone (weights + kwargs) for cache keys."""
    if not is_export(source):
        from common.backbone_sources import source_hash

        return source_hash(str(source), weights)
    export_dir = resolve_export_dir(source)
    h = hashlib.sha256()
    for name in ("backbone.json", "backbone.pth"):
        with open(export_dir / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@contextmanager
def capture_qk(model: VisionTransformer, layers: Sequence[int] = (-1,)) -> Iterator[dict]:
    """Record queries and keys of the given blocks during forwards inside the context.

    Yields a dict ``layer -> (q, k)`` with shape [B, heads, N, head_dim] each (after
    q/k norms). Hooks exist only inside the context, so training pays nothing.
    """
    store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    depth = len(model.blocks)
    for layer in layers:
        idx = layer % depth
        attn = model.blocks[idx].attn
        if not hasattr(attn, "qkv"):
            raise CheckpointError(
                f"block {idx} of this backbone has no fused qkv projection; attention maps "
                "need a timm ViT Attention module"
            )

        def hook(module, args, kwargs, _idx=idx):
            x = args[0] if args else kwargs["x"]
            b, n, _ = x.shape
            qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim)
            q, k, _v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            store[_idx] = (module.q_norm(q), module.k_norm(k))

        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def attention_from_qk(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax self-attention weights [B, heads, N, N] from captured q, k."""
    scale = q.shape[-1] ** -0.5
    return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@torch.no_grad()
def last_block_attention(model: VisionTransformer, images: torch.Tensor) -> dict:
    """cls-to-patch attention and cls-query/patch-key cosine of the last block.

    Returns ``attn`` [B, heads, h, w] (softmax weights of the cls row over patches) and
    ``cosine`` [B, heads, h, w] (cosine of the cls query with each patch key), as used by
    the DINO figure and the CST pseudo-label recipe respectively.
    """
    with capture_qk(model, (-1,)) as store:
        model.forward_features(images)
    q, k = store[len(model.blocks) - 1]
    p = num_prefix_tokens(model)
    h, w = patch_grid(model, images.shape[-2], images.shape[-1])
    attn = attention_from_qk(q, k)[:, :, 0, p:]
    cos = torch.nn.functional.cosine_similarity(q[:, :, :1], k[:, :, p:], dim=-1)
    b, heads = q.shape[:2]
    return {"attn": attn.reshape(b, heads, h, w), "cosine": cos.reshape(b, heads, h, w)}
