"""The training loop: data -> jitted pure step -> metrics, samples, evaluation and checkpoints.

``train_and_evaluate(config, workdir)`` is the whole job; ``train.py`` only parses flags. Re-running with the
same workdir resumes from the latest checkpoint (state, optimiser, spectral-norm vectors, step and the data
pipeline's position), so an interrupted run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ugatit_jax import data as data_lib
from ugatit_jax.compilation_cache import enable_compilation_cache
from ugatit_jax.config import ConfigError, validate
from ugatit_jax.directions import DIRECTIONS
from ugatit_jax.evaluation.evaluator import Evaluator, format_table, make_translators, write_record
from ugatit_jax.evaluation.visualize import save_png, strip
from ugatit_jax.inference import make_cycle_fn, translation_state
from ugatit_jax.interop import torch_import
from ugatit_jax.memo import remember
from ugatit_jax.models.family import ARCHITECTURE_KEYS, build_model, get_family
from ugatit_jax.train import memory, parallel, step_cache, workdir_lock
from ugatit_jax.train.checkpoints import Checkpointer, abstract_like, disk_errors, host_data_state
from ugatit_jax.train.family_step import make_step
from ugatit_jax.train.optim import make_optimizers
from ugatit_jax.train.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    ema_names,
    translating_params,
)
from ugatit_jax.train.watchdog import Watchdog

log = logging.getLogger("ugatit_jax")


# Every config key a run's train step program depends on: the model's, the batch's shape, and those make_step and
# make_optimizers read (tests/test_train_step.py records the reads and checks this list).
STEP_KEYS = ARCHITECTURE_KEYS + (
    "batch_size", "lr", "iterations", "decay_flag", "adam_b1", "adam_b2", "adam_eps", "weight_decay",
    "adv_weight", "cycle_weight", "identity_weight", "cam_weight", "recon_weight", "gan_type", "shard_state",
    "ema_decay",
)  # fmt: skip


def jitted_step(config, graphdefs, g_tx, d_tx, mesh, state_shardings):
    """The run's jitted train step, kept per (``STEP_KEYS`` values, devices): a process that trains the same setup
    again (tests, a notebook) reuses the traced and compiled program instead of tracing it and loading it from the
    persistent cache (seconds each on a CPU). With the compilation cache on, a new process loads the traced step
    from disk too (``step_cache``): a warm start then neither traces nor compiles it."""
    key = (tuple(config.get(k) for k in STEP_KEYS), tuple(d.id for d in mesh.devices.flat), mesh.axis_names)

    def make():
        step_fn = make_step(config, graphdefs, g_tx, d_tx, mesh)
        jit_fn = lambda fn: parallel.jit_train_step(fn, mesh, state_sharding=state_shardings)
        cache_dir = jax.config.jax_compilation_cache_dir
        if not cache_dir:
            return jit_fn(step_fn)
        return step_cache.ExportedStep(step_fn, key, mesh, jit_fn, os.path.join(cache_dir, step_cache.SUBDIR))

    return remember(_STEPS, key, make, limit=4)


_STEPS: dict = {}


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


class StopSignal:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves and exits cleanly."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave handlers alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C aborts at once
        self.received = signum
        log.warning("received %s: finishing this step, saving a checkpoint, then exiting", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _tensorboardx_writer_class():
    """tensorboardX's ``SummaryWriter``, imported with torch hidden unless torch is loaded already: its writer
    module imports torch, when installed, only to accept torch tensors (we log numpy), which added seconds to every
    start with the ``[torch]`` extra installed (``docs/speed.md``)."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter as writer_class
    finally:
        if hide:
            del sys.modules["torch"]
    return writer_class


class SummaryWriter:
    """TensorBoard event files (process 0 only), via tensorboardX: no TensorFlow needed."""

    def __init__(self, logdir: str, enabled: bool):
        self._writer = None
        if enabled:
            self._writer = _tensorboardx_writer_class()(logdir, flush_secs=30)
            _quiet_event_thread_errors()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        if self._writer:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        file_writers = list((writer.all_writers or {}).values())
        try:
            writer.close()
        except OSError as error:  # a full disk: the run ends with its own message; this must not add tracebacks
            log.warning("TensorBoard events not all written: %s", error)
            for file_writer in file_writers:
                _abandon_events(getattr(file_writer, "event_writer", None))


