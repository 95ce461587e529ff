"""train.py end to end: bad input fails cleanly; kill -9 / SIGTERM and resume reproduce an uninterrupted run.
(A workdir in use and a full disk: test_train_faults.py.)"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from tiny import RUN_EMA, run_config, subprocess_xla_flags, tiny_config, tiny_flags

from ugatit_jax.loading import restore_run
from ugatit_jax.models.family import build_model
from ugatit_jax.train import optim, parallel
from ugatit_jax.train import state as train_state
from ugatit_jax.train.checkpoints import Checkpointer, abstract_like
from ugatit_jax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices=1):
    env = dict(os.environ)
    env["XLA_FLAGS"] = subprocess_xla_flags(devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _train(workdir, *flags, devices=1, script="train.py", **kw):
    cmd = [sys.executable, str(script), "--config", "configs/default.py", "--workdir", str(workdir), *flags]
    kw.setdefault("env", _env(devices))
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _fails_cleanly(workdir, *flags, devices=1, expect=""):
    proc = _train(workdir, *flags, devices=devices)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("train.py: error:") and expect in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "flags,devices,expect",
    [
        (["--config.no_such_key=1"], 1, "no_such_key"),
        (["--config.img_size=30"], 1, "config.img_size"),
        (["--config.batch_size=3"], 2, "config.batch_size"),
        (["--config.gan_type=wgan"], 1, "config.gan_type"),
        (["--config.device_memory=lots"], 1, "config.device_memory='lots': must be a memory size"),
        (["--config.dataset=folder", "--config.dataset_dir=/nonexistent/data"], 1, "/nonexistent/data"),
        (["--config", "/nonexistent/config.py"], 1, "--config=/nonexistent/config.py: cannot load it"),
    ],
)
def test_bad_config_is_one_line(tmp_path, flags, devices, expect):
    _fails_cleanly(tmp_path / "run", *tiny_flags(), *flags, devices=devices, expect=expect)


def test_unwritable_workdir_is_one_line(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    _fails_cleanly(blocked / "run", *tiny_flags(), expect="--workdir")


def _abstract_state(config):
    return train_state.abstract_train_state(config, *optim.make_optimizers(config))[1]


def _final_state(workdir, **config):
    state = _abstract_state(tiny_config(**config))
    ckpt = Checkpointer(str(workdir), async_save=False)
    step = ckpt.latest_step()
    restored, data_state, _ = ckpt.restore(abstract_like(state, jax.sharding.SingleDeviceSharding(jax.devices()[0])))
    ckpt.close()
    return step, jax.device_get(restored), data_state


def _wait_for_checkpoint(workdir, proc, timeout=300):
    folder = workdir / "checkpoints"
    start = time.time()
    while time.time() - start < timeout:
        steps = [int(p.name) for p in folder.glob("*") if p.name.isdigit()] if folder.exists() else []
        if steps:
            return max(steps)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError("no checkpoint appeared")


ITERATIONS = 30
# With the generator EMA on: its average is part of the state a resume must reproduce bit for bit.
RUN_FLAGS = dict(iterations=ITERATIONS, checkpoint_every=5, log_every=5, **RUN_EMA)


def test_interrupted_runs_resume_exactly(tmp_path):
    """SIGTERM (clean save, exit 0), then kill -9, then a plain re-run: same parameters (and generator average) as
    one uninterrupted run."""
    flags = tiny_flags(**RUN_FLAGS)
    broken = tmp_path / "broken"

    first = _train(broken, *flags)
    _wait_for_checkpoint(broken, first)
    # Started once the first run has compiled (and cached) every program: one compilation instead of two at once.
    ref = _train(tmp_path / "ref", *flags)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    stopped_at, _, _ = _final_state(broken, **RUN_EMA)
    assert 5 <= stopped_at < ITERATIONS, "the run should have stopped early on SIGTERM"

    second = _train(broken, *flags)
    seen = stopped_at
    while seen <= stopped_at:  # wait for a checkpoint newer than the SIGTERM one, then kill -9
        time.sleep(0.05)
        seen = max([int(p.name) for p in (broken / "checkpoints").glob("*") if p.name.isdigit()])
        assert second.poll() is None, second.communicate()
    second.send_signal(signal.SIGKILL)
    second.communicate(timeout=60)
    assert second.returncode == -signal.SIGKILL

    third = _train(broken, *flags)
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err
    assert "resumed from" in err
    assert f"taking over the lock {broken}/.lock of a run that is gone" in err, "kill -9 left the lock behind"
    assert f"pid {second.pid} is no longer running on this host" in err
    assert "train step loaded from" in err, "the first run kept its traced step; a resume should load it"
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err

    step_ref, state_ref, data_ref = _final_state(tmp_path / "ref", **RUN_EMA)
    step_b, state_b, data_b = _final_state(broken, **RUN_EMA)
    assert step_ref == step_b == ITERATIONS
    assert set(state_b.ema) == {"genA2B", "genB2A"}
    assert data_ref == data_b
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state_b), jax.tree.leaves(state_ref)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))

    # Resumed with a model of another shape: exit 2, the config message last and no traceback anywhere. (The
    # shapes are compared before any array is read: a restore that failed part-way left Orbax's reads running,
    # whose callbacks printed hundreds of tracebacks around the line. Only a checkpoint written by train.py
    # showed it.)
    proc = _train(tmp_path / "ref", *tiny_flags(**RUN_FLAGS, ch=8))
    out, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2 and lines, (out, err[-3000:])
    assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
    last = lines[-1]
    assert last.startswith("train.py: error: checkpoint") and "does not fit this run's model" in last, lines[-5:]
    assert "shapes only saved: (" in last, last


def test_restore_onto_another_device_count(tmp_path):
    """A run saved with 8 devices (in this process) resumes on 1 device (a fresh train.py)."""
    workdir = tmp_path / "run"
    config = run_config(checkpoint_every=2)
    result = loop.train_and_evaluate(config, str(workdir))
    assert result["step"] == 4 and jax.device_count() == 8
    proc = _train(workdir, *tiny_flags(batch_size=8, iterations=6, checkpoint_every=2, **RUN_EMA), devices=1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "resumed from" in err and "at step 4" in err
    step, state, _ = _final_state(workdir, **RUN_EMA)
    assert step == 6 and int(state.step) == 6
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))
    assert parallel.DATA_AXIS == "data"


def test_init_from_official_checkpoint(tmp_path):
    """--config.init_checkpoint starts from an official-format .pt: after one step every weight is within lr of it.

    (The run is the in-process runs' 4 steps, one compiled program for all of them; its step-1 checkpoint is kept.)"""
    from ugatit_jax.interop import torch_import

    config = run_config(checkpoint_every=1, keep_checkpoints=4)
    source_model = build_model(config, seed=123)  # a different init than the run's own seed 0
    pt = tmp_path / "official.pt"
    torch_import.save_official_checkpoint(source_model, pt)
    config.init_checkpoint = str(pt)
    loop.train_and_evaluate(config, str(tmp_path / "run"))
    _, trained, step = restore_run(str(tmp_path / "run"), step=1)
    assert step == 1
    before = torch_import.official_state_dicts(source_model)
    after = torch_import.official_state_dicts(trained)
    for name in before:
        for key, value in before[name].items():
            if key.endswith((".weight_u", ".weight_v")):
                continue  # the power iteration moved these by design
            assert np.max(np.abs(after[name][key] - value)) <= 1.01 * config.lr, f"{name}.{key}"


class _Payload:
    """A pickled object in a .pt: torch.load(weights_only=True) refuses it, and so must every entry point."""


def test_init_checkpoint_with_pickled_objects_is_one_line(tmp_path):
    import torch

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"genA2B": {"x": _Payload()}}, unsafe)
    line = _fails_cleanly(tmp_path / "run", *tiny_flags(), f"--config.init_checkpoint={unsafe}", expect=str(unsafe))
    assert "never unpickles code" in line and "weights_only" not in line, line


