"""``nn.repeat.apply_blocks``: the scanned run of residual blocks equals the unrolled loop, values and gradients."""

import jax
import numpy as np
import pytest
from flax import nnx

from ugatit_jax.models.ugatit import ResnetAdaILNBlock, ResnetBlock
from ugatit_jax.nn.repeat import apply_blocks


def _unrolled(blocks, x, *args):
    for block in blocks:
        x = block(x, *args)
    return x


@pytest.mark.parametrize("remat", [False, True])
def test_scan_equals_the_unrolled_loop(remat):
    blocks = nnx.List([ResnetAdaILNBlock(8, rngs=nnx.Rngs(i)) for i in range(3)])
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 6, 6, 8))
    gamma, beta = jax.random.normal(keys[1], (2, 8)), 1 + jax.random.normal(keys[2], (2, 8))
    graphdef, params = nnx.split(blocks)
    params = nnx.as_pure(params)

    def loss(params, scan):
        nets = nnx.merge(graphdef, params)
        y = apply_blocks(nets, x, gamma, beta, remat=remat) if scan else _unrolled(nets, x, gamma, beta)
        return (y**2).sum(), y

    (_, want), grads_want = jax.value_and_grad(loss, has_aux=True)(params, False)
    (_, got), grads_got = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(params, True)
    scale = lambda a: np.max(np.abs(a))
    np.testing.assert_allclose(got, want, atol=1e-5 * scale(want))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads_got), jax.tree.leaves(grads_want)):
        np.testing.assert_allclose(g, w, atol=1e-5 * scale(w), err_msg=jax.tree_util.keystr(path))
    # The blocks really were scanned: one loop in the program.
    jaxpr = jax.make_jaxpr(lambda p: loss(p, True))(params)
    assert [e.primitive.name for e in jaxpr.jaxpr.eqns].count("scan") == 1


def test_one_block_or_mixed_blocks_run_as_a_loop():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 4))
    one = nnx.List([ResnetBlock(4, rngs=nnx.Rngs(0))])
    np.testing.assert_array_equal(apply_blocks(one, x), one[0](x))
    assert apply_blocks([], x) is x
    mixed = [ResnetBlock(4, rngs=nnx.Rngs(0)), ResnetBlock(4, dtype=jax.numpy.bfloat16, rngs=nnx.Rngs(1))]
    jaxpr = jax.make_jaxpr(lambda x: apply_blocks(mixed, x))(x)
    assert "scan" not in [e.primitive.name for e in jaxpr.jaxpr.eqns]
