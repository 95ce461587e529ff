"""Stopping a run cleanly: SIGTERM or Ctrl-C ends it after the current step, with a checkpoint."""

from __future__ import annotations

import contextlib
import logging
import signal

log = logging.getLogger("ugatit_jax")


class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves and exits cleanly."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.received = signum
        log.warning("received %s: finishing this step, saving a checkpoint, then exiting", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