def test_divergence_stops_before_it_is_checkpointed(tmp_path):
    """A step that turns the parameters into NaN/inf ends the run with DivergedError (train.py: one error line)
    before that state is saved; the last good checkpoint stays the latest.

    A 4-step run is cut back to its checkpoint 2, whose parameters are scaled by 1e30: finite, so they restore,
    but the next step overflows them. Metrics are logged too rarely to notice, so the check before each save is
    what stops it. (Both runs have one config: one compiled step.)"""
    workdir = tmp_path / "run"
    config = run_config(checkpoint_every=1, log_every=1000)
    chex.clear_trace_counter()
    loop.train_and_evaluate(config, str(workdir))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with Checkpointer(str(workdir), read_only=True) as ckpt:
        state, data_state, _ = ckpt.restore(abstract_like(_abstract_state(config), sharding), 2)
    for step in (2, 3, 4):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    poisoned = state.replace(params=jax.tree.map(lambda x: x * np.float32(1e30), state.params))
    with Checkpointer(str(workdir), async_save=False) as ckpt:
        ckpt.save(2, poisoned, data_state, config, force=True)
    chex.clear_trace_counter()
    with pytest.raises(
        loop.DivergedError, match=r"training diverged at step 3: non-finite .*g_loss.*parameters"
    ) as info:
        loop.train_and_evaluate(config, str(workdir))
    assert "last checkpoint (step 2) is kept" in str(info.value)
    step, state, _ = _final_state(workdir, **RUN_EMA)
    assert step == 2 and int(state.step) == 2
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


# A tiny run (tiny_flags(iterations=4, checkpoint_every=2, ema_decay=0.9), one CPU device) written by commit f337551,
# before the trainer, the run folder's code and the package layout were redesigned: its step-2 checkpoint and the
# metrics of all four steps it trained. (The step-4 checkpoint is left out: the resume below recomputes it.)
RUN_BEFORE_REDESIGN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_before_redesign")


def test_a_run_written_before_the_redesign_loads_and_resumes(tmp_path):
    """The current code loads that run's checkpoint and resumes it from step 2: steps 3 and 4 give the losses the
    old code logged (same data order, same step)."""
    from ugatit_jax import load

    workdir = tmp_path / "old"
    shutil.copytree(RUN_BEFORE_REDESIGN, workdir)
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4]

    model = load(str(workdir))
    assert model.step == 2
    image, _, _ = model.translate(np.zeros((1, 32, 32, 3), np.uint8), "A2B")
    assert image.shape == (1, 32, 32, 3) and np.all(np.isfinite(image))

    proc = _train(workdir, *tiny_flags(iterations=4, checkpoint_every=2, ema_decay=0.9))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from" in err and "Traceback" not in err
    resumed = {m["step"]: m for m in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}
    assert sorted(resumed) == [1, 2, 3, 4], "the resume should replace the lines after its checkpoint"
    for old in logged[2:]:
        for key in ("d_loss", "g_loss"):
            np.testing.assert_allclose(resumed[old["step"]][key], old[key], rtol=1e-5, err_msg=f"step {old['step']}")
    assert _final_state(workdir, ema_decay=0.9)[0] == 4
