"""Sample strips in the official 7-tile layout, with attention heat maps.

Each column is one image: real, identity heat map, identity, translation heat map, translation, cycle heat map,
cycle (top to bottom); columns are concatenated left to right, as the official release writes its
``A2B_*.png`` / ``B2A_*.png``. Heat maps are min-max normalised per image and coloured with jet.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ugatit_jax.nn.cam import colorize_heatmap
from ugatit_jax.pixels import to_uint8

TILES = ("real", "identity_heatmap", "identity", "fake_heatmap", "fake", "cycle_heatmap", "cycle")


def strip(outputs: dict) -> np.ndarray:
    """uint8 (7 * H, N * W, 3) from the dict of ``inference.make_cycle_fn``."""
    real = np.asarray(outputs["real"])
    size = real.shape[1:3]
    rows = []
    for tile in TILES:
        value = np.asarray(outputs[tile])
        rows.append(colorize_heatmap(value, size) if tile.endswith("heatmap") else to_uint8(value))
    column_major = np.stack(rows, axis=1)  # (N, 7, H, W, 3)
    n, t, h, w, c = column_major.shape
    return column_major.transpose(1, 2, 0, 3, 4).reshape(t * h, n * w, c)


def save_png(image: np.ndarray, path: str) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a truncated PNG."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
