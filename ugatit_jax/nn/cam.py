"""Class activation maps (Zhou et al., CVPR 2016) for any GAP + Dense classifier, and heat-map colouring.

CAM: with features f_k(x, y) feeding global average pooling and a Dense layer of weights w_k^c, the map
M_c(x, y) = sum_k w_k^c f_k(x, y) shows where class c's evidence lies. U-GAT-IT's attention generalises it;
these helpers also colour and overlay U-GAT-IT's own heat maps for the sample strips.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Piecewise-linear control points of the classic 'jet' colour map (position, value) per channel.
_JET = {
    "r": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "g": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "b": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}


def minmax_normalize(x: jax.Array, axes=(1, 2), eps: float = 1e-12) -> jax.Array:
    """Scale each map to [0, 1] over ``axes`` (a constant map becomes all zeros)."""
    lo = jnp.min(x, axis=axes, keepdims=True)
    hi = jnp.max(x, axis=axes, keepdims=True)
    return (x - lo) / jnp.maximum(hi - lo, eps)


def class_activation_map(features: jax.Array, fc_kernel: jax.Array, class_idx, out_size) -> jax.Array:
    """CAM of class ``class_idx``: ReLU(sum_k w_k f_k), min-max normalised, resized bilinearly.

    Args:
      features: (B, h, w, C) maps that the classifier global-average-pools.
      fc_kernel: (C, num_classes) Dense kernel after the pooling.
      class_idx: int or (B,) int array, the class to explain per image.
      out_size: (H, W) of the image.
    Returns:
      (B, H, W) float32 in [0, 1].
    """
    features = jnp.asarray(features, jnp.float32)
    weights = jnp.asarray(fc_kernel, jnp.float32).T[jnp.asarray(class_idx)]  # (C,) or (B, C)
    weights = jnp.broadcast_to(weights, (features.shape[0], features.shape[-1]))
    cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", features, weights))
    cam = minmax_normalize(cam)
    h, w = out_size
    return jax.image.resize(cam, (cam.shape[0], h, w), method="bilinear")


def colorize_heatmap(heatmap, out_size=None) -> np.ndarray:
    """Colour a (B, h, w) or (B, h, w, 1) heat map with 'jet' after min-max normalisation -> uint8 (B, H, W, 3).

    Like the official release, each map is normalised on its own, then resized to ``out_size`` (H, W).
    """
    size = None if out_size is None else tuple(out_size)
    hm = np.clip(np.asarray(_normalized(jnp.asarray(heatmap, jnp.float32), size)), 0.0, 1.0)
    rgb = [np.interp(hm, *zip(*_JET[c])) for c in "rgb"]
    return np.round(np.stack(rgb, axis=-1) * 255.0).astype(np.uint8)


@functools.partial(jax.jit, static_argnames="out_size")
def _normalized(hm: jax.Array, out_size: tuple[int, int] | None) -> jax.Array:
    """(B, h, w[, 1]) -> (B, H, W) in [0, 1]: one compiled program per shape (eagerly, each op compiled its own)."""
    if hm.ndim == 4:
        hm = hm[..., 0]
    hm = minmax_normalize(hm)
    if out_size is not None:
        hm = jax.image.resize(hm, (hm.shape[0], *out_size), method="bilinear")
    return hm


def overlay_heatmap(image_uint8, heatmap, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured heat map over uint8 images (B, H, W, 3); the map is resized to the image."""
    image = np.asarray(image_uint8)
    colour = colorize_heatmap(heatmap, image.shape[1:3]).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
