"""Data parallelism over every device JAX sees, on one host or many.

The state is replicated (``P()``) or, with ``config.shard_state``, split FSDP-style over the same axis; each
global batch is split along the ``data`` mesh axis (``P('data')``), and the step is one ``jax.jit`` with those
shardings. On many hosts (``maybe_initialize_distributed``) the mesh spans every process's devices and each host
feeds its own share of the batch. Every op in U-GAT-IT is per-sample except the loss means,
which XLA turns into all-reduces, so results match a single device up to float summation order; the
spectral-norm power iteration reads only replicated weights, so u, v stay identical on all devices.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable

import chex
import jax
import jax._src.distributed  # noqa: F401 - the coordination client, for barrier()
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ugatit_jax.config import ConfigError
from ugatit_jax.nn.layers import wide_layer_layout
from ugatit_jax.xla.compilation_cache import guard_cross_process_programs

DATA_AXIS = "data"


class DistributedError(ConfigError):
    """The processes of a multi-host run cannot form one job (unreachable coordinator, differing configs)."""


# Seconds every process waits for all others to join (UGATIT_INIT_TIMEOUT overrides): a wrong coordinator
# address or a process that never starts ends the run with DistributedError instead of waiting forever.
DEFAULT_INIT_TIMEOUT_S = 300


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r}: must be an integer") from None


def maybe_initialize_distributed() -> None:
    """Join a multi-host run when the environment describes one (plain variables or a cluster launcher).

    Plain variables (what ``python -m ugatit_jax.launch`` sets, and what to set by hand on each host):
    ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; optional
    ``UGATIT_INIT_TIMEOUT`` (seconds to wait for every process; default 300). Without them, under SLURM or
    Open MPI with more than one task, or with ``UGATIT_DISTRIBUTED=auto`` (Cloud TPU pods, GKE),
    ``jax.distributed.initialize()`` detects the cluster itself. Must run before anything
    touches a JAX backend. Raises DistributedError (one line, no traceback from train.py) when the processes
    cannot join within the timeout.
    """
    if jax.distributed.is_initialized():
        return
    timeout = _env_int("UGATIT_INIT_TIMEOUT") if os.environ.get("UGATIT_INIT_TIMEOUT") else DEFAULT_INIT_TIMEOUT_S
    if timeout < 1:
        raise DistributedError(f"UGATIT_INIT_TIMEOUT={timeout}: must be at least 1 second")
    kwargs: dict = {"initialization_timeout": timeout}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        address = os.environ["JAX_COORDINATOR_ADDRESS"]
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if not os.environ.get(k)]
        if missing:
            raise DistributedError(f"JAX_COORDINATOR_ADDRESS={address} is set but {' and '.join(missing)} not")
        processes, process_id = _env_int("JAX_NUM_PROCESSES"), _env_int("JAX_PROCESS_ID")
        if processes < 1 or not 0 <= process_id < processes:
            raise DistributedError(
                f"JAX_PROCESS_ID={process_id} must lie in [0, JAX_NUM_PROCESSES={processes}) and the count be >= 1"
            )
        if processes == 1:
            return  # one process: nothing to join
        kwargs.update(coordinator_address=address, num_processes=processes, process_id=process_id)
        where = f"process {process_id} of {processes} via coordinator {address}"
    else:
        launchers = {"SLURM_NTASKS": "SLURM", "OMPI_COMM_WORLD_SIZE": "Open MPI", "TPU_WORKER_HOSTNAMES": "TPU pod"}
        launchers["UGATIT_DISTRIBUTED"] = "auto-detected cluster"  # =auto: let JAX detect it (e.g. Cloud TPU)
        found = [name for var, name in launchers.items() if var in os.environ]
        if not found:
            return
        size = os.environ.get("SLURM_NTASKS") or os.environ.get("OMPI_COMM_WORLD_SIZE")
        if size is not None and size.isdigit() and int(size) <= 1:
            return
        where = f"the {found[0]} job"
    # Before any program spans the processes: a cache JAX_COMPILATION_CACHE_DIR turned on may already be in use.
    guard_cross_process_programs()
    try:
        _initialize_without_abort(kwargs)
    except Exception as e:  # noqa: BLE001 - XLA reports connection failures as several runtime error types
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        detail = "" if not first or "bad_cast" in first else f": {first[:200]}"
        raise DistributedError(
            f"could not join {where} within {timeout} s{detail}; check that every process was started with the "
            "same JAX_COORDINATOR_ADDRESS (host:port of process 0, reachable from all hosts) and JAX_NUM_PROCESSES, "
            "and that all of them are running"
        ) from e


def _initialize_without_abort(kwargs: dict) -> None:
    """``jax.distributed.initialize`` whose connection failures raise instead of aborting the process.

    JAX's distributed client, by default, answers a failed connection (wrong coordinator address, a process that
    never came) with a C++ LOG(FATAL): SIGABRT and a stack trace instead of a Python exception. Its
    ``missed_heartbeat_callback`` replaces that; ``jax.distributed.initialize`` does not expose it, so it is
    passed by wrapping the (private) factory for the duration of the call. Should the private name move, this
    falls back to plain ``initialize`` (errors then abort as before). After joining, a process that dies is
    noticed by the others' collectives (gloo times out after ~30 s) or by the launcher, which ends them.
    """

    def on_error(*status) -> None:  # XLA's status does not convert to Python (std::bad_cast): never reached
        pass

    try:
        from jax._src import distributed as jax_distributed

        factory = jax_distributed._jax.get_distributed_runtime_client
    except (ImportError, AttributeError):
        jax.distributed.initialize(**kwargs)
        return

    def client(*args, **kw):
        kw.setdefault("missed_heartbeat_callback", on_error)
        return factory(*args, **kw)

    jax_distributed._jax.get_distributed_runtime_client = client
    try:
        jax.distributed.initialize(**kwargs)
    except Exception:
        state = jax_distributed.global_state
        state.client = None  # never connected: nothing to shut down at exit
        if state.service is not None:
            with contextlib.suppress(Exception):
                state.service.shutdown()
            state.service = None
        raise
    finally:
        jax_distributed._jax.get_distributed_runtime_client = factory


def allgather_json(value) -> list:
    """Every process's JSON-serialisable ``value``, in process order (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return [json.loads(json.dumps(value))]
    from jax.experimental import multihost_utils

    barrier("allgather_json")  # all arrive first: the gather itself is a device collective with a short timeout
    blob = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([blob.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: blob.size] = blob
    blobs = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(b[:n]).decode()) for b, n in zip(blobs, sizes)]


