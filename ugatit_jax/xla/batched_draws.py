"""Every random draw of a model's initialisation through a handful of Threefry hashes, with unchanged values.

A traced initialiser draws each weight (and each spectral-norm vector, and each NNX key it folds in) with its own
Threefry hash: a hundred-odd copies of a 20-round integer kernel that XLA compiles one by one, most of the time it
takes to compile the initialiser (as long as the tiny model's train step at XLA's lowest optimisation level).
Yet the draws hardly depend on each other: the keys come from a short
chain (fold-in, split) and the weights from the keys. This module re-runs the traced initialiser draw by draw
in dependency order ("waves"): every draw whose key is known joins one hash over all their counters, so the whole
initialisation hashes three times (NNX's fold-ins, then the splits and weights, then the spectral-norm vectors),
and compiles several times faster (``docs/speed.md``).

The values are exactly JAX's: with ``jax_threefry_partitionable`` (JAX's default since 0.5) a draw of ``shape``
from key ``(k1, k2)`` is ``threefry2x32(k1, k2, 0, i)`` for each flat index ``i`` (``random_bits``: the two output
words xor-ed; ``random_split``: the two words are the new keys), and a fold-in of ``d`` is
``threefry2x32(k1, k2, 0, d)``; one hash over the concatenated counters, each element with its own key, gives
the same words. Anything else (another PRNG implementation, the flag off, 8/16/64-bit draws, batched keys, draws
over ``MAX_BATCHED`` elements, whose counters would only cost memory) is left to JAX as traced.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.extend.random import threefry2x32_p

# Primitives that only wrap a sub-program (jax.random's functions are jitted): inlined when they hold a draw.
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call"})
_DRAWS = frozenset({"random_bits", "random_split", "random_fold_in"})
# Larger draws keep their own hash: the batched one materialises a key pair and a counter per element.
MAX_BATCHED = 1 << 20


def batch_threefry_draws(fun: Callable) -> Callable:
    """``fun`` (to be called under ``jax.jit``) with its Threefry draws merged per dependency wave; same values."""
    if not jax.config.jax_threefry_partitionable:
        return fun

    def batched(*args):
        closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
        program = _Program()
        inputs = [program.new() for _ in closed.jaxpr.invars]
        program.values.update(zip(inputs, jax.tree.leaves(args)))
        outputs = program.inline(closed, inputs)
        program.run()
        return jax.tree.unflatten(jax.tree.structure(out_shape), [program.values[v] for v in outputs])

    return batched


def _sub_jaxpr(eqn) -> jcore.ClosedJaxpr | None:
    if eqn.primitive.name not in _CALLS:
        return None
    sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if sub is None:
        return None
    return sub if isinstance(sub, jcore.ClosedJaxpr) else jcore.ClosedJaxpr(sub, ())


def _draws_inside(jaxpr: jcore.Jaxpr) -> bool:
    return any(
        eqn.primitive.name in _DRAWS or ((sub := _sub_jaxpr(eqn)) is not None and _draws_inside(sub.jaxpr))
        for eqn in jaxpr.eqns
    )


class _Program:
    """The traced function as one flat list of equations over numbered values (sub-programs holding a draw are
    inlined, so every draw sits at the top level), run wave by wave into the enclosing trace."""

    def __init__(self):
        self.equations: list[tuple] = []  # (eqn, input value ids, output value ids)
        self.values: dict[int, object] = {}  # value id -> array or tracer, once computed
        self._count = 0

    def new(self) -> int:
        self._count += 1
        return self._count

    def inline(self, closed: jcore.ClosedJaxpr, inputs: list[int]) -> list[int]:
        ids = {}
        for var, const in zip(closed.jaxpr.constvars, closed.consts):
            ids[var] = self.new()
            self.values[ids[var]] = const
        ids.update(zip(closed.jaxpr.invars, inputs))

        def value_id(atom) -> int:
            if isinstance(atom, jcore.Literal):
                i = self.new()
                self.values[i] = atom.val
                return i
            return ids[atom]

        for eqn in closed.jaxpr.eqns:
            args = [value_id(a) for a in eqn.invars]
            sub = _sub_jaxpr(eqn)
            if sub is not None and _draws_inside(sub.jaxpr):
                outs = self.inline(sub, args[len(args) - len(sub.jaxpr.invars) :])
            else:
                outs = [self.new() for _ in eqn.outvars]
                self.equations.append((eqn, args, outs))
            ids.update(zip(eqn.outvars, outs))
        return [value_id(a) for a in closed.jaxpr.outvars]

    def run(self) -> None:
        pending = self.equations
        while pending:
            waiting, draws = [], []
            for equation in pending:
                eqn, args, outs = equation
                if any(a not in self.values for a in args):
                    waiting.append(equation)  # needs a draw of this wave
                elif self._batchable(eqn, args):
                    draws.append(equation)
                else:
                    params = eqn.primitive.get_bind_params(eqn.params)
                    with eqn.ctx.manager:
                        result = eqn.primitive.bind(*(self.values[a] for a in args), **params)
                    self.values.update(zip(outs, result if eqn.primitive.multiple_results else [result]))
            if draws:
                self._hash(draws)
            elif len(waiting) == len(pending):
                raise RuntimeError("batch_threefry_draws: equations wait on values nothing computes")
            pending = waiting

    def _batchable(self, eqn, args) -> bool:
        if eqn.primitive.name not in _DRAWS:
            return False
        key = self.values[args[0]]
        if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
            return False
        if eqn.primitive.name == "random_fold_in":
            return np.shape(self.values[args[1]]) == ()
        size = math.prod(eqn.params["shape"])
        return size <= MAX_BATCHED and (eqn.primitive.name == "random_split" or eqn.params["bit_width"] == 32)

    def _hash(self, draws: list[tuple]) -> None:
        """One Threefry hash for ``draws`` (each keyed by a scalar threefry key), split back into their results."""
        impl = jax.random.key_impl(self.values[draws[0][1][0]])
        sizes, k1, k2, counters = [], [], [], []
        for eqn, args, _ in draws:
            data = jax.random.key_data(self.values[args[0]])  # (2,) uint32
            if eqn.primitive.name == "random_fold_in":
                n, counter = 1, jnp.asarray(self.values[args[1]], jnp.uint32).reshape(1)
            else:
                n = math.prod(eqn.params["shape"])
                counter = jax.lax.iota(jnp.uint32, n)  # the flat index of each element
            sizes.append(n)
            k1.append(jnp.broadcast_to(data[0], (n,)))
            k2.append(jnp.broadcast_to(data[1], (n,)))
            counters.append(counter)
        counter = jnp.concatenate(counters)  # (sum of sizes,)
        bits1, bits2 = threefry2x32_p.bind(jnp.concatenate(k1), jnp.concatenate(k2), jnp.zeros_like(counter), counter)
        start = 0
        for (eqn, _, outs), n in zip(draws, sizes):
            word1, word2 = bits1[start : start + n], bits2[start : start + n]
            start += n
            if eqn.primitive.name == "random_bits":
                self.values[outs[0]] = (word1 ^ word2).reshape(eqn.params["shape"])
            else:
                shape = () if eqn.primitive.name == "random_fold_in" else tuple(eqn.params["shape"])
                keys = jnp.stack([word1, word2], axis=-1).reshape(*shape, 2)
                self.values[outs[0]] = jax.random.wrap_key_data(keys, impl=impl)
