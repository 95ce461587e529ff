"""``cpu_conv.conv2d``'s CPU formulations (im2col 'patches', 'shifted' taps) equal XLA's convolution, with gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ugatit_jax.xla import cpu_conv

# (batch, size, kernel, stride, in, out): U-GAT-IT's kinds of convolution, small.
SHAPES = [
    (2, 14, 7, 1, 3, 8),  # stem
    (2, 13, 3, 2, 8, 16),  # down-sampling
    (2, 10, 3, 1, 16, 16),  # residual
    (2, 10, 3, 1, 16, 8),  # up-sampling
    (2, 14, 7, 1, 8, 3),  # to RGB
    (2, 11, 4, 2, 3, 8),  # discriminator, stride 2
    (2, 6, 4, 1, 16, 32),  # output smaller than the kernel
    (2, 5, 4, 1, 32, 1),  # classifier
]


def _methods(stride):
    """Every formulation of each of the three results at least once."""
    if stride == 1:
        return [("shifted", "patches", "patches"), ("patches", "xla", "xla")]
    return [("patches", "patches", "patches")]


@functools.partial(jax.jit, static_argnums=(2, 3))
def _value_and_grads(x, w, stride, methods):
    def f(x, w):
        return jnp.sum(jnp.sin(cpu_conv.conv2d(x, w, stride, methods=methods)))

    return cpu_conv.conv2d(x, w, stride, methods=methods), jax.grad(f, argnums=(0, 1))(x, w)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_method_equals_xla(shape):
    b, size, k, stride, cin, cout = shape
    x = jax.random.normal(jax.random.key(0), (b, size, size, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) / np.sqrt(k * k * cin)
    ref_y, ref_g = _value_and_grads(x, w, stride, ("xla", "xla", "xla"))
    for methods in _methods(stride) + [tuple(cpu_conv.conv_methods(x.shape, w.shape, (stride, stride)))]:
        y, g = _value_and_grads(x, w, stride, methods)
        for name, a, r in (("output", y, ref_y), ("d_input", g[0], ref_g[0]), ("d_kernel", g[1], ref_g[1])):
            scale = float(jnp.max(jnp.abs(r)))
            err = float(jnp.max(jnp.abs(a - r)))
            assert err <= 1e-5 * scale + 1e-6, f"{methods} {name}: {err:.2g} (scale {scale:.2g})"


def test_bfloat16_inputs_give_bfloat16_outputs():
    x = jnp.ones((1, 10, 10, 16), jnp.bfloat16)
    for cout in (8, 32):  # 'shifted' and 'xla' outputs
        w = jnp.ones((3, 3, 16, cout), jnp.bfloat16)
        for methods in (("shifted", "xla", "xla"), ("patches", "patches", "patches")):
            y = cpu_conv.conv2d(x, w, 1, methods=methods)
            assert y.dtype == jnp.bfloat16
            g = jax.grad(lambda w, m=methods: jnp.sum(cpu_conv.conv2d(x, w, 1, methods=m).astype(jnp.float32)))(w)
            assert g.dtype == jnp.bfloat16


def test_only_xla_off_the_cpu(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert cpu_conv.conv_methods((1, 6, 6, 512), (4, 4, 512, 1024), (1, 1)) == ("xla", "xla", "xla")
