"""The one command-line convention of every entry point: train.py, the ``python -m ugatit_jax.<command>``
modules (translate, evaluate, report, export, data, launch), the scripts and the benchmarks.

Bad input ends with exit code 2 and one line ``<prog>: error: <message>`` on stderr, no traceback: usage mistakes
(argparse), and every ``errors.ExpectedError`` (and the environment's ``OSError`` / ``ImportError``), whose message
names the option or file and the fix; ``reported`` is the one place that turns them into that line. Anything else
is a bug and keeps its traceback. Warnings (e.g. an unreadable image that is skipped) are one ``warning:`` line
each. Ctrl-C is one line ``<prog>: interrupted`` and exit code 130, no traceback, after the command's ``finally``
blocks ran (``interrupts.py`` covers the seconds of imports before).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import NoReturn

from ugatit_jax import errors, interrupts
from ugatit_jax.errors import UsageError

__all__ = ["UsageError"]  # defined in errors.py (any layer raises it); the commands import it from here


def fail_line(prog: str, message) -> None:
    """One line on stderr: whitespace (including the newlines of nested messages) collapsed."""
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)


def warn_line(message) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


class Parser(argparse.ArgumentParser):
    """Usage mistakes get the same single ``error:`` line and exit code 2 as every other bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def doc_parser(prog: str, doc: str, description: str | None = None) -> Parser:
    """A ``Parser`` whose help is a module docstring: its first line (or ``description``) above the options, the
    rest (usage examples) below them, laid out as written."""
    return Parser(
        prog=prog,
        description=description or doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("\n", 2)[2],
    )


def parse_config_flags(flag_values, argv: list[str]) -> None:
    """Parses ``argv`` into ``flag_values``, which define ml_collections' ``config`` file flag (so ``--config FILE``
    and ``--config.key=value`` overrides), and loads the file: train.py and the benchmarks read a config one way.

    Every failure is a ``UsageError`` naming the flag and the fix; ml_collections' own messages are a bare quoted
    key (an unknown override) or a chain of nested errors (a missing or broken file).
    """
    from absl import flags

    try:
        flag_values(argv)
        if flag_values["config"].value is not None:
            flag_values["config"].value.keys()  # the file is loaded lazily: a missing or broken one fails on first use
    except OSError:
        path = None  # the last --config given (absl keeps the last); ml_collections' record stops at the failure
        for arg, value in zip(argv, [*argv[1:], None]):
            path = arg.split("=", 1)[1] if arg.startswith("--config=") else value if arg == "--config" else path
        raise UsageError(f"--config={path}: cannot load it; give a config file such as configs/emoji.py") from None
    except flags.Error as e:
        raise UsageError(str(e).splitlines()[0]) from None
    except (AttributeError, KeyError) as e:  # an override of a key the config does not have
        key = str(e).strip("\"'")
        raise UsageError(
            f"unknown config key {key!r} in a --config.* override; the keys are listed in ugatit_jax/config.py"
        ) from None


def load_config(path: str, overrides: list[str], prog: str = "config"):
    """``get_config()`` of a config file plus ``key=value`` overrides, read by ml_collections as train.py reads its
    flags (typed by the file's values, the config locked); bad input is a ``UsageError``."""
    from absl import flags
    from ml_collections import config_flags

    argv = [prog, f"--config={path}", *(f"--config.{o}" for o in overrides)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, flag_values=values, sys_argv=argv, lock_config=True)
    with warnings.catch_warnings():  # ml_collections loads the file with importlib's deprecated load_module
        warnings.simplefilter("ignore", DeprecationWarning)
        parse_config_flags(values, argv)
    return values.config


def add_run_or_pretrained(parser: argparse.ArgumentParser) -> None:
    """The model flags of ``evaluate`` and ``export`` (checked by ``check_run_or_pretrained``)."""
    parser.add_argument("--workdir", help="a train.py run folder")
    parser.add_argument("--pretrained", metavar="NAME", help="a model shipped in the package (e.g. emoji) instead")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument(
        "--no-ema", action="store_true", help="a run trained with ema_decay: its trained weights, not the average"
    )


def check_run_or_pretrained(args) -> None:
    """The model flags of ``evaluate`` and ``export``: exactly one of ``--workdir`` and ``--pretrained``, and the
    run-only flags (``--step``, ``--no-ema``) only with a run: a shipped model holds one step, averaged already."""
    if bool(args.workdir) == bool(args.pretrained):
        raise UsageError("give exactly one of --workdir RUN and --pretrained NAME")
    if args.pretrained:
        for flag, given in (("--step", args.step is not None), ("--no-ema", args.no_ema)):
            if given:
                raise UsageError(f"{flag} applies to --workdir only; a shipped model holds one step, averaged already")


