"""TensorBoard event files through tensorboardX (no TensorFlow), written by process 0 only.

tensorboardX is imported with torch hidden. A full disk in its writer thread becomes one warning instead of a
traceback in the middle of the run's own message, and the run's next write raises that error (the run then ends
with its one full-disk line): tensorboardX hands events to the dead thread through a bounded queue, and the
eleventh would block the run forever.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import traceback

import numpy as np

log = logging.getLogger("ugatit_jax")

STOPPED_BY = "ugatit_stopped_by"  # the attribute of a tensorboardX writer thread that holds the error that ended it


def _tensorboardx_writer_class():
    """tensorboardX's ``SummaryWriter``, imported with torch hidden unless torch is loaded already: its writer
    module imports torch, when installed, only to accept torch tensors (we log numpy), which added seconds to every
    start with the ``[torch]`` extra installed (``docs/speed.md``)."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter as writer_class
    finally:
        if hide:
            del sys.modules["torch"]
    return writer_class


class SummaryWriter:
    """TensorBoard event files (process 0 only), via tensorboardX: no TensorFlow needed."""

    def __init__(self, logdir: str, enabled: bool):
        self._writer = None
        if enabled:
            self._writer = _tensorboardx_writer_class()(logdir, flush_secs=30)
            _quiet_event_thread_errors()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():  # checked per event: a log step holds more than the queue's ten
            if self._writable():
                self._writer.add_scalar(key, value, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        if self._writable():
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def _writable(self) -> bool:
        """Whether there is a writer; raises the OSError that stopped its thread (events queued to a dead thread
        would block once its queue is full), after abandoning the writer so that closing it cannot block either."""
        if self._writer is None:
            return False
        events = [getattr(w, "event_writer", None) for w in (self._writer.all_writers or {}).values()]
        stopped_by = [getattr(getattr(e, "_worker", None), STOPPED_BY, None) for e in events]
        error = next((e for e in stopped_by if e is not None), None)
        if error is not None:
            self._writer = None
            for event_writer in events:
                _abandon_events(event_writer)
            raise error
        return True

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        file_writers = list((writer.all_writers or {}).values())
        try:
            writer.close()
        except OSError as error:  # a full disk: the run ends with its own message; this must not add tracebacks
            log.warning("TensorBoard events not all written: %s", error)
            for file_writer in file_writers:
                _abandon_events(getattr(file_writer, "event_writer", None))


def _quiet_event_thread_errors() -> None:
    """tensorboardX writes events from a thread of its own; when the disk fills there, the thread dies with a
    traceback on stderr, in the middle of the run's one error line about the full disk. This reports such an
    OSError of that thread as one warning instead; every other thread exception reaches the previous hook."""
    if getattr(threading.excepthook, "quiets_event_writer", False):
        return
    previous = threading.excepthook

    def hook(args):
        frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
        if isinstance(args.exc_value, OSError) and any("tensorboardX" in f.filename for f in frames):
            log.warning("TensorBoard's event writer stopped: %s", args.exc_value)
            setattr(args.thread, STOPPED_BY, args.exc_value)  # for the run's next write (SummaryWriter._writable)
            # An event put while this thread was failing may be waiting for room in its queue: make room.
            with contextlib.suppress(Exception):
                while True:
                    args.thread._queue.get_nowait()
            return
        previous(args)

    hook.quiets_event_writer = True
    threading.excepthook = hook


def _abandon_events(events) -> None:
    """Stop a tensorboardX event writer whose flush failed: its worker thread ends and its exit hook does nothing
    (else each prints a traceback at interpreter exit: the flush fails again, the worker reads a closed queue)."""
    if events is None or getattr(events, "_closed", True):
        return
    events._closed = True
    with contextlib.suppress(Exception):
        worker = events._worker
        if worker.is_alive():
            events._event_queue.put(worker._shutdown_signal, timeout=5)
            worker.join(timeout=5)
    with contextlib.suppress(Exception):
        events._event_queue.cancel_join_thread()
    with contextlib.suppress(Exception):
        events._ev_writer.close()
