"""Jitted translation shared by sampling, evaluation, the translate CLI and export, for either model family.

A translation reads only the networks ``Family.translation_networks`` names (U-GAT-IT: one generator; NICE-GAN:
the source domain's discriminator-encoder and the target generator). They run in eval mode: spectral norm uses its
stored vectors and does not iterate, so translating never changes a model. Callers hand over ``state``, a dict
``name -> (params, spectral-norm state)`` of those networks (``translation_state``), and the direction, which is
static: one compiled program per direction and batch shape, reused for every batch (batches are padded).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import jax
import numpy as np
from flax import nnx

from ugatit_jax.directions import REVERSE
from ugatit_jax.models.family import Family
from ugatit_jax.pixels import as_model_input


def translation_state(family: Family, params: Mapping, sn: Mapping) -> dict:
    """``name -> (params, sn)`` for every network a translation in either direction reads."""
    return {n: (params[n], sn.get(n, nnx.State({}))) for n in family.translating}


def _translator(family: Family, graphdefs: Mapping[str, nnx.GraphDef]) -> Callable:
    def translate(state, x, direction):
        nets = {}
        for name in family.translation_networks[direction]:
            net = nnx.merge(graphdefs[name], *state[name])
            net.eval()  # spectral norm: stored u, v, no power iteration
            nets[name] = net
        return family.translate(nets, x, direction)

    return translate


def make_translate_fn(family: Family, graphdefs: Mapping[str, nnx.GraphDef]) -> Callable:
    """``fn(state, images, direction) -> (image float [-1, 1], cam_logit, heatmap)``, jitted; images uint8 or
    float in [-1, 1], (B, H, W, 3)."""
    translate = _translator(family, graphdefs)

    @functools.partial(jax.jit, static_argnames="direction")
    def apply(state, images, direction):
        return translate(state, as_model_input(images), direction)

    return apply


def make_cycle_fn(family: Family, graphdefs: Mapping[str, nnx.GraphDef]) -> Callable:
    """``fn(state, real, direction) -> dict`` of identity / translation / cycle images and heat maps, jitted.

    "identity" is the reverse translation of the input (U-GAT-IT's identity mapping; NICE-GAN's the same
    composition), "cycle" the reverse translation of the translation, as the official sample strips show them.
    """
    translate = _translator(family, graphdefs)

    @functools.partial(jax.jit, static_argnames="direction")
    def apply(state, real, direction):
        back = REVERSE[direction]
        real = as_model_input(real)
        identity, _, identity_hm = translate(state, real, back)
        fake, _, fake_hm = translate(state, real, direction)
        cycle, _, cycle_hm = translate(state, fake, back)
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


def default_batch_size() -> int:
    """8 on an accelerator; 1 on CPU, where batch 1 measured fastest (64 px: ~95 vs ~72 images/s at batch 8;
    256 px: 0.34 vs 0.21) and needs a quarter of the memory: the activations of larger batches leave the caches."""
    import jax

    return 1 if jax.default_backend() == "cpu" else 8


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
