"""The training loop: data -> jitted pure step -> metrics, samples, evaluation and checkpoints.

``train_and_evaluate(config, workdir)`` is the whole job; ``train.py`` only parses flags. Re-running with the
same workdir resumes from the latest checkpoint (state, optimiser, spectral-norm vectors, step and the data
pipeline's position), so an interrupted run ends with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ugatit_jax import data as data_lib
from ugatit_jax.config import ConfigError, validate
from ugatit_jax.evaluation import metrics as metrics_lib
from ugatit_jax.evaluation.visualize import save_png, strip
from ugatit_jax.inference import make_cycle_fn, padded_batches
from ugatit_jax.interop import torch_import
from ugatit_jax.models.ugatit import UGATIT
from ugatit_jax.train import optim, parallel
from ugatit_jax.train.checkpoints import Checkpointer, abstract_like
from ugatit_jax.train.state import G_NAMES, TrainState, create_train_state, update_model
from ugatit_jax.train.step import make_train_step

log = logging.getLogger("ugatit_jax")


def build_model(config: ml_collections.ConfigDict, seed: int | None = None) -> UGATIT:
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else None
    return UGATIT(
        config.ch,
        config.n_res,
        config.img_size,
        config.light,
        config.disc_global_layers,
        config.disc_local_layers,
        dtype=dtype,
        remat=config.remat,
        rngs=nnx.Rngs(config.seed if seed is None else seed),
    )


def make_optimizers(config):
    kwargs = dict(
        lr=config.lr,
        iterations=config.iterations,
        decay=config.decay_flag,
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )
    return optim.make_optimizer(**kwargs), optim.make_optimizer(**kwargs)


def make_step(config, graphdefs, g_tx, d_tx):
    return make_train_step(
        graphdefs,
        g_tx=g_tx,
        d_tx=d_tx,
        lr_schedule=optim.learning_rate_schedule(config.lr, config.iterations, config.decay_flag),
        adv_weight=config.adv_weight,
        cycle_weight=config.cycle_weight,
        identity_weight=config.identity_weight,
        cam_weight=config.cam_weight,
        gan_type=config.gan_type,
    )


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


def enable_compilation_cache(cache_dir: str) -> None:
    """Persistent XLA cache: a resumed or repeated run skips recompiling the step."""
    if not cache_dir:
        return
    path = os.path.abspath(os.path.expanduser(cache_dir))
    with contextlib.suppress(OSError):
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


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


class SummaryWriter:
    """TensorBoard event files (process 0 only), via tensorboardX: no TensorFlow needed."""

    def __init__(self, logdir: str, enabled: bool):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter as TBWriter

            self._writer = TBWriter(logdir, flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        if self._writer:
            self._writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._writer:
            self._writer.close()


def _first_images(split, n: int, img_size: int) -> np.ndarray:
    batch = next(iter(data_lib.iterate_test(split, img_size=img_size, batch_size=n)))[0]
    return batch


class Sampler:
    """Official-style sample strips from fixed train and test images (the same ones every time)."""

    def __init__(self, config, source, graphdefs, workdir: str):
        n = config.num_samples
        self.images = {
            ("train", "A2B"): _first_images(source.train_a, n, config.img_size),
            ("train", "B2A"): _first_images(source.train_b, n, config.img_size),
            ("test", "A2B"): _first_images(source.test_a, n, config.img_size),
            ("test", "B2A"): _first_images(source.test_b, n, config.img_size),
        }
        self.fn = make_cycle_fn(graphdefs["genA2B"], graphdefs["genB2A"])
        self.dir = os.path.join(workdir, "samples")

    def __call__(self, state: TrainState, step: int, writer: SummaryWriter) -> None:
        params = jax.device_get({n: state.params[n] for n in G_NAMES})
        for (split, direction), images in self.images.items():
            a2b, b2a = ("genA2B", "genB2A") if direction == "A2B" else ("genB2A", "genA2B")
            image = strip(jax.device_get(self.fn(params[a2b], params[b2a], images)))
            save_png(image, os.path.join(self.dir, f"{direction}_{split}_{step:07d}.png"))
            writer.image(step, f"samples/{split}/{direction}", image)


class PairedEvaluator:
    """L1 / PSNR / SSIM of translations against held-out ground truth (datasets with test pairs, e.g. emoji)."""

    def __init__(self, config, source, graphdefs, batch_size: int = 32):
        self.pairs = source.test_pairs
        self.config = config
        self.source = source
        self.batch_size = batch_size
        self.fn = make_cycle_fn(graphdefs["genA2B"], graphdefs["genB2A"])
        self._images = None

    def _load(self):
        if self._images is None:
            size = self.config.img_size
            load = lambda split, i: data_lib.test_transform(split.load(i), size)
            self._images = (
                np.stack([load(self.source.test_a, ia) for _, ia, _ in self.pairs]),
                np.stack([load(self.source.test_b, ib) for _, _, ib in self.pairs]),
            )
        return self._images

    def __call__(self, state: TrainState) -> dict[str, float]:
        if not self.pairs:
            return {}
        images_a, images_b = self._load()
        params = jax.device_get({n: state.params[n] for n in G_NAMES})
        out = {}
        for name, src, tgt, a2b, b2a in (
            ("A2B", images_a, images_b, "genA2B", "genB2A"),
            ("B2A", images_b, images_a, "genB2A", "genA2B"),
        ):
            fakes = []
            for batch, n in padded_batches(list(src), self.batch_size):
                fakes.append(np.asarray(self.fn(params[a2b], params[b2a], batch)["fake"][:n]))
            fake = data_lib.to_uint8(np.concatenate(fakes))
            out[f"eval/{name}_l1"] = float(metrics_lib.l1(fake, tgt))
            out[f"eval/{name}_psnr"] = float(metrics_lib.psnr(fake, tgt))
            out[f"eval/{name}_ssim"] = float(metrics_lib.ssim(fake, tgt))
            out[f"eval/{name}_l1_input_baseline"] = float(metrics_lib.l1(src, tgt))
        return out


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
    workdir = check_workdir(workdir)
    enable_compilation_cache(config.xla_cache_dir)
    is_chief = jax.process_index() == 0

    mesh = parallel.make_mesh()
    source = data_lib.get_source(config)
    model = build_model(config)
    if config.init_checkpoint:
        torch_import.load_official_checkpoint(model, os.path.expanduser(config.init_checkpoint))
        log.info("initialised from official checkpoint %s", config.init_checkpoint)
    g_tx, d_tx = make_optimizers(config)
    graphdefs, state = create_train_state(model, g_tx, d_tx)
    del model
    state = parallel.replicate(state, mesh)

    train_iter = data_lib.make_train_iterator(
        source,
        img_size=config.img_size,
        global_batch_size=config.batch_size,
        seed=config.seed,
        crop_margin=config.crop_margin,
        num_workers=config.num_workers,
    )
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
    if ckpt.latest_step() is not None:
        state, data_state, _ = ckpt.restore(abstract_like(state, parallel.replicated(mesh)))
        if data_state:
            train_iter.set_state(data_state)
        log.info("resumed from %s at step %d", ckpt.directory, int(state.step))
    start = int(jax.device_get(state.step))

    step_fn = parallel.jit_train_step(make_step(config, graphdefs, g_tx, d_tx), mesh)
    batches = data_lib.prefetch_to_device(train_iter, parallel.batch_sharding(mesh), size=config.prefetch)
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"), enabled=is_chief)
    sampler = Sampler(config, source, graphdefs, workdir) if is_chief else None
    evaluator = PairedEvaluator(config, source, graphdefs) if config.eval_every else None
    last: dict[str, Any] = {}
    images_per_step = 2 * config.batch_size  # one batch of each domain

    with ckpt, StopSignal() as stop, _progress(config.iterations, start, is_chief) as bar:
        t_window, steps_in_window = time.perf_counter(), 0
        step = start
        while step < config.iterations and stop.received is None:
            batch = next(batches)
            if step == start:
                t_compile = time.perf_counter()
            state, metrics = step_fn(state, batch)
            step += 1
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
                bar.set_postfix(d_loss=f"{values['d_loss']:.3f}", g_loss=f"{values['g_loss']:.3f}")
                last = values
                t_window, steps_in_window = time.perf_counter(), 0
            if sampler and (step % config.sample_every == 0 or step == config.iterations):
                sampler(state, step, writer)
            if evaluator and (step % config.eval_every == 0 or step == config.iterations):
                scores = evaluator(state)
                writer.scalars(step, scores)
                last.update(scores)
                if scores and is_chief:
                    log.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
            if step % config.checkpoint_every == 0 or step == config.iterations or stop.received is not None:
                # Never let a diverged state replace the last good checkpoint.
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(step, values, ckpt, params=state.params)
                ckpt.save(step, state, batches.get_state(), config, force=True)
    batches.close()
    writer.close()
    skipped = train_iter.skipped
    if skipped and is_chief:
        log.warning("%d unreadable training image(s) were skipped: %s", len(skipped), ", ".join(sorted(skipped)))
    last["step"] = step
    last["skipped_images"] = len(skipped)
    return last


def load_trained_model(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, UGATIT, int]:
    """(config, model with the checkpoint's weights, step) from a training run's workdir, on the default device.

    The config comes from the checkpoint itself, so a model is always rebuilt with the shapes it was trained with.
    """
    with Checkpointer(workdir, read_only=True) as ckpt:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise ConfigError(f"--workdir={workdir}: no checkpoint found in {ckpt.directory}")
        if step not in ckpt.all_steps():
            raise ConfigError(f"--step={step}: no such checkpoint in {ckpt.directory}; available: {ckpt.all_steps()}")
        config = ml_collections.ConfigDict(ckpt.read_config(step))
        g_tx, d_tx = make_optimizers(config)
        _, abstract_state = nnx.eval_shape(lambda: create_train_state(build_model(config), g_tx, d_tx))
        device = jax.devices()[0]
        sharding = jax.sharding.SingleDeviceSharding(device)
        state, _, _ = ckpt.restore(abstract_like(abstract_state, sharding), step)
    # The checkpoint overwrites every array: skip random initialisation (dozens of small eager compiles).
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(config)))
    zeros = jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype), device), abstract)
    model = update_model(nnx.merge(graphdef, zeros), state)
    model.eval()
    return config, model, int(step)
