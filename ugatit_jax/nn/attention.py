"""The CAM attention block of U-GAT-IT, shared by generator and discriminator.

An auxiliary classifier looks at global-average-pooled (GAP) and global-max-pooled (GMP) features and predicts
the domain; its two weight vectors then re-weight the feature maps channel by channel (as a class activation
map does), the two re-weighted copies are concatenated and mixed back to C channels by a 1x1 conv. The channel
sum of the result is the attention heat map. In the discriminator the classifiers are spectral-normalised; as
in the official code the *raw* classifier weight re-weights the features while the logits use the normalised
weight.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ugatit_jax.nn import layers
from ugatit_jax.nn.spectral_norm import SpectralNorm


class CAMAttention(nnx.Module):
    """Returns ``(features (B, H, W, C), cam_logit (B, 2), heatmap (B, H, W, 1))``."""

    def __init__(
        self,
        channels: int,
        *,
        activation: Callable[[jax.Array], jax.Array],
        spectral_norm: bool = False,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        def classifier():
            fc = layers.linear(channels, 1, use_bias=False, dtype=dtype, rngs=rngs)
            return SpectralNorm(fc, rngs=rngs) if spectral_norm else fc

        self.gap_fc = classifier()
        self.gmp_fc = classifier()
        self.conv1x1 = layers.conv(2 * channels, channels, 1, use_bias=True, dtype=dtype, rngs=rngs)
        self.activation = activation

    @staticmethod
    def _raw_weight(fc) -> jax.Array:
        kernel = fc.raw_kernel if isinstance(fc, SpectralNorm) else fc.kernel[...]
        return kernel[:, 0]  # (C,)

    def __call__(self, x: jax.Array, groups: int = 1):
        """``groups``: see ``SpectralNorm.__call__`` (discriminator only)."""
        gap = jnp.mean(x, axis=(1, 2))  # (B, C)
        gmp = jnp.max(x, axis=(1, 2))  # (B, C)
        kw = {"groups": groups} if groups != 1 else {}
        gap_logit = self.gap_fc(gap, **kw)  # (B, 1)
        gmp_logit = self.gmp_fc(gmp, **kw)  # (B, 1)
        cam_logit = jnp.concatenate([gap_logit, gmp_logit], axis=-1)  # (B, 2)
        gap_weight = self._raw_weight(self.gap_fc).astype(x.dtype)
        gmp_weight = self._raw_weight(self.gmp_fc).astype(x.dtype)
        x = jnp.concatenate([x * gap_weight, x * gmp_weight], axis=-1)  # (B, H, W, 2C)
        x = self.activation(self.conv1x1(x))  # (B, H, W, C)
        heatmap = jnp.sum(x, axis=-1, keepdims=True)  # (B, H, W, 1)
        return x, cam_logit, heatmap
