"""Ends a multi-process run that stopped making progress instead of letting it wait forever.

A collective that never completes (a peer that hangs or dies without closing its connections, a jaxlib that
deadlocks: docs/multiprocess_jax012.md) leaves every process idle in ``block_until_ready``, with no error and no
exit, and a cluster job then burns its allocation. The trainer reports each dispatched step (``dispatched``); a
thread watches its outputs become ready and shares this process's progress with the others through JAX's
coordination service. When no step has finished and none was dispatched for ``timeout`` seconds, the process
prints one line naming the step and the processes that did not answer, asks the others to do the same, and exits
with ``EXIT_STATUS``: its main thread is blocked inside XLA and cannot be interrupted.

The timeout must outlast the longest pause between steps: an evaluation, a sample strip or a checkpoint (other
processes wait for process 0's). The first step's compilation comes before the first report, so it does not
count.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time

import jax

EXIT_STATUS = 3
PREFIX = "ugatit_watchdog/"  # coordination-service keys: PREFIX + process index, and PREFIX + "stalled"
STALLED = PREFIX + "stalled"


class Watchdog:
    """``with Watchdog(timeout, ...) as dog:`` around the training loop, ``dog.dispatched(step, outputs)`` after
    each step call. Off (every method a no-op) when ``timeout`` is 0 or the run has one process.

    ``client``: the coordination-service client (``key_value_set``, ``key_value_dir_get``), None to go without;
    ``exit`` and ``stream`` are there for tests.
    """

    def __init__(
        self,
        timeout: float,
        *,
        process_index: int = 0,
        process_count: int = 1,
        client=None,
        prog: str = "train.py",
        exit=os._exit,
        stream=None,
    ):
        self.timeout = float(timeout)
        self.enabled = self.timeout > 0 and process_count > 1
        self.process_index, self.process_count = process_index, process_count
        self.client, self.prog, self._exit = client, prog, exit
        self._stream = stream
        self.poll = max(0.02, min(5.0, self.timeout / 4))
        self._pending: collections.deque = collections.deque()  # (step, array) dispatched, not yet seen ready
        self._lock = threading.Lock()
        self._finished = self._dispatched = 0
        self._last_event: float | None = None  # None: not armed before the first dispatched step
        self._beats = 0
        self._peers: dict[int, tuple[int, int, int]] = {}  # process -> (finished, dispatched, beats)
        self._peer_changed: dict[int, float] = {}  # process -> when its beats last changed (our clock)
        self._io: threading.Thread | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_run(cls, timeout: float, prog: str = "train.py") -> Watchdog:
        """This process's watchdog, talking to the others through ``jax.distributed``'s client."""
        from jax._src import distributed

        return cls(
            timeout,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            client=getattr(distributed.global_state, "client", None),
            prog=prog,
        )

    def __enter__(self) -> Watchdog:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="ugatit-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.poll + 1)

    def dispatched(self, step: int, outputs) -> None:
        """Step ``step`` was handed to the devices; ``outputs`` (any pytree of its results) tell when it finished."""
        if not self.enabled:
            return
        leaves = [x for x in jax.tree.leaves(outputs) if hasattr(x, "is_ready")]
        with self._lock:
            self._dispatched = step
            self._last_event = time.monotonic()
            if leaves:
                self._pending.append((step, leaves[0]))
            else:
                self._finished = step

    # ------------------------------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            now = time.monotonic()
            with self._lock:
                while self._pending and self._pending[0][1].is_ready():
                    self._finished = self._pending.popleft()[0]
                    self._last_event = now
                armed, idle = self._last_event is not None, now - (self._last_event or now)
                status = (self._finished, self._dispatched)
            self._beats += 1
            stalled_elsewhere = self._exchange(*status)
            if stalled_elsewhere:
                return self._end(stalled_elsewhere)
            if armed and idle > self.timeout:
                return self._end(self.describe(), publish=True)

    def _exchange(self, finished: int, dispatched: int) -> str | None:
        """Publish this process's progress, read everyone's (at most one request in flight: a coordination service
        that stopped answering must not stop this thread). Returns another process's stall line, if any."""
        if self.client is None or (self._io is not None and self._io.is_alive()):
            return None
        result: dict = {}

        def talk():
            try:
                value = f"{finished} {dispatched} {self._beats}"
                self.client.key_value_set(f"{PREFIX}{self.process_index}", value, allow_overwrite=True)
                result["entries"] = self.client.key_value_dir_get(PREFIX)
            except Exception as error:  # noqa: BLE001 - the service may be gone with process 0; keep watching
                result["error"] = error

        self._io = threading.Thread(target=talk, name="ugatit-watchdog-io", daemon=True)
        self._io.start()
        self._io.join(self.poll)
        stalled = None
        now = time.monotonic()
        for key, value in result.get("entries", ()):
            name = key.rsplit("/", 1)[-1]
            if name == STALLED.rsplit("/", 1)[-1]:
                stalled = value
                continue
            try:
                process, (f, d, beats) = int(name), map(int, value.split())
            except ValueError:
                continue
            if self._peers.get(process, (None, None, None))[2] != beats:
                self._peer_changed[process] = now
            self._peers[process] = (f, d, beats)
        return stalled

    def describe(self) -> str:
        """The one stall line: the first step some process has not finished, and who has not finished it."""
        now = time.monotonic()
        with self._lock:
            own = (self._finished, self._dispatched)
        peers = dict(self._peers)
        peers[self.process_index] = (*own, self._beats)
        silent_after = max(3 * self.poll, 1.0)
        silent = {
            p
            for p in range(self.process_count)
            if p != self.process_index and (p not in peers or now - self._peer_changed.get(p, -1e18) > silent_after)
        }
        step = min(f for f, _, _ in peers.values()) + 1
        behind = []
        for p in range(self.process_count):
            if p in silent:
                behind.append(f"{p} (no heartbeat)")
            elif peers[p][0] < step:
                behind.append(f"{p} ({'waiting in it' if peers[p][1] >= step else 'not started'})")
        return (
            f"no progress for {self.timeout:g} s (config.stall_timeout): step {step} did not finish; "
            f"processes that did not answer: {', '.join(behind)}"
        )

    def _end(self, message: str, publish: bool = False) -> None:
        """The line first (a launcher may kill this process as soon as another one exits), then the others are told,
        then the exit."""
        sys.stdout.flush()
        stream = self._stream or sys.stderr
        stream.write(f"{self.prog}: error: {message}\n")
        stream.flush()
        if publish and self.client is not None:
            io = threading.Thread(
                target=lambda: self.client.key_value_set(STALLED, message, allow_overwrite=True), daemon=True
            )
            io.start()
            io.join(self.poll)
            if self.process_index == 0:  # it hosts the coordination service: let the others read the line first
                time.sleep(2 * self.poll)
        self._stop.set()
        self._exit(EXIT_STATUS)
