"""ugatit_jax.xla.batched_draws: the merged Threefry draws give JAX's own bits, to the last one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ugatit_jax.models.nice import NiceDiscriminator
from ugatit_jax.models.ugatit import Discriminator, Generator
from ugatit_jax.xla.batched_draws import MAX_BATCHED, batch_threefry_draws


def _assert_identical(fun, key):
    """``fun`` jitted as written and with its draws batched: the same leaves, bit for bit."""
    plain = jax.jit(fun)(key)
    batched = jax.jit(batch_threefry_draws(fun))(key)
    assert jax.tree.structure(plain) == jax.tree.structure(batched)
    leaves = jax.tree_util.tree_leaves_with_path(plain)
    for (path, a), b in zip(leaves, jax.tree.leaves(batched), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    return len(leaves)


@pytest.mark.parametrize(
    "construct",
    [
        lambda rngs: Discriminator(4, 3, rngs=rngs),  # conv, linear, bias draws; spectral-norm u, v from a split
        lambda rngs: Generator(4, 1, 16, light=True, rngs=rngs),
        lambda rngs: NiceDiscriminator(4, 6, rngs=rngs),
    ],
    ids=["ugatit_discriminator", "ugatit_generator", "nice_discriminator"],
)
def test_a_model_initialisation_is_unchanged(construct):
    n = _assert_identical(lambda key: nnx.state(construct(nnx.Rngs(key))), jax.random.key(7))
    assert n > 5


def test_draws_left_to_jax_are_unchanged_too():
    """Past ``MAX_BATCHED`` elements, 8-bit draws, a batch of keys, another PRNG implementation, chained draws."""

    def fun(key):
        a, b = jax.random.split(jax.random.fold_in(key, 5))
        return {
            "large": jax.random.normal(a, (MAX_BATCHED + 3,)),
            "uint8": jax.random.bits(b, (5,), jnp.uint8),
            "vmapped": jax.vmap(lambda k: jax.random.uniform(k, (2,)))(jax.random.split(b, 3)),
            "split_then_draw": jax.random.uniform(jax.random.split(a, 4)[2], (3, 2)),
            "rbg": jax.random.normal(jax.random.key(1, impl="rbg"), (4,)),
            "fold_twice": jax.random.key_data(jax.random.fold_in(jax.random.fold_in(key, 1), 2)),
        }

    assert _assert_identical(fun, jax.random.key(11)) == 6


def test_without_partitionable_threefry_the_function_is_returned_as_is():
    fun = lambda key: jax.random.normal(key, (2,))
    with jax.threefry_partitionable(False):
        assert batch_threefry_draws(fun) is fun
    assert batch_threefry_draws(fun) is not fun
