"""Batched multi-crop augmentation on the training device, plain torch + torchvision.ops.

The DataLoader workers decode each image to uint8 and draw every crop's parameters
(:meth:`pretrain.augment.MultiCrop.draw`); :class:`BatchedMultiCrop` applies them to the
whole batch at once, each crop with its own box, flip, jitter factors and order, grayscale,
blur kernel and solarize. The operations are those of :func:`pretrain.augment.apply_params_v2`,
written for a batch of per-sample parameters; only the resized crop differs in its
interpolation kernel (see :func:`resized_crops`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from pretrain.augment import (
    CONTRAST,
    HUE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SATURATION,
    SOLARIZE_THRESHOLD,
    blur_kernel_size,
)

# torchvision's hsv -> rgb table: which of (v, p, q, t) each channel takes in each sextant.
_HSV_SELECT = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])


def resized_crops(
    images: torch.Tensor, index: torch.Tensor, boxes: torch.Tensor, size: int
) -> torch.Tensor:
    """[N, C, size, size] crops of float ``images`` [B, C, H, W]: crop ``n`` is the box
    ``boxes[n]`` (top, left, height, width) of image ``index[n]``, resized.

    ``roi_align`` with ``aligned=True`` and adaptive sampling averages ceil(bin) x ceil(bin)
    bilinear samples per output pixel: a box filter the width of the bin, which antialiases
    when shrinking and is plain bilinear when enlarging. torchvision's antialiased resize uses
    a triangle filter twice that width instead, and clamps at the crop's edge where roi_align
    reads up to one pixel beyond it, so the two differ slightly in sharpness, not in content.
    """
    top, left, height, width = boxes.unbind(1)
    rois = torch.stack([index.to(boxes.dtype), left, top, left + width, top + height], dim=1)
    return roi_align(images, rois, (size, size), spatial_scale=1.0, aligned=True)


def luma(x: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] ITU-R 601-2 luma of RGB ``x``, as ``v2.functional.rgb_to_grayscale``."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """HSV of RGB ``x`` in [0, 1] (Pillow's formulas, as torchvision's tensor kernel)."""
    r, g, _ = x.unbind(dim=-3)
    minc, maxc = torch.aminmax(x, dim=-3)
    flat = maxc == minc  # grey pixels: hue and saturation are 0, no division by zero
    delta = maxc - minc
    s = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    divisor = torch.where(flat, torch.ones_like(delta), delta).unsqueeze(-3)
    rc, gc, bc = ((maxc.unsqueeze(-3) - x) / divisor).unbind(dim=-3)
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = h.mul(1.0 / 6.0).add(1.0).fmod(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """RGB of HSV ``x`` (inverse of :func:`rgb_to_hsv`)."""
    h, s, v = x.unbind(dim=-3)
    h6 = h * 6
    sextant = torch.floor(h6)
    f = h6 - sextant
    q = ((1.0 - s * f) * v).clamp(0.0, 1.0)
    t = ((s * f + (1.0 - s)) * v).clamp(0.0, 1.0)
    p = ((1.0 - s) * v).clamp(0.0, 1.0)
    select = _HSV_SELECT.to(x.device)[:, sextant.long().remainder(6)].movedim(0, -3)
    return torch.stack((v, p, q, t), dim=-3).gather(-3, select)


def adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by its ``hue`` [N] (a fraction of the colour circle)."""
    h, s, v = rgb_to_hsv(x).unbind(dim=-3)
    h = (h + hue[:, None, None]).remainder(1.0)
    return hsv_to_rgb(torch.stack((h, s, v), dim=-3))


