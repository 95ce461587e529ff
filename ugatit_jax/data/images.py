"""Decoding any PIL image mode to the RGB uint8 arrays the whole pipeline uses.

Transparent pixels are composited on white (not dropped to black, which is
what a plain ``convert('RGB')`` does), because emoji and icon datasets are
mostly transparent and would otherwise train on black backgrounds. EXIF
orientation is deliberately *not* applied, matching the official release,
which opens files with ``Image.open(path).convert('RGB')``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Extensions read from folder datasets (compared lower-cased).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

_WHITE = (255, 255, 255, 255)


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    return image.mode == "P" and "transparency" in image.info


def _high_bit_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """Scales 16/32-bit grey to 8 bit; PIL's own conversion clips at 255 instead."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    else:  # I;16 variants always, and 'I' (how some readers return 16-bit PNG) when above 8 bit.
        scale = 1.0 / 257.0 if image.mode.startswith("I;16") or (values.size and values.max() > 255) else 1.0
    grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Returns an (H, W, 3) uint8 array for an image of any mode."""
    if image.mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if image.mode.startswith("I") or image.mode == "F":
        return _high_bit_depth_to_uint8(image)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Normalises an HW / HWC array (1, 2, 3 or 4 channels) to (H, W, 3) uint8."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        if array.dtype == np.uint16:
            return _high_bit_depth_to_uint8(Image.fromarray(array))
        raise TypeError(f"expected uint8 or uint16 image data, got {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.ndim == 3 and array.shape[-1] == 3:
        return array
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        return pil_to_rgb(Image.fromarray(array))  # uint8 with 2 / 4 channels -> LA / RGBA
    raise TypeError(f"expected an HW or HWC image with 1-4 channels, got shape {array.shape}")


def read_rgb(path: str) -> np.ndarray:
    """Decodes one file fully (so truncation is caught here, not later)."""
    with Image.open(path) as image:
        image.load()
        return pil_to_rgb(image)
