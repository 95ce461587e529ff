"""Convolutions at the machine's matmul speed on XLA:CPU, with the values of XLA's own.

``conv2d`` computes a VALID NHWC convolution's output, input gradient and kernel gradient each by the method
``conv_methods`` picks for the shape; ``conv_general_dilated`` is the drop-in ``nnx.Conv`` takes
(``nn.layers.conv``). Off the CPU everything is XLA's convolution. Speed only: ``tests/test_conv_methods.py`` checks
every method against XLA's, values and gradients, and the measurements are in ``docs/speed.md``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NHWC = ("NHWC", "HWIO", "NHWC")  # dimension numbers of every convolution here


def conv_methods(x_shape, kernel_shape, strides) -> tuple[str, str, str]:
    """How ``conv2d`` computes (output, input gradient, kernel gradient) of a VALID convolution.

    Each is 'xla' (XLA's convolution), 'patches' (im2col, then one matmul) or, for the output, 'shifted' (x times
    all kh * kw taps in one matmul, then a sum of shifted slices). XLA:CPU's own convolution is far off the
    machine's matmul speed for two kinds of U-GAT-IT convolution (whole train steps and single ops, measured in
    ``docs/speed.md``):

    * fewer output than input channels at stride 1 (up-sampling and to-RGB convs, 1-channel classifiers): its
      forward thunk runs at ~3-15 GFLOP/s, 'shifted' 3-10x faster; XLA's gradients are fast there and stay;
    * output smaller than the kernel (the 128 px global discriminator's 4x4 conv to 3x3): XLA swaps the operands of
      the input-gradient convolution into a layout that only its generic loop kernel runs (~400 ms, 30-100x slower
      than 'patches').

    Everything else stays 'xla': other rewrites won single-op timings but lost inside the whole step, and every
    rewrite adds compile time. Off the CPU everything is 'xla' (cuDNN / the TPU's convolution units).
    """
    if jax.default_backend() != "cpu":
        return "xla", "xla", "xla"
    kh, kw, cin, cout = kernel_shape
    oh = (x_shape[1] - kh) // strides[0] + 1
    ow = (x_shape[2] - kw) // strides[1] + 1
    if oh < kh or ow < kw:
        return "patches", "patches", "patches"
    if strides == (1, 1) and cout < cin:
        return "shifted", "xla", "xla"
    return "xla", "xla", "xla"


def _patches(x: jax.Array, kh: int, kw: int, strides, oh: int, ow: int) -> jax.Array:
    """im2col: (B, H, W, C) -> (B, oh, ow, kh * kw * C) in the kernel's (kh, kw, in) fan-in order."""
    sh, sw = strides
    taps = [x[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1)


def _conv_by(method: str, x: jax.Array, kernel: jax.Array, strides, precision=None) -> jax.Array:
    kh, kw, cin, cout = kernel.shape
    if method == "xla":
        return jax.lax.conv_general_dilated(x, kernel, strides, "VALID", dimension_numbers=NHWC, precision=precision)
    oh, ow = (x.shape[1] - kh) // strides[0] + 1, (x.shape[2] - kw) // strides[1] + 1
    if method == "patches":
        patches = _patches(x, kh, kw, strides, oh, ow)  # (B, oh, ow, kh * kw * in)
        return jnp.dot(patches, kernel.reshape(kh * kw * cin, cout), precision=precision)  # (B, oh, ow, out)
    if method == "shifted":  # stride 1
        taps_kernel = kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)  # (in, (kh, kw, out))
        z = jnp.dot(x, taps_kernel, precision=precision, preferred_element_type=jnp.float32)
        z = z.reshape(*x.shape[:3], kh * kw, cout)  # (B, H, W, taps, out): every tap's contribution at its input
        y = sum(z[:, i : i + oh, j : j + ow, i * kw + j] for i in range(kh) for j in range(kw))  # (B, oh, ow, out)
        return y.astype(jnp.result_type(x, kernel))
    raise ValueError(f"unknown convolution method {method!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, methods, precision):
    return _conv_by(methods[0], x, kernel, strides, precision)


def _conv_fwd(x, kernel, strides, methods, precision):
    return _conv(x, kernel, strides, methods, precision), (x, kernel)


def _conv_bwd(strides, methods, precision, res, dy):
    """Each gradient by its own method; the vjps' unused forward outputs are dropped by XLA."""
    x, kernel = res
    _, vjp_x = jax.vjp(lambda a: _conv_by(methods[1], a, kernel, strides, precision), x)
    _, vjp_k = jax.vjp(lambda k: _conv_by(methods[2], x, k, strides, precision), kernel)
    return vjp_x(dy)[0], vjp_k(dy)[0]


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, strides=(1, 1), precision=None, methods=None) -> jax.Array:
    """VALID 2-D convolution, NHWC x HWIO -> NHWC; output and gradients each computed the fastest way for the
    shape (``conv_methods``), or by ``methods`` = (output, input gradient, kernel gradient)."""
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    methods = tuple(methods or conv_methods(x.shape, kernel.shape, strides))
    if methods == ("xla", "xla", "xla"):
        return _conv_by("xla", x, kernel, strides, precision)
    return _conv(x, kernel, strides, methods, precision)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
    """Drop-in for ``lax.conv_general_dilated`` in ``nnx.Conv``: the plain NHWC VALID case goes to ``conv2d``."""
    plain = (
        padding == "VALID"
        and feature_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1,)) + (rhs_dilation or (1,)))
        and lhs.ndim == 4
        and dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
        and all(v is None for v in kwargs.values())
    )
    if plain:
        return conv2d(lhs, rhs, window_strides, precision)
    return jax.lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        precision=precision,
        **kwargs,
    )
