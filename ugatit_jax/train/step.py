"""One pure U-GAT-IT training step: discriminator update -> generator update -> rho clip.

It mirrors the official loop exactly, including its spectral-norm bookkeeping: every train-mode
discriminator call runs one power iteration, so each discriminator advances u, v three times per step
(real and fake in the D update, fake in the G update). The step is a pure function of (state, batch), meant
to be jitted once with the state donated; batches are {'A': (B, H, W, 3), 'B': ...}, uint8 or float in [-1, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ugatit_jax.nn.norms import clip_rho
from ugatit_jax.pixels import as_model_input
from ugatit_jax.train import losses
from ugatit_jax.train.state import D_NAMES, G_NAMES, TrainState
from ugatit_jax.train.updates import Optimisers, Update, merged, next_state, optimiser_step, power_iteration_state


def interleave(a: jax.Array, b: jax.Array) -> jax.Array:
    """(B, ...) twice -> (2B, ...) with rows a0, b0, a1, b1, ...: under batch sharding every device keeps its own
    rows (a concatenation would move data between devices)."""
    return jnp.stack([a, b], axis=1).reshape(-1, *a.shape[1:])


def deinterleave(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    pairs = x.reshape(-1, 2, *x.shape[1:])  # (B, 2, ...)
    return pairs[:, 0], pairs[:, 1]


def make_train_step(
    graphdefs: Mapping[str, nnx.GraphDef],
    optimisers: Optimisers,
    objective: losses.UGATITObjective | None = None,
    rho_clip=(0.0, 1.0),
):
    """Returns ``train_step(state, batch) -> (state, metrics)``; jit it (see ``parallel.jit_train_step``)."""
    g_tx, d_tx = optimisers.g_tx, optimisers.d_tx
    objective = objective or losses.UGATITObjective()  # the official weights
    adv_weight, gan_type = objective.adv_weight, objective.gan_type
    generator_loss = functools.partial(losses.generator_loss, **objective.as_kwargs())

    def d_loss_fn(d_params, sn, real_a, real_b, fake_a2b, fake_b2a):
        dis = merged(graphdefs, d_params, sn)
        # One batched call per discriminator on [real; fake]: its two power iterations run in the official order
        # (real first), each half scaled by its own sigma.
        x_a, x_b = interleave(real_a, fake_b2a), interleave(real_b, fake_a2b)  # (2B, H, W, 3)
        both = {
            "disGA": dis["disGA"](x_a, groups=2),
            "disLA": dis["disLA"](x_a, groups=2),
            "disGB": dis["disGB"](x_b, groups=2),
            "disLB": dis["disLB"](x_b, groups=2),
        }
        halves = {n: tuple(zip(*map(deinterleave, out))) for n, out in both.items()}
        real = {n: h[0] for n, h in halves.items()}
        fake = {n: h[1] for n, h in halves.items()}
        loss, terms = losses.discriminator_loss(real, fake, adv_weight=adv_weight, gan_type=gan_type)
        return loss, (terms, power_iteration_state(dis))

    def translate(g_params, real_a, real_b):
        """Each generator on both domains in one call: translations and identity mappings with their CAM logits."""
        gen = merged(graphdefs, g_params)
        a2b_image, a2b_cam, _ = gen["genA2B"](interleave(real_a, real_b))  # (2B, ...): A->B, B->B
        b2a_image, b2a_cam, _ = gen["genB2A"](interleave(real_b, real_a))  # B->A, A->A
        return {"a2b": deinterleave(a2b_image), "b2a": deinterleave(b2a_image)}, {
            "a2b": deinterleave(a2b_cam),
            "b2a": deinterleave(b2a_cam),
        }

    def g_loss_fn(g_params, translated, d_params, sn, real_a, real_b):
        images, cams = translated
        (fake_a2b, identity_b), (fake_b2a, identity_a) = images["a2b"], images["b2a"]
        (cam_a2b, cam_b2b), (cam_b2a, cam_a2a) = cams["a2b"], cams["b2a"]
        gen = merged(graphdefs, g_params)
        dis = merged(graphdefs, d_params, sn)
        cycle_a, _, _ = gen["genB2A"](fake_a2b)
        cycle_b, _, _ = gen["genA2B"](fake_b2a)
        fake = {
            "disGA": dis["disGA"](fake_b2a),
            "disLA": dis["disLA"](fake_b2a),
            "disGB": dis["disGB"](fake_a2b),
            "disLB": dis["disLB"](fake_a2b),
        }
        images = dict(real_a=real_a, real_b=real_b, cycle_a=cycle_a, cycle_b=cycle_b)
        images |= dict(identity_a=identity_a, identity_b=identity_b)
        cam_logits = dict(cam_a2b=cam_a2b, cam_b2a=cam_b2a, cam_a2a=cam_a2a, cam_b2b=cam_b2b)
        loss, terms = generator_loss(fake, **images, **cam_logits)
        return loss, (terms, power_iteration_state(dis))

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        real_a, real_b = as_model_input(batch["A"]), as_model_input(batch["B"])
        g_params, d_params = state.g_params(), state.d_params()
        d_sn = {n: state.sn[n] for n in D_NAMES}

        # The generators' first pass (translations and identity mappings, both at the current weights) serves
        # both updates: the D update reads its translations, the G update pulls gradients back through its vjp.
        translated, translate_vjp = jax.vjp(lambda p: translate(p, real_a, real_b), g_params)
        fake_a2b, fake_b2a = translated[0]["a2b"][0], translated[0]["b2a"][0]

        # Discriminator update on translations by the current generators (no gradient into G).
        (d_loss, (d_terms, d_sn)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            d_params, d_sn, real_a, real_b, fake_a2b, fake_b2a
        )
        d_params, d_opt = optimiser_step(d_tx, d_grads, state.d_opt, d_params)

        # Generator update against the freshly updated discriminators.
        (g_loss, (g_terms, d_sn)), (g_grads, translated_grads) = jax.value_and_grad(
            g_loss_fn, argnums=(0, 1), has_aux=True
        )(g_params, translated, d_params, d_sn, real_a, real_b)
        (g_grads_first,) = translate_vjp(translated_grads)
        g_grads = jax.tree.map(jnp.add, g_grads, g_grads_first)
        g_params, g_opt = optimiser_step(g_tx, g_grads, state.g_opt, g_params)

        # rho of every ILN / AdaILN back into [0, 1] after the optimiser step.
        gen = merged(graphdefs, g_params)
        for net in gen.values():
            clip_rho(net, *rho_clip)
        g_params = {n: nnx.as_pure(nnx.state(gen[n], nnx.Param)) for n in G_NAMES}

        d = Update(d_loss, d_terms, d_grads, d_params, d_opt)
        return next_state(state, d, Update(g_loss, g_terms, g_grads, g_params, g_opt), d_sn, optimisers)

    return train_step
