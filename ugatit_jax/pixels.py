"""The pixel conventions shared by data, the train steps, inference and evaluation: uint8 RGB on the host, float32
in [-1, 1] in the networks.

Below the data package on purpose: translating with a loaded model needs these three functions and nothing of the
input pipeline (grain, TFDS).
"""

from __future__ import annotations

import numpy as np


def to_model_range(x):
    """uint8 in [0, 255] -> float32 in [-1, 1] (x / 127.5 - 1); numpy or jax arrays, jit-safe."""
    if x.dtype != np.uint8:
        raise TypeError(f"to_model_range expects uint8 images, got {x.dtype}; it must see raw pixels exactly once")
    return x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(x):
    """Inverse of ``to_model_range``: clip to the displayable range and round to uint8."""
    return ((x + 1.0) * 127.5).clip(0, 255).round().astype(np.uint8)


def as_model_input(x):
    """Model input from a batch: uint8 pixels are scaled to [-1, 1]; float batches are taken as already scaled."""
    if x.dtype == np.uint8:
        return to_model_range(x)
    return x.astype(np.float32)
