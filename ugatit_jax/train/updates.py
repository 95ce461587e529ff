"""What both families' train steps do alike around their losses: rebuild the networks from the state's arrays
inside the trace, take the optimiser steps, and assemble the next state with the step's metrics.

The steps differ in their networks and losses (``step.py``, ``nice_step.py``); this bookkeeping (merging, the
spectral-norm vectors the discriminators advanced, Adam updates, the step counter, the logged values) is one
thing, kept here so that the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ugatit_jax.nn.spectral_norm import PowerIterationState
from ugatit_jax.train.state import TrainState


def merged(graphdefs, params: dict, sn: dict | None = None) -> dict[str, nnx.Module]:
    """The networks named by ``params``' keys, rebuilt from their arrays (``sn``: their power-iteration vectors;
    None for networks without any, the generators)."""
    return {n: nnx.merge(graphdefs[n], params[n], nnx.State({}) if sn is None else sn[n]) for n in params}


def power_iteration_state(nets: dict[str, nnx.Module]) -> dict:
    """The power-iteration vectors of ``nets`` as their calls left them (pure arrays, for the state)."""
    return {n: nnx.as_pure(nnx.state(net, PowerIterationState)) for n, net in nets.items()}


class Optimisers(NamedTuple):
    """What both families' steps optimise with: the generators' and the discriminators' optax transformations,
    to log the step's rate their learning-rate schedule, and the decay of the translating networks' parameter
    average (0: none; the state then holds no average, ``TrainState.ema`` is None)."""

    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    lr_schedule: Callable | None = None
    ema_decay: float = 0.0


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """The average's decay for the update after ``step`` completed steps: ``min(decay, (1 + t) / (10 + t))``.

    The warm-up lets the early average follow the fast-moving weights (0.1 at the first update, 0.5 after 8
    steps, 0.99 after 890) instead of keeping the random initialisation in it for thousands of steps."""
    t = step.astype(jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def update_ema(ema: dict, params: dict, decay: float, step: jax.Array) -> dict:
    """``ema <- d * ema + (1 - d) * params`` for every averaged network (``ema``'s keys), ``d = ema_decay_at``."""
    d = ema_decay_at(decay, step)
    return {n: jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema[n], params[n]) for n in ema}


class Update(NamedTuple):
    """One side's (discriminators' or generators') result of a step."""

    loss: jax.Array
    terms: dict[str, jax.Array]  # the loss's weighted parts, logged
    grads: dict
    params: dict  # after the optimiser step
    opt: optax.OptState


def optimiser_step(tx: optax.GradientTransformation, grads, opt_state, params):
    """(params after one step of ``tx``, its new state)."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def next_state(
    state: TrainState, d: Update, g: Update, d_sn: dict, optimisers: Optimisers
) -> tuple[TrainState, dict[str, jax.Array]]:
    """The state after the step (``d_sn``: the discriminators' power-iteration vectors as the step left them) and
    its metrics: both losses, every term, both gradient norms and, with a learning-rate schedule, the step's
    ``lr``. Where the state keeps a parameter average, it takes in the step's new parameters."""
    params = {**g.params, **d.params}
    ema = state.ema
    if ema is not None:
        ema = update_ema(ema, params, optimisers.ema_decay, state.step)
    new_state = state.replace(
        step=state.step + 1, params=params, sn={**state.sn, **d_sn}, g_opt=g.opt, d_opt=d.opt, ema=ema
    )
    metrics = {"d_loss": d.loss, "g_loss": g.loss, **d.terms, **g.terms}
    metrics |= {"d_grad_norm": optax.tree.norm(d.grads), "g_grad_norm": optax.tree.norm(g.grads)}
    if optimisers.lr_schedule is not None:
        metrics["lr"] = optimisers.lr_schedule(state.step)
    return new_state, metrics
