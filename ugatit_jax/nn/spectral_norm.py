"""Spectral normalisation (Miyato et al., 2018) as an NNX wrapper around a Conv or Linear layer.

Why our own: flax.nnx.SpectralNorm (0.12) writes W/sigma back into the stored kernel (flax issue #5576), so the
raw weight is lost. U-GAT-IT's discriminator needs the raw weight (its CAM block re-weights features with it),
and checkpoints of the official release store the raw weight as ``weight_orig``.

Semantics follow ``torch.nn.utils.spectral_norm``: in training mode each call runs ``n_steps`` power iterations
on the (gradient-stopped) weight, stores the new ``u``, ``v`` and divides the weight by
``sigma = u . (W v)``; gradients flow into W through sigma with u, v held constant. In eval mode the stored
vectors are used as they are. Like BatchNorm's running statistics, the mode is the ``use_running_average``
attribute, so ``model.eval()`` / ``model.train()`` switch it.

Layout: the weight matrix is ``kernel.reshape(-1, out)`` (fan-in order kh, kw, in for a conv); ``u`` has
``out`` entries, ``v`` has ``kh * kw * in`` (torch orders v as in, kh, kw; the importer permutes).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ugatit_jax.xla import cpu_conv


class PowerIterationState(nnx.Variable):
    """The power-iteration vectors u, v: state carried between steps, never trained."""


def l2_normalize(x: jax.Array, eps: float) -> jax.Array:
    """torch.nn.functional.normalize: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x)), eps)  # jnp.linalg.norm's arithmetic, without its nested jit


def power_iteration(w_mat: jax.Array, u: jax.Array, v: jax.Array, n_steps: int, eps: float):
    """``n_steps`` rounds of v <- W u / |W u|, u <- W^T v / |.| on W of shape (fan_in, out)."""
    for _ in range(n_steps):
        v = l2_normalize(w_mat @ u, eps)  # (fan_in,)
        u = l2_normalize(v @ w_mat, eps)  # (out,); v @ W, not W.T @ v: no transposed copy of a large W
    return u, v


class SpectralNorm(nnx.Module):
    """Wraps ``nnx.Conv`` or ``nnx.Linear``; the wrapped layer keeps the raw (un-normalised) kernel.

    Attributes:
      layer: the wrapped layer; ``layer.kernel`` is torch's ``weight_orig``.
      u, v: PowerIterationState vectors (torch's ``weight_u``, ``weight_v``).
      use_running_average: False (train) runs the power iteration; True (eval) uses the stored u, v.
    """

    def __init__(
        self,
        layer: nnx.Conv | nnx.Linear,
        *,
        n_steps: int = 1,
        eps: float = 1e-12,
        use_running_average: bool = False,
        rngs: nnx.Rngs,
    ):
        if not isinstance(layer, (nnx.Conv, nnx.Linear)):
            raise TypeError(f"SpectralNorm wraps nnx.Conv or nnx.Linear, got {type(layer).__name__}")
        if isinstance(layer, nnx.Conv) and (
            layer.feature_group_count != 1 or len(layer.kernel_size) != 2 or not isinstance(layer.padding, str)
        ):
            raise ValueError(
                "SpectralNorm supports 2-D convolutions with feature_group_count=1 and a string padding "
                "('VALID' or 'SAME'); pad explicitly before the layer for anything else"
            )
        self.layer = layer
        self.n_steps = n_steps
        self.eps = eps
        self.use_running_average = use_running_average
        kernel = layer.kernel[...]
        out_features = kernel.shape[-1]
        fan_in = math.prod(kernel.shape[:-1])
        ku, kv = jax.random.split(rngs.params())
        self.u = PowerIterationState(l2_normalize(jax.random.normal(ku, (out_features,), jnp.float32), eps))
        self.v = PowerIterationState(l2_normalize(jax.random.normal(kv, (fan_in,), jnp.float32), eps))

    @property
    def raw_kernel(self) -> jax.Array:
        """The un-normalised kernel (torch's ``weight_orig``)."""
        return self.layer.kernel[...]

    def sigmas(self, groups: int = 1) -> jax.Array:
        """(groups,) sigma estimates, as ``groups`` consecutive calls would see them (each advances u, v first)."""
        kernel = self.layer.kernel[...].astype(jnp.float32)
        w_mat = kernel.reshape(-1, kernel.shape[-1])  # (fan_in, out)
        u, v = self.u[...], self.v[...]
        if self.use_running_average:
            return jnp.broadcast_to(jnp.dot(v, w_mat @ u), (groups,))
        w_fixed = jax.lax.stop_gradient(w_mat)
        sigmas = []
        for _ in range(groups):
            u, v = power_iteration(w_fixed, u, v, self.n_steps, self.eps)
            sigmas.append(jnp.dot(v, w_mat @ u))  # u . (W^T v), without transposing W
        # set_value (not ``[...] =``): a whole-array replace that skips a slow sharding check on tracers.
        self.u.set_value(u)
        self.v.set_value(v)
        return jnp.stack(sigmas)

    def sigma(self) -> jax.Array:
        """Estimate of the largest singular value; advances u, v first when in training mode."""
        return self.sigmas(1)[0]

    def normalized_kernel(self) -> jax.Array:
        return self.layer.kernel[...] / self.sigma()

    def __call__(self, x: jax.Array, groups: int = 1) -> jax.Array:
        """``groups`` > 1: x interleaves ``groups`` batches (row j * groups + k is sample j of batch k), computed
        as ``groups`` consecutive calls, each with its own power iteration, in one batched op.

        Why it is exact: the layer is linear in the kernel, so op(x, W / sigma_k) = op(x, W) / sigma_k; each batch's
        rows are scaled by their own 1 / sigma_k before the bias.
        """
        layer = self.layer
        raw = layer.kernel[...]
        if groups == 1:
            kernel, inv_sigma = raw / self.sigma(), None
        else:
            kernel, inv_sigma = raw, 1.0 / self.sigmas(groups)  # (groups,)
        bias = layer.bias[...] if layer.bias is not None else None
        dtype = layer.dtype or jnp.result_type(x, kernel)
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if isinstance(layer, nnx.Linear):
            y = x @ kernel
        else:
            strides = layer.strides
            strides = (strides,) * (x.ndim - 2) if isinstance(strides, int) else tuple(strides)
            if layer.padding == "VALID":
                y = cpu_conv.conv2d(x, kernel, strides)  # XLA's or a faster formulation on CPU
            else:
                y = jax.lax.conv_general_dilated(x, kernel, strides, layer.padding, dimension_numbers=cpu_conv.NHWC)
        if inv_sigma is not None:
            per_group = y.reshape(-1, groups, *y.shape[1:])  # (B, groups, ...)
            scale = inv_sigma.astype(dtype).reshape(1, groups, *([1] * (y.ndim - 1)))
            y = (per_group * scale).reshape(y.shape)
        if bias is not None:
            y = y + bias.astype(dtype)
        return y