def check_same_config(config, *, ignore=("xla_cache_dir", "dataset_dir", "num_workers", "prefetch")) -> None:
    """Raise DistributedError on every process unless all processes run the same config (but ``ignore``).

    Differing configs would make the processes compile different programs and hang in their first collective.
    The configs travel as JSON bytes through one all-gather, so every process names the same differing keys.
    """
    if jax.process_count() == 1:
        return
    mine = {k: v for k, v in json.loads(config.to_json_best_effort(sort_keys=True)).items() if k not in ignore}
    configs = allgather_json(mine)
    differing = sorted({k for c in configs for k in set(c) | set(configs[0]) if c.get(k) != configs[0].get(k)})
    if differing:
        values = "; ".join(f"{k}: " + ", ".join(f"p{i}={c.get(k)!r}" for i, c in enumerate(configs)) for k in differing)
        raise DistributedError(
            f"the processes of this run were given different configs ({values}); start all with the same one"
        )


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


def _identity(tree):
    return tree


def host_readable(tree, mesh: Mesh):
    """``tree`` with every array readable on the host of every process (``jax.device_get``, ``np.asarray``).

    Arrays split over the devices of several processes (``config.shard_state`` on many hosts) are copied to the
    replicated layout by one jitted identity over the whole tree: one program and one dispatch, whose all-gathers
    are a collective, so every process must call this at the same point of the run.
    (``multihost_utils.process_allgather`` does the same array by array: a program per leaf shape and layout, and
    a host copy on every process, where only process 0 reads.) A tree readable as it is (replicated, or on one
    process's devices) comes back unchanged, without running anything.
    """
    if all(x.is_fully_replicated or x.is_fully_addressable for x in jax.tree.leaves(tree)):
        return tree
    return jax.jit(_identity, out_shardings=replicated(mesh))(tree)


def shard_spec(shape: tuple[int, ...], n: int) -> P:
    """FSDP-style layout of one array over ``n`` devices: its largest dimension divisible by ``n`` is split
    along the data axis (the first such on a tie); arrays with no such dimension (scalars, biases of odd width)
    stay replicated."""
    if n <= 1:
        return P()
    candidates = [i for i, d in enumerate(shape) if d % n == 0]
    if not candidates:
        return P()
    best = max(candidates, key=lambda i: (shape[i], -i))
    return P(*(DATA_AXIS if i == best else None for i in range(len(shape))))


def split_wide_layers(mesh: Mesh):
    """How wide fully-connected layers run in a step whose state ``state_shardings`` splits
    (``nn.layers.wide_layer_layout``): where ``shard_spec`` splits a kernel (features, out) along its input
    features, the layer's input (B, features) moves to the same split, every device holding its slice of every
    row; each device multiplies that by its own kernel slice, the partial products (B, out) are summed over the
    devices, and the result goes back to the batch's split.

    The kernel's gradient then comes out split in place. Otherwise the compiler gathers the whole kernel on every
    device and computes its whole gradient there (the full model's MLP: 4 GiB each per generator at 512 px).
    Results differ from the replicated step by the summation order only."""
    n = mesh.shape[DATA_AXIS]
    features_split = NamedSharding(mesh, P(None, DATA_AXIS))
    rows_split = NamedSharding(mesh, P(DATA_AXIS, None))

    def layout(layer, h):
        kernel_shape = (layer.in_features, layer.out_features)
        if n == 1 or shard_spec(kernel_shape, n) != P(DATA_AXIS, None):
            return layer(h)
        # Pinned to the batch's split first: else the compiler carries the feature split back into the network
        # before the layer (every device computing its slice of every row's feature map).
        h = jax.lax.with_sharding_constraint(h, rows_split)  # (B / n, features) per device
        y = layer(jax.lax.with_sharding_constraint(h, features_split))  # (B, features / n) per device
        return jax.lax.with_sharding_constraint(y, rows_split)  # (B / n, out) per device

    return wide_layer_layout(layout)


