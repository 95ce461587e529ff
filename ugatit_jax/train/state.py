"""The training state: one pytree holding everything a step reads and writes.

The six networks are split once into static graph definitions (kept outside the state, closed over by the
jitted step) and two kinds of arrays: trainable parameters and the discriminators' spectral-norm vectors.
The state is a plain pytree, so it can be jitted, donated, sharded and checkpointed as a whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ugatit_jax.models.ugatit import UGATIT
from ugatit_jax.nn.spectral_norm import PowerIterationState

G_NAMES = ("genA2B", "genB2A")
D_NAMES = ("disGA", "disGB", "disLA", "disLB")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: completed steps
    params: dict[str, nnx.State]  # every network's nnx.Param
    sn: dict[str, nnx.State]  # every network's PowerIterationState (empty for the generators)
    g_opt: optax.OptState  # one optimiser over both generators
    d_opt: optax.OptState  # one optimiser over the four discriminators

    def g_params(self) -> dict[str, nnx.State]:
        return {n: self.params[n] for n in G_NAMES}

    def d_params(self) -> dict[str, nnx.State]:
        return {n: self.params[n] for n in D_NAMES}


def split_model(model: UGATIT) -> tuple[dict[str, nnx.GraphDef], dict[str, nnx.State], dict[str, nnx.State]]:
    """Split the six networks (in training mode) into graph definitions, params and spectral-norm state."""
    model.train()
    graphdefs, params, sn = {}, {}, {}
    for name in UGATIT.NAMES:
        graphdefs[name], p, s = nnx.split(getattr(model, name), nnx.Param, PowerIterationState)
        # Pure arrays (no Variable objects): the state crosses jit/grad boundaries and goes into checkpoints.
        params[name], sn[name] = nnx.as_pure(p), nnx.as_pure(s)
    return graphdefs, params, sn


def create_train_state(
    model: UGATIT, g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation
) -> tuple[dict[str, nnx.GraphDef], TrainState]:
    graphdefs, params, sn = split_model(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        sn=sn,
        g_opt=g_tx.init({n: params[n] for n in G_NAMES}),
        d_opt=d_tx.init({n: params[n] for n in D_NAMES}),
    )
    return graphdefs, state


def merge_networks(graphdefs: Mapping[str, nnx.GraphDef], state: TrainState, names=UGATIT.NAMES) -> dict[str, Any]:
    """Rebuild live NNX networks from the state (inside or outside jit)."""
    return {n: nnx.merge(graphdefs[n], state.params[n], state.sn[n]) for n in names}


def update_model(model: UGATIT, state: TrainState) -> UGATIT:
    """Write the state's arrays back into an existing UGATIT module (e.g. to export or sample)."""
    for name in UGATIT.NAMES:
        nnx.update(getattr(model, name), state.params[name], state.sn[name])
    return model
