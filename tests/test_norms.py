"""ILN / AdaILN against a float64 NumPy reference with the official unbiased (N - 1) variance, their rho
initialisation, rho clipping over a whole model, and float32 statistics for bfloat16 inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ugatit_jax.models.ugatit import Generator
from ugatit_jax.nn.norms import ILN, AdaILN, clip_rho

EPS = 1e-5


def reference_mix(x, rho, eps=EPS):
    """rho * IN(x) + (1 - rho) * LN(x) on NHWC in float64, variances with ddof=1 as torch.var does."""
    x = np.asarray(x, np.float64)
    in_mean = x.mean(axis=(1, 2), keepdims=True)
    in_var = x.var(axis=(1, 2), keepdims=True, ddof=1)
    ln_mean = x.mean(axis=(1, 2, 3), keepdims=True)
    ln_var = x.var(axis=(1, 2, 3), keepdims=True, ddof=1)
    rho = np.asarray(rho, np.float64)
    return rho * (x - in_mean) / np.sqrt(in_var + eps) + (1 - rho) * (x - ln_mean) / np.sqrt(ln_var + eps)


def random_input(shape=(2, 5, 6, 4), seed=0, dtype=np.float32):
    """Channels with different offsets and scales, so that IN and LN statistics differ clearly."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    return (rng.standard_normal(shape) * rng.uniform(0.5, 3.0, c) + rng.uniform(-2, 2, c)).astype(dtype)


def assert_close(actual, expected, tol=2e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def test_iln_matches_numpy_reference():
    x = random_input()
    rng = np.random.default_rng(1)
    iln = ILN(4)
    rho, gamma, beta = rng.uniform(0, 1, 4), rng.standard_normal(4), rng.standard_normal(4)
    iln.rho.set_value(jnp.asarray(rho, jnp.float32))
    iln.gamma.set_value(jnp.asarray(gamma, jnp.float32))
    iln.beta.set_value(jnp.asarray(beta, jnp.float32))
    out = iln(jnp.asarray(x))
    assert out.dtype == jnp.float32
    assert_close(out, reference_mix(x, rho) * gamma + beta)


def test_adailn_matches_numpy_reference_with_per_sample_gamma_beta():
    x = random_input(seed=2)
    rng = np.random.default_rng(3)
    ada = AdaILN(4)
    rho = rng.uniform(0, 1, 4)
    ada.rho.set_value(jnp.asarray(rho, jnp.float32))
    gamma, beta = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))  # (B, C): one pair per sample
    out = ada(jnp.asarray(x), jnp.asarray(gamma, jnp.float32), jnp.asarray(beta, jnp.float32))
    assert_close(out, reference_mix(x, rho) * gamma[:, None, None, :] + beta[:, None, None, :])


@pytest.mark.parametrize("rho", [0.0, 1.0])
def test_variance_is_unbiased_at_both_extremes(rho):
    """Pure LN (rho 0) and pure IN (rho 1): a biased (N) variance would be off by sqrt(N / (N - 1)) here."""
    x = random_input(shape=(1, 3, 3, 2), seed=4)  # N = 9 per instance, 18 per layer: the factor is visible
    iln = ILN(2, rho_init=rho)
    assert_close(iln(jnp.asarray(x)), reference_mix(x, np.full(2, rho)))


def test_rho_initialisation_follows_the_official_code():
    iln, ada = ILN(7), AdaILN(7)
    np.testing.assert_array_equal(iln.rho[...], np.zeros(7))
    np.testing.assert_array_equal(iln.gamma[...], np.ones(7))
    np.testing.assert_array_equal(iln.beta[...], np.zeros(7))
    np.testing.assert_array_equal(ada.rho[...], np.full(7, 0.9, np.float32))
    assert iln.rho[...].dtype == ada.rho[...].dtype == jnp.float32
    assert isinstance(iln.rho, nnx.Param) and isinstance(ada.rho, nnx.Param)  # rho is trained


