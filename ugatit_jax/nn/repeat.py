"""Apply a stack of identical blocks as one traced block: ``jax.lax.scan`` over their parameters.

Why: the generators' residual blocks (U-GAT-IT's n_res encoder and n_res AdaILN decoder blocks, NICE-GAN's n_res
AdaILN blocks) are the same program n_res times. Unrolled, XLA traces, optimises and compiles every copy, and the
generator is traced several times per step; scanned, each kind of block is compiled once whatever n_res is.

The blocks stay separate modules (``nnx.List``), so parameter names, checkpoints and the official state-dict
mapping do not change: the stack exists only inside the traced call (a copy of the blocks' weights, small next to
their activations) and the gradient flows back through it to each block. State a block writes while it runs
(anything not an ``nnx.Param``, e.g. a power-iteration vector) is carried out of the scan and written back.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _same_structure(graphdefs, states) -> bool:
    """One program for all: the same graph (static attributes included) and the same array shapes."""
    if any(g != graphdefs[0] for g in graphdefs[1:]):
        return False
    first = jax.tree.structure(states[0])
    shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(states[0])]
    return all(
        jax.tree.structure(s) == first and [(x.shape, x.dtype) for x in jax.tree.leaves(s)] == shapes
        for s in states[1:]
    )


def apply_repeated(blocks: Sequence[nnx.Module], x: jax.Array, *args, remat: bool = False) -> jax.Array:
    """``x = block(x, *args)`` for each block in order, scanned when the blocks share one structure.

    ``args`` are the same for every block (e.g. AdaILN's gamma and beta). ``remat``: recompute each block in the
    backward pass instead of keeping its activations (``jax.checkpoint`` of the scanned body).
    """
    splits = [nnx.split(block, nnx.Param, ...) for block in blocks]
    params = [nnx.as_pure(p) for _, p, _ in splits]
    rest = [nnx.as_pure(r) for _, _, r in splits]
    if len(blocks) < 2 or not _same_structure([g for g, _, _ in splits], list(zip(params, rest))):  # nothing to share
        call = nnx.remat(_call_block) if remat else _call_block
        for block in blocks:
            x = call(block, x, *args)
        return x
    graphdef = splits[0][0]

    def body(x, slices):
        block = nnx.merge(graphdef, *slices)
        y = block(x, *args)
        return y, nnx.as_pure(nnx.state(block, nnx.Not(nnx.Param)))

    if remat:
        body = jax.checkpoint(body)
    stack = lambda *leaves: jnp.stack(leaves)  # noqa: E731  (n, ...) per leaf
    x, new_rest = jax.lax.scan(body, x, (jax.tree.map(stack, *params), jax.tree.map(stack, *rest)))
    for i, block in enumerate(blocks):
        nnx.update(block, jax.tree.map(operator.itemgetter(i), new_rest))
    return x


def _call_block(block, *args):
    return block(*args)
