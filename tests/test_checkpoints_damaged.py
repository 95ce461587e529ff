"""A damaged latest checkpoint is moved aside (never deleted) and the run resumes from the newest intact one;
a checkpoint of another model still fails with the config message."""

import gc
import glob
import logging
import os
import sys

import chex
import jax
import numpy as np
import pytest
from tiny import random_model, run_config, tiny_config

from ugatit_jax.train import optim
from ugatit_jax.train.checkpoints import Checkpointer, CheckpointError, DamagedCheckpointError, abstract_like
from ugatit_jax.train.state import abstract_train_state, create_train_state
from ugatit_jax.training import loop

STEPS = (2, 3, 4)


def _abstract(config):
    _, abstract = abstract_train_state(config, *optim.make_optimizers(config))
    return abstract_like(abstract, jax.sharding.SingleDeviceSharding(jax.devices()[0]))


@pytest.fixture
def three_checkpoints(tmp_path):
    """Checkpoints 2, 3, 4 of a random tiny model with its step added to every parameter (restores told apart;
    random values, so the array files do not compress to nothing)."""
    config = tiny_config()
    g_tx, d_tx = optim.make_optimizers(config)
    _, state = create_train_state(random_model(config), g_tx, d_tx)
    with Checkpointer(str(tmp_path), async_save=False) as ckpt:
        for step in STEPS:
            params = jax.tree.map(lambda x, v=step: np.asarray(x) + v, state.params)
            marked = state.replace(step=np.int32(step), params=params)
            ckpt.save(step, marked, {"step": step}, config, force=True)
    return tmp_path, config, jax.device_get(state.params)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _largest_array_file(folder: str) -> str:
    files = glob.glob(os.path.join(folder, "state", "ocdbt.process_0", "d", "*"))
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["checkpoint_metadata", "array_file", "tree_metadata"])
def test_damaged_latest_is_moved_aside(three_checkpoints, damage, caplog):
    workdir, config, base = three_checkpoints
    folder = os.path.join(workdir, "checkpoints", "4")
    target = {
        "checkpoint_metadata": os.path.join(folder, "_CHECKPOINT_METADATA"),
        "array_file": _largest_array_file(folder),
        "tree_metadata": os.path.join(folder, "state", "_METADATA"),
    }[damage]
    _truncate(target)
    reports, hook = [], sys.unraisablehook
    sys.unraisablehook = reports.append  # what would print "Exception ignored in ..." tracebacks on stderr
    try:
        with caplog.at_level(logging.WARNING, logger="ugatit_jax"), Checkpointer(str(workdir)) as ckpt:
            state, data, saved_config = ckpt.restore(_abstract(config))
            assert ckpt.all_steps() == [2, 3]
        gc.collect()  # Orbax's abandoned reads of the damaged arrays are collected (and report) by now
    finally:
        sys.unraisablehook = hook
    assert not reports, [f"{r.object}: {r.exc_value!r}" for r in reports[:3]]
    assert int(state.step) == 3 and data == {"step": 3}
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(base)):
        np.testing.assert_array_equal(got, want + 3)
    moved = glob.glob(os.path.join(workdir, "checkpoints", "damaged", "4-*"))
    assert len(moved) == 1 and os.path.exists(os.path.join(moved[0], os.path.relpath(target, folder)))
    message = caplog.text
    assert "checkpoint 4 is damaged" in message and moved[0] in message
    expected = {"checkpoint_metadata": "_CHECKPOINT_METADATA", "array_file": "unreadable"}
    expected["tree_metadata"] = "state/_METADATA"
    assert expected[damage] in message, message


def test_explicit_step_and_read_only_do_not_move(three_checkpoints):
    workdir, config, _ = three_checkpoints
    _truncate(os.path.join(workdir, "checkpoints", "4", "_CHECKPOINT_METADATA"))
    with Checkpointer(str(workdir), read_only=True) as ckpt:
        with pytest.raises(DamagedCheckpointError, match="checkpoint 4 is damaged: _CHECKPOINT_METADATA"):
            ckpt.restore(_abstract(config))
        with pytest.raises(DamagedCheckpointError):
            ckpt.read_config(4)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))


