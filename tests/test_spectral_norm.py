"""SpectralNorm: convergence to the top singular value, step-for-step equality with torch's spectral_norm,
train/eval semantics, an untouched raw kernel, and u, v kept out of the trainable parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from ugatit_jax.nn.spectral_norm import PowerIterationState, SpectralNorm, l2_normalize

# (kind, kernel shape in our layout, stride): conv kernels are (kh, kw, in, out), dense kernels (in, out).
LAYERS = {
    "conv3": ("conv", (3, 3, 4, 6), 1),
    "conv4s2": ("conv", (4, 4, 3, 8), 2),
    "dense_tall": ("dense", (10, 7), None),
    "dense_wide": ("dense", (5, 12), None),
}


def make_sn(name, seed=0, *, use_bias=True, n_steps=1):
    """A SpectralNorm around a layer whose kernel and bias are standard normal (well away from sigma = 1).

    Built abstractly and filled from NumPy: eager random init compiles one XLA program per shape (slow on CPU).
    """
    kind, shape, stride = LAYERS[name]

    def ctor():
        rngs = nnx.Rngs(seed)
        if kind == "conv":
            cin, cout = shape[2], shape[3]
            layer = nnx.Conv(cin, cout, shape[:2], strides=stride, padding="VALID", use_bias=use_bias, rngs=rngs)
        else:
            layer = nnx.Linear(shape[0], shape[1], use_bias=use_bias, rngs=rngs)
        return SpectralNorm(layer, n_steps=n_steps, rngs=rngs)

    graphdef, state = nnx.split(nnx.eval_shape(ctor))
    sn = nnx.merge(graphdef, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state))
    rng = np.random.default_rng(seed)
    normal = lambda var: jnp.asarray(rng.standard_normal(var[...].shape), jnp.float32)
    sn.layer.kernel.set_value(normal(sn.layer.kernel))
    if use_bias:
        sn.layer.bias.set_value(normal(sn.layer.bias))
    for var in (sn.u, sn.v):  # u, v start as unit vectors, as after the official initialisation
        v = normal(var)
        var.set_value(v / jnp.linalg.norm(v))
    return sn


def make_input(name, seed=1, batch=2):
    kind, shape, _ = LAYERS[name]
    in_shape = (batch, 9, 8, shape[2]) if kind == "conv" else (batch, shape[0])
    return jnp.asarray(np.random.default_rng(seed).standard_normal(in_shape), jnp.float32)


def to_torch_weight(kernel):
    kernel = np.asarray(kernel)
    return np.transpose(kernel, (3, 2, 0, 1)) if kernel.ndim == 4 else kernel.T


def to_torch_v(v, kernel_shape):
    """Our v is ordered (kh, kw, in); torch's (in, kh, kw)."""
    v = np.asarray(v)
    if len(kernel_shape) == 2:
        return v
    kh, kw, cin, _ = kernel_shape
    return np.transpose(v.reshape(kh, kw, cin), (2, 0, 1)).reshape(-1)


def from_torch_v(v, kernel_shape):
    v = np.asarray(v)
    if len(kernel_shape) == 2:
        return v
    kh, kw, cin, _ = kernel_shape
    return np.transpose(v.reshape(cin, kh, kw), (1, 2, 0)).reshape(-1)


def torch_sn_layer(sn):
    """torch.nn.utils.spectral_norm around a Conv2d/Linear holding our kernel, bias, u and v."""
    layer = sn.layer
    kernel = np.asarray(layer.kernel[...])
    weight = torch.from_numpy(to_torch_weight(kernel).copy())
    bias = layer.bias is not None
    if kernel.ndim == 4:
        stride = layer.strides if isinstance(layer.strides, int) else tuple(layer.strides)
        tl = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=stride, bias=bias)
    else:
        tl = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    tl = torch.nn.utils.spectral_norm(tl)
    with torch.no_grad():
        tl.weight_orig.copy_(weight)
        if bias:
            tl.bias.copy_(torch.from_numpy(np.array(layer.bias[...])))
        tl.weight_u.copy_(torch.from_numpy(np.array(sn.u[...])))
        tl.weight_v.copy_(torch.from_numpy(to_torch_v(sn.v[...], kernel.shape).copy()))
    return tl


def torch_in(x):
    x = np.asarray(x)
    return torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy() if x.ndim == 4 else x.copy())


def from_torch_out(y):
    y = y.detach().numpy()
    return np.transpose(y, (0, 2, 3, 1)) if y.ndim == 4 else y


def assert_close(actual, expected, rtol=1e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("name", list(LAYERS))
def test_sigma_converges_to_largest_singular_value(name):
    """After enough power iterations sigma is the spectral norm of kernel.reshape(-1, out)."""
    sn = make_sn(name, seed=3, n_steps=50)
    kernel = np.asarray(sn.raw_kernel, np.float64)
    expected = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    sigma = float(sn.sigma())
    assert abs(sigma - expected) <= 1e-4 * expected, (sigma, expected)
    # And the normalised kernel then has spectral norm 1.
    w = np.asarray(sn.normalized_kernel(), np.float64)
    assert abs(np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)[0] - 1.0) <= 1e-4


@pytest.mark.parametrize("name", ["conv3", "conv4s2", "dense_tall"])
def test_train_step_equals_torch_spectral_norm(name):
    """One train-mode call: same output, same new u and v, same normalised weight as torch from the same u, v."""
    sn = make_sn(name)
    kernel_shape = sn.raw_kernel.shape
    x = make_input(name)
    tl = torch_sn_layer(sn)
    tl.train()
    y_torch = from_torch_out(tl(torch_in(x)))
    y = sn(x)
    assert_close(y, y_torch)
    assert_close(sn.u[...], tl.weight_u.numpy())
    assert_close(sn.v[...], from_torch_v(tl.weight_v.numpy(), kernel_shape))
    # torch keeps W / sigma (with the new u, v) in ``weight``; ours in eval mode uses the same stored vectors.
    sn.eval()
    assert_close(to_torch_weight(sn.normalized_kernel()), tl.weight.detach().numpy())