def _path_names(path) -> set[str]:
    return {str(getattr(k, "name", getattr(k, "key", ""))) for k in path}


def state_shardings(state, mesh: Mesh, shard: bool, *, keep_replicated=("step", "sn")):
    """One NamedSharding per leaf of ``state`` (arrays or ShapeDtypeStructs): all replicated, or with ``shard``
    (``config.shard_state``) split by ``shard_spec`` over the data axis: parameters and optimiser states.

    Leaves under a field named in ``keep_replicated`` stay replicated: the step counter, and the spectral-norm
    vectors (tiny, and kept identical on every device)."""
    rep = replicated(mesh)
    if not shard:
        return jax.tree.map(lambda _: rep, state)
    n = mesh.shape[DATA_AXIS]

    def place(path, leaf):
        if _path_names(path) & set(keep_replicated):
            return rep
        return NamedSharding(mesh, shard_spec(tuple(leaf.shape), n))

    return jax.tree_util.tree_map_with_path(place, state)


def place_state(state, shardings):
    """Put a (host or device) state onto its shardings; every process passes the same values.

    Across processes, ``jax.device_put`` proves each leaf equal on every process with its own all-gather, one
    compiled program per leaf shape (25 of the 30 small programs each process of a 2-process launch of the tests'
    tiny model compiled). Here each process builds its shards of every leaf from its own copy, and one all-gather
    of per-leaf float64 sums stands for that proof (a state that differs between processes is an error).
    """
    if jax.process_count() == 1:
        return jax.device_put(state, shardings)
    host = jax.tree.map(np.asarray, jax.device_get(state))
    sums = [float(np.sum(x, dtype=np.float64)).hex() for x in jax.tree.leaves(host)]  # exact, NaN == NaN
    differing = [i for i, other in enumerate(allgather_json(sums)) if other != sums]
    if differing:
        raise DistributedError(
            f"process {jax.process_index()} holds a different initial state than process(es) {differing}: "
            "every process must build it from the same config and seed"
        )
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda index: x[index]), host, shardings)


def jit_train_step(step_fn: Callable, mesh: Mesh, *, state_sharding=None, max_traces: int = 1) -> Callable:
    """jit the pure step once: state donated and kept on ``state_sharding`` (default: replicated), batch
    sharded, metrics replicated.

    ``chex.assert_max_traces`` turns an accidental re-trace (a changed shape or dtype) into an error instead of a
    silent multi-minute recompilation. With a sharded state, XLA all-gathers each parameter where the step
    uses it and reduce-scatters its gradient, so the numbers match the replicated step up to summation order.
    """
    state_sharding = replicated(mesh) if state_sharding is None else state_sharding
    guarded = chex.assert_max_traces(step_fn, n=max_traces)
    jitted = jax.jit(
        guarded,
        in_shardings=(state_sharding, batch_sharding(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,),
    )
    return _CompileThenMeet(jitted) if jax.process_count() > 1 else jitted


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Wait until every process reaches ``name``, through the coordination service (no device collective, so no
    gloo 30 s limit); a no-op in one process."""
    client = getattr(jax._src.distributed.global_state, "client", None) if jax.process_count() > 1 else None
    if client is not None:
        _barrier_count[0] += 1  # every process passes the same barriers in the same order: ids stay unique
        client.wait_at_barrier(f"ugatit_{name}_{_barrier_count[0]}", timeout_in_ms=timeout_s * 1000)


_barrier_count = [0]


class _CompileThenMeet:
    """Multi-process step: the first call compiles ahead of time, then waits for every process before running.

    Processes finish compiling at different times (minutes apart on a loaded host), and the first collective of
    the step must not wait for a slow one longer than CPU collectives allow (gloo gives up after ~30 s).
    Otherwise behaves like the jitted function it wraps (``lower``, ``trace``, ... are passed through).
    """

    def __init__(self, jitted):
        self._jitted = jitted
        self._compiled = None

    def __getattr__(self, name):
        return getattr(self._jitted, name)

    def __call__(self, state, batch):
        if self._compiled is None:
            self._compiled = self._jitted.lower(state, batch).compile()
            barrier("train_step_compiled")
        return self._compiled(state, batch)
