"""Optimiser of the official release in optax: Adam(0.5, 0.999) with *coupled* L2 weight decay.

torch's ``Adam(weight_decay=wd)`` adds ``wd * param`` to the gradient before the moments (not AdamW's
decoupled decay), which is ``add_decayed_weights`` placed before ``scale_by_adam``. The learning rate is
constant for the first half of training and then falls linearly to 0 (``decay_flag``), matching the official
loop, which lowers it by lr / (iterations // 2) at the start of every step past the half-way point.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def learning_rate_schedule(lr: float, iterations: int, decay: bool = True) -> optax.Schedule:
    half = max(iterations // 2, 1)

    def schedule(count):
        # optax passes the number of updates already made; the official step number is count + 1.
        step = jnp.asarray(count, jnp.float32) + 1.0
        if not decay:
            return jnp.full((), lr, jnp.float32)
        frac = jnp.clip((step - half) / half, 0.0, 1.0)
        return lr * (1.0 - frac)

    return schedule


def schedule_of(config) -> optax.Schedule:
    """The learning-rate schedule of a config (``lr``, ``iterations``, ``decay_flag``)."""
    return learning_rate_schedule(config.lr, config.iterations, config.decay_flag)


def make_optimizer(
    *,
    lr: float,
    iterations: int,
    decay: bool = True,
    b1: float = 0.5,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
    return coupled_adam(learning_rate_schedule(lr, iterations, decay), b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def coupled_adam(
    schedule: optax.Schedule, *, b1: float, b2: float, eps: float, weight_decay: float
) -> optax.GradientTransformation:
    """Adam with coupled L2 weight decay (the module's docstring) at the learning rates of ``schedule``."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_learning_rate(schedule),
    )


def make_optimizers(
    config, schedule: optax.Schedule | None = None
) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(generator optimiser, discriminator optimiser) with a config's official Adam settings, at the learning rates
    of ``schedule``: the run's, resolved once (``schedule_of(config)`` when absent)."""
    schedule = schedule_of(config) if schedule is None else schedule
    kwargs = dict(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps, weight_decay=config.weight_decay)
    return coupled_adam(schedule, **kwargs), coupled_adam(schedule, **kwargs)