@pytest.mark.parametrize("name", ["conv4s2", "dense_wide"])
def test_gradient_flows_through_sigma_only_like_torch(name):
    """d(loss)/d(kernel) in train mode equals torch autograd through spectral_norm (u, v held constant)."""
    sn = make_sn(name, seed=5)
    x = make_input(name, seed=6)
    tl = torch_sn_layer(sn)
    tl.train()
    y_torch = tl(torch_in(x))
    cotangent = np.random.default_rng(7).standard_normal(tuple(y_torch.shape)).astype(np.float32)
    (y_torch * torch.from_numpy(cotangent)).sum().backward()
    expected = tl.weight_orig.grad.numpy()
    expected = np.transpose(expected, (2, 3, 1, 0)) if expected.ndim == 4 else expected.T

    graphdef, state = nnx.split(sn)
    g = jnp.asarray(from_torch_out(torch.from_numpy(cotangent)))

    def loss(kernel):
        m = nnx.merge(graphdef, state, copy=True)
        m.layer.kernel.set_value(kernel)
        return jnp.sum(m(x) * g)

    grad = jax.grad(loss)(sn.raw_kernel)
    assert_close(grad, expected, rtol=1e-4)


def test_eval_mode_keeps_u_v_and_train_mode_updates_them():
    """model.eval() sets use_running_average: stored u, v are used as they are; model.train() advances them."""
    sn = make_sn("conv3")
    x = make_input("conv3")
    u0, v0 = np.asarray(sn.u[...]), np.asarray(sn.v[...])
    sn.eval()
    assert sn.use_running_average is True
    y1, y2 = sn(x), sn(x)
    np.testing.assert_array_equal(sn.u[...], u0)
    np.testing.assert_array_equal(sn.v[...], v0)
    np.testing.assert_array_equal(y1, y2)
    # Eval sigma is u . (W v) with the stored vectors.
    w = np.asarray(sn.raw_kernel, np.float64).reshape(-1, 6)
    assert_close(sn.normalized_kernel(), np.asarray(sn.raw_kernel) / (u0 @ (w.T @ v0)))
    sn.train()
    assert sn.use_running_average is False
    y3 = sn(x)
    assert not np.allclose(sn.u[...], u0)
    assert not np.allclose(sn.v[...], v0)
    assert not np.allclose(y3, y1)
    np.testing.assert_allclose(np.linalg.norm(sn.u[...]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(sn.v[...]), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["conv3", "dense_tall"])
def test_raw_kernel_is_never_overwritten(name):
    """Unlike flax.nnx.SpectralNorm, calls leave the stored kernel raw (torch's weight_orig)."""
    sn = make_sn(name)
    x = make_input(name)
    before = np.asarray(sn.layer.kernel[...]).copy()
    for _ in range(3):
        y = sn(x)
    sn.eval()
    sn(x)
    np.testing.assert_array_equal(sn.layer.kernel[...], before)
    np.testing.assert_array_equal(sn.raw_kernel, before)
    # The call did normalise (sigma is far from 1 for a standard-normal kernel), just not in place.
    assert not np.allclose(y, sn.layer(x), rtol=1e-2)


def test_u_v_are_power_iteration_state_not_params():
    """Optimisers filter on nnx.Param, so u, v must be a different Variable type."""
    sn = make_sn("conv3")
    assert isinstance(sn.u, PowerIterationState) and isinstance(sn.v, PowerIterationState)
    assert not isinstance(sn.u, nnx.Param) and not isinstance(sn.v, nnx.Param)
    params = nnx.to_flat_state(nnx.state(sn, nnx.Param))
    assert sorted(path for path, _ in params) == [("layer", "bias"), ("layer", "kernel")]
    vectors = nnx.to_flat_state(nnx.state(sn, PowerIterationState))
    assert sorted(path for path, _ in vectors) == [("u",), ("v",)]
    # Initial vectors are unit length with the documented sizes: u (out,), v (kh * kw * in,).
    assert sn.u[...].shape == (6,) and sn.v[...].shape == (3 * 3 * 4,)
    np.testing.assert_allclose(np.linalg.norm(sn.v[...]), 1.0, rtol=1e-6)


def test_rejects_unsupported_layers():
    def build(layer_ctor):  # traced abstractly: only the constructor's checks matter
        return nnx.eval_shape(lambda: SpectralNorm(layer_ctor(nnx.Rngs(0)), rngs=nnx.Rngs(0)))

    with pytest.raises(TypeError, match="nnx.Conv or nnx.Linear"):
        build(lambda rngs: nnx.BatchNorm(3, rngs=rngs))
    with pytest.raises(ValueError, match="feature_group_count"):
        build(lambda rngs: nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=rngs))
    with pytest.raises(ValueError, match="padding"):
        build(lambda rngs: nnx.Conv(4, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs))
    build(lambda rngs: nnx.Conv(4, 4, (3, 3), padding="SAME", rngs=rngs))  # string padding is fine


def test_l2_normalize_matches_torch_normalize():
    x = jnp.asarray([3.0, 4.0])
    np.testing.assert_allclose(l2_normalize(x, 1e-12), [0.6, 0.8], rtol=1e-6)
    # eps guards a zero vector, as torch.nn.functional.normalize does.
    np.testing.assert_array_equal(l2_normalize(jnp.zeros(3), 1e-12), np.zeros(3))
