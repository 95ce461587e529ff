"""Instance-Layer Normalisation (ILN) and its adaptive form (AdaILN) from U-GAT-IT.

rho mixes instance-norm statistics (per sample and channel, over H, W) with layer-norm statistics (per sample,
over H, W, C). Both use the *unbiased* variance (N - 1), as the official code calls ``torch.var``. Statistics
are computed in float32 whatever the compute dtype, so bfloat16 training keeps stable normalisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _unbiased_var(x: jax.Array, axes: tuple[int, ...], mean: jax.Array) -> jax.Array:
    n = 1
    for a in axes:
        n *= x.shape[a]
    return jnp.sum(jnp.square(x - mean), axis=axes, keepdims=True) / (n - 1)


def instance_layer_mix(x: jax.Array, rho: jax.Array, eps: float) -> jax.Array:
    """rho * IN(x) + (1 - rho) * LN(x) on NHWC, in float32.

    The layer statistics come from the instance ones (pooled mean and variance of the channels, exact), and both
    normalisations fold into one per-channel scale and shift: two passes over x for statistics and one to
    normalise, instead of four and two.
    """
    x = x.astype(jnp.float32)
    hw = x.shape[1] * x.shape[2]
    n = hw * x.shape[3]
    in_mean = jnp.mean(x, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
    in_ss = jnp.sum(jnp.square(x - in_mean), axis=(1, 2), keepdims=True)  # (B, 1, 1, C): centred sum of squares
    ln_mean = jnp.mean(in_mean, axis=3, keepdims=True)  # (B, 1, 1, 1)
    ln_ss = jnp.sum(in_ss + hw * jnp.square(in_mean - ln_mean), axis=3, keepdims=True)  # pooled: sum (x - ln_mean)^2
    in_inv = jax.lax.rsqrt(in_ss / (hw - 1) + eps)  # unbiased variances, as torch.var
    ln_inv = jax.lax.rsqrt(ln_ss / (n - 1) + eps)
    scale = rho * in_inv + (1.0 - rho) * ln_inv  # (B, 1, 1, C)
    shift = -(rho * in_mean * in_inv + (1.0 - rho) * ln_mean * ln_inv)
    return x * scale + shift


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """nn.InstanceNorm2d without affine parameters (biased variance), in float32, cast back to x.dtype."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
    return ((xf - mean) / jnp.sqrt(var + eps)).astype(x.dtype)


class ILN(nnx.Module):
    """ILN with learned per-channel gamma, beta; rho starts at 0 (pure layer norm), as the official code."""

    def __init__(self, num_features: int, eps: float = 1e-5, rho_init: float = 0.0):
        self.eps = eps
        self.rho = nnx.Param(jnp.full((num_features,), rho_init, jnp.float32))
        self.gamma = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        out = instance_layer_mix(x, self.rho[...], self.eps)
        return (out * self.gamma[...] + self.beta[...]).astype(x.dtype)


class AdaILN(nnx.Module):
    """AdaILN: gamma, beta (B, C) come from the generator's MLP; rho starts at 0.9, as the official code."""

    def __init__(self, num_features: int, eps: float = 1e-5, rho_init: float = 0.9):
        self.eps = eps
        self.rho = nnx.Param(jnp.full((num_features,), rho_init, jnp.float32))

    def __call__(self, x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
        out = instance_layer_mix(x, self.rho[...], self.eps)
        gamma = gamma.astype(jnp.float32)[:, None, None, :]  # (B, 1, 1, C)
        beta = beta.astype(jnp.float32)[:, None, None, :]
        return (out * gamma + beta).astype(x.dtype)


def clip_rho(model: nnx.Module, low: float = 0.0, high: float = 1.0) -> None:
    """Clamp every rho of every ILN/AdaILN inside ``model`` to [low, high], in place (official RhoClipper)."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, (ILN, AdaILN)):
            module.rho.set_value(jnp.clip(module.rho[...], low, high))
