"""The one base of every error that means "fix your input", and what every entry point reports as one line.

A bad flag or config value, a dataset that cannot be used, a checkpoint that does not fit or is damaged, a run that
diverged: each is an ``ExpectedError`` whose message names what is at fault and how to fix it. Every entry point
(``train.py``, ``python -m ugatit_jax.<command>``, the scripts and benchmarks) reports these, and the environment's
own errors (``EXPECTED``: a file that cannot be read or written, an optional package not installed), as one line
``<prog>: error: <message>`` and exit status 2, through ``cli.reported``; anything else is a bug and keeps its
traceback. Standard library only and below every other module, so any module can raise these and ``cli`` can
catch them without importing the modules that raise them.
"""

from __future__ import annotations


class ExpectedError(Exception):
    """An error whose message says what to fix: reported as one line, not a traceback. Each subclass also derives
    from the built-in error it stands for (``ValueError``, ``RuntimeError``, ...), for callers that catch those."""


class UsageError(ExpectedError, ValueError):
    """Bad command-line input; the message names the option and how to fix it."""


# What an entry point reports as one line: ours, and the environment's that name the file or package at fault.
EXPECTED: tuple[type[BaseException], ...] = (ExpectedError, OSError, ImportError)
