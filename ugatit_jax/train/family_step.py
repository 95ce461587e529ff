"""The pure train step of a config's model family, as every caller builds it: the training driver
(``training.steps``), the memory plan (``memory.py``) and the benchmarks compile exactly this function."""

from __future__ import annotations

import functools

from ugatit_jax.models.family import Family, get_family
from ugatit_jax.train import losses, optim, parallel
from ugatit_jax.train.nice_step import make_nice_train_step
from ugatit_jax.train.step import make_train_step
from ugatit_jax.train.updates import Optimisers


def make_step(config, graphdefs, g_tx, d_tx, mesh=None, *, family: Family | None = None, schedule=None):
    """The pure train step of the config's model family, with the config's loss weights. ``family`` and
    ``schedule`` (the learning rate the step logs): the run's, resolved once from the config; derived from it
    when absent.

    With ``config.shard_state`` on a ``mesh`` of several devices, the step is traced with the wide layers' inputs
    split like their kernels (``parallel.split_wide_layers``); otherwise the program is the plain step's."""
    family = get_family(config) if family is None else family
    schedule = optim.schedule_of(config) if schedule is None else schedule
    optimisers = Optimisers(g_tx, d_tx, schedule, config.get("ema_decay", 0.0))
    if family.name == "nice":
        step = make_nice_train_step(graphdefs, optimisers, losses.NICEObjective.from_config(config))
    else:
        step = make_train_step(graphdefs, optimisers, losses.UGATITObjective.from_config(config))
    if not (config.shard_state and mesh is not None and mesh.size > 1):
        return step

    @functools.wraps(step)
    def split_step(state, batch):
        with parallel.split_wide_layers(mesh):
            return step(state, batch)

    return split_step
