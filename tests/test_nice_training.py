"""NICE-GAN through the shared machinery: train.py, checkpoints, kill -9 resume, sampling, evaluation, loading."""

import os
import signal

import jax
import numpy as np
from test_train_cli import _train, _wait_for_checkpoint
from tiny import tiny_config, tiny_flags

from ugatit_jax import load
from ugatit_jax.models.family import get_family
from ugatit_jax.train import optim
from ugatit_jax.train import state as train_state
from ugatit_jax.train.checkpoints import Checkpointer, abstract_like

# n_dis 6 (the official minimum) needs 48 px: its global head halves the input n_dis - 2 times, then two 4x4 convs.
# With the EMA on: NICE-GAN averages its discriminator-encoders too (they translate), and a resume restores it.
NICE = dict(model="nice", img_size=48, n_dis=6, n_res=1, ema_decay=0.9)
ITERATIONS = 12  # the kill comes after the first checkpoint (step 4); a step takes 0.35 s here (48 px, opt level 0)
FLAGS = tiny_flags(**NICE, iterations=ITERATIONS, checkpoint_every=4, log_every=4, sample_every=ITERATIONS)


def _final_state(workdir):
    config = tiny_config(**NICE)
    g_tx, d_tx = optim.make_optimizers(config)
    _, state = train_state.abstract_train_state(config, g_tx, d_tx)  # shapes only: the restore fills them
    with Checkpointer(str(workdir), async_save=False) as ckpt:
        step = ckpt.latest_step()
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        restored, data_state, _ = ckpt.restore(abstract_like(state, sharding))
    return step, jax.device_get(restored), data_state


def test_nice_run_killed_and_resumed_equals_an_uninterrupted_one(tmp_path):
    """train.py --config.model=nice: kill -9 after a checkpoint, re-run: the same state as one straight run; the
    run's sample strips exist and ``ugatit_jax.load`` translates with its checkpoint."""
    broken = tmp_path / "broken"
    first = _train(broken, *FLAGS)
    _wait_for_checkpoint(broken, first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    # Started after the first run compiled (and cached) every program: one compilation instead of two at once.
    ref = _train(tmp_path / "ref", *FLAGS)
    second = _train(broken, *FLAGS)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    assert "resumed from" in err
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err

    step_ref, state_ref, data_ref = _final_state(tmp_path / "ref")
    step_b, state_b, data_b = _final_state(broken)
    assert step_ref == step_b == ITERATIONS and data_ref == data_b
    assert set(state_b.params) == set(state_b.ema) == {"gen2B", "gen2A", "disA", "disB"}
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state_b), jax.tree.leaves(state_ref)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))

    strips = sorted(os.listdir(tmp_path / "ref" / "samples"))
    assert strips == [f"{d}_{s}_{ITERATIONS:07d}.png" for d in ("A2B", "B2A") for s in ("test", "train")]

    model = load(str(tmp_path / "ref"))
    assert model.family is get_family("nice") and model.step == ITERATIONS
    images = np.zeros((3, 48, 48, 3), np.uint8)
    image, cam_logit, heatmap = model.translate(images, "A2B")
    assert image.shape == (3, 48, 48, 3) and cam_logit.shape == (3, 1) and heatmap.shape == (3, 12, 12, 1)
    assert np.all(np.abs(np.asarray(image)) <= 1)
