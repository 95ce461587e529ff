"""One training run per workdir: a lock file, ``workdir/.lock``, held while a run may write there.

Two runs on one workdir (a SLURM requeue while the old job still runs, a command started twice) would write
each other's checkpoints: Orbax's clean-up of the second deleted the first's save in progress, and both ended with
a FileNotFoundError from Orbax's files. Now the second stops at start with ``WorkdirLockedError`` naming the
holder (host, pid, start time), before it touches anything, and the first continues untouched.

The lock is a JSON record ``{host, pid, started, heartbeat, ...}`` created atomically (a complete temporary file
hard-linked to ``.lock``, which fails if one exists; ``O_CREAT | O_EXCL`` where the filesystem has no hard
links). A heartbeat thread touches it every ``HEARTBEAT_S`` seconds (the file's modification time is the
heartbeat from then on) and it is removed when the run ends (normally, on an error, after SIGTERM). A lock left
by a run that is gone (``kill -9``, a crashed host) is taken over with a warning:

* on the same host, when its pid is not running (or is another process now: its start time differs, or the host
  has rebooted since);
* from another host, whose processes cannot be seen from here, when its heartbeat (the record's, or the file's
  modification time, whichever is newer) is older than ``EXPIRY_S`` seconds.

A multi-process run holds one lock for all its processes: process 0 takes it and every process learns the result
through one all-gather, so a refused lock ends each of them with the same one-line error.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from ugatit_jax import run_dir
from ugatit_jax.config import ConfigError

log = logging.getLogger("ugatit_jax")

HEARTBEAT_S = 60.0  # how often the holder renews its heartbeat
EXPIRY_S = 600.0  # a lock from another host whose heartbeat is older than this is taken over


class WorkdirLockedError(ConfigError):
    """The workdir is in use by another run (or could not be locked)."""


def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    return None


def _process_start(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux), or None where unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
    return None


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def describe(record: dict) -> str:
    """``host h, pid 123, started 2025-01-02 03:04:05`` for a lock record."""
    return f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started {record.get('started', '?')}"


class WorkdirLock:
    """The lock of one workdir; ``acquire`` takes it (or raises WorkdirLockedError), ``release`` gives it back."""

    def __init__(self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S, expiry_s: float = EXPIRY_S):
        self.path = run_dir.lock_file(workdir)
        self.heartbeat_s = heartbeat_s
        self.expiry_s = expiry_s
        self.record: dict | None = None  # ours, while held
        self.lost: str | None = None  # why the heartbeat found the lock no longer ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- the lock file
    def _new_record(self) -> dict:
        now = time.time()
        pid = os.getpid()
        return {
            "host": socket.gethostname(),
            "pid": pid,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(now)),
            "started_unix": now,
            "heartbeat": now,
            "boot_id": _boot_id(),
            "process_start": _process_start(pid),
            "token": uuid.uuid4().hex,
        }

    def _temp_path(self) -> str:
        return f"{self.path}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"

    def _write_temp(self, record: dict) -> str:
        temp = self._temp_path()
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        return temp

    def _create(self, record: dict) -> bool:
        """Create the lock file holding ``record``, atomically; False if one exists."""
        temp = self._write_temp(record)
        try:
            os.link(temp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
        finally:
            with contextlib.suppress(OSError):
                os.remove(temp)
        # No hard links here: create exclusively and write in place (a reader may see it empty for a moment,
        # which counts as held until it is EXPIRY_S old).
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        return True

    def read(self) -> tuple[dict | None, float | None]:
        """(the lock's record or None if unreadable, its modification time or None if there is no lock)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            mtime = os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None, None
        try:
            record = json.loads(text)
        except ValueError:
            return None, mtime
        return (record if isinstance(record, dict) else None), mtime

    def stale_reason(self, record: dict | None, mtime: float) -> str | None:
        """Why the lock held in ``record`` belongs to a run that is gone; None while that run may be alive."""
        now = time.time()
        if record is None:
            if now - mtime > self.expiry_s:
                return f"the lock file is unreadable and was last written {_ago(now - mtime)}"
            return None
        pid = record.get("pid")
        if record.get("host") == socket.gethostname() and isinstance(pid, int):
            boot = _boot_id()
            if boot and record.get("boot_id") and boot != record["boot_id"]:
                return "this host has restarted since"
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return f"pid {pid} is no longer running on this host"
            except PermissionError:
                pass  # alive, another user's
            start = _process_start(pid)
            if start is not None and record.get("process_start") not in (None, start):
                return f"pid {pid} is another process now"
            return None
        beat = record.get("heartbeat")
        last = max(beat if isinstance(beat, (int, float)) else 0.0, mtime)
        if now - last > self.expiry_s:
            expiry = f"{self.expiry_s / 60:g} min"
            return f"its last heartbeat was {_ago(now - last)} (a lock from another host expires after {expiry})"
        return None

    def _refusal(self, record: dict | None, mtime: float) -> str:
        workdir = os.path.dirname(self.path)
        if record is None:
            written = _ago(time.time() - mtime)
            return (
                f"--workdir={workdir} is locked by {self.path}, which is unreadable (written {written}); if no run "
                "uses this workdir, delete that file"
            )
        beat = record.get("heartbeat")
        last = max(beat if isinstance(beat, (int, float)) else 0.0, mtime)
        if record.get("host") == socket.gethostname():
            hint = "wait for it to end or stop it, or use another --workdir"
        else:
            expires = time.strftime("%H:%M:%S", time.localtime(last + self.expiry_s))
            hint = (
                f"wait for it to end or stop it, or use another --workdir; if host {record.get('host')} is down, its "
                f"lock expires at {expires} ({self.expiry_s / 60:g} min after its last heartbeat)"
            )
        return (
            f"--workdir={workdir} is in use by another training run ({describe(record)}, last heartbeat "
            f"{_ago(time.time() - last)}): {hint}"
        )

    def _remove_if(self, expected: dict | None, mtime: float) -> None:
        """Remove the lock if it still is the one judged stale: renamed aside first, so that of two runs taking
        it over at once only one removes it; a lock that changed in between (another run took it) goes back."""
        aside = self._temp_path() + ".stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            with open(aside, encoding="utf-8") as f:
                text = f.read()
            try:
                current = json.loads(text)
            except ValueError:
                current = None
            if current == expected and (expected is not None or os.stat(aside).st_mtime == mtime):
                return
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)  # not the stale one: put it back
        finally:
            with contextlib.suppress(OSError):
                os.remove(aside)

    # ------------------------------------------------------------------------------------------------ the API
    def acquire(self) -> None:
        """Take the lock (over a stale one, with a warning) and start the heartbeat, or raise WorkdirLockedError."""
        record = self._new_record()
        for _ in range(20):
            try:
                if self._create(record):
                    self.record = record
                    self._start_heartbeat()
                    return
                held, mtime = self.read()
                if mtime is None:
                    continue  # removed meanwhile: try again
                reason = self.stale_reason(held, mtime)
                if reason is None:
                    raise WorkdirLockedError(self._refusal(held, mtime))
                holder = describe(held) if held else "unknown holder"
                log.warning("taking over the lock %s of a run that is gone (%s): %s", self.path, holder, reason)
                self._remove_if(held, mtime)
            except OSError as e:
                raise WorkdirLockedError(f"could not lock --workdir={os.path.dirname(self.path)}: {e}") from e
        raise WorkdirLockedError(f"could not lock --workdir={os.path.dirname(self.path)}: it kept changing hands")

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.refresh():
                return

    def refresh(self) -> bool:
        """Renew the heartbeat (the lock file's modification time) if the lock is still ours; False (and ``lost``
        set, with a warning) if not. Only the time is touched, never the content: a run that took the lock over
        between the check and the touch keeps its record (and merely looks alive a moment longer)."""
        if self.record is None:
            return False
        with contextlib.suppress(OSError):  # a network hiccup: try again next time
            held, _ = self.read()
            if held is None or held.get("token") != self.record["token"]:
                self.lost = f"taken over by {describe(held)}" if held else "removed"
                log.warning("the workdir lock %s is no longer this run's (%s)", self.path, self.lost)
                return False
            os.utime(self.path)
        return True

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.record is None:
            return
        token, self.record = self.record["token"], None
        with contextlib.suppress(OSError):
            held, _ = self.read()
            if held is not None and held.get("token") == token:
                os.remove(self.path)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold(workdir: str, **kwargs) -> Iterator[WorkdirLock | None]:
    """Hold ``workdir``'s lock for the body, for every process of the run (collective: all must enter).

    Process 0 takes the lock; the others learn through one all-gather whether it did, so a refusal raises the
    same WorkdirLockedError on every process (none waits in a collective for one that has left). Yields the lock
    on process 0, None on the others.
    """
    import jax

    from ugatit_jax.train import parallel

    lock = WorkdirLock(workdir, **kwargs) if jax.process_index() == 0 else None
    refusal = None
    if lock is not None:
        try:
            lock.acquire()
        except WorkdirLockedError as e:
            refusal = str(e)
    if jax.process_count() > 1:
        refusal = parallel.allgather_json(refusal)[0]
    if refusal is not None:
        if lock is not None:
            lock.release()
        raise WorkdirLockedError(refusal)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
