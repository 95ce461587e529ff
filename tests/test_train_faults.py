"""train.py's faults: a second run on a workdir in use is refused while the first finishes; a full disk (injected,
and a real 2 MiB filesystem) ends the run with one line, and the run resumes from its last complete checkpoint.

Apart from test_train_cli.py (whose helpers it uses) so that pytest-xdist runs the two files side by side. Each run
keeps the generator average (``RUN_EMA``), as test_train_cli.py's do: one compiled step for the runs of both.
"""

import errno
import json
import re
import signal
import subprocess

import pytest
from test_train_cli import _env, _fails_cleanly, _final_state, _train, _wait_for_checkpoint
from tiny import RUN_EMA, tiny_flags

from ugatit_jax.train.checkpoints import Checkpointer


def test_second_run_on_a_workdir_in_use_is_refused(tmp_path):
    """A second train.py on a workdir in use (a SLURM requeue while the old job runs) stops at start with one line
    naming the holder, and the first run continues untouched. (It used to train on, and both died with
    FileNotFoundError from each other's Orbax files.) The first is paused (SIGSTOP) once it has saved a
    checkpoint, so it is surely running while the second tries."""
    workdir = tmp_path / "run"
    flags = tiny_flags(iterations=6, checkpoint_every=2, **RUN_EMA)
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
    assert _final_state(workdir, **RUN_EMA)[0] == 6
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
    flags = tiny_flags(iterations=4, checkpoint_every=2, **RUN_EMA)
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
    step, state, _ = _final_state(workdir, **RUN_EMA)
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
        proc = _train(workdir, *tiny_flags(iterations=20, checkpoint_every=5, log_every=5, **RUN_EMA))
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


def test_a_dead_tensorboard_writer_raises_instead_of_blocking(tmp_path, monkeypatch):
    """tensorboardX queues events (ten at most) for a writer thread; when a full disk kills that thread, the next
    write must raise its error (the run then ends with its full-disk line), not wait forever for room in the queue
    (a run on a full real filesystem hung so, now and then, before this)."""
    import threading

    from tensorboardX.event_file_writer import EventsWriter

    from ugatit_jax.training import summaries

    writer = summaries.SummaryWriter(str(tmp_path / "tb"), enabled=True)

    def full(self, event_str):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EventsWriter, "_write_serialized_event", full)
    raised = []

    def log_steps():
        try:
            for step in range(100):  # 20 scalars a step: far more than the queue holds
                writer.scalars(step, {f"loss_{i}": float(i) for i in range(20)})
        except OSError as error:
            raised.append(error)
        writer.close()

    worker = threading.Thread(target=log_steps, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "writing to a TensorBoard writer whose thread died blocked"
    assert len(raised) == 1 and raised[0].errno == errno.ENOSPC, raised
    # The error belonged to that writer alone: a new one (a later run in the same process) writes as usual.
    monkeypatch.undo()
    again = summaries.SummaryWriter(str(tmp_path / "tb2"), enabled=True)
    again.scalars(0, {f"loss_{i}": float(i) for i in range(20)})
    again.close()
    assert any((tmp_path / "tb2").iterdir())
