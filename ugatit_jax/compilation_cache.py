"""The persistent XLA compilation cache, shared by training, translation, evaluation and export.

A launch of the same architecture on the same machine then loads its programs instead of compiling them: the
train step, the initialisation (``ugatit_jax.nn.jit_init``), the sampler, the evaluator, export. Every program is
kept however fast it compiled: a launch runs dozens that take 0.1-1 s each, and together they were seconds of
every warm start.
"""

from __future__ import annotations

import contextlib
import os

import jax

DEFAULT_DIR = "~/.cache/ugatit_jax/xla"  # also config.xla_cache_dir's default


def enable_compilation_cache(cache_dir: str = DEFAULT_DIR, *, keep_existing: bool = False) -> None:
    """Use ``cache_dir`` ("" = off) for every later compile. ``keep_existing``: leave a cache the caller (or
    ``JAX_COMPILATION_CACHE_DIR``) already chose in place. An unwritable folder only costs the speed-up."""
    if not cache_dir or (keep_existing and jax.config.jax_compilation_cache_dir):
        return
    path = os.path.abspath(os.path.expanduser(cache_dir))
    with contextlib.suppress(OSError):
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
