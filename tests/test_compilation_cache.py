"""``ugatit_jax.xla.compilation_cache``'s guard for programs that span processes (docs/multiprocess_jax012.md), on a
stand-in of JAX's cache-key function: which programs it keeps out of the cache, and that it steps aside where JAX's
internals moved. The hang itself, and that the guard ends it, are tested by launching processes
(tests/test_multiprocess.py::test_kill_minus_9_one_process_then_warm_relaunch)."""

from types import SimpleNamespace

import numpy as np
import pytest
from jax._src import compiler

from ugatit_jax.xla import compilation_cache


def test_affected_jaxlib_versions():
    for version, hangs in (((0, 10, 2), False), ((0, 11, 2), False), ((0, 12, 0), False), ((0, 12, 1), True)):
        assert compilation_cache.mixed_executables_hang(version) is hangs, version
    assert compilation_cache.mixed_executables_hang((0, 13, 0))  # until a release is measured to run the mix


def _key(options, backend, computation, devices, override_fdo_profile=None):
    return "key"


def _devices(*process_indices):
    return np.array([SimpleNamespace(id=i, process_index=p) for i, p in enumerate(process_indices)], dtype=object)


@pytest.fixture
def affected(monkeypatch):
    monkeypatch.setattr(compilation_cache, "mixed_executables_hang", lambda version=None: True)
    monkeypatch.setattr(compiler, "_get_cache_key", _key)


def test_guard_keeps_cross_process_cpu_programs_out(affected):
    assert compilation_cache.guard_cross_process_programs()
    guarded = compiler._get_cache_key
    assert compilation_cache.guard_cross_process_programs() and compiler._get_cache_key is guarded  # idempotent
    cpu, gpu = SimpleNamespace(platform="cpu"), SimpleNamespace(platform="gpu")
    # JAX calls it with keywords (functools.partial); positional calls are read the same way.
    assert guarded(None, backend=cpu, computation=None, devices=_devices(0, 0, 1, 1)) is None
    assert guarded(None, cpu, None, _devices(0, 1)) is None
    assert guarded(None, backend=cpu, computation=None, devices=_devices(1, 1)) == "key"  # one process: cached
    assert guarded(None, backend=gpu, computation=None, devices=_devices(0, 1)) == "key"  # one key on every host


def test_guard_steps_aside_where_jax_moved(affected, monkeypatch):
    monkeypatch.setattr(compiler, "_get_cache_key", lambda options, backend, computation: "key")
    assert not compilation_cache.guard_cross_process_programs()
    monkeypatch.delattr(compiler, "_get_cache_key")
    assert not compilation_cache.guard_cross_process_programs()


def test_unaffected_jaxlib_is_left_alone(monkeypatch):
    monkeypatch.setattr(compilation_cache, "mixed_executables_hang", lambda version=None: False)
    monkeypatch.setattr(compiler, "_get_cache_key", _key)
    assert compilation_cache.guard_cross_process_programs() and compiler._get_cache_key is _key
