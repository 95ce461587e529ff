"""Small generated datasets, in memory or on disk, for tests, smoke runs and benchmarks.

They exercise the real code paths (splits, pipeline, folder reading) in
seconds and without any data files or downloads.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ugatit_jax.data.images import array_to_rgb
from ugatit_jax.data.source import SPLITS, SplitSource, UnpairedSource, pairs_by_key


class ArraySplit(SplitSource):
    """A split whose images are arrays in memory (any HW / HWC uint8 layout)."""

    def __init__(self, images, *, name: str, keys: list[str] | None = None):
        self.images = list(images)
        self.name = name
        self.location = f"memory:{name}"
        self.keys = list(keys) if keys is not None else [str(i) for i in range(len(self.images))]
        if len(self.keys) != len(self.images):
            raise ValueError(f"{len(self.keys)} keys for {len(self.images)} images")

    def load(self, index: int) -> np.ndarray:
        return array_to_rgb(self.images[index])


def random_photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour fields plus grain: compresses and decodes roughly like a photo."""
    coarse = Image.fromarray(rng.integers(0, 256, (height // 20 + 2, width // 20 + 2, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    return np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)


def synthetic_source(
    *, num_train: int = 8, num_test: int = 2, height: int = 24, width: int = 32, seed: int = 0
) -> UnpairedSource:
    """A toy in-memory task: domain B is colour-inverted photos.

    Training images of the two domains are independent draws (unpaired);
    each test B image is the inverse of the test A image with the same key,
    so ``test_pairs`` is populated like for the emoji set.
    """
    rng = np.random.default_rng(seed)

    def photos(count):
        return [random_photo(rng, height, width) for _ in range(count)]

    test = photos(num_test)
    keys = [f"{i:04d}" for i in range(num_test)]
    test_a = ArraySplit(test, name="testA", keys=keys)
    test_b = ArraySplit([255 - image for image in test], name="testB", keys=keys)
    return UnpairedSource(
        name="synthetic",
        train_a=ArraySplit(photos(num_train), name="trainA"),
        train_b=ArraySplit([255 - image for image in photos(num_train)], name="trainB"),
        test_a=test_a,
        test_b=test_b,
        test_pairs=pairs_by_key(test_a, test_b),
    )


def write_random_images(root: str, count: int, *, size: tuple[int, int] = (400, 300), seed: int = 0) -> None:
    """``count`` photo-like JPEGs of ``size`` (width, height) in each of the four split folders under ``root``."""
    rng = np.random.default_rng(seed)
    width, height = size
    for split in SPLITS:
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i in range(count):
            Image.fromarray(random_photo(rng, height, width)).save(
                os.path.join(root, split, f"{i:05d}.jpg"), quality=90
            )
