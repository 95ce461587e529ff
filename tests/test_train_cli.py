"""train.py end to end: bad input fails cleanly; kill -9 / SIGTERM and resume reproduce an uninterrupted run; a
workdir in use is refused; a full disk ends the run with one line and the run resumes from its last checkpoint."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from tiny import run_config, subprocess_xla_flags, tiny_config, tiny_flags

from ugatit_jax.loading import restore_run
from ugatit_jax.train import parallel, trainer
from ugatit_jax.train import state as train_state
from ugatit_jax.train.checkpoints import Checkpointer, abstract_like

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
    return train_state.abstract_train_state(config, *trainer.make_optimizers(config))[1]


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
RUN_FLAGS = dict(iterations=ITERATIONS, checkpoint_every=5, log_every=5, ema_decay=0.9)


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
    stopped_at, _, _ = _final_state(broken, ema_decay=0.9)
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

    step_ref, state_ref, data_ref = _final_state(tmp_path / "ref", ema_decay=0.9)
    step_b, state_b, data_b = _final_state(broken, ema_decay=0.9)
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
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["step"] == 4 and jax.device_count() == 8
    proc = _train(workdir, *tiny_flags(batch_size=8, iterations=6, checkpoint_every=2), devices=1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "resumed from" in err and "at step 4" in err
    step, state, _ = _final_state(workdir)
    assert step == 6 and int(state.step) == 6
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))
    assert parallel.DATA_AXIS == "data"


def test_init_from_official_checkpoint(tmp_path):
    """--config.init_checkpoint starts from an official-format .pt: after one step every weight is within lr of it.

    (The run is the in-process runs' 4 steps, one compiled program for all of them; its step-1 checkpoint is kept.)"""
    from ugatit_jax.interop import torch_import

    config = run_config(checkpoint_every=1, keep_checkpoints=4)
    source_model = trainer.build_model(config, seed=123)  # a different init than the run's own seed 0
    pt = tmp_path / "official.pt"
    torch_import.save_official_checkpoint(source_model, pt)
    config.init_checkpoint = str(pt)
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
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
    trainer.train_and_evaluate(config, str(workdir))
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
        trainer.DivergedError, match=r"training diverged at step 3: non-finite .*g_loss.*parameters"
    ) as info:
        trainer.train_and_evaluate(config, str(workdir))
    assert "last checkpoint (step 2) is kept" in str(info.value)
    step, state, _ = _final_state(workdir)
    assert step == 2 and int(state.step) == 2
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


# ---------------------------------------------------------------------------------------------------------- faults
def test_second_run_on_a_workdir_in_use_is_refused(tmp_path):
    """A second train.py on a workdir in use (a SLURM requeue while the old job runs) stops at start with one line
    naming the holder, and the first run continues untouched. (It used to train on, and both died with
    FileNotFoundError from each other's Orbax files.) The first is paused (SIGSTOP) once it has saved a
    checkpoint, so it is surely running while the second tries."""
    workdir = tmp_path / "run"
    flags = tiny_flags(iterations=6, checkpoint_every=2)
    first = _train(workdir, *flags)
    _wait_for_checkpoint(workdir, first)
    first.send_signal(signal.SIGSTOP)
    try:
        holder = json.loads((workdir / ".lock").read_text())
        line = _fails_cleanly(workdir, *flags, expect=f"--workdir={workdir} is in use by another training run")
        assert f"host {holder['host']}, pid {first.pid}, started {holder['started']}" in line, line
        assert json.loads((workdir / ".lock").read_text()) == holder
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert _final_state(workdir)[0] == 6
    assert not (workdir / ".lock").exists(), "the lock outlived its run"


