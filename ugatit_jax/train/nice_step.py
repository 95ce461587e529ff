"""One pure NICE-GAN training step: discriminator (and encoder) update -> generator (decoder) update.

It mirrors the official loop, including its spectral-norm bookkeeping: every train-mode discriminator call runs
one power iteration on every spectral-normalised layer, and the official step calls each discriminator four times:

1. D update: disA(real A) -> code z_A, disB(real B) -> z_B; translations gen2B(z_A), gen2A(z_B), detached;
   disA(B->A), disB(A->B). LSGAN on the local, global and CAM outputs; the D optimiser steps.
2. G update, against the updated discriminators: disA(real A), disB(real B) again for fresh codes (3rd call);
   translations and reconstructions gen2A(z_A), gen2B(z_B); disA(B->A), disB(A->B) (4th call) give the adversarial
   outputs and the translations' codes, decoded back into cycles. The G optimiser holds the generators only: the
   encoders (the discriminators' first layers) learn from the D loss alone.

Speed without changing the maths:

* In the D update, a translation needs the *other* discriminator's code, so real and fake cannot share one
  discriminator call; the encoders run per call and the heads of both calls run as one batch with ``groups=2``
  (each half scaled by its own call's sigma, in the official order).
* In the G update, the real codes need no gradient (the generator loss does not differentiate them); their call
  is a plain forward whose unused head outputs XLA removes, while every layer's power iteration still advances.
* Translation and reconstruction decode the same real codes with the same generator: one batched call each.

The step is a pure function of (state, batch), meant to be jitted once with the state donated; batches are
{'A': (B, H, W, 3), 'B': ...}, uint8 or float in [-1, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
from flax import nnx

from ugatit_jax.models.nice import NICE
from ugatit_jax.pixels import as_model_input
from ugatit_jax.train import losses
from ugatit_jax.train.state import TrainState
from ugatit_jax.train.step import deinterleave, interleave
from ugatit_jax.train.updates import Optimisers, Update, merged, next_state, optimiser_step, power_iteration_state

G_NAMES = NICE.GENERATORS  # gen2B, gen2A
D_NAMES = NICE.DISCRIMINATORS  # disA, disB


def make_nice_train_step(
    graphdefs: Mapping[str, nnx.GraphDef],
    optimisers: Optimisers,
    objective: losses.NICEObjective | None = None,
):
    """Returns ``train_step(state, batch) -> (state, metrics)`` for a ``NICE`` model's state; jit it (see
    ``parallel.jit_train_step``). Metrics: ``d_loss``, ``g_loss``, every loss term, both gradient norms and, with
    a learning-rate schedule, ``lr``."""
    g_tx, d_tx = optimisers.g_tx, optimisers.d_tx
    objective = objective or losses.NICEObjective()  # the official weights
    adv_weight, gan_type = objective.adv_weight, objective.gan_type
    generator_loss = functools.partial(losses.nice_generator_loss, **objective.as_kwargs())

    def d_loss_fn(d_params, sn, g_params, real_a, real_b):
        dis, gen = merged(graphdefs, d_params, sn), merged(graphdefs, g_params)
        # 1st call of each discriminator, on the real images: the encoder now, the heads below.
        z_a, cam_real_a, _ = dis["disA"].encode(real_a)  # z_a: (B, H/4, W/4, 2ch)
        z_b, cam_real_b, _ = dis["disB"].encode(real_b)
        # Translations by the current generators; no gradient reaches the codes through them.
        fake_a2b = gen["gen2B"](jax.lax.stop_gradient(z_a))
        fake_b2a = gen["gen2A"](jax.lax.stop_gradient(z_b))
        # 2nd call, on the translations into each discriminator's domain.
        z_fake_a, cam_fake_a, _ = dis["disA"].encode(fake_b2a)
        z_fake_b, cam_fake_b, _ = dis["disB"].encode(fake_a2b)
        # Heads of both calls in one batch: group 0 = 1st call (real), group 1 = 2nd call (fake).
        heads_a = [deinterleave(o) for o in dis["disA"].classify(interleave(z_a, z_fake_a), groups=2)]
        heads_b = [deinterleave(o) for o in dis["disB"].classify(interleave(z_b, z_fake_b), groups=2)]
        real = {"disA": (heads_a[0][0], heads_a[1][0], cam_real_a), "disB": (heads_b[0][0], heads_b[1][0], cam_real_b)}
        fake = {"disA": (heads_a[0][1], heads_a[1][1], cam_fake_a), "disB": (heads_b[0][1], heads_b[1][1], cam_fake_b)}
        loss, terms = losses.nice_discriminator_loss(real, fake, adv_weight=adv_weight, gan_type=gan_type)
        return loss, (terms, power_iteration_state(dis))

    def real_codes(d_params, sn, real_a, real_b):
        """3rd call of each discriminator: full calls (every power iteration advances, as in the official loop);
        only the codes are used, XLA drops the head outputs."""
        dis = merged(graphdefs, d_params, sn)
        return dis["disA"](real_a).z, dis["disB"](real_b).z, power_iteration_state(dis)

    def g_loss_fn(g_params, d_params, sn, real_a, real_b, z_a, z_b):
        dis, gen = merged(graphdefs, d_params, sn), merged(graphdefs, g_params)
        fake_a2b, recon_b = deinterleave(gen["gen2B"](interleave(z_a, z_b)))  # A->B and B->B, (B, H, W, 3) each
        fake_b2a, recon_a = deinterleave(gen["gen2A"](interleave(z_b, z_a)))  # B->A and A->A
        # 4th call: the adversarial outputs and the translations' codes.
        fake_out = {"disA": dis["disA"](fake_b2a), "disB": dis["disB"](fake_a2b)}
        cycle_b = gen["gen2B"](fake_out["disA"].z)  # B->A->B
        cycle_a = gen["gen2A"](fake_out["disB"].z)  # A->B->A
        images = dict(real_a=real_a, real_b=real_b, cycle_a=cycle_a, cycle_b=cycle_b, recon_a=recon_a, recon_b=recon_b)
        loss, terms = generator_loss(fake_out, **images)
        return loss, (terms, power_iteration_state(dis))

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        real_a, real_b = as_model_input(batch["A"]), as_model_input(batch["B"])
        g_params = {n: state.params[n] for n in G_NAMES}
        d_params = {n: state.params[n] for n in D_NAMES}
        d_sn = {n: state.sn[n] for n in D_NAMES}

        # Discriminator (and encoder) update.
        (d_loss, (d_terms, d_sn)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            d_params, d_sn, g_params, real_a, real_b
        )
        d_params, d_opt = optimiser_step(d_tx, d_grads, state.d_opt, d_params)

        # Generator update against the freshly updated discriminators (whose parameters it does not train).
        z_a, z_b, d_sn = real_codes(d_params, d_sn, real_a, real_b)
        (g_loss, (g_terms, d_sn)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
            g_params, d_params, d_sn, real_a, real_b, z_a, z_b
        )
        g_params, g_opt = optimiser_step(g_tx, g_grads, state.g_opt, g_params)

        d = Update(d_loss, d_terms, d_grads, d_params, d_opt)
        return next_state(state, d, Update(g_loss, g_terms, g_grads, g_params, g_opt), d_sn, optimisers)

    return train_step
