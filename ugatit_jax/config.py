"""The configuration schema: every key a run understands, with the paper's values, and its validation.

Config files under ``configs/`` start from ``base_config()`` and change a few keys; ``validate`` rejects bad values
with a message naming the option, so a typo fails before any compilation.
"""

from __future__ import annotations

import os
import re

import ml_collections

from ugatit_jax.errors import ExpectedError
from ugatit_jax.xla import compilation_cache

COMPUTE_DTYPES = ("float32", "bfloat16")
MODELS = ("ugatit", "nice")
DATASETS = ("emoji", "folder", "tfds", "synthetic")


class ConfigError(ExpectedError, ValueError):
    """A config value that cannot work; the message names the option."""


def base_config() -> ml_collections.ConfigDict:
    """The paper's setting: full U-GAT-IT at 256 px, batch 1, 1M iterations, on a folder dataset."""
    c = ml_collections.ConfigDict()

    # Model (the official flags --ch, --n_res, --img_size, --light; discriminator depths are fixed there).
    c.model = "ugatit"  # the family: "ugatit" (Kim et al. 2020) or "nice" (NICE-GAN, Chen et al. 2020)
    c.light = False
    c.ch = 64
    c.n_res = 4
    c.img_size = 256
    c.disc_global_layers = 7
    c.disc_local_layers = 5
    # U-GAT-IT only: the discriminators' base width; 0 = ch (the official code has one --ch for all six networks).
    # A wider discriminator at a small ch costs nothing at translation time: only the generators are shipped.
    c.disc_ch = 0
    c.n_dis = 7  # NICE-GAN only: discriminator depth (its local and global heads share the encoder)
    c.compute_dtype = "float32"  # or "bfloat16": params, optimiser state and normalisation stay float32
    c.remat = False  # recompute residual blocks in the backward pass to save memory
    # Split parameters and both Adam states over the devices of all processes (FSDP-style: each array along its
    # largest dimension divisible by the device count, replicated if none) instead of a full copy on every device:
    # ~1/N of the state's memory per device for some all-gather traffic; same results. Checkpoints move freely
    # between both.
    c.shard_state = False
    # Memory per device the run may plan for, e.g. "16GiB", "80GB", "1.5e10" (bytes): before the first step the
    # compiled step's need is checked against it, and a run that would not fit stops naming a variant that does.
    # "" = what a GPU or TPU reports (a CPU reports none: no check); the UGATIT_DEVICE_MEMORY variable also sets it.
    c.device_memory = ""

    # Data.
    c.dataset = "folder"  # "emoji" (embedded), "folder" (root/{trainA,...,testB}), "tfds", "synthetic"
    c.dataset_dir = ""  # folder root; emoji cache dir ("" = ~/.cache/ugatit_jax/emoji); TFDS data_dir
    c.tfds_name = ""  # e.g. "cycle_gan/horse2zebra" when dataset == "tfds"
    c.crop_margin = 30  # train augmentation: resize to img_size + crop_margin, random img_size crop (official: 30)
    c.emoji_limit = 0  # build only the first N emoji (0 = all); for quick experiments
    c.num_workers = 0  # grain worker processes for decoding/augmenting (0 = in the main process)
    c.prefetch = 2  # batches kept in flight on the devices

    # Optimisation (official defaults).
    c.iterations = 1_000_000
    c.batch_size = 1  # global batch, split over all devices
    c.lr = 1e-4
    c.decay_flag = True  # constant lr for the first half, then linear to 0
    c.weight_decay = 1e-4  # coupled L2, as torch Adam(weight_decay=...)
    c.adam_b1 = 0.5
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.gan_type = "lsgan"  # or "hinge"
    c.adv_weight = 1.0
    c.cycle_weight = 10.0
    c.identity_weight = 10.0
    c.cam_weight = 1000.0
    c.recon_weight = 10.0  # NICE-GAN only: L1 of decoding each domain's own code (it has no identity loss)
    # Exponential moving average of the translating networks' parameters, updated inside the step with the
    # warm-up min(ema_decay, (1 + t) / (10 + t)); translations (samples, evaluation, translate, export, load) use
    # it. 0 = off: the official step exactly, and no average in the state or the checkpoints.
    c.ema_decay = 0.0
    c.seed = 0
    c.init_checkpoint = ""  # an official PyTorch .pt to fine-tune from

    # Logging and checkpoints.
    c.log_every = 100
    c.sample_every = 1000
    c.num_samples = 5  # images per strip, from train and from test
    c.eval_every = 10_000  # paired L1/PSNR on held-out pairs (datasets that have them); 0 = never
    # Training steps of the evaluation's domain classifier; 0 = the recipe's (domain_classifier.STEPS, behind the
    # README's numbers). Another count trains and caches a classifier of its own: a quick check, not comparable.
    c.classifier_steps = 0
    c.checkpoint_every = 10_000
    c.keep_checkpoints = 3
    c.xla_cache_dir = compilation_cache.DEFAULT_DIR  # persistent compilation cache ("" = off)
    # Multi-process runs: seconds without a finished step before every process ends with one error line naming the
    # step and the processes that did not answer (exit status 3), instead of idling forever in a collective that
    # never completes; 0 = off. Must outlast the longest evaluation, sample strip or checkpoint save.
    c.stall_timeout = 600.0
    return c


# Units of a memory size: decimal with a B (GB = 10**9), binary with an iB (GiB = 2**30); a bare K, M, G, T counts
# binary, as nvidia-smi and container limits do.
_SIZE_UNITS = {"": 1, "b": 1} | {
    form.format(p): base**power
    for power, p in enumerate("kmgt", start=1)
    for form, base in (("{}", 1024), ("{}ib", 1024), ("{}b", 1000))
}


