"""Generator and discriminators at paper size (parameter counts and shapes, traced abstractly: the full
generator has 279M parameters), argument checks, and jit / split-merge behaviour of every module."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny import tiny_config

from ugatit_jax.models.family import build_model
from ugatit_jax.models.nice import NiceGenerator
from ugatit_jax.models.ugatit import UGATIT, Discriminator, Generator
from ugatit_jax.nn.attention import CAMAttention
from ugatit_jax.nn.norms import ILN, AdaILN
from ugatit_jax.nn.spectral_norm import SpectralNorm
from ugatit_jax.xla.jit_init import abstract_module, jit_init

B = 2


def n_params(module) -> int:
    """Counts nnx.Param leaves only (not spectral-norm u, v), as the official count of trainable weights."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def abstract(ctor):
    return abstract_module(lambda rngs: ctor(rngs=rngs))


def abstract_forward(module, *arg_shapes):
    """Output shapes and dtypes of ``module(*args)``, traced without allocating parameters or activations."""
    graphdef, state = nnx.split(module)
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in arg_shapes]
    return jax.eval_shape(lambda st, *a: nnx.merge(graphdef, st)(*a), state, *args)


# ---------------------------------------------------------------- paper sizes (ch 64, n_res 4, img 256)

OFFICIAL_PARAMS = {
    "generator_light": (lambda rngs: Generator(64, 4, 256, light=True, rngs=rngs), 10_589_888),
    "generator_full": (lambda rngs: Generator(64, 4, 256, light=False, rngs=rngs), 278_959_808),
    "discriminator_global": (lambda rngs: Discriminator(64, 7, rngs=rngs), 53_130_176),
    "discriminator_local": (lambda rngs: Discriminator(64, 5, rngs=rngs), 3_290_560),
}


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_parameter_count_equals_official(name):
    ctor, expected = OFFICIAL_PARAMS[name]
    assert n_params(abstract(ctor)) == expected


def test_whole_model_parameter_count():
    model = abstract(lambda rngs: UGATIT(64, 4, 256, light=True, rngs=rngs))
    assert n_params(model) == 2 * (10_589_888 + 53_130_176 + 3_290_560)
    # The spectral-norm vectors exist but are not parameters: one u, v pair per normalised layer.
    n_sn = sum(isinstance(m, SpectralNorm) for _, m in nnx.iter_modules(model))
    assert n_sn == 2 * ((6 + 3) + (4 + 3))  # per discriminator: n_layers - 1 convs, gap_fc, gmp_fc, classifier
    assert len(jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)))) == 2 * n_sn


@pytest.mark.parametrize("light", [True, False])
@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_generator_shapes_at_256(light, dtype):
    gen = abstract(lambda rngs: Generator(64, 4, 256, light=light, dtype=dtype, rngs=rngs))
    image, cam_logit, heatmap = abstract_forward(gen, (B, 256, 256, 3))
    assert image.shape == (B, 256, 256, 3)
    assert cam_logit.shape == (B, 2)
    assert heatmap.shape == (B, 64, 64, 1)
    assert image.dtype == cam_logit.dtype == heatmap.dtype == jnp.float32


@pytest.mark.parametrize(("n_layers", "out", "heat"), [(7, 6, 7), (5, 30, 31)])
def test_discriminator_shapes_at_256(n_layers, out, heat):
    dis = abstract(lambda rngs: Discriminator(64, n_layers, rngs=rngs))
    logits, cam_logit, heatmap = abstract_forward(dis, (B, 256, 256, 3))
    assert logits.shape == (B, out, out, 1)
    assert cam_logit.shape == (B, 2)
    assert heatmap.shape == (B, heat, heat, 1)


