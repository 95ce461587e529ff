"""Instance-Layer Normalisation (ILN) and its adaptive form (AdaILN) from U-GAT-IT, and NICE-GAN's variant.

rho mixes instance-norm statistics (per sample and channel, over H, W) with layer-norm statistics (per sample,
over H, W, C). Both use the *unbiased* variance (N - 1), as the official code calls ``torch.var``. Statistics
are computed in float32 whatever the compute dtype, so bfloat16 training keeps stable normalisation.

U-GAT-IT weights the two by (rho, 1 - rho) and clips rho to [0, 1] after each step. NICE-GAN instead learns two
logits per channel, rho (C, 2), and weights by their softmax, which needs no clipping (``SoftmaxILN``,
``SoftmaxAdaILN``); the statistics code is the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def instance_layer_mix(x: jax.Array, rho: jax.Array, eps: float, rho_ln: jax.Array | None = None) -> jax.Array:
    """rho * IN(x) + rho_ln * LN(x) on NHWC, in float32; ``rho_ln`` defaults to 1 - rho (U-GAT-IT).

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
    if rho_ln is None:
        rho_ln = 1.0 - rho
    scale = rho * in_inv + rho_ln * ln_inv  # (B, 1, 1, C)
    shift = -(rho * in_mean * in_inv + rho_ln * ln_mean * ln_inv)
    return x * scale + shift


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """nn.InstanceNorm2d without affine parameters (biased variance), in float32, cast back to x.dtype."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=(1, 2), keepdims=True)
    return ((xf - mean) / jnp.sqrt(var + eps)).astype(x.dtype)


class ILN(nnx.Module):
    """ILN with learned per-channel gamma, beta; rho starts at 0 (pure layer norm), as the official code."""

    softmax_rho = False  # rho (C,) weights IN by rho and LN by 1 - rho; ``clip_rho`` keeps it in [0, 1]

    def __init__(self, num_features: int, eps: float = 1e-5, rho_init=0.0):
        self.eps = eps
        self.rho = nnx.Param(_init_rho(num_features, rho_init, self.softmax_rho))
        self.gamma = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((num_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        rho, rho_ln = _mix_weights(self.rho[...], self.softmax_rho)
        out = instance_layer_mix(x, rho, self.eps, rho_ln)
        return (out * self.gamma[...] + self.beta[...]).astype(x.dtype)


class AdaILN(nnx.Module):
    """AdaILN: gamma, beta (B, C) come from the generator's MLP; rho starts at 0.9, as the official code."""

    softmax_rho = False

    def __init__(self, num_features: int, eps: float = 1e-5, rho_init=0.9):
        self.eps = eps
        self.rho = nnx.Param(_init_rho(num_features, rho_init, self.softmax_rho))

    def __call__(self, x: jax.Array, gamma: jax.Array, beta: jax.Array) -> jax.Array:
        rho, rho_ln = _mix_weights(self.rho[...], self.softmax_rho)
        out = instance_layer_mix(x, rho, self.eps, rho_ln)
        gamma = gamma.astype(jnp.float32)[:, None, None, :]  # (B, 1, 1, C)
        beta = beta.astype(jnp.float32)[:, None, None, :]
        return (out * gamma + beta).astype(x.dtype)


class SoftmaxILN(ILN):
    """NICE-GAN's ILN: rho (C, 2) holds (IN, LN) logits per channel, mixed by their softmax; init (1, 3.2).

    Why softmax: the weights stay positive and sum to 1 without U-GAT-IT's clipping after every step; the init
    starts close to layer norm (softmax(1, 3.2) = (0.10, 0.90)).
    """

    softmax_rho = True

    def __init__(self, num_features: int, eps: float = 1e-5, rho_init=(1.0, 3.2)):
        super().__init__(num_features, eps, rho_init)


class SoftmaxAdaILN(AdaILN):
    """NICE-GAN's AdaILN: softmax over (IN, LN) logits rho (C, 2); init (3.2, 1), close to instance norm."""

    softmax_rho = True

    def __init__(self, num_features: int, eps: float = 1e-5, rho_init=(3.2, 1.0)):
        super().__init__(num_features, eps, rho_init)


def _init_rho(num_features: int, rho_init, softmax: bool) -> jax.Array:
    """(C,) filled with rho_init, or (C, 2) with the (IN, LN) logit pair for the softmax variant."""
    if softmax:
        return jnp.tile(jnp.asarray(rho_init, jnp.float32).reshape(1, 2), (num_features, 1))  # (C, 2)
    return jnp.full((num_features,), rho_init, jnp.float32)


def _mix_weights(rho: jax.Array, softmax: bool) -> tuple[jax.Array, jax.Array | None]:
    """(weight of IN, weight of LN); None for LN means 1 - rho, computed inside ``instance_layer_mix``."""
    if softmax:
        w = jax.nn.softmax(rho.astype(jnp.float32), axis=-1)  # (C, 2)
        return w[:, 0], w[:, 1]
    return rho, None


def clip_rho(model: nnx.Module, low: float = 0.0, high: float = 1.0) -> None:
    """Clamp every rho of every U-GAT-IT ILN/AdaILN inside ``model`` to [low, high], in place (official
    RhoClipper). NICE-GAN's softmax variants hold logits, which are never clipped, and are left alone."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, (ILN, AdaILN)) and not module.softmax_rho:
            module.rho.set_value(jnp.clip(module.rho[...], low, high))
