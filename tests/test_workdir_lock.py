"""The workdir lock (ugatit_jax/train/workdir_lock.py) on its own: refused while its holder lives, taken over (with
a warning) once the holder is gone, released only by its holder. train.py's use of it is in test_train_cli.py and
test_multiprocess.py."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from ugatit_jax import run_dir
from ugatit_jax.train import workdir_lock
from ugatit_jax.train.workdir_lock import WorkdirLock, WorkdirLockedError


def _plant(workdir, age_s=0.0, **fields):
    """A lock file as another run would have left it, written ``age_s`` seconds ago."""
    then = time.time() - age_s
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2024-01-02 03:04:05 +0000"}
    record.update(heartbeat=then, token="theirs", **fields)
    path = workdir / run_dir.LOCK
    path.write_text(json.dumps(record))
    os.utime(path, (then, then))
    return record


def _holder(workdir) -> dict:
    return json.loads((workdir / run_dir.LOCK).read_text())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_lock_is_refused_until_the_first_is_released(tmp_path):
    first = WorkdirLock(str(tmp_path))
    first.acquire()
    record = _holder(tmp_path)
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(WorkdirLockedError) as info:
        WorkdirLock(str(tmp_path)).acquire()
    message = str(info.value)
    assert f"--workdir={tmp_path} is in use by another training run" in message
    assert f"host {socket.gethostname()}, pid {os.getpid()}, started {record['started']}" in message
    assert _holder(tmp_path) == record, "a refused lock must leave the holder's file as it was"
    first.release()
    assert not (tmp_path / run_dir.LOCK).exists()
    with WorkdirLock(str(tmp_path)):
        assert _holder(tmp_path)["token"] != record["token"]


def test_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = _dead_pid()
    _plant(tmp_path, pid=pid)
    with caplog.at_level(logging.WARNING, logger="ugatit_jax"), WorkdirLock(str(tmp_path)):
        assert _holder(tmp_path)["pid"] == os.getpid()
    assert f"pid {pid} is no longer running on this host" in caplog.text
    assert f"host {socket.gethostname()}, pid {pid}, started 2024-01-02" in caplog.text


def test_lock_of_a_reused_pid_is_taken_over(tmp_path, caplog):
    """The pid runs, but it is another process than the one that took the lock (its start time differs)."""
    start = workdir_lock._process_start(os.getppid())
    if start is None:
        pytest.skip("no /proc/<pid>/stat here: process start times are unknown")
    _plant(tmp_path, pid=os.getppid(), process_start=start + 1)
    with caplog.at_level(logging.WARNING, logger="ugatit_jax"), WorkdirLock(str(tmp_path)):
        pass
    assert "is another process now" in caplog.text
    _plant(tmp_path, pid=os.getppid(), process_start=start)  # the same process: alive
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getppid()}"):
        WorkdirLock(str(tmp_path)).acquire()


def test_other_host_lock_expires_with_its_heartbeat(tmp_path, caplog):
    _plant(tmp_path, host="elsewhere", pid=1, age_s=30)
    with pytest.raises(WorkdirLockedError) as info:
        WorkdirLock(str(tmp_path), expiry_s=600).acquire()
    assert "host elsewhere, pid 1" in str(info.value) and re.search(r"last heartbeat 3\d s ago", str(info.value))
    assert "if host elsewhere is down, its lock expires at" in str(info.value)

    _plant(tmp_path, host="elsewhere", pid=1, age_s=601)
    with caplog.at_level(logging.WARNING, logger="ugatit_jax"), WorkdirLock(str(tmp_path), expiry_s=600):
        assert _holder(tmp_path)["host"] == socket.gethostname()
    assert "taking over the lock" in caplog.text and "its last heartbeat was 10 min ago" in caplog.text


def test_unreadable_lock_is_held_until_it_expires(tmp_path):
    path = tmp_path / run_dir.LOCK
    path.write_text("{not json")
    with pytest.raises(WorkdirLockedError, match="unreadable"):
        WorkdirLock(str(tmp_path)).acquire()
    old = time.time() - 700
    os.utime(path, (old, old))
    with WorkdirLock(str(tmp_path), expiry_s=600):
        assert _holder(tmp_path)["pid"] == os.getpid()


def test_heartbeat_refreshes_and_a_lost_lock_is_left_alone(tmp_path, caplog):
    lock = WorkdirLock(str(tmp_path), heartbeat_s=0.02)
    lock.acquire()
    path = tmp_path / run_dir.LOCK
    old = time.time() - 100
    os.utime(path, (old, old))
    deadline = time.time() + 10
    while path.stat().st_mtime == old:
        assert time.time() < deadline, "the heartbeat never refreshed the lock"
        time.sleep(0.02)
    theirs = _plant(tmp_path, host="elsewhere", pid=1)  # another run took it over (this one seemed gone)
    with caplog.at_level(logging.WARNING, logger="ugatit_jax"):
        while lock.lost is None:
            assert time.time() < deadline, "the heartbeat did not notice the lock was taken"
            time.sleep(0.02)
        lock.release()
    assert "no longer this run's" in caplog.text
    assert _holder(tmp_path)["token"] == theirs["token"], "release must not remove another run's lock"


def test_hold_releases_on_errors(tmp_path):
    with pytest.raises(ZeroDivisionError), workdir_lock.hold(str(tmp_path)) as lock:
        assert lock is not None and (tmp_path / run_dir.LOCK).exists()
        1 / 0  # noqa: B018
    assert not (tmp_path / run_dir.LOCK).exists()
