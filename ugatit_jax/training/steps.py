"""The run's train step: the pure step of its model family (``train.family_step.make_step``), jitted over the mesh
and kept per setup (the step memo), so a process that trains the same setup again neither traces nor compiles it."""

from __future__ import annotations

import os

import jax

from ugatit_jax.models.family import ARCHITECTURE_KEYS
from ugatit_jax.train import parallel
from ugatit_jax.train.family_step import make_step
from ugatit_jax.xla import step_cache
from ugatit_jax.xla.memo import remember

# Every config key a run's train step program depends on: the model's, the batch's shape, and those make_step and
# make_optimizers read (tests/test_train_step.py records the reads and checks this list).
STEP_KEYS = ARCHITECTURE_KEYS + (
    "batch_size", "lr", "iterations", "decay_flag", "adam_b1", "adam_b2", "adam_eps", "weight_decay",
    "adv_weight", "cycle_weight", "identity_weight", "cam_weight", "recon_weight", "gan_type", "shard_state",
    "ema_decay",
)  # fmt: skip


def jitted_step(config, graphdefs, g_tx, d_tx, mesh, state_shardings, *, family=None, schedule=None):
    """The run's jitted train step, kept per (``STEP_KEYS`` values, devices): a process that trains the same setup
    again (tests, a notebook) reuses the traced and compiled program instead of tracing it and loading it from the
    persistent cache (seconds each on a CPU). With the compilation cache on, a new process loads the traced step
    from disk too (``step_cache``): a warm start then neither traces nor compiles it. ``family`` and ``schedule``
    go to ``make_step``: derived from the config, they are fixed by its ``STEP_KEYS`` values."""
    key = (tuple(config.get(k) for k in STEP_KEYS), tuple(d.id for d in mesh.devices.flat), mesh.axis_names)

    def make():
        step_fn = make_step(config, graphdefs, g_tx, d_tx, mesh, family=family, schedule=schedule)
        jit_fn = lambda fn: parallel.jit_train_step(fn, mesh, state_sharding=state_shardings)
        cache_dir = jax.config.jax_compilation_cache_dir
        if not cache_dir:
            return jit_fn(step_fn)
        return step_cache.ExportedStep(step_fn, key, mesh, jit_fn, os.path.join(cache_dir, step_cache.SUBDIR))

    return remember(_STEPS, key, make, limit=4)


_STEPS: dict = {}