def test_generator_rejects_img_size_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4.*254"):
        Generator(4, 1, 254, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by 4"):
        UGATIT(4, 1, 130, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="divisible by 4.*30"):
        NiceGenerator(4, 1, 30, rngs=nnx.Rngs(0))


def test_generators_default_to_the_official_residual_block_counts():
    """One constructor serves both generators; ``n_res`` left out is the family's official count (4 and 6)."""
    for cls, n_res in ((Generator, 4), (NiceGenerator, 6)):
        gen = nnx.eval_shape(lambda cls=cls: cls(4, img_size=16, rngs=nnx.Rngs(0)))
        assert len(gen.adailn_blocks) == n_res
        assert len(nnx.eval_shape(lambda cls=cls: cls(4, 2, 16, rngs=nnx.Rngs(0))).adailn_blocks) == 2
    assert len(nnx.eval_shape(lambda: Generator(4, img_size=16, rngs=nnx.Rngs(0))).res_blocks) == 4


def test_discriminator_rejects_fewer_than_3_layers():
    with pytest.raises(ValueError, match="at least 3.*2"):
        Discriminator(4, 2, rngs=nnx.Rngs(0))
    # 3 is the smallest valid depth: one stride-2 conv, one stride-1 conv.
    dis = abstract(lambda rngs: Discriminator(4, 3, rngs=rngs))
    out, _, heatmap = abstract_forward(dis, (B, 32, 32, 3))
    assert out.shape == (B, 14, 14, 1) and heatmap.shape == (B, 15, 15, 1)


# ---------------------------------------------------------------- jit and split/merge of every module


def materialize(module, seed=0):
    """Fill an abstract module from NumPy (eager random init compiles one XLA program per shape: seconds)."""
    graphdef, state = nnx.split(module)
    rng = np.random.default_rng(seed)

    def fill(s):
        if len(s.shape) >= 2:  # kernels: fan-in scaled, so that activations stay O(1)
            v = rng.standard_normal(s.shape) / math.sqrt(math.prod(s.shape[:-1]))
        else:  # rho, gamma, beta, biases, u, v: all fine in (0, 1)
            v = rng.uniform(0.05, 0.95, s.shape)
        return jnp.asarray(v, s.dtype)

    return nnx.merge(graphdef, jax.tree.map(fill, state))


def _x(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _sn_conv(rngs):
    return SpectralNorm(nnx.Conv(3, 5, (3, 3), strides=2, padding="VALID", rngs=rngs), rngs=rngs)


# name: (constructor, input shapes, train mode). Train mode on spectral norm: the call also updates u, v.
MODULES = {
    "spectral_norm_conv": (_sn_conv, [(B, 9, 9, 3)], True),
    "spectral_norm_linear": (lambda rngs: SpectralNorm(nnx.Linear(6, 3, rngs=rngs), rngs=rngs), [(B, 6)], True),
    "iln": (lambda rngs: ILN(4), [(B, 5, 6, 4)], False),
    "adailn": (lambda rngs: AdaILN(4), [(B, 5, 6, 4), (B, 4), (B, 4)], False),
    "cam": (lambda rngs: CAMAttention(4, activation=jax.nn.relu, rngs=rngs), [(B, 5, 6, 4)], False),
    "cam_spectral": (
        lambda rngs: CAMAttention(4, activation=jax.nn.relu, spectral_norm=True, rngs=rngs),
        [(B, 5, 6, 4)],
        True,
    ),
    "generator_light": (lambda rngs: Generator(2, 1, 16, light=True, rngs=rngs), [(B, 16, 16, 3)], False),
    "generator_full": (lambda rngs: Generator(2, 1, 16, light=False, rngs=rngs), [(B, 16, 16, 3)], False),
    "discriminator": (lambda rngs: Discriminator(2, 3, rngs=rngs), [(B, 16, 16, 3)], True),
}
# The jax.jit + split/merge variant compiles the same program again; the generators skip it to save time.
PURE_JIT = set(MODULES) - {"generator_light", "generator_full"}


def build(name):
    ctor, shapes, train = MODULES[name]
    module = materialize(abstract(ctor))
    module.train() if train else module.eval()
    return module, [_x(s, seed=i + 1) for i, s in enumerate(shapes)]


def flat(module):
    return {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(module))}


def assert_trees_close(a, b, tol=1e-5):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * max(1.0, np.abs(y).max()))


def assert_states_close(a: dict, b: dict, tol=1e-5):
    assert a.keys() == b.keys()
    assert_trees_close([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], tol)


@pytest.mark.parametrize("name", list(MODULES))
def test_jit_equals_eager(name):
    """Same outputs and the same state afterwards (spectral-norm u, v) under nnx.jit and jax.jit + split/merge."""
    module, args = build(name)
    graphdef, state = nnx.split(module)
    fresh = lambda: nnx.merge(graphdef, state, copy=True)

    eager = fresh()
    out_eager = eager(*args)

    jitted = fresh()
    out_nnx_jit = nnx.jit(lambda m, *a: m(*a))(jitted, *args)

    assert_trees_close(out_nnx_jit, out_eager)
    assert_states_close(flat(jitted), flat(eager))

    if name in PURE_JIT:

        @jax.jit
        def pure(st, *a):
            m = nnx.merge(graphdef, st)
            return m(*a), nnx.state(m)

        out_jax_jit, state_jax_jit = pure(state, *args)
        assert_trees_close(out_jax_jit, out_eager)
        assert_states_close(flat(nnx.merge(graphdef, state_jax_jit)), flat(eager))

    initial = flat(fresh())
    changed = any(not np.array_equal(v, initial[k]) for k, v in flat(eager).items())
    assert changed == MODULES[name][2], "only train-mode spectral norm updates state"


