"""Multi-crop augmentation (DINO recipe) with torchvision transforms v2 on image tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SeparableGaussianBlur(nn.Module):
    """Gaussian blur of a [C, H, W] float image with sigma drawn in ``sigma`` per call.

    The same output as torchvision's ``v2.GaussianBlur`` (same kernel, reflect padding, the
    same draw from torch's RNG) up to float rounding, computed as two 1-D passes of shifted
    sums. At 224 px with a 23-tap kernel that is ~5x cheaper than torchvision's 2-D
    convolution, which was the most expensive step of the multi-crop pipeline
    (benchmarks/RESULTS.md). A depthwise conv2d with 1-D kernels gains only ~2x on CPU.
    """

    def __init__(self, kernel_size: int, sigma: tuple[float, float]) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"blur kernel size must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size
        self.sigma = sigma

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 3 or not image.is_floating_point():
            raise ValueError(
                f"SeparableGaussianBlur takes a float [C, H, W] image, got {image.dtype} "
                f"{tuple(image.shape)}; convert with v2.ToDtype(torch.float32, scale=True)"
            )
        sigma = torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item()
        k, pad = self.kernel_size, self.kernel_size // 2
        offsets = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
        weights = torch.softmax(-(offsets**2) / (2 * sigma**2), dim=0).tolist()
        height, width = image.shape[-2:]
        padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")[0]
        rows = sum(w * padded[..., i : i + width] for i, w in enumerate(weights))
        return sum(w * rows[..., i : i + height, :] for i, w in enumerate(weights))


def _blur(size: int, p: float) -> v2.Transform:
    """Gaussian blur scaled to the crop: DINO's sigma 0.1-2 px at 224 px, kernel ~10% of it."""
    kernel = 2 * max(1, round(0.05 * size)) + 1
    scale = size / 224.0
    return v2.RandomApply([SeparableGaussianBlur(kernel, (0.1 * scale, 2.0 * scale))], p=p)


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
        brightness, contrast, saturation, hue = (float(v) for v in c.color_jitter)
        colour = [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply(
                [v2.ColorJitter(brightness, contrast, saturation, hue)], p=float(c.color_jitter_p)
            ),
            v2.RandomGrayscale(p=float(c.grayscale_p)),
        ]
        normalize = [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        gsize, lsize = int(c.global_size), int(c.local_size)

        def rrc(size: int, scale) -> v2.Transform:
            return v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True)

        g = [rrc(gsize, c.global_scale), *colour]
        self.global_transforms = [
            v2.Compose([*g, _blur(gsize, float(c.blur_p[0])), *normalize]),
            v2.Compose(
                [
                    *g,
                    _blur(gsize, float(c.blur_p[1])),
                    v2.RandomSolarize(0.5, p=float(c.solarize_p)),
                    *normalize,
                ]
            ),
        ]
        self.local_transform = v2.Compose(
            [rrc(lsize, c.local_scale), *colour, _blur(lsize, float(c.blur_p[2])), *normalize]
        )

    def __call__(self, image: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(global crops, local crops) of a [3, H, W] float image in [0, 1]."""
        globals_ = [self.global_transforms[i % 2](image) for i in range(self.num_global)]
        locals_ = [self.local_transform(image) for _ in range(self.num_local)]
        return globals_, locals_
