"""Unlabelled image source, multi-crop dataset, resumable sampler and collate for pretraining.

Determinism: the crops and masks of sample ``i`` in epoch ``e`` come from RNGs seeded with
``(seed, e, i)``, and an epoch's order is a permutation seeded with ``(seed, e)``. A resumed
run therefore sees the same batches as an uninterrupted one, whatever the number of
DataLoader workers, by skipping the batches the checkpoint says were consumed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.config import ConfigError
from common.datasets.errors import DatasetNotFoundError
from pretrain.augment import CropParams, MultiCrop
from pretrain.masking import BlockMaskGenerator, sample_masks

log = logging.getLogger(__name__)


def _is_voc_layout(root: Path) -> bool:
    return any(
        (folder / "ImageSets" / "Segmentation").is_dir()
        for folder in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012")
    )


def load_unlabeled(data_cfg) -> Dataset:
    """The training images: a VOC-layout split (FashionScenes, Pascal) or a plain image folder."""
    from common.datasets.folder import ImageFolderUnlabeled, check_on_corrupt

    check_on_corrupt(data_cfg.on_corrupt)  # before anything is generated or read
    root = data_root(data_cfg)
    _warn_if_not_the_default_scenes(root)
    if _is_voc_layout(root):
        from common.datasets.voc import VOCSegmentation

        return VOCSegmentation(root, data_cfg.split)

    return ImageFolderUnlabeled(root, on_corrupt=data_cfg.on_corrupt)


def data_root(data_cfg) -> Path:
    """``data.root``, with FashionScenes generated there only for the embedded default.

    A missing or empty folder is generated when it is the default path, or when
    ``data.generate_fashion_scenes`` asks for it; any other path the user named is an error,
    so a typo never fills a folder of theirs with synthetic scenes.
    """
    root = Path(data_cfg.root)
    if root.is_dir() and any(root.iterdir()):
        return root
    from common.datasets.fashion_scenes import ensure_fashion_scenes, is_default_root

    if not (is_default_root(root) or data_cfg.generate_fashion_scenes):
        state = "is an empty folder" if root.is_dir() else "does not exist"
        raise DatasetNotFoundError(
            f"data.root {root} {state}",
            hint="point data.root at a folder of images or a VOC-layout dataset; to create "
            "FashionScenes there, add data.generate_fashion_scenes=true",
        )
    log.info("no dataset at %s: generating FashionScenes there (one-off, about a minute)", root)
    return ensure_fashion_scenes(root)


def _warn_if_not_the_default_scenes(root: Path) -> None:
    """A FashionScenes set made with other settings than today's defaults is used as it is,
    with a warning: deliberate for custom sets, but a stale default set (made before the
    defaults changed) would otherwise train the preset on scenes it was not designed for."""
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return
    meta = json.loads(meta_path.read_text())
    if not str(meta.get("generator", "")).startswith("fashion-scenes"):
        return
    from common.datasets.fashion_scenes import params_diff

    # Smaller or reseeded sets are fine; only the rendering settings make other scenes.
    diff = params_diff(meta.get("params") or {})
    if diff:
        log.warning(
            "%s holds FashionScenes made with other settings than the defaults (found vs "
            "default: %s); delete it to get the default set, unless these are deliberate",
            root,
            diff,
        )


def _decode(item) -> torch.Tensor:
    """The uint8 [3, H, W] image of a dataset item (a float source is quantised like a file)."""
    image = item["image"] if isinstance(item, dict) else item
    if isinstance(image, (tuple, list)):
        image = image[0]
    if not isinstance(image, torch.Tensor):  # a PIL image
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    if image.dtype == torch.uint8:
        return image
    return (image * 255).round().clamp(0, 255).to(torch.uint8)


AUGMENT_ON = ("worker", "device", "auto")


def augment_on_device(augment_on: str, device: torch.device) -> bool:
    """Whether ``data.augment_on`` puts the crops on the training device (auto: on CUDA)."""
    if augment_on not in AUGMENT_ON:
        raise ConfigError(
            f"data.augment_on must be one of {', '.join(AUGMENT_ON)}, got {augment_on!r}"
        )
    return augment_on == "device" or (augment_on == "auto" and device.type == "cuda")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one (epoch, sample) pair, independent of worker assignment."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> 1)


class MultiCropDataset(Dataset):
    """Wraps an image dataset; item ``(epoch, i)`` is the crops and masks of image ``i``.

    With ``on_device`` the item holds the uint8 image and each crop's drawn parameters
    instead of the crops, for ``pretrain.device_augment.BatchedMultiCrop``; the draw is the
    same either way, so both paths see the same boxes, flips, jitter and masks.
    """

    def __init__(
        self,
        base: Dataset,
        crops_cfg,
        masking_cfg,
        patch_size: int,
        seed: int,
        on_device: bool = False,
    ) -> None:
        if len(base) == 0:
            raise ValueError("the pretraining dataset is empty; check data.root and data.split")
        for size in (crops_cfg.global_size, crops_cfg.local_size):
            if size % patch_size:
                raise ValueError(
                    f"crop size {size} is not divisible by the patch size {patch_size}; pick "
                    f"crops.global_size / crops.local_size as multiples of it, e.g. "
                    f"{size - size % patch_size or patch_size}"
                )
        self.base = base
        self.crops = MultiCrop(crops_cfg)
        self.on_device = on_device
        grid = crops_cfg.global_size // patch_size
        self.mask_gen = BlockMaskGenerator(
            (grid, grid), int(masking_cfg.min_patches), float(masking_cfg.min_aspect)
        )
        self.mask_share = float(masking_cfg.share)
        self.mask_ratio = tuple(float(r) for r in masking_cfg.ratio)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        image = _decode(self.base[index])
        # The per-sample seed must not disturb the training RNG when num_workers=0; seeding
        # the CPU generator directly is ~20x cheaper than torch.manual_seed / fork_rng.
        outer = torch.default_generator.get_state()
        torch.default_generator.manual_seed(seed)
        try:
            if self.on_device:
                global_params, local_params = self.crops.draw(image)
                item = {"image": image, "global_params": global_params}
                item["local_params"] = local_params
            else:
                globals_, locals_ = self.crops(image.float() / 255.0)
                item = {"global_crops": globals_, "local_crops": locals_}
        finally:
            torch.default_generator.set_state(outer)
        masks = sample_masks(
            self.mask_gen,
            self.crops.num_global,
            self.mask_share,
            self.mask_ratio,
            np.random.default_rng(seed),
        )
        return {**item, "masks": torch.from_numpy(masks)}


def _stack_views(samples: list[dict], key: str) -> torch.Tensor:
    """``[V, B, ...]``: view ``v`` of every sample, view-major."""
    views = len(samples[0][key])
    return torch.stack([torch.stack([s[key][v] for s in samples]) for v in range(views)])


def collate_multicrop(samples: list[dict]) -> dict:
    """Stack views: ``global_crops`` [G, B, 3, S, S], ``local_crops`` [L, B, 3, s, s], ``masks``
    [G, B, h, w]. Device-path items give ``images`` [B, 3, H, W] uint8 and ``global_params`` /
    ``local_params`` (see :func:`stack_params`) instead of the crops."""
    out: dict = {"masks": torch.stack([s["masks"] for s in samples], dim=1)}
    if "image" in samples[0]:
        out["images"] = pad_images([s["image"] for s in samples])
        for key in ("global_params", "local_params"):
            views = len(samples[0][key])
            if views:
                out[key] = stack_params([s[key][v] for v in range(views) for s in samples])
        return out
    out["global_crops"] = _stack_views(samples, "global_crops")
    if samples[0]["local_crops"]:
        out["local_crops"] = _stack_views(samples, "local_crops")
    return out


def pad_images(images: list[torch.Tensor]) -> torch.Tensor:
    """[B, 3, H, W] of the largest H and W, each image extended by repeating its last row and
    column: a crop box never leaves its image, and interpolation at its edge reads the
    repeated pixels, as it would read the clamped border of the image alone."""
    height = max(im.shape[-2] for im in images)
    width = max(im.shape[-1] for im in images)
    out = torch.empty(len(images), 3, height, width, dtype=torch.uint8)
    for i, im in enumerate(images):
        rows = torch.arange(height).clamp(max=im.shape[-2] - 1)
        cols = torch.arange(width).clamp(max=im.shape[-1] - 1)
        out[i] = im[:, rows][:, :, cols] if im.shape[-2:] != (height, width) else im
    return out


def stack_params(params: list[CropParams]) -> dict[str, torch.Tensor]:
    """Crop parameters as tensors, one row per crop: ``box`` [N, 4] (top, left, height,
    width), ``flip`` [N], ``order`` [N, 4], ``factors`` [N, 4], ``gray`` [N], ``blur_sigma``
    [N], ``solarize`` [N]."""
    return {
        "box": torch.tensor([p.box for p in params], dtype=torch.float32),
        "flip": torch.tensor([p.flip for p in params]),
        "order": torch.tensor([p.order for p in params]),
        "factors": torch.tensor([p.factors for p in params], dtype=torch.float32),
        "gray": torch.tensor([p.gray for p in params]),
        "blur_sigma": torch.tensor([p.blur_sigma for p in params], dtype=torch.float64),
        "solarize": torch.tensor([p.solarize for p in params]),
    }


class EpochSampler(Sampler):
    """This process's share of one epoch's seeded permutation, from batch ``start_batch`` on.

    Yields ``(epoch, index)`` keys. The permutation is cut to a multiple of the global batch
    (drop-last) and dealt round-robin to ranks, like DistributedSampler.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        epoch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        self.epoch = epoch
        self.batch_size = batch_size
        self.steps = steps_per_epoch(size, batch_size, world_size)
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        used = perm[: self.steps * batch_size * world_size]
        self.indices = used[rank::world_size][start_batch * batch_size :].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter((self.epoch, i) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def steps_per_epoch(size: int, batch_size: int, world_size: int) -> int:
    """Full global batches per epoch; an error when the data cannot fill one."""
    steps = size // (batch_size * world_size)
    if steps == 0:
        raise ValueError(
            f"{size} images cannot fill one global batch of {batch_size} x {world_size} "
            "processes; lower train.batch_size or add images"
        )
    return steps


def epoch_loader(
    dataset: MultiCropDataset,
    batch_size: int,
    epoch: int,
    seed: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The DataLoader for one epoch (masks are generated in its workers); ``pin_memory`` lets
    the batch reach the GPU with a non-blocking copy."""
    sampler = EpochSampler(len(dataset), batch_size, epoch, seed, rank, world_size, start_batch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_multicrop,
        drop_last=True,
        persistent_workers=False,
        # Its own generator: the workers' base seed must not consume the global RNG, or a
        # resumed run (which builds one loader fewer) would drift from a straight one.
        generator=torch.Generator().manual_seed(seed * 1000 + epoch),
        prefetch_factor=4 if num_workers > 0 else None,
        pin_memory=pin_memory,
    )
