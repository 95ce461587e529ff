"""Random initialisation of any NNX module as one compiled program.

Run eagerly, a module's ``__init__`` compiles one small XLA program per weight shape and initialiser (about 100
for U-GAT-IT, tens of seconds on a small CPU before the first training step), and none of them is worth an entry in
the persistent compilation cache. Traced once under ``jax.jit``, the whole initialisation is one program, compiled
at XLA's lowest backend optimisation level (it runs once, so optimising it buys nothing), and the persistent cache
turns it into a load for every later launch of the same architecture. Its Threefry draws are merged into a few
hashes (``ugatit_jax.xla.batched_draws``, same values), which cuts its compile time again. The measurements are in
``docs/speed.md``.

The values are the eager initialisation's up to float rounding: inside one program XLA fuses a uniform draw's
scale and shift, and the l2 normalisation of the spectral-norm vectors, differently; measured at most 1.4e-7 of
each tensor's scale (about 2% of the elements differ at all). Same key, same distributions
(``tests/test_networks.py`` checks both).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import TypeVar

import jax
import numpy as np
from flax import nnx

from ugatit_jax.xla.batched_draws import batch_threefry_draws
from ugatit_jax.xla.memo import remember

M = TypeVar("M", bound=nnx.Module)

COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}  # compiles about 3x faster; the program runs once


class TracedRngs:
    """What module constructors use of ``nnx.Rngs(key)`` (``rngs.params()``, ``rngs()``), for constructing under a
    trace: the same keys, ``fold_in(key, n)`` for the n-th draw, counted in Python.

    ``nnx.Rngs`` keeps its count in a Variable, and each ``count[...] += 1`` on a tracer asks it for ``.sharding``;
    JAX answers with an AttributeError whose message walks the whole trace to say where the tracer came from. For
    U-GAT-IT that was most of tracing the construction (by cProfile), paid by every initialiser and every
    abstract model (``docs/speed.md`` has the numbers). Only the ``default`` stream exists (what
    ``nnx.Rngs(key).params`` falls back to); a module that asks for anything else gets an AttributeError.
    """

    def __init__(self, key: jax.Array):
        self._key, self._count = key, 0

    def __call__(self) -> jax.Array:
        key = jax.random.fold_in(self._key, np.uint32(self._count))
        self._count += 1
        return key

    params = default = property(lambda self: self)


def abstract_module(construct: Callable[[TracedRngs], M]) -> M:
    """``construct(rngs)`` under ``nnx.eval_shape``: the module's structure with shapes and dtypes, no arrays."""
    return nnx.eval_shape(lambda: construct(TracedRngs(jax.random.key(0))))


def jit_init(construct: Callable[[nnx.Rngs], M], seed: int | jax.Array, *, cache_key: Hashable = None) -> M:
    """``construct(rngs)`` with the keys ``nnx.Rngs(seed)`` would draw (``rngs`` is a ``TracedRngs``), initialised
    by one jitted program.

    Inside another trace (``nnx.eval_shape``, ``jax.jit``) it simply calls ``construct``: that trace does the work.
    With a ``cache_key`` (one per architecture: equal keys must mean equal ``construct`` results), the traced and
    compiled initialiser is kept for the next call with that key, which then only runs it (tests and tools that
    build the same model several times in one process; the seed is an input, not part of the program).
    """
    key = seed if isinstance(seed, jax.Array) else jax.random.key(int(seed))
    if isinstance(key, jax.core.Tracer):
        return construct(TracedRngs(key))
    if cache_key is None:
        init, graphdefs = _initialiser(construct)
    else:
        init, graphdefs = remember(_INITIALISERS, cache_key, lambda: _initialiser(construct), limit=8)
    state = init(key)  # traced on its first call, which fills graphdefs
    return nnx.merge(graphdefs[-1], state)


def _initialiser(construct: Callable[[nnx.Rngs], nnx.Module]) -> tuple[Callable, list]:
    """The jitted ``key -> state`` initialiser and the list its trace appends the graph definition to.

    The graph definition (static structure, no arrays) is taken from the one trace of ``init``, so the
    construction is not traced a second time under ``nnx.eval_shape`` for it.
    """
    graphdefs = []

    def draw(key: jax.Array) -> nnx.State:
        graphdef, state = nnx.split(construct(TracedRngs(key)))
        graphdefs.append(graphdef)
        return state

    @functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)
    def init(key: jax.Array) -> nnx.State:
        return batch_threefry_draws(draw)(key)

    return init, graphdefs


_INITIALISERS: dict = {}  # cache_key -> (jitted initialiser, [its graph definition])