def _quiet_event_thread_errors() -> None:
    """tensorboardX writes events from a thread of its own; when the disk fills there, the thread dies with a
    traceback on stderr, in the middle of the run's one error line about the full disk. This reports such an
    OSError of that thread as one warning instead; every other thread exception reaches the previous hook."""
    if getattr(threading.excepthook, "quiets_event_writer", False):
        return
    previous = threading.excepthook

    def hook(args):
        frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
        if isinstance(args.exc_value, OSError) and any("tensorboardX" in f.filename for f in frames):
            log.warning("TensorBoard's event writer stopped: %s", args.exc_value)
            return
        previous(args)

    hook.quiets_event_writer = True
    threading.excepthook = hook


def _abandon_events(events) -> None:
    """Stop a tensorboardX event writer whose flush failed: its worker thread ends and its exit hook does nothing
    (else each prints a traceback at interpreter exit: the flush fails again, the worker reads a closed queue)."""
    if events is None or getattr(events, "_closed", True):
        return
    events._closed = True
    with contextlib.suppress(Exception):
        worker = events._worker
        if worker.is_alive():
            events._event_queue.put(worker._shutdown_signal, timeout=5)
            worker.join(timeout=5)
    with contextlib.suppress(Exception):
        events._event_queue.cancel_join_thread()
    with contextlib.suppress(Exception):
        events._ev_writer.close()


def spread_indices(n: int, k: int) -> list[int]:
    """``min(k, n)`` indices evenly spaced over ``range(n)``, first and last included: sorted splits (the emoji test
    split is in code point order) are then sampled across faces, objects, symbols and flags, not just the first."""
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def _spread_images(split, n: int, img_size: int) -> np.ndarray:
    """``n`` images spread over ``split`` (test transform); an unreadable one is replaced by the next readable."""
    return np.stack([data_lib.test_transform(split[i], img_size) for i in spread_indices(len(split), n)])


class Sampler:
    """Official-style sample strips from fixed train and test images, the same ones at every step, spread evenly
    over each split."""

    def __init__(self, config, source, graphdefs, workdir: str):
        n = config.num_samples
        splits = {"train": (source.train_a, source.train_b), "test": (source.test_a, source.test_b)}  # A, B
        self.images = {
            (name, direction): _spread_images(images, n, config.img_size)
            for name, pair in splits.items()
            for direction, images in zip(DIRECTIONS, pair)
        }
        self.family = get_family(config)
        self.fn = make_cycle_fn(self.family, graphdefs)
        self.dir = os.path.join(workdir, "samples")

    def __call__(self, state: TrainState, step: int, writer: SummaryWriter) -> None:
        nets = jax.device_get(translation_state(self.family, translating_params(state), state.sn))
        for (split, direction), images in self.images.items():
            image = strip(jax.device_get(self.fn(nets, images, direction)))
            save_png(image, os.path.join(self.dir, f"{direction}_{split}_{step:07d}.png"))
            writer.image(step, f"samples/{split}/{direction}", image)


class RunEvaluator:
    """The shared ``evaluation.evaluator.Evaluator`` on the train state; each record goes to
    ``workdir/eval/step_<N>.json``, the file ``python -m ugatit_jax.evaluate`` writes for a checkpoint."""

    def __init__(self, config, source, graphdefs, workdir: str):
        self.evaluator = Evaluator(source, config.img_size, classifier_steps=config.classifier_steps)
        self.family = get_family(config)
        self.bind = make_translators(self.family, graphdefs)
        self.workdir = workdir

    def __call__(self, state: TrainState, step: int) -> dict:
        nets = jax.device_get(translation_state(self.family, translating_params(state), state.sn))
        record = self.evaluator(self.bind(nets))
        averaged = " (EMA)" if state.ema else ""  # as ``load`` names a run's averaged model
        record = {"model": f"{os.path.basename(self.workdir)} step {step}{averaged}", "step": step, **record}
        write_record(record, os.path.join(self.workdir, "eval", f"step_{step}.json"))
        return record


METRICS_FILE = "metrics.jsonl"


