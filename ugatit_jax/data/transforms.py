"""Image transforms of the official PyTorch release, on uint8 HWC arrays.

Train: random horizontal flip (p=0.5), resize to (img_size + crop_margin) squared with PIL bilinear, random
img_size crop; the official margin is 30 px, chosen for 256 px images. Test: resize to img_size squared. Images
stay uint8 on the host (4x less to copy than float32); ``to_model_range`` does the float conversion on the
accelerator inside the train step.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# The pixel conventions live below the data package (inference needs them without grain); kept importable here.
from ugatit_jax.pixels import as_model_input, to_model_range, to_uint8  # noqa: F401

# How much larger than the crop the train resize is, as in the official code (designed for 256 px: the crop keeps
# 90% of the side; at 64 px the same 30 px would keep only 68%, cutting off most emoji outlines).
CROP_MARGIN = 30


def _resize(image: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)


def train_transform(
    image: np.ndarray, rng: np.random.Generator, img_size: int, crop_margin: int = CROP_MARGIN
) -> np.ndarray:
    """Flip / resize / crop; all randomness comes from ``rng`` so grain can seed it per element."""
    flip = rng.random() < 0.5
    top, left = rng.integers(0, crop_margin + 1, size=2)
    pil = Image.fromarray(image)
    if flip:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pil = pil.resize((img_size + crop_margin, img_size + crop_margin), Image.Resampling.BILINEAR)
    pil = pil.crop((int(left), int(top), int(left) + img_size, int(top) + img_size))
    return np.asarray(pil, dtype=np.uint8)


def test_transform(image: np.ndarray, img_size: int) -> np.ndarray:
    """Deterministic resize used for evaluation and sample grids."""
    return np.asarray(_resize(image, img_size), dtype=np.uint8)


test_transform.__test__ = False  # pytest would collect it wherever a test module imports it