# Runs train.py with Orbax's metadata writer failing with ENOSPC inside the save of step $FAIL_STEP: the save's
# asynchronous part fails, as on a full disk.
ENOSPC_TRAIN = """
import errno, os, runpy, sys
sys.path.insert(0, os.getcwd())
from orbax.checkpoint._src.path import async_path
real, step = async_path.write_text, os.environ["FAIL_STEP"]
async def write_text(path, text):
    if f"/{step}.orbax-checkpoint-tmp/" in str(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return await real(path, text)
async_path.write_text = write_text
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def _full_disk_line(proc) -> tuple[str, int]:
    """The run's last stderr line (which must say why, how much is free and where it resumes) and that step."""
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, (out[-2000:], err[-3000:])
    for noise in ("Traceback", "sys.meta_path is None", "Exception ignored", "Event loop is closed"):
        assert noise not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], lines[-5:]
    line = lines[-1]
    assert line.startswith("train.py: error: could not write ") and "No space left on device (ENOSPC)" in line, line
    assert re.search(r"; [0-9.]+ (bytes|KiB|MiB|GiB|TiB) free there;", line), line
    last = re.search(r"the last complete checkpoint is step (\d+) \((.*?)\)", line)
    assert last, line
    return line, int(last[1])


def test_full_disk_ends_with_one_line_and_resumes(tmp_path):
    """The last save (step 4) fails asynchronously with ENOSPC: one line naming the error, the free space and the
    last complete checkpoint, exit 2, no traceback (there were hundreds, ending in "sys.meta_path is None"). A
    re-run resumes from step 2, never from the incomplete save."""
    workdir = tmp_path / "run"
    flags = tiny_flags(iterations=4, checkpoint_every=2)
    script = tmp_path / "enospc_train.py"
    script.write_text(ENOSPC_TRAIN)
    proc = _train(workdir, *flags, script=script, env=_env() | {"FAIL_STEP": "4"})
    line, last = _full_disk_line(proc)
    assert line.startswith("train.py: error: could not write checkpoint 4:") and last == 2, line
    assert (workdir / "checkpoints" / "4.orbax-checkpoint-tmp").is_dir()  # the incomplete save, left behind
    assert not (workdir / ".lock").exists()

    proc = _train(workdir, *flags)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "at step 2" in err
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    step, state, _ = _final_state(workdir)
    assert step == 4 and int(state.step) == 4


def test_full_disk_of_a_real_filesystem(tmp_path):
    """The same on a real 2 MiB filesystem (tmpfs, where a tiny checkpoint takes ~0.9 MiB): one line, exit 2."""
    mount = tmp_path / "small"
    mount.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no mount command here: the full-disk test on a real filesystem needs one (and root)")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        workdir = mount / "run"
        proc = _train(workdir, *tiny_flags(iterations=20, checkpoint_every=5, log_every=5))
        line, last = _full_disk_line(proc)
        assert (workdir / "checkpoints" / str(last)).is_dir()
        with Checkpointer(str(workdir), read_only=True) as ckpt:
            assert ckpt.latest_step() == last and ckpt.damage(last) is None
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_storage_error_messages(tmp_path):
    """The failed-save line from an OSError and from TensorStore's text (a ValueError naming the OS error)."""
    from ugatit_jax.train.checkpoints import SaveError, write_failure

    (tmp_path / "checkpoints" / "7").mkdir(parents=True)
    (tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp").mkdir()
    tensorstore = ValueError(
        'RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/9.orbax-checkpoint-tmp/state/d/0": Failed '
        "writing: ...: Failed to write 56534 bytes to file 7: No space left on device [os_error_code='28']"
    )
    error = write_failure(tensorstore, str(tmp_path / "checkpoints"), "checkpoint 9")
    assert isinstance(error, SaveError)
    assert str(error).startswith(
        "could not write checkpoint 9: No space left on device (ENOSPC), writing "
        "/w/checkpoints/9.orbax-checkpoint-tmp/state/d/0; "
    ), error
    assert f"the last complete checkpoint is step 7 ({tmp_path}/checkpoints/7)" in str(error)
    quota = write_failure(OSError(errno.EDQUOT, "Disk quota exceeded"), str(tmp_path / "none"), "checkpoint 2")
    assert "Disk quota exceeded (EDQUOT);" in str(quota) and "there is no complete checkpoint yet" in str(quota)
