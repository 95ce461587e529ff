"""Data parallelism over every device JAX sees, on one host or many.

The state is replicated (``P()``), each global batch is split along the ``data`` mesh axis (``P('data')``), and
the step is one ``jax.jit`` with those shardings. Every op in U-GAT-IT is per-sample except the loss means,
which XLA turns into all-reduces, so results match a single device up to float summation order; the
spectral-norm power iteration reads only replicated weights, so u, v stay identical on all devices.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import chex
import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Join a multi-host run when the environment describes one (JAX's own variables or a cluster launcher).

    ``jax.distributed.initialize()`` auto-detects SLURM, Open MPI, TPU pods and GKE; elsewhere set
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.
    """
    if jax.distributed.is_initialized():
        return
    explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
    launcher = any(k in os.environ for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"))
    if explicit:
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif launcher and int(os.environ.get("SLURM_NTASKS", os.environ.get("OMPI_COMM_WORLD_SIZE", "2"))) > 1:
        jax.distributed.initialize()


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (global) devices along the ``data`` axis.

    Auto axis type: the compiler propagates shardings through the model (no sharding-in-types annotations needed).
    """
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Place a host pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def jit_train_step(step_fn: Callable, mesh: Mesh, *, max_traces: int = 1) -> Callable:
    """jit the pure step once: state replicated and donated, batch sharded, metrics replicated.

    ``chex.assert_max_traces`` turns an accidental re-trace (a changed shape or dtype) into an error instead of a
    silent multi-minute recompilation.
    """
    guarded = chex.assert_max_traces(step_fn, n=max_traces)
    return jax.jit(
        guarded,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )
