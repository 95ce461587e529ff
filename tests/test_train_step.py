"""The jitted train step: traced once, data-parallel equal to one device, donation-safe."""

import chex
import jax
import numpy as np
import pytest
from tiny import run_config, tiny_config

from ugatit_jax.models.family import build_model
from ugatit_jax.train import optim, parallel
from ugatit_jax.train import state as train_state
from ugatit_jax.training import steps

STEPS = 3


def _step(config, mesh):
    """The trainer's step (``steps.jitted_step``: the program the in-process training tests compile), made anew:
    chex counts traces per definition site, and each test builds a fresh step at the same site."""
    chex.clear_trace_counter()
    steps._STEPS.clear()
    model = build_model(config)
    g_tx, d_tx = optim.make_optimizers(config)
    graphdefs, state = train_state.create_train_state(model, g_tx, d_tx, ema=train_state.ema_names(config))
    state = parallel.replicate(state, mesh)
    return steps.jitted_step(config, graphdefs, g_tx, d_tx, mesh, parallel.replicated(mesh)), state


def _run(config, devices, batches):
    mesh = parallel.make_mesh(devices)
    step, state = _step(config, mesh)
    losses = []
    for batch in batches:
        batch = jax.device_put(batch, parallel.batch_sharding(mesh))
        state, metrics = step(state, batch)
        losses.append((float(metrics["d_loss"]), float(metrics["g_loss"])))
    return jax.device_get(state), np.array(losses)


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    shape = (8, 32, 32, 3)
    return [{"A": rng.integers(0, 256, shape, np.uint8), "B": rng.integers(0, 256, shape, np.uint8)} for _ in range(5)]


def test_eight_devices_match_one(batches):
    """Global batch 8 over 8 fake CPU devices gives the losses, parameters and generator average of 1 device with
    batch 8.

    Tolerance: rtol 1e-5 on losses; on parameters 1e-4 of each tensor's scale plus 0.1% of the distance Adam
    can move a parameter in those steps (lr * steps). The all-reduced loss means sum in a different order, and
    Adam's g / sqrt(v) normalisation amplifies that for gradient elements near zero, which matters for
    parameters that start at 0 (ILN beta) and have moved only ~lr * steps.
    """
    assert jax.device_count() == 8, "conftest.py should have created 8 fake CPU devices"
    config = run_config()  # batch 8, the generator average too (RUN_EMA)
    one, losses_one = _run(config, jax.devices()[:1], batches[:STEPS])
    eight, losses_eight = _run(config, jax.devices(), batches[:STEPS])
    np.testing.assert_allclose(losses_eight, losses_one, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eight.params), jax.tree.leaves(one.params)):
        tol = 1e-4 * float(np.max(np.abs(b))) + 1e-3 * config.lr * STEPS
        assert float(np.max(np.abs(a - b))) <= tol, jax.tree_util.keystr(path)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eight.ema), jax.tree.leaves(one.ema)):
        tol = 1e-4 * float(np.max(np.abs(b))) + 1e-3 * config.lr * STEPS
        assert float(np.max(np.abs(a - b))) <= tol, "ema" + jax.tree_util.keystr(path)
    for a, b in zip(jax.tree.leaves(eight.sn), jax.tree.leaves(one.sn)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert int(eight.step) == STEPS


def test_step_traces_once(batches):
    """Five steps, one trace: the step is guarded by chex.assert_max_traces(n=1) in parallel.jit_train_step."""
    config = run_config()
    state, losses = _run(config, jax.devices(), batches[:5])  # the 8-device program of the test above
    assert int(state.step) == 5
    assert np.all(np.isfinite(losses))


def test_retrace_is_an_error(batches):
    """A batch of another shape would silently recompile; the guard turns it into an error (at the second trace,
    before anything compiles: the first step is the 8-device program of the tests above)."""
    config = run_config()
    double = {k: np.concatenate([v, v]) for k, v in batches[0].items()}  # 16 images: still divisible by 8
    with pytest.raises(AssertionError, match="traced > 1 times"):
        _run(config, jax.devices(), [batches[0], double])


def test_spectral_norm_state_identical_on_all_devices(batches):
    config = run_config()
    mesh = parallel.make_mesh(jax.devices())
    step, state = _step(config, mesh)
    state, _ = step(state, jax.device_put(batches[0], parallel.batch_sharding(mesh)))
    for leaf in jax.tree.leaves(state.sn):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(shards) == 8
        for shard in shards[1:]:
            np.testing.assert_array_equal(shard, shards[0])


class _Recorder:
    """A config that records which keys are read."""

    def __init__(self, config):
        self._config, self.read = config, set()

    def __getattr__(self, key):
        self.read.add(key)
        return getattr(self._config, key)

    def __getitem__(self, key):
        self.read.add(key)
        return self._config[key]

    def get(self, key, default=None):
        self.read.add(key)
        return self._config.get(key, default)


@pytest.mark.parametrize("model", ["ugatit", "nice"])
def test_step_and_architecture_keys_cover_what_is_read(model):
    """``jitted_step`` reuses a step per ``STEP_KEYS`` and ``build_model`` an initialiser per ``ARCHITECTURE_KEYS``:
    every key the builders, the optimisers and the step read must be in them, or two different runs would share
    a program."""
    from flax import nnx

    from ugatit_jax.models.family import ARCHITECTURE_KEYS, get_family

    config = tiny_config(model=model, **({"n_dis": 6, "img_size": 64} if model == "nice" else {}))
    arch = _Recorder(config)
    nnx.eval_shape(lambda: get_family(arch).build(arch, nnx.Rngs(0)))
    assert arch.read and arch.read <= set(ARCHITECTURE_KEYS), arch.read - set(ARCHITECTURE_KEYS)
    step = _Recorder(config)
    g_tx, d_tx = optim.make_optimizers(step)
    graphdefs, _ = train_state.abstract_train_state(config, g_tx, d_tx)
    steps.make_step(step, graphdefs, g_tx, d_tx)
    assert step.read and step.read <= set(steps.STEP_KEYS), step.read - set(steps.STEP_KEYS)


@pytest.mark.parametrize(
    "objective, loss_fn",
    [("UGATITObjective", "generator_loss"), ("NICEObjective", "nice_generator_loss")],
)
def test_objective_fields_are_the_generator_loss_keywords(objective, loss_fn):
    """A step binds ``objective.as_kwargs()`` to its family's generator loss: a weight added to one and not the
    other must fail here, not as a TypeError inside a trace. The defaults are the official ones, a run config fills
    every field, and an unknown objective is refused when the objective is made."""
    import inspect

    from ugatit_jax.config import base_config
    from ugatit_jax.train import losses

    cls = getattr(losses, objective)
    parameters = inspect.signature(getattr(losses, loss_fn)).parameters
    settings = {name for name in parameters if name.endswith("_weight") or name == "gan_type"}  # not the images
    assert set(cls().as_kwargs()) == settings
    assert cls().adv_weight == 1.0 and cls().cycle_weight == 10.0 and cls().gan_type == "lsgan"
    config = base_config()
    config.cycle_weight, config.gan_type = 3.0, "hinge"
    assert cls.from_config(config).as_kwargs() == {**cls().as_kwargs(), "cycle_weight": 3.0, "gan_type": "hinge"}
    with pytest.raises(ValueError, match="unknown gan_type 'wgan'"):
        cls(gan_type="wgan")
