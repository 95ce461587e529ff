"""The persistent XLA compilation cache, shared by training, translation, evaluation and export.

A launch of the same architecture on the same machine then loads its programs instead of compiling them: the
train step, the initialisation (``ugatit_jax.xla.jit_init``), the sampler, the evaluator, export. Every program is
kept however fast it compiled: a launch runs dozens that take 0.1-1 s each, and together they were seconds of
every warm start.

One exception (``guard_cross_process_programs``): on the CPU runtime of jaxlib 0.12.1 and later, the processes of
a multi-process run hang in their first collective when one of them loaded the program from the cache and another
compiled it, which is what every warm multi-process launch does (only process 0 writes entries, and on CPU the
other processes' keys differ). So there, programs that span processes are compiled by every process and never
cached; programs of one process are cached as before (docs/multiprocess_jax012.md).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import logging
import os
import re

import jax

DEFAULT_DIR = "~/.cache/ugatit_jax/xla"  # also config.xla_cache_dir's default

# The first jaxlib whose CPU runtime hangs on a mix of cached and freshly compiled executables across processes
# (0.10.2, 0.11.0, 0.11.2 and 0.12.0 run the mix; 0.12.1 hangs). No release is known to fix it yet.
MIXED_EXECUTABLES_HANG_FROM = (0, 12, 1)

log = logging.getLogger("ugatit_jax")


def enable_compilation_cache(cache_dir: str = DEFAULT_DIR, *, keep_existing: bool = False) -> None:
    """Use ``cache_dir`` ("" = off) for every later compile. ``keep_existing``: leave a cache the caller (or
    ``JAX_COMPILATION_CACHE_DIR``) already chose in place. An unwritable folder only costs the speed-up.

    Also installs ``guard_cross_process_programs`` (whichever folder is used), so call it before the first compile
    of a multi-process program. Where that guard is needed but cannot be installed, a multi-process run on CPU
    gets no cache at all from here."""
    guarded = guard_cross_process_programs()
    if not cache_dir or (keep_existing and jax.config.jax_compilation_cache_dir):
        return
    if not guarded and jax.process_count() > 1 and jax.default_backend() == "cpu":
        log.warning("persistent compilation cache off: this jaxlib would hang a warm multi-process start on CPU")
        return
    path = os.path.abspath(os.path.expanduser(cache_dir))
    with contextlib.suppress(OSError):
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def jaxlib_version() -> tuple[int, ...]:
    version = importlib.metadata.version("jaxlib")
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def mixed_executables_hang(version: tuple[int, ...] | None = None) -> bool:
    """Whether this jaxlib (or ``version``) hangs when processes mix cached and freshly compiled executables."""
    return (jaxlib_version() if version is None else version) >= MIXED_EXECUTABLES_HANG_FROM


def guard_cross_process_programs() -> bool:
    """On an affected jaxlib, keep CPU programs whose devices span processes out of the persistent cache.

    Every process of a run then compiles them, as on a cold start, which is the case that works; the processes
    would have waited for the slowest compile anyway (only process 0 ever finds an entry on CPU, and the train step
    meets at a barrier after compiling). JAX has no option for one class of programs, so this wraps its
    (private) cache-key function, which answers None (JAX's own "not cached") for those programs. Idempotent;
    returns False when the guard is needed but JAX's internals have moved (the caller then turns the cache off).
    """
    if not mixed_executables_hang():
        return True
    try:
        from jax._src import compiler
    except ImportError:
        return False
    original = getattr(compiler, "_get_cache_key", None)
    if getattr(original, "skips_cross_process_cpu", False):
        return True
    try:
        signature = inspect.signature(original)
    except (TypeError, ValueError):
        return False
    if not {"backend", "devices"} <= set(signature.parameters):
        return False

    @functools.wraps(original)
    def cache_key(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        backend, devices = bound.arguments["backend"], bound.arguments["devices"]
        if getattr(backend, "platform", "") == "cpu" and len({d.process_index for d in devices.flat}) > 1:
            return None
        return original(*args, **kwargs)

    cache_key.skips_cross_process_cpu = True
    compiler._get_cache_key = cache_key
    return True
