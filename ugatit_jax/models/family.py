"""The two model families behind one description, so training, loading, translation and export need no family names.

Everything outside ``models/`` asks a ``Family`` which networks exist, which ones an optimiser holds and how a
direction translates; nothing else spells ``"genA2B"`` or ``"gen2B"``. A translation is always
``(image (B, H, W, 3) in [-1, 1], cam_logit, heatmap)``: U-GAT-IT's generator returns all three itself; NICE-GAN's
come from the source domain's discriminator-encoder (its CAM logit and attention map) and the target generator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ugatit_jax.models.nice import NICE
from ugatit_jax.models.ugatit import UGATIT
from ugatit_jax.xla.jit_init import jit_init
from ugatit_jax.xla.memo import remember

Translation = tuple[jax.Array, jax.Array, jax.Array]  # image, cam_logit, heatmap


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: how to build it from a config and how its networks translate."""

    name: str
    model_class: type
    build: Callable[[Any, nnx.Rngs], nnx.Module]  # (config, rngs) -> the container of every network
    # direction -> the networks a translation reads, in call order
    translation_networks: Mapping[str, tuple[str, ...]]
    # (networks by name, images in [-1, 1], direction) -> Translation
    translate: Callable[[Mapping[str, nnx.Module], jax.Array, str], Translation]

    @property
    def generators(self) -> tuple[str, ...]:
        return self.model_class.GENERATORS

    @property
    def discriminators(self) -> tuple[str, ...]:
        return self.model_class.DISCRIMINATORS

    @property
    def names(self) -> tuple[str, ...]:
        return self.model_class.NAMES

    @property
    def translating(self) -> tuple[str, ...]:
        """Every network some translation reads (inference loads these and no other)."""
        return tuple(dict.fromkeys(n for nets in self.translation_networks.values() for n in nets))


def _options(config) -> dict:
    """Both families' settings that are not architecture: compute dtype and rematerialisation."""
    dtype = jnp.bfloat16 if config.get("compute_dtype", "float32") == "bfloat16" else None
    return {"dtype": dtype, "remat": config.get("remat", False)}


def _build_ugatit(config, rngs: nnx.Rngs) -> UGATIT:
    layers = config.disc_global_layers, config.disc_local_layers
    disc_ch = config.get("disc_ch") or None  # absent from configs saved before the key existed
    return UGATIT(
        config.ch, config.n_res, config.img_size, config.light, *layers, disc_ch=disc_ch, **_options(config), rngs=rngs
    )


def _translate_ugatit(nets, x, direction):
    return nets["genA2B" if direction == "A2B" else "genB2A"](x)


def _build_nice(config, rngs: nnx.Rngs) -> NICE:
    return NICE(config.ch, config.n_res, config.n_dis, config.img_size, config.light, **_options(config), rngs=rngs)


def _translate_nice(nets, x, direction):
    encoder, generator = ("disA", "gen2B") if direction == "A2B" else ("disB", "gen2A")
    z, cam_logit, heatmap = nets[encoder].encode(x)
    image = nets[generator](z)
    return image, cam_logit.astype(jnp.float32), heatmap.astype(jnp.float32)


FAMILIES = {
    "ugatit": Family(
        name="ugatit",
        model_class=UGATIT,
        build=_build_ugatit,
        translation_networks={"A2B": ("genA2B",), "B2A": ("genB2A",)},
        translate=_translate_ugatit,
    ),
    "nice": Family(
        name="nice",
        model_class=NICE,
        build=_build_nice,
        translation_networks={"A2B": ("disA", "gen2B"), "B2A": ("disB", "gen2A")},
        translate=_translate_nice,
    ),
}


def get_family(config_or_name) -> Family:
    """The family of a config (``config.model``, "ugatit" when absent: runs saved before NICE-GAN) or a name."""
    name = config_or_name if isinstance(config_or_name, str) else config_or_name.get("model", "ugatit")
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


# Every config key the builders above read: two configs that agree on them build the same model.
ARCHITECTURE_KEYS = (
    "model", "ch", "n_res", "img_size", "light", "disc_global_layers", "disc_local_layers", "disc_ch", "n_dis",
    "compute_dtype", "remat",
)  # fmt: skip


def _architecture_key(config) -> tuple:
    """The model ``config`` builds, as a hashable key: runs that differ in logging, data or optimiser settings
    share one traced construction and one compiled initialiser in a process."""
    return tuple(config.get(k) for k in ARCHITECTURE_KEYS)


def build_model(config, seed: int | None = None) -> nnx.Module:
    """Every network of ``config``'s family, randomly initialised as the official code does (seeded), by one
    compiled program (``ugatit_jax.xla.jit_init``)."""
    family = get_family(config)
    seed = config.seed if seed is None else seed
    return jit_init(lambda rngs: family.build(config, rngs), seed, cache_key=_architecture_key(config))


def abstract_model(config) -> tuple[nnx.GraphDef, nnx.State]:
    """(graph definition, shapes and dtypes of every array) of ``config``'s model, without initialising it.

    Traced once per model config in a process (a resume, ``translate`` and ``evaluate`` each need it more than
    once): tracing the construction takes a noticeable fraction of a second even for small models.
    """
    trace = lambda: nnx.split(nnx.eval_shape(lambda: build_model(config, seed=0)))
    graphdef, abstract = remember(_ABSTRACT_MODELS, _architecture_key(config), trace, limit=8)
    return graphdef, jax.tree.map(lambda s: s, abstract)  # a copy: callers may change the State they get


_ABSTRACT_MODELS: dict[tuple, tuple[nnx.GraphDef, nnx.State]] = {}


def empty_model(config, device=None) -> nnx.Module:
    """The model's structure with zero-filled arrays, without running the random initialisation.

    For anything that overwrites every weight right away (a checkpoint restore, an official ``.pt`` import):
    the random initialisation compiles and runs a program (seconds on a CPU) and allocates the full model
    twice. ``device`` None keeps host numpy arrays.
    """
    graphdef, abstract = abstract_model(config)
    put = (lambda a: a) if device is None else (lambda a: jax.device_put(a, device))
    return nnx.merge(graphdef, jax.tree.map(lambda s: put(np.zeros(s.shape, s.dtype)), abstract))
