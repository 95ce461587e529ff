"""A tiny but complete U-GAT-IT configuration for fast training tests (compiles in seconds on CPU)."""

import os

import jax

from ugatit_jax.config import base_config


def tiny_config(**overrides):
    c = base_config()
    c.update(
        dataset="synthetic",
        light=True,
        ch=4,
        n_res=1,
        img_size=32,
        disc_global_layers=4,  # 32 -> 8 -> 7 -> 6
        disc_local_layers=3,  # 32 -> 16 -> 15 -> 14
        batch_size=2,
        iterations=4,
        log_every=1,
        sample_every=1000,
        eval_every=0,
        checkpoint_every=1000,
        num_samples=2,
        # A constant learning rate: the compiled step then does not depend on ``iterations`` (the decay's
        # half-way point is a constant of the program), so runs of different lengths share one program.
        decay_flag=False,
        xla_cache_dir=jax.config.jax_compilation_cache_dir or "",  # share the test session's cache
    )
    c.update(overrides)
    return c


# The generator average that the in-process runs (run_config) and the train.py runs of test_train_cli.py and
# test_train_faults.py keep: the tests that need it (resume, 8 devices against 1) and those that do not then share
# one compiled step per device count and batch. tiny_config itself keeps it off (the official step), as do the
# multi-process runs.
RUN_EMA = dict(ema_decay=0.9)


def run_config(**overrides):
    """The tiny config of the tests that train in-process (8 devices, batch 8, ``RUN_EMA``): one step program for
    all of them, compiled once per test session (the persistent cache serves the others)."""
    return tiny_config(**{"batch_size": 8, "iterations": 4, **RUN_EMA, **overrides})


# The same settings as command-line overrides for train.py.
def tiny_flags(**overrides):
    c = tiny_config(**overrides)
    keys = (
        "dataset light ch n_res img_size disc_global_layers disc_local_layers batch_size iterations log_every "
        "sample_every eval_every checkpoint_every num_samples decay_flag xla_cache_dir"
    ).split()
    keys += [k for k in overrides if k not in keys]
    return [f"--config.{k}={c[k]}" for k in keys]


def random_model(config, seed: int = 0):
    """A model of ``config`` with numpy-drawn weights: an eager random init compiles one XLA program per weight
    shape, which costs more than most tests that need a model."""
    import numpy as np
    from flax import nnx

    from ugatit_jax.models.family import abstract_model

    graphdef, abstract = abstract_model(config)
    rng = np.random.default_rng(seed)
    draw = lambda s: jax.device_put((0.3 * rng.standard_normal(s.shape)).astype(s.dtype))
    return nnx.merge(graphdef, jax.tree.map(draw, abstract))


def save_tiny_run(workdir: str, step: int = 2, **overrides):
    """A run folder holding a random tiny model saved as the trainer saves at ``step``; returns (config, model).

    With ``ema_decay`` > 0 the state keeps an average too, set to half the trained weights (a real average after a
    few steps would differ from them only slightly; this one differs clearly)."""
    import jax

    from ugatit_jax.train.checkpoints import Checkpointer
    from ugatit_jax.train.optim import make_optimizers
    from ugatit_jax.train.state import create_train_state, ema_names

    config = tiny_config(iterations=step, xla_cache_dir="", **overrides)
    model = random_model(config)
    g_tx, d_tx = make_optimizers(config)
    _, state = create_train_state(model, g_tx, d_tx, ema=ema_names(config))
    if state.ema is not None:
        state = state.replace(ema=jax.tree.map(lambda x: 0.5 * x, state.ema))
    ckpt = Checkpointer(workdir, async_save=False)
    ckpt.save(step, state, {}, config, force=True)
    ckpt.close()
    return config, model


def subprocess_xla_flags(devices: int | None = None) -> str:
    """This test process's XLA flags (set in conftest.py) for a subprocess, with ``devices`` fake host devices
    (None: the subprocess's own default)."""
    device_flag = "--xla_force_host_platform_device_count"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(device_flag)]
    return " ".join(flags + ([f"{device_flag}={devices}"] if devices else []))
