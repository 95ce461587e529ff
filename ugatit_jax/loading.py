"""Load a trained model for inference, from a training run or an official PyTorch checkpoint, either family::

    from ugatit_jax import load
    model = load("runs/emoji")                       # a train.py run: latest checkpoint (or step=N)
    image, cam_logit, heatmap = model.translate(images, "A2B")   # images uint8 or [-1, 1], (B, H, W, 3)

    model = load("selfie2anime_params_latest.pt", light=True)    # official U-GAT-IT .pt (paper shape by default)
    model = load("horse2zebra_params_latest.pt", model="nice", light=True)   # official NICE-GAN .pt

Nothing here imports the trainer. Weights are restored into a zero-filled model (``models.family.empty_model``),
never randomly initialised first: that would compile one XLA program per weight shape and fill memory twice.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from flax import nnx

from ugatit_jax import run_dir
from ugatit_jax.config import ConfigError
from ugatit_jax.directions import DIRECTIONS
from ugatit_jax.inference import make_cycle_fn, make_translate_fn, translation_state
from ugatit_jax.models.family import Family, abstract_model, empty_model, get_family
from ugatit_jax.nn.spectral_norm import PowerIterationState

# The official releases' default model shapes, for an official checkpoint whose shape flags are not given.
PAPER_SHAPE = {
    "ugatit": {"img_size": 256, "ch": 64, "n_res": 4, "light": False},
    "nice": {"img_size": 256, "ch": 64, "n_res": 6, "n_dis": 7, "light": False},
}


@dataclasses.dataclass
class Translator:
    """A trained model's translating networks and what it was trained with.

    ``state`` maps each network a translation reads to its (params, spectral-norm state), on the default device.
    """

    family: Family
    graphdefs: Mapping[str, nnx.GraphDef]
    state: dict
    img_size: int
    config: ml_collections.ConfigDict | None  # the run's config (None for an official checkpoint)
    step: int | None
    name: str  # for titles and evaluation records

    def __post_init__(self):
        self._translate = make_translate_fn(self.family, self.graphdefs)
        self._cycle = None

    @classmethod
    def from_model(cls, model: nnx.Module, family: Family, img_size: int, *, config=None, step=None, name="model"):
        """Any family container (e.g. ``UGATIT``, ``NICE``) holding at least the translating networks."""
        graphdefs, params, sn = _split_translating(model, family)
        state = jax.device_put(translation_state(family, params, sn))
        return cls(family, graphdefs, state, img_size, config, step, name)

    def translate(self, images, direction: str):
        """``(image float32 in [-1, 1], cam_logit, heatmap)`` for a batch (B, H, W, 3), uint8 or in [-1, 1]."""
        check_direction(direction)
        return self._translate(self.state, images, direction)

    def cycle(self, images, direction: str) -> dict:
        """Identity, translation and cycle images with their heat maps (the official sample strip's rows)."""
        check_direction(direction)
        if self._cycle is None:
            self._cycle = make_cycle_fn(self.family, self.graphdefs)
        return self._cycle(self.state, images, direction)

    @property
    def translate_fn(self):
        """The jitted ``fn(state, images, direction)`` behind ``translate`` (to ``.lower`` it ahead of time)."""
        return self._translate


def _split_translating(model: nnx.Module, family: Family) -> tuple[dict, dict, dict]:
    """(graph definitions, params, power-iteration vectors) of the networks a translation reads, by name."""
    graphdefs, params, sn = {}, {}, {}
    for n in family.translating:
        graphdefs[n], p, s = nnx.split(getattr(model, n), nnx.Param, PowerIterationState)
        params[n], sn[n] = nnx.as_pure(p), nnx.as_pure(s)
    return graphdefs, params, sn


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction {direction!r}: use one of {DIRECTIONS}")


def run_dir_or_fail(workdir: str) -> str:
    """The run folder; checked here because Orbax would silently create a mistyped one."""
    path = run_dir.path(workdir)
    if not os.path.isdir(run_dir.checkpoints_dir(path)):
        what = "does not exist" if not os.path.exists(path) else f"holds no {run_dir.CHECKPOINTS}/ folder"
        raise ConfigError(f"--workdir={workdir}: {what}; pass the --workdir of a train.py run")
    return path


def _step_and_config(ckpt, workdir: str, step: int | None) -> tuple[int, ml_collections.ConfigDict]:
    """The checkpoint step to read (latest when None) and the config it was saved with."""
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise ConfigError(f"--workdir={workdir}: no checkpoint found in {ckpt.directory}")
    if step not in ckpt.all_steps():
        raise ConfigError(f"--step={step}: no such checkpoint in {ckpt.directory}; available: {ckpt.all_steps()}")
    saved = ckpt.read_config(step)
    _warn_unknown_keys(saved, workdir)
    return step, ml_collections.ConfigDict(saved)


def _warn_unknown_keys(saved: dict, workdir: str) -> None:
    """A run saved by a newer version may hold options this one does not know; they are ignored, so say so."""
    import warnings

    from ugatit_jax.config import base_config

    unknown = sorted(set(saved) - set(base_config().keys()))
    if unknown:
        warnings.warn(
            f"--workdir={workdir}: its config holds keys this version of ugatit-jax does not know "
            f"({', '.join(unknown)}): saved by a newer version? They are ignored; upgrade ugatit-jax if the run "
            "does not load or its outputs look wrong",
            stacklevel=2,
        )


def restore_run(
    workdir: str, step: int | None = None, *, ema: bool = True
) -> tuple[ml_collections.ConfigDict, nnx.Module, int]:
    """(config, model in eval mode with the checkpoint's weights, step) of a run, on the default device: every
    network, e.g. to write the official ``.pt`` format (``interop.torch_import.save_official_checkpoint``).

    The config comes from the checkpoint itself, so the model is rebuilt with the shapes it was trained with. A run
    trained with ``config.ema_decay`` > 0 gives its translating networks the averaged parameters unless ``ema`` is
    False. ``load_run`` reads only the networks a translation needs.
    """
    from ugatit_jax.train.checkpoints import Checkpointer, abstract_like
    from ugatit_jax.train.optim import make_optimizers
    from ugatit_jax.train.state import abstract_train_state, update_model

    path = run_dir_or_fail(workdir)
    with Checkpointer(path, read_only=True) as ckpt:
        step, config = _step_and_config(ckpt, workdir, step)
        g_tx, d_tx = make_optimizers(config)
        _, abstract_state = abstract_train_state(config, g_tx, d_tx)
        device = jax.devices()[0]
        state, _, _ = ckpt.restore(abstract_like(abstract_state, jax.sharding.SingleDeviceSharding(device)), step)
    model = update_model(empty_model(config, device), state)
    if ema and state.ema:
        for name, params in state.ema.items():
            nnx.update(getattr(model, name), params)
    model.eval()
    return config, model, int(step)


def load_run(workdir: str, step: int | None = None, *, ema: bool = True) -> Translator:
    """The translating networks of a training run (latest checkpoint, or ``step``).

    A run trained with ``config.ema_decay`` > 0 keeps an average of their parameters, and translates with it
    unless ``ema`` is False (the trained parameters themselves). Only those arrays and the spectral-norm vectors
    are read from the checkpoint (not the other networks, not the optimiser moments).
    """
    from ugatit_jax.train.checkpoints import Checkpointer, abstract_like

    path = run_dir_or_fail(workdir)
    with Checkpointer(path, read_only=True) as ckpt:
        step, config = _step_and_config(ckpt, workdir, step)
        family = get_family(config)
        model = nnx.merge(*abstract_model(config))  # shapes only: the target of the restore
        model.eval()
        graphdefs, params, sn = _split_translating(model, family)
        averaged = ema and config.get("ema_decay", 0.0) > 0
        field = "ema" if averaged else "params"  # the state's field (``TrainState.ema`` / ``.params``)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        part = ckpt.restore_part(abstract_like({field: params, "sn": sn}, device), step)
    state = translation_state(family, part[field], part["sn"])  # restored onto ``device`` already
    name = f"{os.path.basename(path)} step {step}" + (" (EMA)" if averaged else "")
    return Translator(family, graphdefs, state, config.img_size, config, int(step), name)


# The models shipped in the package (``load("emoji")``): one folder each, holding the translating networks' arrays
# (``weights.msgpack``: flax's msgpack serialization, which restores plain arrays and never unpickles), the
# config they were trained with (``config.json``) and ``MODEL_CARD.md``.
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
WEIGHTS_FILE, CONFIG_FILE = "weights.msgpack", "config.json"


def pretrained_names() -> list[str]:
    """The names ``load`` accepts for a shipped model."""
    if not os.path.isdir(PRETRAINED_DIR):
        return []
    names = os.listdir(PRETRAINED_DIR)
    return sorted(n for n in names if os.path.isfile(os.path.join(PRETRAINED_DIR, n, WEIGHTS_FILE)))


def load_pretrained(name: str) -> Translator:
    """A model shipped in the package, by name (``pretrained_names``); nothing is downloaded."""
    import json

    from flax import serialization

    if name not in pretrained_names():
        available = ", ".join(pretrained_names()) or "none"
        raise ConfigError(f"--pretrained {name}: no such shipped model; available: {available}")
    folder = os.path.join(PRETRAINED_DIR, name)
    with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
        saved = json.load(f)
    config = ml_collections.ConfigDict(saved["config"])
    family = get_family(config)
    model = nnx.merge(*abstract_model(config))  # shapes only: the arrays come from the file
    model.eval()
    graphdefs, params, sn = _split_translating(model, family)
    with open(os.path.join(folder, WEIGHTS_FILE), "rb") as f:
        arrays = serialization.msgpack_restore(f.read())
    for n in family.translating:
        for target, kind in ((params[n], "params"), (sn[n], "sn")):
            wanted = [(x.shape, x.dtype) for x in jax.tree.leaves(target)]
            try:
                nnx.replace_by_pure_dict(target, arrays[n][kind])
            except (KeyError, ValueError, TypeError) as error:
                raise ConfigError(f"shipped model {name}: {WEIGHTS_FILE} does not fit its config ({error})") from None
            if [(x.shape, x.dtype) for x in jax.tree.leaves(target)] != wanted:
                raise ConfigError(f"shipped model {name}: {WEIGHTS_FILE} does not fit its config ({n} {kind} shapes)")
    state = jax.device_put(translation_state(family, params, sn))
    return Translator(family, graphdefs, state, config.img_size, config, saved.get("step"), f"pretrained {name}")


def save_pretrained(model: Translator, folder: str) -> str:
    """Write ``model`` (a run's, e.g. ``load_run``) as a shipped-model folder that ``load_pretrained`` reads;
    returns the weights file's path."""
    import json

    from flax import serialization

    os.makedirs(folder, exist_ok=True)
    arrays = {n: {"params": nnx.to_pure_dict(p), "sn": nnx.to_pure_dict(s)} for n, (p, s) in model.state.items()}
    path = os.path.join(folder, WEIGHTS_FILE)
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(jax.device_get(arrays)))
    with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump({"step": model.step, "source": model.name, "config": model.config.to_dict()}, f, indent=1)
    return path


