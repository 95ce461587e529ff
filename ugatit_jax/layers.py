"""Small building blocks shared by the networks: torch-style init, reflection padding, padded convs.

The official release relies on PyTorch's default initialisation (uniform in +-1/sqrt(fan_in) for both
kernel and bias); we use the same so that training from scratch behaves like the reference.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's kaiming_uniform(a=sqrt(5)) for Conv2d/Linear weights.
torch_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """torch's default bias init, which depends on the layer's fan-in (flax bias inits don't see it)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """ReflectionPad2d on NHWC: pads H and W only."""
    if pad == 0:
        return x
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, *, use_bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """A VALID conv initialised like torch.nn.Conv2d; padding is applied explicitly by the caller."""
    fan_in = in_ch * kernel * kernel
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding="VALID",
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(fan_in),
        rngs=rngs,
    )


def linear(in_features: int, out_features: int, *, use_bias: bool, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """A Dense layer initialised like torch.nn.Linear."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_features),
        rngs=rngs,
    )


def upsample_nearest2x(x: jax.Array) -> jax.Array:
    """nn.Upsample(scale_factor=2, mode='nearest') on NHWC."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C)
