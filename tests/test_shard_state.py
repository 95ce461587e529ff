"""config.shard_state: parameters and both Adam states split over 8 fake devices; equal to the replicated run,
and checkpoints move between the two layouts."""

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from tiny import random_model, run_config, tiny_config

from ugatit_jax.nn import layers
from ugatit_jax.train import optim, parallel
from ugatit_jax.train import state as train_state
from ugatit_jax.train.checkpoints import Checkpointer, abstract_like
from ugatit_jax.training import steps

STEPS = 3


def test_shard_spec():
    assert parallel.shard_spec((3, 3, 64, 128), 8) == P(None, None, None, "data")
    assert parallel.shard_spec((64, 64), 8) == P("data", None)  # a tie: the first
    assert parallel.shard_spec((7, 3), 8) == P()
    assert parallel.shard_spec((), 8) == P()
    assert parallel.shard_spec((16, 5), 1) == P()


def _setup(config, shard, mesh):
    chex.clear_trace_counter()
    config = tiny_config(**{**config.to_dict(), "shard_state": shard})
    g_tx, d_tx = optim.make_optimizers(config)
    # random_model: the construction traced once for all four set-ups (the random init's program traced each time)
    ema = train_state.ema_names(config)
    graphdefs, state = train_state.create_train_state(random_model(config), g_tx, d_tx, ema=ema)
    shardings = parallel.state_shardings(state, mesh, shard)
    # the trainer's step: the replicated one is the program of the other 8-device tests (compiled once)
    step = steps.jitted_step(config, graphdefs, g_tx, d_tx, mesh, shardings)
    return parallel.place_state(state, shardings), shardings, step


def _train(state, step, batches, mesh):
    losses = []
    for batch in batches:
        state, metrics = step(state, jax.device_put(batch, parallel.batch_sharding(mesh)))
        losses.append((float(metrics["d_loss"]), float(metrics["g_loss"])))
    return state, np.array(losses)


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    shape = (8, 32, 32, 3)
    return [{d: rng.integers(0, 256, shape, np.uint8) for d in "AB"} for _ in range(STEPS)]


@pytest.fixture(scope="module")
def runs(batches, tmp_path_factory):
    """Replicated and sharded runs of STEPS steps on 8 devices; each saves a checkpoint after step 1."""
    assert jax.device_count() == 8
    mesh = parallel.make_mesh()
    config = run_config()  # the replicated step is the in-process runs' program
    out = {}
    for shard in (False, True):
        state, shardings, step = _setup(config, shard, mesh)
        state, first = _train(state, step, batches[:1], mesh)
        directory = str(tmp_path_factory.mktemp(f"shard{shard}"))
        with Checkpointer(directory, async_save=False) as ckpt:
            ckpt.save(1, state, {}, config, force=True)
        state, rest = _train(state, step, batches[1:], mesh)
        out[shard] = dict(state=state, losses=np.concatenate([first, rest]), dir=directory, step=step)
    out["mesh"], out["config"] = mesh, config
    return out


def _assert_close(state_a, losses_a, state_b, losses_b, config):
    """tests/test_train_step.py::test_eight_devices_match_one's tolerance."""
    np.testing.assert_allclose(losses_a, losses_b, rtol=1e-5)
    a_params, b_params = jax.device_get(state_a.params), jax.device_get(state_b.params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(a_params), jax.tree.leaves(b_params)):
        tol = 1e-4 * float(np.max(np.abs(b))) + 1e-3 * config.lr * STEPS
        assert float(np.max(np.abs(a - b))) <= tol, jax.tree_util.keystr(path)


def test_sharded_matches_replicated(runs):
    rep, sh = runs[False], runs[True]
    _assert_close(sh["state"], sh["losses"], rep["state"], rep["losses"], runs["config"])
    # The layout really is split: the largest kernel holds 1/8 of its elements per device, and it stays so.
    leaves = jax.tree.leaves(sh["state"].params) + jax.tree.leaves(sh["state"].g_opt)
    big = max(leaves, key=lambda x: x.size)
    assert big.addressable_shards[0].data.size * 8 == big.size
    assert not big.sharding.is_fully_replicated
    for leaf in jax.tree.leaves(sh["state"].sn):
        assert leaf.sharding.is_fully_replicated
    total = sum(x.size for x in leaves)
    per_device = sum(x.addressable_shards[0].data.size for x in leaves)
    print(f"tiny model: state elements per device {per_device} of {total} ({per_device / total:.1%})")


@pytest.mark.parametrize("saved_sharded", [False, True])
def test_checkpoint_moves_between_layouts(runs, batches, saved_sharded):
    """Restore the other layout's step-1 checkpoint, continue: equal to the run that never stopped."""
    mesh, config = runs["mesh"], runs["config"]
    source, target = runs[saved_sharded], runs[not saved_sharded]
    state, shardings, _ = _setup(config, not saved_sharded, mesh)
    with Checkpointer(source["dir"], read_only=True) as ckpt:
        state, _, _ = ckpt.restore(abstract_like(state, shardings), 1)
    assert jax.tree.leaves(state.params)[0].sharding == jax.tree.leaves(shardings.params)[0]
    chex.clear_trace_counter()
    state, losses = _train(state, target["step"], batches[1:], mesh)
    _assert_close(state, losses, source["state"], source["losses"][1:], config)


def test_wide_layer_runs_where_its_kernel_lies():
    """The full model's MLP layer reads the whole feature map (4194304 x 256 weights at 512 px). With its kernel
    split along the input features, the sharded step (``parallel.split_wide_layers``) moves the layer's input
    there instead of gathering the kernel on every device: same values and gradients, no whole kernel anywhere."""
    from flax import nnx

    mesh = parallel.make_mesh()
    graphdef, params = nnx.split(nnx.Linear(1024, 16, use_bias=False, rngs=nnx.Rngs(0)))
    split = jax.sharding.NamedSharding(mesh, parallel.shard_spec((1024, 16), 8))
    params = jax.device_put(params, split)  # (128, 16) per device
    h = jax.device_put(np.random.default_rng(0).standard_normal((16, 1024), np.float32), parallel.batch_sharding(mesh))

    def loss(params, h):
        return jnp.sum(jnp.tanh(layers.wide_layer(nnx.merge(graphdef, params), h)) ** 2)

    def run(layout):
        step = jax.jit(jax.value_and_grad(loss), out_shardings=(parallel.replicated(mesh), split))
        with layout:
            compiled = step.lower(params, h).compile()
        return compiled(params, h), compiled.as_text()

    (value, grads), plain = run(contextlib.nullcontext())
    (split_value, split_grads), text = run(parallel.split_wide_layers(mesh))
    np.testing.assert_allclose(split_value, value, rtol=1e-6)
    np.testing.assert_allclose(split_grads["kernel"], grads["kernel"], rtol=1e-5, atol=1e-5)  # summation order
    assert any("all-gather" in line and "f32[1024,16]" in line for line in plain.splitlines())  # what it replaces
    assert not [line for line in text.splitlines() if "f32[1024,16]" in line], "a whole kernel on one device"