@pytest.mark.parametrize("name", list(MODULES))
def test_split_merge_roundtrip(name):
    """split -> merge (whole, or by Variable type) rebuilds an equal, independent module."""
    module, args = build(name)
    before = flat(module)
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    copy = nnx.merge(graphdef, params, rest, copy=True)
    assert type(copy) is type(module)
    assert nnx.graphdef(copy) == nnx.graphdef(module)
    for (path, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(module, nnx.Variable)), nnx.to_flat_state(nnx.state(copy, nnx.Variable))
    ):
        assert type(a) is type(b), path  # Param stays Param, PowerIterationState stays PowerIterationState
        assert a is not b, path
    assert flat(copy).keys() == before.keys()
    for k, v in flat(copy).items():
        np.testing.assert_array_equal(v, before[k], err_msg=str(k))
    out_copy = copy(*args)
    out_orig = module(*args)
    for a, b in zip(jax.tree.leaves(out_copy), jax.tree.leaves(out_orig)):
        np.testing.assert_array_equal(a, b)
    assert flat(copy).keys() == flat(module).keys()
    for k, v in flat(copy).items():
        np.testing.assert_array_equal(v, flat(module)[k], err_msg=str(k))


# ---------------------------------------------------------------- initialisation as one compiled program


def test_jit_init_gives_the_eager_initialisation_up_to_rounding():
    """What ``build_model`` runs, on a discriminator (convs, CAM linears, biases, spectral-norm u and v): every
    element within float32 rounding of its tensor's scale (measured: at most 1.4e-7 of it; XLA fuses the scale and
    shift of a uniform draw and the l2 normalisation of u, v into one program)."""
    construct = lambda rngs: Discriminator(4, 3, rngs=rngs)
    eager = nnx.state(construct(nnx.Rngs(3)))
    jitted = nnx.state(jit_init(construct, 3))
    pairs = list(zip(jax.tree_util.tree_leaves_with_path(eager), jax.tree.leaves(jitted), strict=True))
    assert len(pairs) == 19
    for (path, a), b in pairs:
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, jax.tree_util.keystr(path)
        assert np.max(np.abs(a - b)) <= 2.4e-7 * np.max(np.abs(a)), jax.tree_util.keystr(path)  # 2 ulp of scale


@pytest.mark.parametrize("model", ["ugatit", "nice"])
def test_build_model_is_seeded_and_draws_torch_default_bounds(model):
    """Same seed, same weights; another seed, other weights; every conv and linear kernel uniform in
    +-1/sqrt(fan_in) (torch's default init, kaiming_uniform(a=sqrt(5))), filling that range."""
    config = tiny_config(model=model)
    leaves = lambda m: jax.tree_util.tree_leaves_with_path(nnx.state(m))
    flat = lambda m: {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves(m)}
    first, again, other = (flat(build_model(config, seed=s)) for s in (0, 0, 1))
    assert all(np.array_equal(first[k], again[k]) for k in first)
    kernels = [k for k in first if k.endswith("['kernel'].value")]
    assert len(kernels) > 10 and all(not np.array_equal(first[k], other[k]) for k in kernels)
    for k in kernels:
        w = first[k]
        bound = 1 / math.sqrt(math.prod(w.shape[:-1]))  # fan_in: (kh, kw, in) of a conv, (in,) of a linear
        assert np.max(np.abs(w)) <= bound and (w.size < 64 or np.max(np.abs(w)) > 0.8 * bound), k


def test_traced_rngs_draw_the_keys_of_nnx_rngs():
    """``jit_init.TracedRngs`` stands in for ``nnx.Rngs(key)`` while constructing: the same key for every draw, in
    order, eagerly and traced; a stream it does not have is an error, not a silent stand-in."""
    from ugatit_jax.xla.jit_init import TracedRngs

    draws = lambda rngs: [rngs.params(), rngs(), rngs.default(), rngs.params()]
    data = lambda keys: jnp.stack([jax.random.key_data(k) for k in keys])
    key = jax.random.key(3)
    expected = data(draws(nnx.Rngs(key)))
    np.testing.assert_array_equal(data(draws(TracedRngs(key))), expected)
    np.testing.assert_array_equal(jax.jit(lambda k: data(draws(TracedRngs(k))))(key), expected)
    with pytest.raises(AttributeError):
        TracedRngs(key).dropout()


def test_disc_ch_widens_only_the_discriminators():
    """``config.disc_ch``: U-GAT-IT's discriminators get their own base width; 0 keeps the official one (ch)."""
    from ugatit_jax.config import ConfigError, validate
    from ugatit_jax.models.family import abstract_model

    def networks(config):
        model = nnx.merge(*abstract_model(config))
        return {n: getattr(model, n) for n in UGATIT.NAMES}

    official = networks(tiny_config())
    wide = networks(tiny_config(disc_ch=2 * tiny_config().ch))
    for name in UGATIT.GENERATORS:
        assert n_params(wide[name]) == n_params(official[name]), name
    for name in UGATIT.DISCRIMINATORS:
        assert n_params(wide[name]) > 3 * n_params(official[name]), name  # the convs grow with the square of the width
    with pytest.raises(ConfigError, match="disc_ch"):
        validate(tiny_config(model="nice", disc_ch=8))
    with pytest.raises(ConfigError, match="disc_ch"):
        validate(tiny_config(disc_ch=-1))
