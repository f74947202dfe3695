"""Multi-crop augmentation (DINO recipe): one random draw per crop, applied with torchvision v2.

:meth:`MultiCrop.draw` draws every random parameter of a crop (box, flip, colour-jitter
factors and order, grayscale, blur sigma, solarize) in the order torchvision v2's transforms
draw them, so a seeded draw is the one the equivalent ``v2.Compose`` pipeline makes.
:func:`apply_params_v2` applies one crop's parameters with ``torchvision.transforms.v2``
functionals: it is the per-image reference path, run in the DataLoader workers.
``pretrain.device_augment`` applies the same parameters to a whole batch on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SOLARIZE_THRESHOLD = 0.5
# v2.ColorJitter's operation ids, in the order of CropParams.factors.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


@dataclass(frozen=True)
class CropParams:
    """One crop's random draw; an operation that is off holds its identity value."""

    box: tuple[int, int, int, int]  # top, left, height, width in source pixels
    flip: bool
    order: tuple[int, int, int, int]  # v2.ColorJitter's fn_idx: the order the 4 ops run in
    factors: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    gray: bool
    blur_sigma: float  # 0 = no blur
    solarize: bool


IDENTITY_ORDER = (BRIGHTNESS, CONTRAST, SATURATION, HUE)
IDENTITY_FACTORS = (1.0, 1.0, 1.0, 0.0)


def blur_kernel_size(size: int) -> int:
    """Blur kernel of a crop: ~10 % of its side (DINO's 23 taps at 224 px), odd."""
    return 2 * max(1, round(0.05 * size)) + 1


def blur_sigma_range(size: int) -> tuple[float, float]:
    """DINO's sigma 0.1-2 px at 224 px, scaled with the crop size."""
    scale = size / 224.0
    return 0.1 * scale, 2.0 * scale


def separable_gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of a [..., C, H, W] float image, reflect padding, as two 1-D passes.

    The same kernel and padding as ``v2.functional.gaussian_blur`` (equal up to float
    rounding), computed as shifted sums: at 224 px with 23 taps ~5x cheaper than
    torchvision's 2-D convolution, the most expensive step of the multi-crop pipeline
    (benchmarks/RESULTS.md). A depthwise conv2d with 1-D kernels gains only ~2x on CPU.
    """
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"blur kernel size must be odd and positive, got {kernel_size}")
    if not image.is_floating_point():
        raise ValueError(
            f"separable_gaussian_blur takes a float image, got {image.dtype}; convert with "
            "v2.functional.to_dtype(image, torch.float32, scale=True)"
        )
    k, pad = kernel_size, kernel_size // 2
    offsets = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    weights = torch.softmax(-(offsets**2) / (2 * sigma**2), dim=0).tolist()
    height, width = image.shape[-2:]
    padded = F.pad(image.reshape(-1, *image.shape[-3:]), (pad,) * 4, mode="reflect")
    padded = padded.reshape(*image.shape[:-2], height + 2 * pad, width + 2 * pad)
    rows = sum(w * padded[..., i : i + width] for i, w in enumerate(weights))
    return sum(w * rows[..., i : i + height, :] for i, w in enumerate(weights))


@dataclass(frozen=True)
class ViewSpec:
    """The recipe of one kind of view: output size, crop scale and the ops' probabilities."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float | None  # None: this view has no solarize step (no coin is drawn)


def _coin(p: float) -> bool:
    # v2's random-apply transforms skip when torch.rand(1) >= p.
    return bool(torch.rand(1) < p)


