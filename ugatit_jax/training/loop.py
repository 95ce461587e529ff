"""The training loop: data -> jitted pure step -> metrics, samples, evaluation and checkpoints.

``train_and_evaluate(config, workdir)`` is the whole job; ``train.py`` only parses flags. Re-running with the
same workdir resumes from the latest checkpoint (state, optimiser, spectral-norm vectors, step and the data
pipeline's position), so an interrupted run ends with the same parameters as an uninterrupted one. Where the
devices' memory is known, a step that would not fit stops the run before anything is built (``train.memory``).
The run's model family and learning-rate schedule are resolved here, once, and handed to the pieces beside this
module: the step memo (``steps``), the sample strips (``samples``), the evaluation (``evaluation_hook``), the
TensorBoard events (``summaries``) and the stop signals (``signals``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ugatit_jax import data as data_lib
from ugatit_jax import run_dir
from ugatit_jax.config import ConfigError, validate
from ugatit_jax.errors import ExpectedError
from ugatit_jax.evaluation.evaluator import format_table
from ugatit_jax.interop import torch_import
from ugatit_jax.models.family import build_model, get_family
from ugatit_jax.train import memory, optim, parallel, workdir_lock
from ugatit_jax.train.checkpoints import Checkpointer, abstract_like, disk_errors, host_data_state
from ugatit_jax.train.optim import make_optimizers
from ugatit_jax.train.state import abstract_train_state, create_train_state, ema_names
from ugatit_jax.train.watchdog import Watchdog
from ugatit_jax.training.evaluation_hook import RunEvaluator, translation_nets
from ugatit_jax.training.samples import Sampler
from ugatit_jax.training.signals import StopSignal
from ugatit_jax.training.steps import jitted_step
from ugatit_jax.training.summaries import SummaryWriter
from ugatit_jax.xla.compilation_cache import enable_compilation_cache

log = logging.getLogger("ugatit_jax")


def check_workdir(workdir: str) -> str:
    """Create the workdir and prove it is writable, or fail with ConfigError naming it."""
    path = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(f"--workdir={workdir}: not writable ({e.strerror or e}); choose another folder") from e
    return path


def finish_run(workdir: str) -> None:
    """End of training (process 0): the latest evaluation as a table, baseline beside each number, and the run
    report. Neither may fail the run: its checkpoints are already saved."""
    record = run_dir.latest_evaluation(workdir)
    if record is not None:
        log.info(
            "evaluation at step %s (each number beside the untranslated input's):\n%s",
            record.get("step"),
            format_table(record, f"step {record.get('step')}: {record['dataset']} test split"),
        )
    try:
        from ugatit_jax.evaluation.run_report import write_report

        log.info("run report: %s", write_report(workdir))
    except (OSError, ValueError) as error:
        log.warning("could not write the run report: %s", error)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, smoothing=0.1)


class DivergedError(ExpectedError, FloatingPointError):
    """Training produced NaN or inf; raised before such a state can be checkpointed."""


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_finite(step: int, values: dict[str, float], ckpt: Checkpointer, params=None) -> None:
    """Raises DivergedError if a metric, or any of ``params`` (the state about to be saved), is NaN or inf."""
    bad = sorted(k for k, v in values.items() if not np.isfinite(v))
    if params is not None and not bool(_all_finite(params)):
        bad.append("parameters")
    if bad:
        raise DivergedError(
            f"training diverged at step {step}: non-finite {', '.join(bad)}. The last checkpoint "
            f"(step {ckpt.latest_step()}) is kept; lower --config.lr, or look for flat single-colour training "
            "images (they give instance norm zero variance and blow up the generator's gradient)"
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (or resume) the run in ``workdir``; returns the last logged metrics."""
    parallel.maybe_initialize_distributed()
    validate(config, device_count=jax.device_count())
    parallel.check_same_config(config)  # every process, the same config (else the first collective would hang)
    workdir = check_workdir(workdir)
    # One run per workdir (a second one stops here, having touched nothing); a full disk ends it with one line.
    with workdir_lock.hold(workdir), disk_errors(workdir):
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    enable_compilation_cache(config.xla_cache_dir)
    is_chief = jax.process_index() == 0

    mesh = parallel.make_mesh()
    family, schedule = get_family(config), optim.schedule_of(config)  # the run's, resolved once
    g_tx, d_tx = make_optimizers(config, schedule)
    run_step = functools.partial(jitted_step, family=family, schedule=schedule)
    # Where the devices' memory is known, a step that cannot fit stops here: before the model, the data, the
    # checkpoints. The step it compiles is the run's (kept by the step memo for the first step).
    memory.preflight(config, mesh, run_step, (g_tx, d_tx))
    source = data_lib.get_source(config)
    train_iter = data_lib.make_train_iterator(source, **data_lib.config_options(config))
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    resuming = ckpt.latest_step() is not None
    if resuming:
        # The checkpoint holds every array: shapes only, no random initialisation (seconds of every restart).
        graphdefs, state = abstract_train_state(config, g_tx, d_tx)
    else:
        model = build_model(config)
        if config.init_checkpoint:
            torch_import.load_official_checkpoint(model, os.path.expanduser(config.init_checkpoint))
            log.info("initialised from official checkpoint %s", config.init_checkpoint)
        graphdefs, state = create_train_state(model, g_tx, d_tx, ema=ema_names(config))
        del model
    state_shardings = parallel.state_shardings(state, mesh, config.shard_state)
    if resuming:
        state, data_state, _ = ckpt.restore(abstract_like(state, state_shardings))
        data_state = host_data_state(data_state, train_iter.get_state())
        if data_state:
            train_iter.set_state(data_state)
        log.info("resumed from %s at step %d", ckpt.directory, int(state.step))
    else:
        state = parallel.place_state(state, state_shardings)
    start = int(jax.device_get(state.step))

    step_fn = run_step(config, graphdefs, g_tx, d_tx, mesh, state_shardings)
    batches = data_lib.prefetch_to_device(train_iter, parallel.batch_sharding(mesh), size=config.prefetch)
    writer = SummaryWriter(run_dir.entry(workdir, run_dir.TENSORBOARD), enabled=is_chief)
    sampler = Sampler(config, family, source, graphdefs, workdir) if is_chief else None
    # Process 0 only: its numbers are the run's, and other hosts would only wait for it at the next step anyway.
    evaluator = RunEvaluator(config, family, source, graphdefs, workdir) if config.eval_every and is_chief else None
    if is_chief:
        run_dir.forget_after(workdir, start)
    last: dict[str, Any] = {}
    images_per_step = 2 * config.batch_size  # one batch of each domain

    # Multi-process runs only. Entered first, left last: it also watches the final checkpoint's save.
    watchdog = Watchdog.for_run(config.stall_timeout)
    with (
        watchdog,
        ckpt,
        contextlib.closing(writer),
        StopSignal() as stop,
        _progress(config.iterations, start, is_chief) as bar,
    ):
        t_window, steps_in_window = time.perf_counter(), 0
        step = start
        while step < config.iterations and stop.received is None:
            batch = next(batches)
            if step == start:
                t_compile = time.perf_counter()
            state, metrics = step_fn(state, batch)
            step += 1
            watchdog.dispatched(step, metrics)
            steps_in_window += 1
            if step == start + 1:
                jax.block_until_ready(state)
                log.info("first step (compilation included) took %.1f s", time.perf_counter() - t_compile)
                t_window, steps_in_window = time.perf_counter(), 0
            bar.update(1)
            if step % config.log_every == 0 or step == config.iterations:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if steps_in_window:
                    dt = (time.perf_counter() - t_window) / steps_in_window
                    values.update(step_time_ms=1000 * dt, images_per_sec=images_per_step / dt)
                check_finite(step, values, ckpt)
                writer.scalars(step, values)
                if is_chief:
                    run_dir.append_metrics(workdir, step, values)
                bar.set_postfix(d_loss=f"{values['d_loss']:.3f}", g_loss=f"{values['g_loss']:.3f}")
                last = values
                t_window, steps_in_window = time.perf_counter(), 0
            sample_now = step % config.sample_every == 0 or step == config.iterations
            eval_now = bool(config.eval_every) and (step % config.eval_every == 0 or step == config.iterations)
            # Every process, at these steps only (a collective when the state is split over processes).
            nets = translation_nets(family, state, mesh) if sample_now or eval_now else None
            if sampler and sample_now:
                sampler(nets, step, writer)
            if evaluator and eval_now:
                record = evaluator(nets, step, averaged=state.ema is not None)
                writer.scalars(step, record["scores"])
                last.update(record["scores"])
                log.info(
                    "step %d evaluated in %.1f s: %s",
                    step,
                    record["seconds"]["total"],
                    ", ".join(f"{k[len('eval/') :]}={v:.3f}" for k, v in record["scores"].items() if "_input" not in k),
                )
                t_window, steps_in_window = time.perf_counter(), 0  # keep evaluation out of step_time_ms
            if nets is not None:
                # The other processes wait here for process 0's outputs, not in their next collective (which on
                # CPU gives up after ~30 s); and the gathered copy is not kept beside the state.
                parallel.barrier("outputs_written")
            del nets
            if step % config.checkpoint_every == 0 or step == config.iterations or stop.received is not None:
                # Never let a diverged state replace the last good checkpoint.
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(step, values, ckpt, params=state.params)
                ckpt.save(step, state, batches.get_state(), config, force=True)
    batches.close()
    if is_chief:
        finish_run(workdir)
    skipped = train_iter.skipped
    if skipped and is_chief:
        log.warning("%d unreadable training image(s) were skipped: %s", len(skipped), ", ".join(sorted(skipped)))
    last["step"] = step
    last["skipped_images"] = len(skipped)
    return last