def _blend_step(x: torch.Tensor, op: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast or saturation per image: clamp(f x + (1 - f) ref, 0, 1), ref = 0,
    the mean luma or the luma; a hue step (done apart) gets f = 1, the identity."""
    f = torch.where(op == HUE, torch.ones_like(factor), factor)[:, None, None, None]
    y = luma(x)
    is_saturation = (op == SATURATION).to(x.dtype)[:, None, None, None]
    is_contrast = (op == CONTRAST).to(x.dtype)[:, None, None, None]
    ref = (y * is_saturation).add_(y.mean(dim=(-3, -2, -1), keepdim=True) * is_contrast)
    return (x * f).add_(ref.mul_(1.0 - f)).clamp_(0.0, 1.0)


def color_jitter(
    x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor, hue_rows: list[torch.Tensor]
) -> torch.Tensor:
    """v2.ColorJitter per image: its 4 ``factors`` (identity 1, 1, 1, 0 when off) applied in
    its ``order``. ``hue_rows[k]`` lists the images whose step ``k`` is a hue rotation: hue
    is the costly op, so it runs only on them."""
    for k in range(order.shape[1]):
        op = order[:, k]
        x = _blend_step(x, op, factors.gather(1, op[:, None])[:, 0])
        rows = hue_rows[k]
        if rows.numel():
            x[rows] = adjust_hue(x[rows], factors[rows, HUE])
    return x


def hue_rows(order: torch.Tensor, factors: torch.Tensor) -> list[torch.Tensor]:
    """Per jitter step, the rows that rotate hue there (on the CPU: no device sync)."""
    rotates = factors[:, HUE] != 0
    return [((order[:, k] == HUE) & rotates).nonzero()[:, 0] for k in range(order.shape[1])]


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one kernel per image (``sigma`` [N] float64; 0 = none),
    reflect padding, as :func:`pretrain.augment.separable_gaussian_blur`.

    Two grouped 1-D convolutions over the whole batch, one group per image channel: on a
    CPU ~10x faster than the batch of shifted sums (their full-size temporaries), and one
    kernel launch per pass on a GPU.
    """
    k, pad = kernel_size, kernel_size // 2
    offsets = torch.arange(k, dtype=torch.float64, device=x.device) - (k - 1) / 2
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))[:, None]
    weights = torch.softmax(-(offsets**2) / (2 * safe**2), dim=1)
    delta = (offsets == 0).to(weights.dtype).expand_as(weights)
    weights = torch.where(sigma[:, None] > 0, weights, delta).to(x.dtype)
    n, c, height, width = x.shape
    weights = weights.repeat_interleave(c, dim=0)  # [N * C, k]
    padded = F.pad(x, (pad,) * 4, mode="reflect").reshape(1, n * c, height + 2 * pad, -1)
    rows = F.conv2d(padded, weights[:, None, None, :], groups=n * c)
    return F.conv2d(rows, weights[:, None, :, None], groups=n * c).reshape(n, c, height, width)


class BatchedMultiCrop(nn.Module):
    """Applies drawn crop parameters to a uint8 batch on its device, every crop at once.

    Per crop: resized crop (:func:`resized_crops`), flip, colour jitter, grayscale, blur,
    solarize and ImageNet normalisation, the order of the v2 recipe.
    """

    def __init__(self, crops_cfg) -> None:
        super().__init__()
        self.sizes = {"global": int(crops_cfg.global_size), "local": int(crops_cfg.local_size)}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """``images`` [B, 3, H, W] uint8 + ``global_params`` / ``local_params`` (on the CPU,
        from ``pretrain.data.collate_multicrop``) -> ``global_crops`` [G, B, 3, S, S] and
        ``local_crops`` [L, B, 3, s, s] on this module's device; other keys pass through."""
        device = self.mean.device
        images = batch["images"].to(device, non_blocking=True).float().div_(255.0)
        out = {
            k: v for k, v in batch.items() if k not in ("images", "global_params", "local_params")
        }
        for kind, size in self.sizes.items():
            if f"{kind}_params" in batch:
                crops = self.crops(images, batch[f"{kind}_params"], size)
                out[f"{kind}_crops"] = crops.unflatten(0, (-1, images.shape[0]))
        return out

    def crops(
        self, images: torch.Tensor, params: dict[str, torch.Tensor], size: int
    ) -> torch.Tensor:
        """[N, 3, size, size] normalised crops; row ``n`` of ``params`` crops image ``n % B``."""
        device = images.device
        rows = [
            r.to(device, non_blocking=True) for r in hue_rows(params["order"], params["factors"])
        ]
        p = {k: v.to(device, non_blocking=True) for k, v in params.items()}
        index = torch.arange(len(p["box"]), device=device) % images.shape[0]
        x = resized_crops(images, index, p["box"], size)
        x = torch.where(p["flip"][:, None, None, None], x.flip(-1), x)
        x = color_jitter(x, p["order"], p["factors"], rows)
        x = torch.where(p["gray"][:, None, None, None], luma(x).expand_as(x), x)
        x = gaussian_blur(x, p["blur_sigma"], blur_kernel_size(size))
        solarize = p["solarize"][:, None, None, None] & (x >= SOLARIZE_THRESHOLD)
        x = torch.where(solarize, 1.0 - x, x)
        return (x - self.mean) / self.std
