"""The stall watchdog of multi-process runs (``ugatit_jax.train.watchdog``), in one process: each "process" is a
Watchdog of its own, all sharing one in-memory coordination service; step outputs are stand-ins whose readiness
the test sets. The real thing (launched processes, JAX's coordination service, the exit) is in
tests/test_multiprocess.py."""

from __future__ import annotations

import io
import threading
import time

import pytest

from ugatit_jax.train.watchdog import EXIT_STATUS, Watchdog

TIMEOUT = 0.4


class Service:
    """The two key-value calls the watchdog makes, as JAX's coordination client answers them."""

    def __init__(self):
        self.values: dict[str, str] = {}
        self.lock = threading.Lock()

    def key_value_set(self, key, value, allow_overwrite=False):
        with self.lock:
            assert allow_overwrite or key not in self.values
            self.values[key] = value

    def key_value_dir_get(self, prefix):
        with self.lock:
            return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class HungService(Service):
    """A coordination service that never answers (its host is gone)."""

    def key_value_dir_get(self, prefix):
        threading.Event().wait()


class Output:
    def __init__(self, ready=False):
        self.ready = ready

    def is_ready(self):
        return self.ready


class Process:
    """One process's watchdog; ``exited`` holds its exit status once it ended."""

    def __init__(self, index, count, service, timeout=TIMEOUT):
        self.exited: list[int] = []
        self.err = io.StringIO()
        self.dog = Watchdog(
            timeout, process_index=index, process_count=count, client=service, exit=self.exited.append, stream=self.err
        )

    def line(self) -> str:
        lines = self.err.getvalue().splitlines()
        assert len(lines) == 1, lines
        return lines[0]


def _wait(processes, seconds=10 * TIMEOUT + 5):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(p.exited for p in processes):
        time.sleep(0.02)


def test_off_for_one_process_or_zero_timeout():
    for timeout, count in ((TIMEOUT, 1), (0, 2)):
        p = Process(0, count, Service(), timeout)
        with p.dog:
            p.dog.dispatched(1, {"loss": Output()})
            time.sleep(3 * TIMEOUT)
        assert not p.dog.enabled and p.dog._thread is None and not p.exited and not p.err.getvalue()


def test_every_process_names_the_step_none_finished():
    """Both processes are waiting in step 3 (as in a collective that never completes): each ends with one line
    naming step 3 and both processes, exit status 3."""
    service = Service()
    procs = [Process(i, 2, service) for i in range(2)]
    for p in procs:
        p.dog.__enter__()
        for step in (1, 2):
            p.dog.dispatched(step, {"loss": Output(ready=True)})
        p.dog.dispatched(3, {"loss": Output()})
    _wait(procs)
    for p in procs:
        p.dog.__exit__(None, None, None)
        assert p.exited == [EXIT_STATUS]
        line = p.line()
        assert line.startswith("train.py: error: no progress for 0.4 s (config.stall_timeout): step 3 did not finish")
        assert line.endswith("processes that did not answer: 0 (waiting in it), 1 (waiting in it)"), line


def test_names_the_process_that_did_not_start_the_step():
    """Process 1 finished step 1 and never dispatched step 2 (stuck in its own code); process 0 waits in step 2."""
    service = Service()
    procs = [Process(i, 2, service) for i in range(2)]
    for p in procs:
        p.dog.__enter__()
        p.dog.dispatched(1, {"loss": Output(ready=True)})
    procs[0].dog.dispatched(2, {"loss": Output()})
    _wait(procs)
    for p in procs:
        p.dog.__exit__(None, None, None)
        assert p.exited == [EXIT_STATUS]
        assert "step 2 did not finish; processes that did not answer: 0 (waiting in it), 1 (not started)" in p.line()


def test_a_silent_process_and_a_hung_service():
    """Process 1 never reports (no watchdog there): named as silent. With a coordination service that hangs, the
    watchdog still ends its process on time, from its own view."""
    for service in (Service(), HungService()):
        p = Process(0, 2, service)
        with p.dog:
            p.dog.dispatched(1, {"loss": Output()})
            _wait([p])
        assert p.exited == [EXIT_STATUS]
        assert p.line().endswith(
            "step 1 did not finish; processes that did not answer: 0 (waiting in it), 1 (no heartbeat)"
        )


def test_progress_keeps_it_quiet_and_arming_waits_for_the_first_step():
    """Steps that keep finishing, and the time before the first step (compilation), never trip it."""
    service = Service()
    procs = [Process(i, 2, service) for i in range(2)]
    for p in procs:
        p.dog.__enter__()
    time.sleep(3 * TIMEOUT)  # not armed yet: no step dispatched
    outputs = [Output() for _ in range(12)]
    for step, out in enumerate(outputs, 1):
        for p in procs:
            p.dog.dispatched(step, {"loss": out})
        if step > 1:
            outputs[step - 2].ready = True
        time.sleep(TIMEOUT / 2)
    outputs[-1].ready = True
    time.sleep(TIMEOUT)  # a few polls: the last step's finish is seen and published
    for p in procs:
        p.dog.__exit__(None, None, None)
        assert not p.exited and not p.err.getvalue()
    assert service.values["ugatit_watchdog/1"].split()[:2] == ["12", "12"]


def test_a_stall_elsewhere_ends_this_process_too():
    """A process whose own steps are fine still ends, with the other's line, once another process stalled."""
    service = Service()
    service.key_value_set(
        "ugatit_watchdog/stalled", "no progress for 9 s (config.stall_timeout): step 4 did not finish"
    )
    p = Process(1, 2, service, timeout=60)
    with p.dog:
        _wait([p])
    assert p.exited == [EXIT_STATUS]
    assert p.line() == "train.py: error: no progress for 9 s (config.stall_timeout): step 4 did not finish"


@pytest.mark.parametrize("value", [-1, -0.5])
def test_config_rejects_a_negative_timeout(value):
    from ugatit_jax.config import ConfigError, base_config, validate

    c = base_config()
    c.update(dataset="synthetic", stall_timeout=value)
    with pytest.raises(ConfigError, match=r"config.stall_timeout=-.*must be >= 0 seconds \(0 = off\)"):
        validate(c)
