"""The CAM attention block of U-GAT-IT, shared by generator and discriminator.

An auxiliary classifier looks at global-average-pooled (GAP) and global-max-pooled (GMP) features and predicts
the domain; its two weight vectors then re-weight the feature maps channel by channel (as a class activation
map does), the two re-weighted copies are concatenated and mixed back to C channels by a 1x1 conv. The channel
sum of the result is the attention heat map. In the discriminator the classifiers are spectral-normalised; as
in the official code the *raw* classifier weight re-weights the features while the logits use the normalised
weight.

NICE-GAN's discriminator (``ResidualCAMAttention``) keeps the re-weighting and 1x1 mixing but uses one classifier
on the concatenated [GAP, GMP] features (one logit), and adds the attended features to the input through a
learned scalar ``lamda`` (initialised to 0, so training starts from the plain encoder) before the activation.
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
        # Creation order = the official module order (classifiers, then conv1x1): a seeded init draws alike.
        self._make_classifiers(channels, lambda in_features: _classifier(in_features, spectral_norm, dtype, rngs))
        self.conv1x1 = layers.conv(2 * channels, channels, 1, use_bias=True, dtype=dtype, rngs=rngs)
        self.activation = activation

    def _make_classifiers(self, channels: int, classifier: Callable[[int], nnx.Module]) -> None:
        """One 1-logit classifier on GAP and one on GMP (``classifier(in_features)`` makes one)."""
        self.gap_fc = classifier(channels)
        self.gmp_fc = classifier(channels)

    @staticmethod
    def _raw_weight(fc) -> jax.Array:
        kernel = fc.raw_kernel if isinstance(fc, SpectralNorm) else fc.kernel[...]
        return kernel[:, 0]  # (in_features,)

    def _classify(self, gap: jax.Array, gmp: jax.Array, kw: dict):
        """-> (cam_logit (B, 2), weight for the GAP copy (C,), weight for the GMP copy (C,))."""
        gap_logit = self.gap_fc(gap, **kw)  # (B, 1)
        gmp_logit = self.gmp_fc(gmp, **kw)  # (B, 1)
        cam_logit = jnp.concatenate([gap_logit, gmp_logit], axis=-1)  # (B, 2)
        return cam_logit, self._raw_weight(self.gap_fc), self._raw_weight(self.gmp_fc)

    def _combine(self, x: jax.Array, attended: jax.Array) -> jax.Array:
        """The attended features replace the input (U-GAT-IT)."""
        return attended

    def __call__(self, x: jax.Array, groups: int = 1):
        """``groups``: see ``SpectralNorm.__call__`` (discriminator only)."""
        gap = jnp.mean(x, axis=(1, 2))  # (B, C)
        gmp = jnp.max(x, axis=(1, 2))  # (B, C)
        kw = {"groups": groups} if groups != 1 else {}
        cam_logit, gap_weight, gmp_weight = self._classify(gap, gmp, kw)
        attended = jnp.concatenate([x * gap_weight.astype(x.dtype), x * gmp_weight.astype(x.dtype)], axis=-1)
        attended = self.conv1x1(attended)  # (B, H, W, 2C) -> (B, H, W, C)
        x = self.activation(self._combine(x, attended))  # (B, H, W, C)
        heatmap = jnp.sum(x, axis=-1, keepdims=True)  # (B, H, W, 1)
        return x, cam_logit, heatmap


class ResidualCAMAttention(CAMAttention):
    """NICE-GAN's CAM block. Returns ``(z (B, H, W, C), cam_logit (B, 1), heatmap (B, H, W, 1))``.

    One (spectral-normalised) classifier ``fc`` sees concat[GAP, GMP] (2C features, one logit); the first C entries
    of its raw weight re-weight the GAP copy of x, the last C the GMP copy. Output:
    ``activation(lamda * conv1x1(attended) + x)``; ``lamda`` is a learned scalar starting at 0.
    """

    def __init__(self, channels: int, *, spectral_norm: bool = True, **options):
        """``CAMAttention``'s arguments, spectral-normalised by default: NICE-GAN has this block in its
        discriminators only."""
        super().__init__(channels, spectral_norm=spectral_norm, **options)
        self.lamda = nnx.Param(jnp.zeros((1,), jnp.float32))

    def _make_classifiers(self, channels: int, classifier: Callable[[int], nnx.Module]) -> None:
        self.fc = classifier(2 * channels)

    def _classify(self, gap: jax.Array, gmp: jax.Array, kw: dict):
        cam_logit = self.fc(jnp.concatenate([gap, gmp], axis=-1), **kw)  # (B, 2C) -> (B, 1)
        weight = self._raw_weight(self.fc)  # (2C,)
        channels = gap.shape[-1]
        return cam_logit, weight[:channels], weight[channels:]

    def _combine(self, x: jax.Array, attended: jax.Array) -> jax.Array:
        return self.lamda[...].astype(attended.dtype) * attended + x


def _classifier(in_features: int, spectral_norm: bool, dtype, rngs: nnx.Rngs):
    """A bias-free 1-logit Dense layer, spectral-normalised in the discriminators."""
    fc = layers.linear(in_features, 1, use_bias=False, dtype=dtype, rngs=rngs)
    return SpectralNorm(fc, rngs=rngs) if spectral_norm else fc