def test_other_model_is_not_damage(three_checkpoints):
    """A shape mismatch keeps the config message and moves nothing."""
    workdir, _, _ = three_checkpoints
    with Checkpointer(str(workdir)) as ckpt, pytest.raises(CheckpointError, match="does not fit this run's model"):
        ckpt.restore(_abstract(tiny_config(ch=8)))
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "damaged"))


def test_all_damaged_is_an_error(three_checkpoints):
    workdir, config, _ = three_checkpoints
    for step in STEPS:
        _truncate(os.path.join(workdir, "checkpoints", str(step), "_CHECKPOINT_METADATA"))
    with Checkpointer(str(workdir)) as ckpt, pytest.raises(CheckpointError, match="no intact checkpoint"):
        ckpt.restore(_abstract(config))
    assert len(os.listdir(os.path.join(workdir, "checkpoints", "damaged"))) == 3


def test_training_resumes_past_a_damaged_checkpoint(tmp_path):
    """The reported case: a truncated _CHECKPOINT_METADATA in the latest of three checkpoints of a real run."""
    workdir = str(tmp_path / "run")
    config = run_config(checkpoint_every=1)  # both runs: one config, one compiled step
    chex.clear_trace_counter()
    loop.train_and_evaluate(config, workdir)
    _truncate(os.path.join(workdir, "checkpoints", "4", "_CHECKPOINT_METADATA"))
    chex.clear_trace_counter()
    result = loop.train_and_evaluate(config, workdir)  # resumes from 3, trains step 4 again
    assert result["step"] == 4
    assert glob.glob(os.path.join(workdir, "checkpoints", "damaged", "4-*"))
    with Checkpointer(workdir, read_only=True) as ckpt:
        assert ckpt.latest_step() == 4
        assert ckpt.damage(4) is None


def _part(config, names=("genA2B",)):
    """The params and spectral-norm vectors of ``names``: what inference reads of a checkpoint."""
    abstract = _abstract(config)
    return {"params": {n: abstract.params[n] for n in names}, "sn": {n: abstract.sn[n] for n in names}}


def test_restore_part_reads_only_the_networks_asked_for(three_checkpoints):
    workdir, config, base = three_checkpoints
    with Checkpointer(str(workdir), read_only=True) as ckpt:
        part = ckpt.restore_part(_part(config, ("genB2A", "disGA")), 3)
        assert sorted(part["params"]) == ["disGA", "genB2A"] and sorted(part["sn"]) == ["disGA", "genB2A"]
        for name in ("genB2A", "disGA"):
            for got, want in zip(jax.tree.leaves(part["params"][name]), jax.tree.leaves(base[name]), strict=True):
                np.testing.assert_array_equal(got, want + 3)
        with pytest.raises(CheckpointError, match=r"does not fit this run's model.*params/genA2B/.*saved \("):
            ckpt.restore_part(_part(tiny_config(ch=8)), 3)  # another model: the config message, with a path
    _truncate(os.path.join(workdir, "checkpoints", "4", "_CHECKPOINT_METADATA"))
    with Checkpointer(str(workdir), read_only=True) as ckpt:
        with pytest.raises(DamagedCheckpointError, match="checkpoint 4 is damaged: _CHECKPOINT_METADATA"):
            ckpt.restore_part(_part(config), 4)


def test_read_only_opening_logs_nothing(three_checkpoints, caplog):
    """Orbax's two warnings for every read-only manager are dropped (they stood before translate's and evaluate's
    one error line); the filter is gone afterwards."""
    workdir, _, _ = three_checkpoints
    before = list(logging.getLogger("absl").filters)  # another test in this process may have installed its own
    with caplog.at_level(logging.INFO), Checkpointer(str(workdir), read_only=True) as ckpt:
        assert ckpt.all_steps() == list(STEPS)
    assert not [r for r in caplog.records if r.name == "absl" and r.levelno >= logging.WARNING], caplog.text
    assert logging.getLogger("absl").filters == before