class MultiCrop:
    """``num_global`` global crops and ``num_local`` local crops of one image.

    Global crops: random resized crop (scale ``global_scale``), flip, colour jitter,
    grayscale, blur (always on the first, 10% on the second) and solarize (20%, second
    only). Local crops: smaller scale and size, blur 50%. Each crop is normalised with the
    ImageNet statistics.
    """

    def __init__(self, crops_cfg) -> None:
        c = crops_cfg
        self.num_global = int(c.num_global)
        self.num_local = int(c.num_local)
        gsize, lsize = int(c.global_size), int(c.local_size)
        gscale, lscale = tuple(c.global_scale), tuple(c.local_scale)
        self.global_specs = (
            ViewSpec(gsize, gscale, float(c.blur_p[0]), None),
            ViewSpec(gsize, gscale, float(c.blur_p[1]), float(c.solarize_p)),
        )
        self.local_spec = ViewSpec(lsize, lscale, float(c.blur_p[2]), None)
        # Only their make_params are used: the crop box and jitter draws stay v2's own.
        self._rrc = {
            scale: v2.RandomResizedCrop(1, scale=scale, antialias=True)
            for scale in (gscale, lscale)
        }
        self._jitter = v2.ColorJitter(*(float(v) for v in c.color_jitter))
        self.jitter_p = float(c.color_jitter_p)
        self.grayscale_p = float(c.grayscale_p)

    def view_specs(self) -> tuple[list[ViewSpec], list[ViewSpec]]:
        """The specs of the global views and of the local views, in crop order."""
        globals_ = [self.global_specs[i % 2] for i in range(self.num_global)]
        return globals_, [self.local_spec] * self.num_local

    def draw_one(self, image: torch.Tensor, spec: ViewSpec) -> CropParams:
        """One crop's parameters from torch's global RNG, drawn as the v2 pipeline draws."""
        box = self._rrc[spec.scale].make_params([image])
        flip = _coin(0.5)
        order, factors = IDENTITY_ORDER, IDENTITY_FACTORS
        if _coin(self.jitter_p):
            drawn = self._jitter.make_params([])
            order = tuple(int(i) for i in drawn["fn_idx"])
            keys = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
            factors = tuple(
                ident if drawn[k] is None else float(drawn[k])
                for k, ident in zip(keys, IDENTITY_FACTORS, strict=True)
            )
        gray = _coin(self.grayscale_p)
        sigma = 0.0
        if _coin(spec.blur_p):
            sigma = torch.empty(1).uniform_(*blur_sigma_range(spec.size)).item()
        solarize = spec.solarize_p is not None and _coin(spec.solarize_p)
        return CropParams(
            (box["top"], box["left"], box["height"], box["width"]),
            flip,
            order,
            factors,
            gray,
            sigma,
            solarize,
        )

    def draw(self, image: torch.Tensor) -> tuple[list[CropParams], list[CropParams]]:
        """(global, local) crop parameters of one [3, H, W] image."""
        global_specs, local_specs = self.view_specs()
        globals_ = [self.draw_one(image, spec) for spec in global_specs]
        return globals_, [self.draw_one(image, spec) for spec in local_specs]

    def __call__(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(global crops, local crops) of a [3, H, W] float image in [0, 1]."""
        global_params, local_params = self.draw(image)
        global_specs, local_specs = self.view_specs()
        globals_ = [
            apply_params_v2(image, p, s.size)
            for p, s in zip(global_params, global_specs, strict=True)
        ]
        locals_ = [
            apply_params_v2(image, p, s.size)
            for p, s in zip(local_params, local_specs, strict=True)
        ]
        return globals_, locals_


def color_jitter_v2(image: torch.Tensor, p: CropParams) -> torch.Tensor:
    """v2.ColorJitter's transform: the four adjustments in the drawn order."""
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for op in p.order:
        # Identity factors are skipped, as v2 skips an op configured as no change.
        if p.factors[op] != IDENTITY_FACTORS[op]:
            image = ops[op](image, p.factors[op])
    return image


def apply_params_v2(image: torch.Tensor, p: CropParams, size: int) -> torch.Tensor:
    """One crop of a [3, H, W] float image in [0, 1] with ``torchvision.transforms.v2``."""
    top, left, height, width = p.box
    out = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
    if p.flip:
        out = TF.horizontal_flip(out)
    out = color_jitter_v2(out, p)
    if p.gray:
        out = TF.rgb_to_grayscale(out, num_output_channels=3)
    if p.blur_sigma > 0:
        out = separable_gaussian_blur(out, blur_kernel_size(size), p.blur_sigma)
    if p.solarize:
        out = TF.solarize(out, SOLARIZE_THRESHOLD)
    return TF.normalize(out, list(IMAGENET_MEAN), list(IMAGENET_STD))