def forget_after(workdir: str, step: int) -> None:
    """Drop what a run logged past ``step`` (the restored checkpoint): lines of ``metrics.jsonl`` and
    ``eval/step_<N>.json`` files. The resumed run logs those steps again, so curves never double back."""
    path = os.path.join(workdir, METRICS_FILE)
    if os.path.exists(path):
        kept = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    if int(json.loads(line)["step"]) <= step:
                        kept.append(line if line.endswith("\n") else line + "\n")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    for file in glob.glob(os.path.join(workdir, "eval", "step_*.json")):
        with contextlib.suppress(ValueError):
            if int(os.path.basename(file)[len("step_") : -len(".json")]) > step:
                os.remove(file)


def append_metrics(workdir: str, step: int, values: dict[str, float]) -> None:
    """One JSON line per log step in ``workdir/metrics.jsonl``: the loss curves of ``python -m ugatit_jax.report``."""
    line = json.dumps({"step": step, **{k: v for k, v in values.items() if np.isfinite(v)}})
    with open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8") as f:
        f.write(line + "\n")


def latest_evaluation(workdir: str) -> dict | None:
    """The evaluation record of the highest step in ``workdir/eval``, or None."""
    steps = []
    for file in glob.glob(os.path.join(workdir, "eval", "step_*.json")):
        with contextlib.suppress(ValueError):
            steps.append((int(os.path.basename(file)[len("step_") : -len(".json")]), file))
    for _, file in sorted(steps, reverse=True):
        with contextlib.suppress(OSError, ValueError), open(file, encoding="utf-8") as f:
            record = json.load(f)
            if isinstance(record, dict) and "scores" in record:
                return record
    return None


def finish_run(workdir: str) -> None:
    """End of training (process 0): the latest evaluation as a table, baseline beside each number, and the run
    report. Neither may fail the run: its checkpoints are already saved."""
    record = latest_evaluation(workdir)
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


class DivergedError(FloatingPointError):
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
    if config.shard_state and jax.process_count() > 1:
        raise ConfigError(
            "config.shard_state=true runs in one process for now (it may use many devices): the sampler and "
            "evaluator read the generator parameters on each process"
        )
    workdir = check_workdir(workdir)
    # One run per workdir (a second one stops here, having touched nothing); a full disk ends it with one line.
    with workdir_lock.hold(workdir), disk_errors(workdir):
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    enable_compilation_cache(config.xla_cache_dir)
    is_chief = jax.process_index() == 0

    mesh = parallel.make_mesh()
    memory.preflight(config, mesh, jitted_step)  # where device memory is known: a step that cannot fit stops here
    source = data_lib.get_source(config)
    train_iter = data_lib.make_train_iterator(source, **data_lib.config_options(config))
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    resuming = ckpt.latest_step() is not None
    g_tx, d_tx = make_optimizers(config)
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

    step_fn = jitted_step(config, graphdefs, g_tx, d_tx, mesh, state_shardings)
    batches = data_lib.prefetch_to_device(train_iter, parallel.batch_sharding(mesh), size=config.prefetch)
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"), enabled=is_chief)
    sampler = Sampler(config, source, graphdefs, workdir) if is_chief else None
    # Process 0 only: its numbers are the run's, and other hosts would only wait for it at the next step anyway.
    evaluator = RunEvaluator(config, source, graphdefs, workdir) if config.eval_every and is_chief else None
    if is_chief:
        forget_after(workdir, start)
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
                    append_metrics(workdir, step, values)
                bar.set_postfix(d_loss=f"{values['d_loss']:.3f}", g_loss=f"{values['g_loss']:.3f}")
                last = values
                t_window, steps_in_window = time.perf_counter(), 0
            if sampler and (step % config.sample_every == 0 or step == config.iterations):
                sampler(state, step, writer)
            if evaluator and (step % config.eval_every == 0 or step == config.iterations):
                record = evaluator(state, step)
                writer.scalars(step, record["scores"])
                last.update(record["scores"])
                log.info(
                    "step %d evaluated in %.1f s: %s",
                    step,
                    record["seconds"]["total"],
                    ", ".join(f"{k[len('eval/') :]}={v:.3f}" for k, v in record["scores"].items() if "_input" not in k),
                )
                t_window, steps_in_window = time.perf_counter(), 0  # keep evaluation out of step_time_ms
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
