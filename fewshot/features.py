"""Frozen-backbone features, extracted once per (backbone, dataset) and cached on disk.

A cache file lives at ``<cache_dir>/<backbone hash>/<name>.pt`` and records the backbone
hash and a description of what was extracted (dataset root, split, ids, image size,
layers). A file whose record does not match is rebuilt, never reused, so features of one
backbone are never read for another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from common.backbone import (
    backbone_hash,
    build_backbone,
    capture_qk,
    export_backbone,
    load_backbone,
    num_prefix_tokens,
    source_of,
)
from common.checkpoint import CheckpointError, atomic_torch_save, load_torch_file

log = logging.getLogger(__name__)

# pretrain normalises crops with the ImageNet statistics (pretrain/augment.py); an export
# may override them in meta["normalize"] = {"mean": [...], "std": [...]}.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def open_backbone(backbone_cfg, device: torch.device, stage: str) -> FrozenBackbone:
    """``FrozenBackbone`` of a stage's ``backbone`` section (``source`` and ``weights``)."""
    source, weights = source_of(backbone_cfg, stage)
    return FrozenBackbone(source, device, weights)


def normalisation(info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [3, 1, 1] the backbone was trained with."""
    norm = info.get("meta", {}).get("normalize", {})
    mean = torch.tensor(norm.get("mean", IMAGENET_MEAN)).view(3, 1, 1)
    std = torch.tensor(norm.get("std", IMAGENET_STD)).view(3, 1, 1)
    return mean, std


class FrozenBackbone:
    """A backbone (any source) in eval mode plus its hash, normalisation and geometry."""

    def __init__(
        self, source: str | Path, device: torch.device, weights: str | None = None
    ) -> None:
        self.model, self.info = load_backbone(source, device, weights)
        self.model.requires_grad_(False)
        self.hash = backbone_hash(source, weights)
        self.device = device
        self.mean, self.std = (t.to(device) for t in normalisation(self.info))
        kw = self.info["timm_kwargs"]
        self.depth, self.num_heads, self.dim = kw["depth"], kw["num_heads"], kw["embed_dim"]
        self.patch_size = kw["patch_size"]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> normalised, on the device."""
        return (images.to(self.device) - self.mean) / self.std

    @torch.no_grad()
    def global_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final-norm cls token [B, C] and patch tokens [B, h, w, C] of the last block."""
        tokens = self.model.forward_features(self.prepare(images))
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        p = num_prefix_tokens(self.model)
        return {"cls": tokens[:, 0], "patch": tokens[:, p:].reshape(len(images), h, w, -1)}

    @torch.no_grad()
    def layer_tokens(self, images: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
        """[B, L, 1 + h*w, C]: cls + patch tokens of the given blocks (final norm applied),
        L2-normalised within each attention head's channel slice so that a dot product of
        two head slices is their cosine."""
        idx = [layer % self.depth for layer in layers]
        outs = self.model.get_intermediate_layers(
            self.prepare(images), n=idx, return_prefix_tokens=True, norm=True
        )
        toks = torch.stack([torch.cat([pre[:, :1], pat], dim=1) for pat, pre in outs], dim=1)
        b, n_layers, t, c = toks.shape
        toks = toks.reshape(b, n_layers, t, self.num_heads, c // self.num_heads)
        return F.normalize(toks, dim=-1).reshape(b, n_layers, t, c)

    @torch.no_grad()
    def last_block_qk(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The last block's cls query [B, heads, d] and patch keys [B, heads, h*w, d]
        (its attention's own q and k, from its normed input), unit norm per head."""
        with capture_qk(self.model, (-1,)) as store:
            self.model.forward_features(self.prepare(images))
        q, k = store[self.depth - 1]
        p = num_prefix_tokens(self.model)
        return {
            "cls_query": F.normalize(q[:, :, 0], dim=-1),
            "patch_keys": F.normalize(k[:, :, p:], dim=-1),
        }


def _images_only(dataset: Dataset) -> Dataset:
    class _Images(Dataset):
        def __len__(self) -> int:
            return len(dataset)

        def __getitem__(self, i: int) -> torch.Tensor:
            return dataset[i]["image"]

    return _Images()


def extract(
    dataset: Dataset,
    fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    batch_size: int,
    desc: str,
    num_workers: int = 0,
    dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """Run ``fn`` over every image of ``dataset`` in batches; concatenated outputs on CPU."""
    loader = DataLoader(
        _images_only(dataset), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    parts: dict[str, list[torch.Tensor]] = {}
    for images in tqdm(loader, desc=desc, unit="batch", leave=False):
        for key, value in fn(images).items():
            parts.setdefault(key, []).append(value.to("cpu", dtype))
    return {k: torch.cat(v) for k, v in parts.items()}


def cached(
    cache_dir: str | Path,
    bb_hash: str,
    name: str,
    record: dict,
    build: Callable[[], dict[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Load ``<cache_dir>/<bb_hash>/<name>.pt`` when its record matches, else build and save."""
    path = Path(cache_dir) / bb_hash / f"{name}.pt"
    want = {"backbone_hash": bb_hash, **record}
    if path.is_file():
        try:
            stored = load_torch_file(path)
        except CheckpointError as exc:  # a torn file from a killed run: rebuild it
            log.warning("feature cache %s cannot be used (%s); rebuilding it", path, exc)
        else:
            if stored.get("record") == want:
                log.info("features from cache %s", path)
                return stored["tensors"]
            got = stored.get("record", {}).get("backbone_hash")
            log.warning(
                "feature cache %s was built for %s (backbone %s), not for this request "
                "(backbone %s); rebuilding it",
                path,
                "another dataset/setting" if got == bb_hash else "another backbone",
                got,
                bb_hash,
            )
    tensors = build()
    atomic_torch_save({"record": want, "tensors": tensors}, path)
    log.info("features cached at %s", path)
    return tensors


def random_export(like: FrozenBackbone, out: Path, seed: int) -> Path:
    """A randomly initialised backbone of the same shape, exported for the baseline."""
    torch.manual_seed(seed)
    model = build_backbone(like.info["timm_kwargs"])
    meta = {**like.info.get("meta", {}), "note": "random init (fewshot baseline)", "seed": seed}
    return export_backbone(model, like.info["timm_kwargs"], out, meta)
