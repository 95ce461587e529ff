"""The training state: one pytree holding everything a step reads and writes, for either model family.

The networks are split once into static graph definitions (kept outside the state, closed over by the jitted
step) and two kinds of arrays: trainable parameters and the discriminators' spectral-norm vectors. The state is
a plain pytree, so it can be jitted, donated, sharded and checkpointed as a whole.

Which networks each optimiser holds comes from the model class (``GENERATORS``, ``DISCRIMINATORS``: U-GAT-IT's
two generators and four discriminators, NICE-GAN's two decoders and two discriminator-encoders) and is stored in
the state as static (non-array) fields, so the same code serves both families.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ugatit_jax.models.family import abstract_model, get_family
from ugatit_jax.models.ugatit import UGATIT
from ugatit_jax.nn.spectral_norm import PowerIterationState

# U-GAT-IT's network names, kept for callers written for that family; new code reads ``state.g_names``.
G_NAMES = UGATIT.GENERATORS
D_NAMES = UGATIT.DISCRIMINATORS


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: completed steps
    params: dict[str, nnx.State]  # every network's nnx.Param
    sn: dict[str, nnx.State]  # every network's PowerIterationState (empty for the generators)
    g_opt: optax.OptState  # one optimiser over the generators
    d_opt: optax.OptState  # one optimiser over the discriminators
    # Static: part of the tree structure, not leaves (no arrays in checkpoints, no retrace between steps).
    g_names: tuple[str, ...] = flax.struct.field(pytree_node=False, default=G_NAMES)
    d_names: tuple[str, ...] = flax.struct.field(pytree_node=False, default=D_NAMES)
    # The translating networks' parameters, averaged over the steps (``config.ema_decay`` > 0), or None: no leaves,
    # so a run without EMA has exactly the state, the step program and the checkpoints it had before EMA existed.
    ema: dict[str, nnx.State] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.g_names + self.d_names

    def g_params(self) -> dict[str, nnx.State]:
        return {n: self.params[n] for n in self.g_names}

    def d_params(self) -> dict[str, nnx.State]:
        return {n: self.params[n] for n in self.d_names}


def _names(model) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(type(model).GENERATORS), tuple(type(model).DISCRIMINATORS)


def split_model(model) -> tuple[dict[str, nnx.GraphDef], dict[str, nnx.State], dict[str, nnx.State]]:
    """Split every network of ``model`` (in training mode) into graph definitions, params and spectral-norm state."""
    model.train()
    graphdefs, params, sn = {}, {}, {}
    g_names, d_names = _names(model)
    for name in g_names + d_names:
        graphdefs[name], p, s = nnx.split(getattr(model, name), nnx.Param, PowerIterationState)
        # Pure arrays (no Variable objects): the state crosses jit/grad boundaries and goes into checkpoints.
        params[name], sn[name] = nnx.as_pure(p), nnx.as_pure(s)
    return graphdefs, params, sn


def ema_names(config) -> tuple[str, ...]:
    """The networks whose parameters a run averages: every network a translation reads (U-GAT-IT's generators;
    NICE-GAN's generators and discriminator-encoders), or none when ``config.ema_decay`` is 0 (or absent: runs
    saved before EMA)."""
    return get_family(config).translating if config.get("ema_decay", 0.0) > 0 else ()


def create_train_state(
    model, g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation, *, ema: tuple[str, ...] = ()
) -> tuple[dict[str, nnx.GraphDef], TrainState]:
    """(graph definitions, initial state) for a ``UGATIT`` or ``NICE`` model; ``ema`` names the networks whose
    parameters the state averages (``ema_names``), starting from their initial values."""
    graphdefs, params, sn = split_model(model)
    g_names, d_names = _names(model)

    # One program for the step counter, both optimisers' zeroed moments and the average's start: eagerly, every
    # distinct parameter shape compiled (or loaded from the persistent cache) a program of its own.
    @jax.jit
    def init(params):
        g_opt, d_opt = g_tx.init({n: params[n] for n in g_names}), d_tx.init({n: params[n] for n in d_names})
        average = {n: jax.tree.map(jnp.copy, params[n]) for n in ema} or None  # own buffers: the step donates both
        return jnp.zeros((), jnp.int32), g_opt, d_opt, average

    step, g_opt, d_opt, average = init(params)
    state = TrainState(
        step=step, params=params, sn=sn, g_opt=g_opt, d_opt=d_opt, g_names=g_names, d_names=d_names, ema=average
    )
    return graphdefs, state


def abstract_train_state(
    config, g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation
) -> tuple[dict[str, nnx.GraphDef], TrainState]:
    """(graph definitions, shapes of the initial state) of ``config``'s model, without running its random
    initialisation: the target of a checkpoint restore, which fills every array."""
    graphdef, abstract = abstract_model(config)  # traced once per config in a process
    averaged = ema_names(config)
    build = lambda params: create_train_state(nnx.merge(graphdef, params), g_tx, d_tx, ema=averaged)
    return nnx.eval_shape(build, abstract)


def update_model(model, state: TrainState):
    """Write the state's arrays back into an existing model of the same family (e.g. to export or sample)."""
    for name in state.names:
        nnx.update(getattr(model, name), state.params[name], state.sn[name])
    return model


def translating_params(state: TrainState, *, ema: bool = True) -> dict[str, nnx.State]:
    """The parameters translations use: the average where the run keeps one (and ``ema``), else the trained ones.
    The spectral-norm vectors stay the trained networks' own (``state.sn``): the averaged kernels are close to the
    trained ones, and eval-mode spectral norm recomputes sigma = u^T W v from whichever kernel it is given."""
    return state.ema if ema and state.ema else state.params
