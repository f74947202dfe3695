"""PIL images of any mode as 8-bit RGB: 16-bit greyscale scaled, palette and alpha resolved."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Modes whose values exceed 8 bits: Image.convert("RGB") clips them, so a 16-bit PNG
# (values up to 65535) came out pure white.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB.

    16-bit and 32-bit greyscale are scaled by their type's range (a 16-bit value v becomes
    v / 257), palette images with transparency go through RGBA so the palette is resolved
    once, and every other mode uses PIL's own conversion.
    """
    if image.mode in _WIDE_MODES:
        array = np.asarray(image)
        if image.mode == "F":
            peak = 1.0 if array.size and float(array.max()) <= 1.0 else 65535.0
        elif image.mode.startswith("I;16"):
            peak = 65535.0
        else:  # 32-bit "I": PIL's mode for some 16-bit files; 8-bit data stays as it is
            peak = 65535.0 if array.size and int(array.max()) > 255 else 255.0
        grey = np.clip(array.astype(np.float64) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")
