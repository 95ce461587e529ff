"""Small building blocks shared by the networks: torch-style init, reflection padding, padded convs.

Convolutions run through ``xla.cpu_conv.conv_general_dilated``: XLA's own, or on the CPU a faster formulation of
the same values for the two shapes XLA:CPU runs slowly.

The official release relies on PyTorch's default initialisation (uniform in +-1/sqrt(fan_in) for both
kernel and bias); we use the same so that training from scratch behaves like the reference.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ugatit_jax.xla.cpu_conv import conv_general_dilated

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's kaiming_uniform(a=sqrt(5)) for Conv2d/Linear weights.
torch_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
    """torch's default bias init, which depends on the layer's fan-in (flax bias inits don't see it)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """ReflectionPad2d on NHWC: pads H and W only.

    Built from slices, reversals and one concatenation per axis (``jax.lax``, no nested programs) rather than
    ``jnp.pad(mode="reflect")``, whose general implementation wraps every reversal in its own jitted ``flip``:
    520 nested programs in the tiny test model's train step, each one linearised and transposed separately when
    the step is traced. The values and gradients are the same, element for element.
    """
    if pad == 0:
        return x
    for axis in (1, 2):  # H, W
        size = x.shape[axis]
        if pad >= size:
            raise ValueError(f"reflection padding {pad} needs more than {pad} pixels along axis {axis}, got {size}")
        before = jax.lax.rev(jax.lax.slice_in_dim(x, 1, pad + 1, axis=axis), (axis,))  # rows pad .. 1
        after = jax.lax.rev(jax.lax.slice_in_dim(x, size - pad - 1, size - 1, axis=axis), (axis,))  # rows H-2 ..
        x = jax.lax.concatenate([before, x, after], axis)
    return x


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
        conv_general_dilated=conv_general_dilated,
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


# How a wide fully-connected layer runs over devices while a step is traced (``wide_layer_layout``); None: as the
# compiler decides.
_WIDE_LAYER_LAYOUT: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("wide_layer_layout", default=None)


@contextlib.contextmanager
def wide_layer_layout(layout: Callable[[nnx.Linear, jax.Array], jax.Array]):
    """While tracing inside, ``wide_layer(layer, h)`` returns ``layout(layer, h)`` instead of ``layer(h)``.

    The full model's MLP reads the whole flattened feature map (a kernel of 1.07 billion weights per generator
    at 512 px). With that kernel split over the devices along its input features, the compiler left to itself
    gathers the whole kernel on every device for the product and computes every weight's gradient in full before
    reducing it; moving the layer's (small) input to the kernel's layout instead keeps every kernel-sized array
    split. The train step sets the layout (``parallel.split_wide_layers``); anywhere else this changes nothing."""
    token = _WIDE_LAYER_LAYOUT.set(layout)
    try:
        yield
    finally:
        _WIDE_LAYER_LAYOUT.reset(token)


def wide_layer(layer: nnx.Linear, h: jax.Array) -> jax.Array:
    """``layer(h)`` for a fully-connected layer whose input (B, features) is wide, laid out as
    ``wide_layer_layout`` says; outside it, exactly ``layer(h)``."""
    layout = _WIDE_LAYER_LAYOUT.get()
    return layer(h) if layout is None else layout(layer, h)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
    """nn.Upsample(scale_factor=2, mode='nearest') on NHWC."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C)