def check_writable(path: str, *, folder: bool = False, name: str | None = None) -> None:
    """Fails now, not after minutes of work, when ``path`` (a file, or with ``folder`` a folder) cannot be written:
    a broken symbolic link, a file in the way, a read-only file system, no permission. Creates nothing.
    ``name`` says how the message names it (default the path)."""
    shown = name or path
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.islink(full) and not os.path.exists(full):
        raise UsageError(f"{shown}: is a broken symbolic link (to {os.readlink(full)}); remove it or give another path")
    if folder and os.path.exists(full) and not os.path.isdir(full):
        raise UsageError(f"{shown}: is a file; give a folder")
    nearest = full if folder else os.path.dirname(full)
    while not os.path.lexists(nearest):
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        raise UsageError(f"{shown}: {nearest} is not a folder")
    target = full if os.path.exists(full) and not folder else nearest
    if not os.access(target, os.W_OK) or not os.access(nearest, os.W_OK | os.X_OK):
        why = "a read-only file system" if os.statvfs(nearest).f_flag & os.ST_RDONLY else "no permission"
        raise UsageError(f"{shown}: cannot write there ({why}: {target}); choose another place")


def show_warning_line(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` replacement: one line per warning."""
    warn_line(str(message))


def reported(prog: str, run: Callable[[], int | None]) -> int:
    """Runs ``run()``, the whole of an entry point, and returns its exit status: ``run``'s own (None: 0); 2 after
    one ``<prog>: error:`` line for an expected error (``errors.EXPECTED``); 130 after one ``<prog>: interrupted``
    line for Ctrl-C, once ``run``'s ``finally`` blocks ran. Warnings are one ``warning:`` line each meanwhile."""
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning_line
            try:
                return run() or 0
            except errors.EXPECTED as error:
                fail_line(prog, error)
                return 2
    except KeyboardInterrupt:
        status = interrupts.interrupted_line(prog)
        interrupts.end_interrupted_command(status)  # a command's process ends here; a call returns
        return status


def exit_with(status: int) -> NoReturn:
    """Ends a script's process with ``status``. After an error line, nothing more is printed: a failed checkpoint
    restore leaves Orbax's abandoned array reads behind, and on the way out Python would print each one's
    traceback ("Exception ignored in: <coroutine ...>"), tensorstore's callbacks would report errors of a closed
    event loop through ``sys.excepthook``, or asyncio would log them; a failed save leaves array writes never run,
    whose coroutines warn "was never awaited" when collected at exit (``reported``'s ``catch_warnings`` has already
    dropped the filter the checkpointer set for them). The error was said once; that is enough."""
    if status == 2:
        sys.unraisablehook = lambda unraisable: None
        sys.excepthook = lambda *exc_info: None
        logging.disable(logging.CRITICAL)
        warnings.simplefilter("ignore")
    sys.exit(status)


def run_script(prog: str, main: Callable[[], int | None]) -> NoReturn:
    """Runs the ``main()`` of a script (the benchmarks, scripts/) as its whole process, under ``reported``: bad
    input is an ``errors.ExpectedError`` there as everywhere (no ``SystemExit("message")``)."""
    exit_with(reported(prog, main))


def run_cli(prog: str, parser: argparse.ArgumentParser, run, argv=None) -> int:
    """Parses ``argv`` and calls ``run(args)`` under ``reported``: bad input -> one ``error:`` line and exit code
    2, no traceback; Ctrl-C -> one ``interrupted`` line and exit code 130."""
    interrupts.raise_from_now_on()

    def parse_and_run() -> None:
        args = parser.parse_args(argv)
        from ugatit_jax.xla.compilation_cache import enable_compilation_cache

        enable_compilation_cache(keep_existing=True)  # a second translate / evaluate / export loads its programs
        run(args)

    return reported(prog, parse_and_run)


def make_main(prog: str, parser: Callable[[], argparse.ArgumentParser], run) -> Callable[..., int]:
    """The ``main(argv=None) -> exit code`` of a ``python -m ugatit_jax.<command>`` module or a script of scripts/:
    ``run_cli`` with a fresh parser per call (tests call ``main`` many times)."""

    def main(argv=None) -> int:
        return run_cli(prog, parser(), run, argv)

    return main