def parse_size(text) -> int:
    """Bytes in a memory size such as ``"16GiB"``, ``"80GB"``, ``"16G"`` (= GiB) or ``"1.5e10"`` (bytes).

    Raises ValueError whose message says what is accepted."""
    match = re.fullmatch(r"\s*(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and _SIZE_UNITS.get(match[2].lower())
    if not unit or not 0 < float(match[1]) * unit < 2**63:
        raise ValueError(f"{text!r} is not a memory size; give one such as 16GiB, 80GB or 1.5e10 (bytes)")
    return int(float(match[1]) * unit)


def sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``name`` in the folder of ``config_file`` (a config file's ``__file__``):
    config files are loaded by path, not imported as a package, so one that extends another loads it this way."""
    import importlib.util
    import pathlib

    path = pathlib.Path(config_file).with_name(name)
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def validate(c: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
    """Raise ConfigError naming the first bad option."""

    def need(ok, key, why):
        if not ok:
            raise ConfigError(f"config.{key}={c[key]!r}: {why}")

    need(c.model in MODELS, "model", f"must be one of {MODELS}")
    need(c.img_size > 0 and c.img_size % 4 == 0, "img_size", "must be a positive multiple of 4")
    need(c.ch > 0, "ch", "must be positive")
    need(c.n_res >= 0, "n_res", "must be >= 0")
    need(c.disc_ch >= 0, "disc_ch", "must be >= 0 (0 = ch)")
    need(c.model == "ugatit" or c.disc_ch == 0, "disc_ch", "is U-GAT-IT's: NICE-GAN's discriminator is its encoder")
    # NICE-GAN's global head has n_dis - 2 stride-2 convs like a U-GAT-IT discriminator of n_dis layers.
    depth_keys = ("disc_global_layers", "disc_local_layers") if c.model == "ugatit" else ("n_dis",)
    need(c.model != "nice" or c.n_dis >= 6, "n_dis", "must be at least 6 (the official layer ranges need it)")
    for key in depth_keys:
        need(c[key] >= 3, key, "must be at least 3")
        # n - 2 stride-2 convs, then two 4x4 stride-1 convs (each shrinks by 1) must leave >= 1 pixel.
        need(
            c.img_size // 2 ** (c[key] - 2) >= 3,
            key,
            f"too deep for img_size {c.img_size}: the output would be empty; use fewer layers or larger images",
        )
    need(c.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"must be one of {COMPUTE_DTYPES}")
    need(c.dataset in DATASETS, "dataset", f"must be one of {DATASETS}")
    need(
        c.dataset != "folder" or bool(c.dataset_dir),
        "dataset_dir",
        "a folder dataset needs --config.dataset_dir=ROOT with trainA/ trainB/ testA/ testB/",
    )
    need(c.dataset != "tfds" or bool(c.tfds_name), "tfds_name", "a TFDS dataset needs e.g. cycle_gan/horse2zebra")
    need(c.iterations > 0, "iterations", "must be positive")
    need(c.batch_size > 0, "batch_size", "must be positive")
    if device_count is not None:
        need(
            c.batch_size % device_count == 0,
            "batch_size",
            f"must be divisible by the number of devices ({device_count})",
        )
    need(c.lr > 0, "lr", "must be positive")
    need(c.weight_decay >= 0, "weight_decay", "must be >= 0")
    need(0 <= c.adam_b1 < 1, "adam_b1", "must lie in [0, 1)")
    need(0 <= c.adam_b2 < 1, "adam_b2", "must lie in [0, 1)")
    need(c.adam_eps > 0, "adam_eps", "must be positive")
    need(0 <= c.ema_decay < 1, "ema_decay", "must lie in [0, 1) (0 = no average; e.g. 0.999)")
    need(c.gan_type in ("lsgan", "hinge"), "gan_type", "must be 'lsgan' or 'hinge'")
    for key in ("adv_weight", "cycle_weight", "identity_weight", "cam_weight"):
        need(c[key] >= 0, key, "must be >= 0")
    for key in ("log_every", "sample_every", "checkpoint_every"):
        need(c[key] > 0, key, "must be positive")
    need(c.eval_every >= 0, "eval_every", "must be >= 0 (0 = never)")
    need(c.classifier_steps >= 0, "classifier_steps", "must be >= 0 (0 = the recipe's)")
    need(c.keep_checkpoints > 0, "keep_checkpoints", "must be positive")
    need(c.num_samples > 0, "num_samples", "must be positive")
    need(c.num_workers >= 0, "num_workers", "must be >= 0")
    need(c.prefetch >= 1, "prefetch", "must be >= 1")
    need(c.stall_timeout >= 0, "stall_timeout", "must be >= 0 seconds (0 = off)")
    need(c.emoji_limit >= 0, "emoji_limit", "must be >= 0")
    need(c.crop_margin >= 0, "crop_margin", "must be >= 0 (0 = resize only, no random crop)")
    need(_is_size(c.get("device_memory", "")), "device_memory", "must be a memory size such as 16GiB or 80GB")
    need(
        not c.init_checkpoint or os.path.isfile(os.path.expanduser(c.init_checkpoint)),
        "init_checkpoint",
        "file not found",
    )


def _is_size(text: str) -> bool:
    """Whether ``text`` is empty (the device's own report) or a size ``parse_size`` reads."""
    try:
        return text == "" or parse_size(text) > 0
    except ValueError:
        return False
