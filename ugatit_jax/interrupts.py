"""Ctrl-C and kill -9 of a ``python -m ugatit_jax.<command>``; standard library only (imported first of all).

Ctrl-C ends every command (translate, evaluate, export, report, data, launch, plan) with one line
``<prog>: interrupted`` on stderr and exit status 130, no traceback, at any moment: while the command still loads
its modules (``install_while_loading``, run by the package's ``__init__`` before it imports JAX: that takes
seconds) and while it runs (``cli.reported`` catches the ``KeyboardInterrupt``, so ``finally`` blocks clean up
first; ``end_interrupted_command`` then ends the process at once). train.py is not a ``-m`` command and keeps its
own handling (finish the step, save, exit 0; a second Ctrl-C ends it at once, through ``cli.reported`` too).

Worker processes die with their parent (``die_with_parent``), so a command killed with SIGKILL leaves none behind.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import os
import signal
import sys
import threading

STATUS = 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C
COMMANDS = ("translate", "evaluate", "export", "report", "data", "launch", "plan")
_PR_SET_PDEATHSIG = 1
_WATCH_S = 1.0
_command: str | None = None  # this process's ``python -m ugatit_jax.<command>``, recorded while it starts


def interrupted_line(prog: str) -> int:
    """Writes ``<prog>: interrupted`` to stderr; returns the exit status, 130."""
    with contextlib.suppress(Exception):  # a closed or broken stderr must not turn this into a traceback
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.stderr.flush()
    return STATUS


def command_prog() -> str | None:
    """``python -m ugatit_jax.<command>`` while that command starts (runpy still imports the package: argv[0] is
    ``-m``), else None: a library import, pytest, train.py or a spawned worker is left alone."""
    if (sys.argv or [""])[0] != "-m":
        return None
    argv = getattr(sys, "orig_argv", [])
    for i, arg in enumerate(argv[1:], 1):
        module = argv[i + 1] if arg == "-m" and i + 1 < len(argv) else arg[2:] if arg.startswith("-m") else None
        if module is not None:
            package, _, command = module.partition(".")
            return f"python -m {module}" if package == "ugatit_jax" and command in COMMANDS else None
    return None


def _exit_while_loading(prog: str):
    def handler(signum, frame):
        interrupted_line(prog)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(STATUS)  # nothing to clean up yet, and an import must not get the chance to swallow it

    handler.while_loading = True
    return handler


def install_while_loading() -> None:
    """Ctrl-C while a ``python -m ugatit_jax.<command>`` loads: one line and exit 130, not an import's traceback.

    Does nothing outside such a command's start. There it records the command (``end_interrupted_command``) and
    installs its ``sys.unraisablehook``, and, unless SIGINT is ignored (``nohup``, a background job), the
    loading handler."""
    global _command, _previous_unraisablehook
    prog = command_prog()
    if prog is None or threading.current_thread() is not threading.main_thread():
        return
    _command = prog
    _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _raise_dropped_interrupts_again
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_while_loading(prog))


def _send_ctrl_c_again() -> None:
    """Run on a thread of its own, once the main thread has left the code that dropped a Ctrl-C: SIGINT to the
    main thread (a signal, not a flag: it wakes a sleep, as Ctrl-C does)."""
    import time

    time.sleep(0.05)
    with contextlib.suppress(Exception):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def _ctrl_c_again_later() -> None:
    _thread.start_new_thread(_send_ctrl_c_again, ())  # (threading's start waits for the thread: Ctrl-C could hit that)


_previous_unraisablehook = sys.unraisablehook


def _raise_dropped_interrupts_again(unraisable) -> None:
    """A command's ``sys.unraisablehook``: a Ctrl-C whose ``KeyboardInterrupt`` was raised where Python only reports
    an error and drops it (a garbage-collector callback such as JAX's, a ``__del__``) is sent again, to end the
    command as usual; it was lost ("Exception ignored in: <function _xla_gc_callback>" and a traceback, then the
    command ran on). Other errors go to the hook it replaced."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _ctrl_c_again_later()
        return
    _previous_unraisablehook(unraisable)


_NOT_HERE = (_raise_dropped_interrupts_again.__code__, _ctrl_c_again_later.__code__)


def _raise_keyboard_interrupt(signum, frame) -> None:
    """A running command's Ctrl-C: ``KeyboardInterrupt``, as Python's own handler, except inside the hook above
    (Python would drop it there without a word, the hook's own error unreported): sent again a moment later."""
    if frame is not None and frame.f_code in _NOT_HERE:
        _ctrl_c_again_later()
        return
    raise KeyboardInterrupt


def raise_from_now_on() -> None:
    """The command runs: Ctrl-C raises ``KeyboardInterrupt`` again, for ``finally`` blocks and ``cli.reported``."""
    with contextlib.suppress(ValueError):  # not the main thread
        if getattr(signal.getsignal(signal.SIGINT), "while_loading", False):
            signal.signal(signal.SIGINT, _raise_keyboard_interrupt)


def end_interrupted_command(status: int = STATUS) -> None:
    """In a ``python -m ugatit_jax.<command>`` process whose Ctrl-C was reported (its line written, its ``finally``
    blocks run): exit now with ``status``, past Python's own shutdown, which can end the process otherwise: when
    the signal landed in code an extension ran through ``PyRun_*``, Python ends itself by SIGINT on the way out
    (status -2, not 130; ``PyRun_SimpleString("raise KeyboardInterrupt")`` in the command does it every time), and
    tearing XLA down right after a Ctrl-C mid-compile can crash (SIGSEGV).
    Elsewhere (a library call, pytest, train.py, a thread other than the main one) it does nothing."""
    if _command is None or threading.current_thread() is not threading.main_thread():
        return
    import logging

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        logging.shutdown()
    os._exit(status)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Linux: the kernel sends ``sig`` to this process when the thread that started it ends. False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    import time

    while os.getppid() == parent_pid:
        time.sleep(_WATCH_S)
    os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """In a worker process: end as soon as ``parent_pid`` (the process that started it) is gone, even if it was
    killed with SIGKILL. Ctrl-C is left to the parent (a terminal sends it to the whole process group): the
    parent ends the workers itself. Linux: the kernel's parent-death signal; elsewhere a thread polling the
    parent pid every second."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(AttributeError, OSError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked while the parent started us
    if not set_parent_death_signal():
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="watch-parent").start()
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)


@contextlib.contextmanager
def sigint_blocked():
    """Processes started inside inherit SIGINT blocked: a Ctrl-C while they import their modules reaches only
    the parent (not lost: another thread of the parent takes it, or it waits until the block ends)."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
