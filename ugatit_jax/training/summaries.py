"""TensorBoard event files through tensorboardX (no TensorFlow), written by process 0 only.

tensorboardX is imported with torch hidden, and a full disk in its writer thread becomes one warning instead of
a traceback in the middle of the run's own message.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import traceback

import numpy as np

log = logging.getLogger("ugatit_jax")


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
        if self._writer:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        if self._writer:
            self._writer.add_image(tag, image, step, dataformats="HWC")

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
