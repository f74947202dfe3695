"""Render one FashionScenes image: a textured background with 0-3 tinted Fashion-MNIST items.

The mask comes from the items' own pixels (intensity >= ``item_threshold``); later items
occlude earlier ones. A class whose visible pixels fall below ``min_visible`` is not an
image-level label and its pixels become 255 (ignore), so labels and masks always agree.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from common.datasets.errors import DatasetSettingsError
from common.datasets.palette import IGNORE_INDEX

BACKGROUNDS = ("texture", "mosaic")
MOSAIC_CELLS = (4, 8)  # cell sides in px, one drawn per scene
DEFAULT_BACKGROUND_MAX = 0.12
# Values of settings added after the first sets were written: a meta.json without the
# setting was rendered with this value.
LEGACY_PARAMS = {"background_max": 0.6, "background": "texture"}


@dataclass(frozen=True)
class SceneParams:
    """Everything that changes the rendered pixels (recorded in ``meta.json``)."""

    size: int = 64
    # Probability of 0, 1, 2, 3 items: ~30 % single-item scenes for 1-way episodes and
    # single-object probes, a few empty scenes so "no class present" occurs.
    count_probs: tuple[float, ...] = (0.05, 0.28, 0.37, 0.30)
    # Item side as a share of the scene side: >= 35 px at 64 px scenes, >= 2 patches of the
    # tiny pretraining ViT in its 32 px crops. With 0.35-0.75 (and bright backgrounds) its
    # features stayed at chance (docs/notes/scenes.md).
    scale_min: float = 0.55
    scale_max: float = 0.9
    # Item pixels darker than this (0..255) are not item (Fashion-MNIST has a black border).
    item_threshold: int = 24
    # A class needs this share of the scene's pixels to count as present (2 % = 82 px at 64).
    min_visible_frac: float = 0.02
    # Brightest background colour value (0..1) of texture backgrounds; items are tinted at
    # value >= 0.75. Muted backgrounds remove the shortcut that bright ones offer
    # self-supervision (two crops of a scene matched by their shared stripes or noise).
    background_max: float = DEFAULT_BACKGROUND_MAX
    # "texture": smooth colour noise or stripes, one pattern per scene. "mosaic": cells of
    # random colours (value 0.2-0.9), so that two crops of a scene share no pattern and the
    # items' colours overlap the background's (measured in docs/notes/scenes.md).
    background: str = "texture"

    def to_json(self) -> dict:
        out = asdict(self)
        out["count_probs"] = list(self.count_probs)
        return out

    def validate(self) -> None:
        """Raise DatasetSettingsError on values that cannot render a scene."""
        if self.size < 16:
            raise DatasetSettingsError(f"scene size must be >= 16 px, got {self.size}")
        if not 0 < self.scale_min <= self.scale_max <= 1:
            raise DatasetSettingsError(
                f"need 0 < scale_min <= scale_max <= 1, got {self.scale_min}, {self.scale_max}"
            )
        if not 0.05 < self.background_max <= 1:
            raise DatasetSettingsError(
                f"background_max must be in (0.05, 1] (backgrounds start at 0.05), "
                f"got {self.background_max}"
            )
        if self.background not in BACKGROUNDS:
            raise DatasetSettingsError(
                f"background must be one of {BACKGROUNDS}, got {self.background!r}"
            )
        if self.background == "mosaic" and self.background_max != DEFAULT_BACKGROUND_MAX:
            raise DatasetSettingsError(
                "background_max applies to texture backgrounds only; mosaic cells always "
                "span colour values 0.2-0.9"
            )
        probs = np.asarray(self.count_probs, dtype=float)
        if probs.ndim != 1 or len(probs) < 1 or (probs < 0).any() or abs(probs.sum() - 1) > 1e-6:
            raise DatasetSettingsError(
                f"count_probs must be non-negative and sum to 1, got {probs}"
            )
        if len(probs) - 1 > 10:
            raise DatasetSettingsError(
                "at most 10 items (one per Fashion-MNIST class) fit in a scene"
            )

    @property
    def min_visible(self) -> int:
        return max(1, round(self.min_visible_frac * self.size * self.size))


@dataclass
class Scene:
    """One rendered scene: RGB image, class-index mask, present classes, source items."""

    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # uint8 [H, W]: 0 background, 1..10 classes, 255 ignore
    labels: list[int]  # sorted class ids (1..10) with >= min_visible pixels
    items: list[int]  # indices into the Fashion-MNIST split the items came from


def _random_colour(rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    return rng.uniform(low, high, size=3)


@dataclass(frozen=True)
class BackgroundPattern:
    """Which background a scene got: ``smooth`` colour noise or ``stripes`` at ``angle``."""

    kind: str
    angle: float | None = None  # stripe direction in radians, [0, pi)


def background_pattern(rng: np.random.Generator, style: str = "texture") -> BackgroundPattern:
    """The first draws of a scene's RNG, which fix its background pattern.

    ``render_scene`` draws the background first, so applying this to a fresh
    ``scene_rng(seed, split, index)`` tells what that scene's background is, without
    rendering it (used to measure whether features encode backgrounds). Mosaic scenes are
    all kind ``mosaic``.
    """
    if style == "mosaic":
        return BackgroundPattern("mosaic")
    if rng.random() < 0.5:
        return BackgroundPattern("smooth")
    return BackgroundPattern("stripes", float(rng.uniform(0, np.pi)))


def _background(rng: np.random.Generator, size: int, high: float) -> np.ndarray:
    """Float [H, W, 3] in [0, 1]: smooth colour noise or stripes, plus fine grain."""
    pattern = background_pattern(rng)
    if pattern.kind == "smooth":
        grid = int(rng.integers(2, 6))
        coarse = (rng.uniform(0.05, high, size=(grid, grid, 3)) * 255).astype(np.uint8)
        smooth = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        base = np.asarray(smooth, dtype=np.float32) / 255.0
    else:
        angle = pattern.angle
        period = rng.uniform(0.15, 0.5) * size
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) * (2 * np.pi / period)
        wave = 0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * np.pi))
        first, second = _random_colour(rng, 0.05, high), _random_colour(rng, 0.05, high)
        base = first * (1 - wave[..., None]) + second * wave[..., None]
    grain = rng.normal(0.0, 0.03, size=(size, size, 3))
    return np.clip(base + grain, 0.0, 1.0).astype(np.float32)


def _mosaic_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float [H, W, 3]: square cells of random hue, saturation and value, plus fine grain."""
    cell = int(rng.choice(MOSAIC_CELLS))
    cells = -(-size // cell)
    hsv = rng.uniform((0.0, 0.3, 0.2), (1.0, 1.0, 0.9), size=(cells * cells, 3))
    rgb = np.array([colorsys.hsv_to_rgb(*c) for c in hsv], dtype=np.float32)
    base = np.kron(rgb.reshape(cells, cells, 3), np.ones((cell, cell, 1), np.float32))
    grain = rng.normal(0.0, 0.03, size=(size, size, 3))
    return np.clip(base[:size, :size] + grain, 0.0, 1.0).astype(np.float32)


def _tint(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright RGB colour, so items stand out from muted backgrounds."""
    hue = rng.uniform(0, 1)
    saturation = rng.uniform(0.45, 1.0)
    value = rng.uniform(0.75, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), dtype=np.float32)


def render_scene(
    rng: np.random.Generator,
    items: np.ndarray,
    by_class: list[np.ndarray],
    params: SceneParams,
) -> Scene:
    """Compose a scene from ``items`` [N, 28, 28]; ``by_class[c]`` lists the indices of class c."""
    size = params.size
    if params.background == "mosaic":
        canvas = _mosaic_background(rng, size)
    else:
        canvas = _background(rng, size, params.background_max)
    mask = np.zeros((size, size), dtype=np.uint8)
    count = int(rng.choice(len(params.count_probs), p=params.count_probs))
    # Distinct classes per scene: image-level labels then map one-to-one to items.
    classes = rng.choice(len(by_class), size=count, replace=False)
    used = []
    for cls in classes:
        pool = by_class[int(cls)]
        index = int(pool[rng.integers(len(pool))])
        used.append(index)
        side = int(round(rng.uniform(params.scale_min, params.scale_max) * size))
        glyph = Image.fromarray(items[index]).resize((side, side), Image.BILINEAR)
        if rng.random() < 0.5:
            glyph = glyph.transpose(Image.FLIP_LEFT_RIGHT)
        intensity = np.asarray(glyph, dtype=np.float32)
        top, left = rng.integers(0, size - side + 1, size=2)
        region = (slice(top, top + side), slice(left, left + side))
        # Shade the tint by the item's own texture; alpha from intensity keeps soft edges.
        shade = _tint(rng) * (0.35 + 0.65 * intensity[..., None] / 255.0)
        alpha = np.clip(intensity / 160.0, 0.0, 1.0)[..., None]
        canvas[region] = canvas[region] * (1 - alpha) + shade * alpha
        mask[region][intensity >= params.item_threshold] = int(cls) + 1
    labels = []
    for value in np.unique(mask):
        if value == 0:
            continue
        if (mask == value).sum() >= params.min_visible:
            labels.append(int(value))
        else:
            mask[mask == value] = IGNORE_INDEX
    image = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Scene(image=image, mask=mask, labels=labels, items=used)