def official_config(model: str = "ugatit", **shape: Any) -> ml_collections.ConfigDict:
    """The config of an official checkpoint's model: the release's defaults, overridden by ``shape`` (None = keep)."""
    if model not in PAPER_SHAPE:
        raise ConfigError(f"--model {model}: use one of {sorted(PAPER_SHAPE)}")
    from ugatit_jax.config import base_config

    config = base_config()
    config.model = model
    config.update({k: v for k, v in {**PAPER_SHAPE[model], **shape}.items() if v is not None})
    if config.img_size <= 0 or config.img_size % 4 or config.ch <= 0 or config.n_res < 0:
        raise ConfigError(
            f"--img-size {config.img_size} --ch {config.ch} --n-res {config.n_res}: img_size must be a positive "
            "multiple of 4, ch positive and n_res >= 0"
        )
    return config


def _other_family(dicts: dict, model: str) -> str | None:
    """The other model family when ``dicts`` holds every translating network of it and none of ``model``'s."""
    ours = get_family(official_config(model)).translating
    for other in PAPER_SHAPE:
        theirs = get_family(official_config(other)).translating
        if other != model and all(n in dicts for n in theirs) and not any(n in dicts for n in ours):
            return other
    return None


def load_official(path: str, *, model: str = "ugatit", **shape: Any) -> Translator:
    """The translating networks of an official PyTorch checkpoint (only those are built and read)."""
    from ugatit_jax.interop.torch_import import (
        CheckpointMismatchError,
        load_official_checkpoint,
        read_official_checkpoint,
    )

    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConfigError(f"--checkpoint={path}: file not found; pass an official {model} .pt file")
    config = official_config(model, **shape)
    family = get_family(config)
    net = empty_model(config)
    names = family.translating
    described = ", ".join(f"{k} {config[k]}" for k in PAPER_SHAPE[model] if k != "light")
    described += ", light" if config.light else ", full"
    try:
        dicts = read_official_checkpoint(path)
    except CheckpointMismatchError as error:  # not a file of state dicts: the shape flags cannot help
        raise CheckpointMismatchError(f"--checkpoint: {error}") from error
    other = _other_family(dicts, model)
    if other is not None:
        raise CheckpointMismatchError(
            f"--checkpoint={path}: holds the networks of a {other} checkpoint ({', '.join(sorted(dicts))}), not "
            f"{model}'s: pass --model {other}"
        )
    try:
        load_official_checkpoint(net, dicts, networks=names)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(
            f"--checkpoint={path}: {error}; the model was built as {model} ({described}): pass the shape flags "
            "(--img-size, --ch, --n-res, --light, --n-dis) the checkpoint was trained with"
        ) from error
    net.eval()
    name = f"{os.path.basename(path)} ({model}, {described})"
    return Translator.from_model(net, family, config.img_size, name=name)


def load(path: str, *, step: int | None = None, ema: bool = True, model: str = "ugatit", **shape: Any) -> Translator:
    """A run folder (``train.py --workdir``), an official ``.pt`` file or a shipped model's name (``"emoji"``; an
    existing file or folder of that name comes first), as a ``Translator``.

    ``step`` picks a run's checkpoint; ``ema=False`` its trained parameters instead of their average (runs
    trained with ``config.ema_decay`` > 0; others have only the trained ones); ``model`` ("ugatit" / "nice") and
    ``shape`` (``img_size``, ``ch``, ``n_res``, ``light``, ``n_dis``) describe an official checkpoint, defaulting
    to that release's paper shape.
    """
    if os.path.isdir(os.path.expanduser(path)):
        return load_run(path, step, ema=ema)
    if not os.path.exists(os.path.expanduser(path)) and path in pretrained_names():
        if step is not None:
            raise ConfigError(f"step applies to a run folder only; the shipped model {path} holds one step")
        return load_pretrained(path)
    if step is not None:
        raise ConfigError("step applies to a run folder only; an official checkpoint holds one step")
    return load_official(path, model=model, **shape)
