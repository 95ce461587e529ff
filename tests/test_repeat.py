"""``apply_repeated``: the scanned residual blocks compute what the plain loop computes (values, gradients, with
and without remat), write back state the blocks change, and leave blocks of different shapes unscanned."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ugatit_jax.models.ugatit import ResnetAdaILNBlock
from ugatit_jax.nn.repeat import apply_repeated


def loop(blocks, x, *args):
    for block in blocks:
        x = block(x, *args)
    return x


def blocks_and_input(n=3, dim=4, seed=0):
    rngs = nnx.Rngs(seed)
    blocks = nnx.List([ResnetAdaILNBlock(dim, rngs=rngs) for _ in range(n)])
    for i, block in enumerate(blocks):  # rho differs per block, so a block applied twice would show
        block.norm1.rho[...] = jnp.full_like(block.norm1.rho[...], 0.2 + 0.3 * i)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, dim)), jnp.float32)
    gamma, beta = (jnp.asarray(rng.standard_normal((2, dim)), jnp.float32) for _ in range(2))
    return blocks, x, gamma, beta


def loss_and_grads(apply, blocks, x, gamma, beta):
    graphdef, params = nnx.split(blocks)

    def loss(params, x):
        return jnp.sum(apply(nnx.merge(graphdef, params), x, gamma, beta) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)


def test_scan_equals_the_loop_with_gradients_and_remat():
    blocks, x, gamma, beta = blocks_and_input()
    (want, (want_gp, want_gx)) = loss_and_grads(loop, blocks, x, gamma, beta)
    for remat in (False, True):
        scanned = functools.partial(apply_repeated, remat=remat)
        got, (gp, gx) = loss_and_grads(scanned, blocks, x, gamma, beta)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        for g, w in zip(jax.tree.leaves((gx, gp)), jax.tree.leaves((want_gx, want_gp)), strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max())  # 1e-5 of the tensor's scale
    assert scans(blocks, x, gamma, beta)  # one block's convolutions in the program whatever the number of blocks


def scans(blocks, x, *args) -> bool:
    graphdef, state = nnx.split(blocks)
    jaxpr = jax.make_jaxpr(lambda state, x: apply_repeated(nnx.merge(graphdef, state), x, *args))(state, x)
    return "scan" in str(jaxpr)


class Counting(nnx.Module):
    """A block that writes state while it runs, as a power iteration does."""

    def __init__(self, scale):
        self.scale = nnx.Param(jnp.asarray(scale, jnp.float32))
        self.calls = nnx.Variable(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        self.calls[...] += 1
        return x * self.scale[...]


def test_state_the_blocks_write_is_kept():
    blocks = nnx.List([Counting(s) for s in (2.0, 3.0, 5.0)])
    assert scans(blocks, jnp.ones(2))
    y = nnx.jit(apply_repeated)(blocks, jnp.ones(2))
    np.testing.assert_array_equal(y, [30.0, 30.0])
    assert [int(b.calls[...]) for b in blocks] == [1, 1, 1]


def test_blocks_of_different_shapes_run_in_order_unscanned():
    blocks = nnx.List([Counting(2.0), Counting([3.0, 7.0])])  # a scalar and a (2,) scale
    x = jnp.ones(2)
    assert not scans(blocks, x)
    np.testing.assert_array_equal(nnx.jit(apply_repeated)(blocks, x), [6.0, 14.0])
    assert [int(b.calls[...]) for b in blocks] == [1, 1]
