"""Traced train steps kept on disk (``jax.export``), next to XLA's persistent compilation cache.

XLA's cache spares a warm start the compile, not the trace: before JAX can even look the program up it runs the
Python of the whole step (about ten thousand jaxpr equations for the tests' tiny U-GAT-IT: seconds on a CPU,
longer for the paper's model; ``docs/speed.md``). So the step is exported once, as serialized StableHLO, and a
later start with the same key loads it in milliseconds and jits a one-call wrapper around it, whose compiled
program XLA's cache holds.

The key is everything the traced program depends on: this package's source files, the versions of the libraries
that trace it, JAX's configuration, the caller's config values (``training.steps.STEP_KEYS``), the tree, shapes,
dtypes and shardings of state and batch, and the devices. Any change makes a new entry; an entry is never reused across
one. A file that cannot be read back (a partial copy) is exported again; if export itself fails (a platform
``jax.export`` does not serve), the step is traced as usual.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import pathlib
from collections.abc import Callable, Hashable

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger("ugatit_jax")

SUBDIR = "traced_steps"  # inside JAX's compilation cache folder (JAX's own clean-up only touches its own files)
_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "ml_dtypes")
# JAX settings that cannot change a traced program: where and when compiled programs are cached, and logging.
_IGNORED_SETTINGS = ("cache", "log", "explain")


@functools.cache
def _source_digest() -> str:
    """sha256 over this package's Python files (path and content): an edited file is a new key."""
    root = pathlib.Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _versions() -> dict:
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _aval(x) -> str:
    return f"{x.shape}:{x.dtype}:{x.sharding}"


def step_key(parts: Hashable, state, batch, mesh) -> str:
    """The entry's name: a hash of every input to the traced program (see the module docstring)."""
    settings = {k: repr(v) for k, v in jax.config.values.items() if not any(s in k for s in _IGNORED_SETTINGS)}
    devices = [(d.id, d.process_index, d.platform, d.device_kind) for d in mesh.devices.flat]
    described = json.dumps(
        {
            "source": _source_digest(),
            "versions": _versions(),
            "settings": settings,
            "parts": repr(parts),
            "state": [str(jax.tree.structure(state)), [_aval(x) for x in jax.tree.leaves(state)]],
            "batch": [str(jax.tree.structure(batch)), [_aval(x) for x in jax.tree.leaves(batch)]],
            "mesh": [devices, list(mesh.axis_names), list(mesh.devices.shape)],
        },
        sort_keys=True,
    )
    return hashlib.sha256(described.encode()).hexdigest()[:40]


def _export(step_fn: Callable, state, batch, mesh) -> jax.export.Exported:
    """Export ``step_fn`` over the state's leaves (a list: JAX serializes lists and dicts, not our pytree nodes)."""
    treedef = jax.tree.structure(state)

    def flat(leaves, batch):
        new_state, metrics = step_fn(jax.tree.unflatten(treedef, leaves), batch)
        return treedef.flatten_up_to(new_state), metrics

    leaves = jax.tree.leaves(state)
    shardings = [x.sharding for x in leaves]
    jitted = jax.jit(
        flat,
        in_shardings=(shardings, jax.tree.map(lambda x: x.sharding, batch)),
        out_shardings=(shardings, NamedSharding(mesh, P())),
    )
    avals = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    return jax.export.export(jitted)(avals(leaves), avals(batch))


def _load(path: str, n_args: int, mesh) -> jax.export.Exported | None:
    try:
        with open(path, "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
    except FileNotFoundError:
        return None
    except Exception as error:  # a truncated or foreign file: export again over it
        log.warning("traced step %s unreadable (%s: %s): tracing it again", path, type(error).__name__, error)
        return None
    if exported.nr_devices != mesh.size or len(exported.in_avals) != n_args:
        log.warning("traced step %s does not fit this run: tracing it again", path)
        return None
    return exported


def _write(path: str, exported: jax.export.Exported) -> bool:
    """Atomic: a process killed mid-write leaves no partial entry under the final name."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(exported.serialize())
        os.replace(tmp, path)
        return True
    except OSError as error:  # a read-only cache only costs the speed-up
        log.info("could not keep the traced step in %s: %s", path, error)
        return False


class ExportedStep:
    """``step(state, batch) -> (state, metrics)``, traced at most once per key on this machine.

    The first call (with the real state and batch: their shardings are part of the key) loads the exported step
    or exports it, then hands ``jit(wrapper)`` to ``jit_fn`` (the caller's jit: donation, shardings, trace
    guard); later calls go straight to the result.
    """

    def __init__(self, step_fn: Callable, key_parts: Hashable, mesh, jit_fn: Callable, directory: str):
        self._step_fn, self._parts, self._mesh, self._jit_fn = step_fn, key_parts, mesh, jit_fn
        self._directory = directory
        self._jitted = None
        self.loaded: bool | None = None  # after the first call: True when the step came from disk

    def _build(self, state, batch) -> Callable:
        treedef = jax.tree.structure(state)
        path = os.path.join(self._directory, f"step-{step_key(self._parts, state, batch, self._mesh)}.jaxexport")
        exported = _load(path, treedef.num_leaves + len(jax.tree.leaves(batch)), self._mesh)
        self.loaded = exported is not None
        if self.loaded:
            log.info("train step loaded from %s (not traced)", path)
        else:
            try:
                exported = _export(self._step_fn, state, batch, self._mesh)
            except Exception as error:  # noqa: BLE001 - not exportable here: trace it as usual
                log.info("train step not exportable (%s: %s); tracing it", type(error).__name__, error)
                return self._jit_fn(self._step_fn)
            if _write(path, exported):
                log.info("train step traced and kept in %s", path)

        def step(state, batch):
            leaves, metrics = exported.call(treedef.flatten_up_to(state), batch)
            return jax.tree.unflatten(treedef, leaves), metrics

        return self._jit_fn(step)

    def lower(self, state, batch):
        """The step ``__call__`` runs, lowered for ``state`` and ``batch`` (arrays or shapes with shardings)."""
        if self._jitted is None:
            self._jitted = self._build(state, batch)
        return self._jitted.lower(state, batch)

    def __call__(self, state, batch):
        if self._jitted is None:
            self._jitted = self._build(state, batch)
        return self._jitted(state, batch)
