"""A run of identical residual blocks applied as one scanned body: traced and compiled once, not once per block.

The generators of both families chain ``n_res`` blocks of one shape (U-GAT-IT: encoder and AdaILN decoder blocks,
NICE-GAN: AdaILN decoder blocks). Unrolled, the train step holds every block's forward and backward program
``n_res`` times over, and tracing plus XLA compilation grow with it. ``apply_blocks`` stacks the blocks'
parameters on a leading axis *inside* the traced function and runs one ``jax.lax.scan`` over them. The model
keeps one module (and one parameter set) per block, so the official checkpoint mapping, run checkpoints and
per-block access are unchanged; the stack is a copy of the block weights per call, and its gradient flows back
to each block's own parameters. The result equals the unrolled loop up to float rounding (XLA may fuse the loop
body differently).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _call(block: nnx.Module, x: jax.Array, *args) -> jax.Array:
    return block(x, *args)


def apply_blocks(blocks: Sequence[nnx.Module], x: jax.Array, *args, remat: bool = False) -> jax.Array:
    """``x = block(x, *args)`` for each block in order; ``remat`` recomputes each block in the backward pass
    instead of storing its activations.

    Blocks must be stateless in the call (parameters only: nothing they write survives the scan) and keep the
    shape and dtype of ``x``. One block, or blocks of different structure, run as a plain loop.
    """
    blocks = list(blocks)
    graphdef = nnx.graphdef(blocks[0]) if blocks else None
    if len(blocks) < 2 or any(nnx.graphdef(b) != graphdef for b in blocks[1:]):
        call = nnx.remat(_call) if remat else _call
        for block in blocks:
            x = call(block, x, *args)
        return x
    states = [nnx.as_pure(nnx.state(b)) for b in blocks]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)  # every leaf (n_blocks, ...)

    def body(carry: jax.Array, state) -> tuple[jax.Array, None]:
        return nnx.merge(graphdef, state)(carry, *args), None

    if remat:
        body = jax.checkpoint(body)
    x, _ = jax.lax.scan(body, x, stacked)
    return x
