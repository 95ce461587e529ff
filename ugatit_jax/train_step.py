"""One pure U-GAT-IT training step: discriminator update -> generator update -> rho clip.

It mirrors the official loop exactly, including its spectral-norm bookkeeping: every train-mode
discriminator call runs one power iteration, so each discriminator advances u, v three times per step
(real and fake in the D update, fake in the G update). The step is a pure function of (state, batch), meant
to be jitted once with the state donated; batches are {'A': (B, H, W, 3), 'B': ...}, uint8 or float in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import optax
from flax import nnx

from ugatit_jax import losses
from ugatit_jax.data.transforms import as_model_input
from ugatit_jax.norms import clip_rho
from ugatit_jax.spectral_norm import PowerIterationState
from ugatit_jax.train_state import D_NAMES, G_NAMES, TrainState


def make_train_step(
    graphdefs: Mapping[str, nnx.GraphDef],
    *,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    lr_schedule: Callable | None = None,
    adv_weight: float = 1.0,
    cycle_weight: float = 10.0,
    identity_weight: float = 10.0,
    cam_weight: float = 1000.0,
    gan_type: str = "lsgan",
    rho_clip=(0.0, 1.0),
):
    """Returns ``train_step(state, batch) -> (state, metrics)``; jit it (see ``parallel.jit_train_step``)."""
    if gan_type not in losses.GAN_TYPES:
        raise ValueError(f"unknown gan_type {gan_type!r}; expected one of {losses.GAN_TYPES}")

    def merge(names, params, sn):
        return {n: nnx.merge(graphdefs[n], params[n], sn[n]) for n in names}

    def sn_state(dis):
        return {n: nnx.as_pure(nnx.state(dis[n], PowerIterationState)) for n in D_NAMES}

    def d_loss_fn(d_params, sn, real_a, real_b, fake_a2b, fake_b2a):
        dis = merge(D_NAMES, d_params, sn)
        # Same call order as the official loop; each call is one power iteration of that discriminator.
        real = {
            "disGA": dis["disGA"](real_a),
            "disLA": dis["disLA"](real_a),
            "disGB": dis["disGB"](real_b),
            "disLB": dis["disLB"](real_b),
        }
        fake = {
            "disGA": dis["disGA"](fake_b2a),
            "disLA": dis["disLA"](fake_b2a),
            "disGB": dis["disGB"](fake_a2b),
            "disLB": dis["disLB"](fake_a2b),
        }
        loss, terms = losses.discriminator_loss(real, fake, adv_weight=adv_weight, gan_type=gan_type)
        return loss, (terms, sn_state(dis))

    def g_loss_fn(g_params, d_params, sn, real_a, real_b):
        gen = merge(G_NAMES, g_params, {n: nnx.State({}) for n in G_NAMES})
        dis = merge(D_NAMES, d_params, sn)
        fake_a2b, cam_a2b, _ = gen["genA2B"](real_a)
        fake_b2a, cam_b2a, _ = gen["genB2A"](real_b)
        cycle_a, _, _ = gen["genB2A"](fake_a2b)
        cycle_b, _, _ = gen["genA2B"](fake_b2a)
        identity_a, cam_a2a, _ = gen["genB2A"](real_a)
        identity_b, cam_b2b, _ = gen["genA2B"](real_b)
        fake = {
            "disGA": dis["disGA"](fake_b2a),
            "disLA": dis["disLA"](fake_b2a),
            "disGB": dis["disGB"](fake_a2b),
            "disLB": dis["disLB"](fake_a2b),
        }
        loss, terms = losses.generator_loss(
            fake,
            real_a=real_a,
            real_b=real_b,
            cycle_a=cycle_a,
            cycle_b=cycle_b,
            identity_a=identity_a,
            identity_b=identity_b,
            cam_a2b=cam_a2b,
            cam_b2a=cam_b2a,
            cam_a2a=cam_a2a,
            cam_b2b=cam_b2b,
            adv_weight=adv_weight,
            cycle_weight=cycle_weight,
            identity_weight=identity_weight,
            cam_weight=cam_weight,
            gan_type=gan_type,
        )
        return loss, (terms, sn_state(dis))

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        real_a, real_b = as_model_input(batch["A"]), as_model_input(batch["B"])
        g_params, d_params = state.g_params(), state.d_params()
        d_sn = {n: state.sn[n] for n in D_NAMES}

        # Discriminator update on translations by the current generators (no gradient into G).
        gen = merge(G_NAMES, g_params, {n: state.sn[n] for n in G_NAMES})
        fake_a2b = jax.lax.stop_gradient(gen["genA2B"](real_a)[0])
        fake_b2a = jax.lax.stop_gradient(gen["genB2A"](real_b)[0])
        (d_loss, (d_terms, d_sn)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            d_params, d_sn, real_a, real_b, fake_a2b, fake_b2a
        )
        d_updates, d_opt = d_tx.update(d_grads, state.d_opt, d_params)
        d_params = optax.apply_updates(d_params, d_updates)

        # Generator update against the freshly updated discriminators.
        (g_loss, (g_terms, d_sn)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
            g_params, d_params, d_sn, real_a, real_b
        )
        g_updates, g_opt = g_tx.update(g_grads, state.g_opt, g_params)
        g_params = optax.apply_updates(g_params, g_updates)

        # rho of every ILN / AdaILN back into [0, 1] after the optimiser step.
        gen = merge(G_NAMES, g_params, {n: state.sn[n] for n in G_NAMES})
        for net in gen.values():
            clip_rho(net, *rho_clip)
        g_params = {n: nnx.as_pure(nnx.state(gen[n], nnx.Param)) for n in G_NAMES}

        new_state = state.replace(
            step=state.step + 1, params={**g_params, **d_params}, sn={**state.sn, **d_sn}, g_opt=g_opt, d_opt=d_opt
        )
        metrics = {
            "d_loss": d_loss,
            "g_loss": g_loss,
            **d_terms,
            **g_terms,
            "d_grad_norm": optax.tree.norm(d_grads),
            "g_grad_norm": optax.tree.norm(g_grads),
        }
        if lr_schedule is not None:
            metrics["lr"] = lr_schedule(state.step)
        return new_state, metrics

    return train_step
