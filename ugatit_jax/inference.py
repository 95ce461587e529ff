"""Jitted generator application shared by sampling, evaluation and the translate CLI.

Generators have no train/eval difference (no spectral norm, no batch statistics), so one compiled function
serves everywhere. Batches are padded to a fixed size so that a run compiles once, whatever the number of
images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np
from flax import nnx

from ugatit_jax.data.transforms import as_model_input, to_uint8


def make_generator_fn(graphdef: nnx.GraphDef) -> Callable:
    """``fn(params, images) -> (image float [-1, 1], cam_logit, heatmap)`` for one generator, jitted."""

    @jax.jit
    def apply(params, images):
        gen = nnx.merge(graphdef, params, nnx.State({}))
        return gen(as_model_input(images))

    return apply


def make_cycle_fn(graphdef_a2b: nnx.GraphDef, graphdef_b2a: nnx.GraphDef) -> Callable:
    """``fn(params_a2b, params_b2a, real) -> dict`` of identity / translation / cycle images and heat maps.

    Naming follows the A->B direction; call with the generators swapped for B->A.
    """

    @jax.jit
    def apply(params_a2b, params_b2a, real):
        a2b = nnx.merge(graphdef_a2b, params_a2b, nnx.State({}))
        b2a = nnx.merge(graphdef_b2a, params_b2a, nnx.State({}))
        real = as_model_input(real)
        identity, _, identity_hm = b2a(real)
        fake, _, fake_hm = a2b(real)
        cycle, _, cycle_hm = b2a(fake)
        return {
            "real": real,
            "identity": identity,
            "identity_heatmap": identity_hm,
            "fake": fake,
            "fake_heatmap": fake_hm,
            "cycle": cycle,
            "cycle_heatmap": cycle_hm,
        }

    return apply


def padded_batches(images: Iterable[np.ndarray], batch_size: int):
    """Yield (batch padded to ``batch_size`` by repeating the last image, number of real images)."""
    pending = []
    for image in images:
        pending.append(image)
        if len(pending) == batch_size:
            yield np.stack(pending), batch_size
            pending = []
    if pending:
        n = len(pending)
        pending += [pending[-1]] * (batch_size - n)
        yield np.stack(pending), n


def translate_images(fn: Callable, params, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Translate uint8 images (N, H, W, 3) in fixed-size batches -> (uint8 images, heat maps (N, h, w))."""
    outs, maps = [], []
    for batch, n in padded_batches(list(images), batch_size):
        out, _, heatmap = fn(params, batch)
        outs.append(to_uint8(np.asarray(out[:n])))
        maps.append(np.asarray(heatmap[:n, ..., 0]))
    return np.concatenate(outs), np.concatenate(maps)