def test_clip_rho_clamps_every_rho_of_a_nested_model():
    """A generator holds ILNs (up-sampling) and AdaILNs (residual blocks); every rho is clamped, nothing else."""
    # Built abstractly and filled from NumPy: eager random init compiles one XLA program per shape (seconds).
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Generator(2, 2, 8, light=True, rngs=nnx.Rngs(0))))
    gen = nnx.merge(graphdef, jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), state))
    norms = [m for _, m in nnx.iter_modules(gen) if isinstance(m, (ILN, AdaILN))]
    assert sum(isinstance(m, ILN) for m in norms) == 2 and sum(isinstance(m, AdaILN) for m in norms) == 4
    rng = np.random.default_rng(0)
    before = {}
    for i, m in enumerate(norms):
        rho = rng.uniform(-1.0, 2.0, m.rho[...].shape).astype(np.float32)
        rho[0], rho[-1] = -0.5, 1.5  # at least one value below and one above in every layer
        m.rho.set_value(jnp.asarray(rho))
        before[i] = rho
    others = {p: np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(gen, nnx.Param)) if p[-1] != "rho"}

    clip_rho(gen)

    for i, m in enumerate(norms):
        np.testing.assert_array_equal(m.rho[...], np.clip(before[i], 0.0, 1.0))
    for p, v in nnx.to_flat_state(nnx.state(gen, nnx.Param)):
        if p[-1] != "rho":
            np.testing.assert_array_equal(v, others[p], err_msg=str(p))


def test_clip_rho_custom_bounds_and_plain_container():
    class Holder(nnx.Module):
        def __init__(self):
            self.inner = nnx.List([ILN(3), nnx.Dict(a=AdaILN(3))])

    h = Holder()
    for m in (h.inner[0], h.inner[1]["a"]):
        m.rho.set_value(jnp.asarray([-1.0, 0.5, 3.0]))
    clip_rho(h, 0.2, 0.8)
    np.testing.assert_allclose(h.inner[0].rho[...], [0.2, 0.5, 0.8])
    np.testing.assert_allclose(h.inner[1]["a"].rho[...], [0.2, 0.5, 0.8])


def test_bfloat16_input_uses_float32_statistics():
    """Large offsets: a bf16 mean is off by up to 0.25 at 50, ruining (x - mean); float32 statistics are not."""
    x32 = random_input(shape=(2, 8, 8, 4), seed=5) + 50.0
    x16 = jnp.asarray(x32, jnp.bfloat16)
    exact_in = np.asarray(x16.astype(jnp.float32))  # the same (quantised) input, in float32
    rng = np.random.default_rng(6)
    rho = rng.uniform(0, 1, 4)
    gamma = jnp.asarray(rng.standard_normal((2, 4)), jnp.bfloat16)
    beta = jnp.asarray(rng.standard_normal((2, 4)), jnp.bfloat16)
    f32 = lambda a: jnp.asarray(a, jnp.float32)

    iln, ada = ILN(4), AdaILN(4)
    iln.rho.set_value(f32(rho))
    ada.rho.set_value(f32(rho))
    pairs = [(iln(x16), iln(f32(exact_in))), (ada(x16, gamma, beta), ada(f32(exact_in), f32(gamma), f32(beta)))]
    for out16, out32 in pairs:
        assert out16.dtype == jnp.bfloat16
        # Only the final rounding to bf16 (8 mantissa bits) separates the two.
        np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out32), rtol=2**-7, atol=2**-7)
    # The reference itself: normalised output of the quantised input, computed in float64.
    assert_close(iln(jnp.asarray(exact_in)), reference_mix(exact_in, rho), tol=1e-4)


def test_iln_under_jit_and_grad():
    """Gradients reach rho, gamma and beta (all trained)."""
    iln = ILN(4, rho_init=0.5)
    x = jnp.asarray(random_input())

    @nnx.jit
    def loss_grad(m):
        return nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(m)

    grads = loss_grad(iln)
    for name in ("rho", "gamma", "beta"):
        g = np.asarray(grads[name][...])
        assert np.all(np.isfinite(g)) and np.any(g != 0), name
    assert jax.tree.structure(grads) == jax.tree.structure(nnx.state(iln, nnx.Param))
