"""The generator EMA (``config.ema_decay``): its update rule, its absence when off, checkpoints and loading.

Resume with EMA on (SIGTERM, kill -9) is ``test_train_cli.test_interrupted_runs_resume_exactly``; 8 devices
against 1 with EMA on is ``test_train_step.test_eight_devices_match_one``.
"""

import ast
import json
import os

import jax
import numpy as np
import pytest
from tiny import RUN_EMA, random_model, run_config, tiny_config

from ugatit_jax import load
from ugatit_jax.config import ConfigError, validate
from ugatit_jax.train import optim, parallel
from ugatit_jax.train import state as train_state
from ugatit_jax.train.checkpoints import Checkpointer, CheckpointError, abstract_like
from ugatit_jax.train.updates import ema_decay_at
from ugatit_jax.training import steps

DECAY = RUN_EMA["ema_decay"]


def _batch(seed):
    rng = np.random.default_rng(seed)
    return {d: rng.integers(0, 256, (8, 32, 32, 3), np.uint8) for d in ("A", "B")}


@pytest.fixture(scope="module")
def trained():
    """(config, initial state, state after 2 steps) of the tiny model with EMA, on one device (batch 8: the
    1-device program of test_train_step.test_eight_devices_match_one)."""
    config = run_config()
    g_tx, d_tx = optim.make_optimizers(config)
    graphdefs, state = train_state.create_train_state(
        random_model(config), g_tx, d_tx, ema=train_state.ema_names(config)
    )
    initial = jax.device_get(state)
    mesh = parallel.make_mesh(jax.devices()[:1])
    state = parallel.replicate(state, mesh)
    step = steps.jitted_step(config, graphdefs, g_tx, d_tx, mesh, parallel.replicated(mesh))
    states = [initial]
    for seed in range(2):
        state, _ = step(state, jax.device_put(_batch(seed), parallel.batch_sharding(mesh)))
        states.append(jax.device_get(state))
    return config, states


def test_warm_up_then_decay():
    """min(decay, (1 + t) / (10 + t)): 0.1 at the first update, the configured decay once the ramp passes it."""
    assert float(ema_decay_at(0.999, np.int32(0))) == pytest.approx(0.1)
    assert float(ema_decay_at(0.999, np.int32(8))) == pytest.approx(0.5)
    assert float(ema_decay_at(0.999, np.int32(100_000))) == pytest.approx(0.999)
    assert float(ema_decay_at(0.0, np.int32(5))) == 0.0


def test_average_follows_the_rule(trained):
    """After each step: ema = d_t * ema + (1 - d_t) * params, for exactly the translating networks."""
    config, states = trained
    assert set(states[0].ema) == {"genA2B", "genB2A"}
    for t in (1, 2):
        d = float(ema_decay_at(DECAY, np.int32(t - 1)))
        expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, states[t - 1].ema, states[t].g_params())
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(states[t].ema), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    pairs = zip(jax.tree.leaves(states[2].ema), jax.tree.leaves(states[2].g_params()))
    moved = [float(np.max(np.abs(a - b))) for a, b in pairs]
    assert max(moved) > 0, "the average should lag the trained parameters"
    assert int(states[2].step) == 2


def test_off_means_no_average():
    """ema_decay 0 (the default): no average in the state, so the step and the checkpoints are the official ones."""
    config = tiny_config()
    assert config.ema_decay == 0 and train_state.ema_names(config) == ()
    g_tx, d_tx = optim.make_optimizers(config)
    _, state = train_state.abstract_train_state(config, g_tx, d_tx)
    assert state.ema is None
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="config.ema_decay"):
            validate(tiny_config(ema_decay=bad))


def test_checkpoints_with_and_without_the_average(trained, tmp_path):
    """With EMA the average is saved and restored bit for bit; without it the stored tree is the pre-EMA one (no
    ``ema`` entry); a checkpoint restored with the other setting fails with a message naming ema_decay."""
    config, states = trained
    g_tx, d_tx = optim.make_optimizers(config)
    rep = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    with Checkpointer(str(tmp_path / "ema"), async_save=False) as ckpt:
        ckpt.save(2, states[2], {}, config, force=True)
    _, abstract = train_state.abstract_train_state(config, g_tx, d_tx)
    with Checkpointer(str(tmp_path / "ema"), read_only=True) as ckpt:
        restored, _, _ = ckpt.restore(abstract_like(abstract, rep))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[2])):
        np.testing.assert_array_equal(a, b)
    assert set(restored.ema) == {"genA2B", "genB2A"}

    plain = tiny_config()
    _, plain_abstract = train_state.abstract_train_state(plain, g_tx, d_tx)
    with Checkpointer(str(tmp_path / "ema"), read_only=True) as ckpt:
        with pytest.raises(CheckpointError, match="add --config.ema_decay"):
            ckpt.restore(abstract_like(plain_abstract, rep))

    with Checkpointer(str(tmp_path / "plain"), async_save=False) as ckpt:
        ckpt.save(2, states[2].replace(ema=None), {}, plain, force=True)
    with open(tmp_path / "plain" / "checkpoints" / "2" / "state" / "_METADATA") as f:
        stored = json.load(f)
    top = {ast.literal_eval(k)[0] for k in stored["tree_metadata"]}  # keys like "('params', 'genA2B', ...)"
    assert top == {"step", "params", "sn", "g_opt", "d_opt"}, top
    with Checkpointer(str(tmp_path / "plain"), read_only=True) as ckpt:
        with pytest.raises(CheckpointError, match="resume with --config.ema_decay=0"):
            ckpt.restore(abstract_like(abstract, rep))


def test_load_translates_with_the_average(trained, tmp_path):
    """``load`` reads the average by default and the trained parameters with ema=False."""
    config, states = trained
    with Checkpointer(str(tmp_path), async_save=False) as ckpt:
        ckpt.save(2, states[2], {}, config, force=True)
    averaged, raw = load(str(tmp_path)), load(str(tmp_path), ema=False)
    assert averaged.name.endswith("(EMA)") and not raw.name.endswith("(EMA)")
    for name in ("genA2B", "genB2A"):
        for a, b in zip(jax.tree.leaves(averaged.state[name][0]), jax.tree.leaves(states[2].ema[name])):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(jax.tree.leaves(raw.state[name][0]), jax.tree.leaves(states[2].params[name])):
            np.testing.assert_array_equal(a, b)
    images = _batch(5)["A"][:2]
    image_avg = np.asarray(averaged.translate(images, "A2B")[0])
    image_raw = np.asarray(raw.translate(images, "A2B")[0])
    assert image_avg.shape == image_raw.shape == (2, 32, 32, 3)
    assert float(np.max(np.abs(image_avg - image_raw))) > 0
    assert os.path.isdir(tmp_path / "checkpoints")


def test_whole_model_takes_the_average_for_the_official_format(trained, tmp_path):
    """``restore_run`` (every network, for ``.pt`` export): the generators hold the average, or with ema=False the
    trained parameters; the discriminators are the trained ones either way."""
    from flax import nnx

    from ugatit_jax.loading import restore_run

    config, states = trained
    with Checkpointer(str(tmp_path), async_save=False) as ckpt:
        ckpt.save(2, states[2], {}, config, force=True)
    for ema, source in ((True, states[2].ema), (False, states[2].params)):
        _, model, step = restore_run(str(tmp_path), ema=ema)
        assert step == 2
        for name in ("genA2B", "genB2A", "disGA"):
            want = source[name] if name in source else states[2].params[name]
            got = nnx.state(getattr(model, name), nnx.Param)
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_array_equal(a, b)
