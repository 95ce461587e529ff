"""The train step's memory per device, from XLA's plan of the compiled program; the variants of a config that
change it; and the pre-flight check of a run against its devices' memory.

``abstract_step`` builds the step a run compiles (``family_step.make_step``, jitted by ``parallel.jit_train_step``
with the run's state shardings) on shapes only, so nothing is allocated: ``python -m ugatit_jax.plan`` and
``benchmarks/throughput.py --compile-only`` both compile it, and agree by construction. The training loop's
pre-flight (``preflight``) reads the plan of the very program it is about to run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections

from ugatit_jax.config import ConfigError, parse_size, validate
from ugatit_jax.train import parallel
from ugatit_jax.train.family_step import make_step
from ugatit_jax.train.optim import make_optimizers
from ugatit_jax.train.state import abstract_train_state

log = logging.getLogger("ugatit_jax")

GIB = 2**30
ENV_VAR = "UGATIT_DEVICE_MEMORY"  # the device memory to plan for, like config.device_memory (which wins)

# The options that change the step's memory and not the model: name -> (config key, value). A variant is a set of
# them joined by "+" ("shard_state+bfloat16+remat"); "light" changes the model (a last resort, never a fallback).
OPTIONS = {
    "shard_state": ("shard_state", True),
    "bfloat16": ("compute_dtype", "bfloat16"),
    "remat": ("remat", True),
    "light": ("light", True),
}
# What the plan shows by default beside the config as given: each option alone, then the three that keep the model.
PLAN_VARIANTS = ("shard_state", "bfloat16", "remat", "light", "shard_state+bfloat16+remat")
# What the pre-flight suggests, cheapest first: splitting the state costs some communication, recomputing the
# residual blocks some compute, bfloat16 changes the arithmetic; the model itself is never changed for the user.
FALLBACKS = (
    "shard_state",
    "remat",
    "shard_state+remat",
    "bfloat16",
    "shard_state+bfloat16",
    "bfloat16+remat",
    "shard_state+bfloat16+remat",
)


def gib(n: int) -> str:
    """A size for people: GiB with two decimals; below 0.1 GiB, MiB (a small model's would read 0.00 GiB)."""
    return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:.1f} MiB"


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one compiled train step.

    ``parameters``, ``optimiser`` and ``ema`` are the state's shards on one device (parameters include the
    spectral-norm vectors and the step counter); the rest is XLA's ``memory_analysis``: ``argument`` (the state
    and the batch), ``output``, ``alias`` (outputs written into the donated state) and ``temp`` (activations,
    gradients, gathered parameters: everything else)."""

    parameters: int
    optimiser: int
    ema: int
    argument: int
    output: int
    alias: int
    temp: int
    generated_code: int

    @property
    def total(self) -> int:
        """The estimated peak: what the step reads, plus what it writes beside its donated inputs, plus temps."""
        return self.argument + self.output - self.alias + self.temp

    def as_dict(self) -> dict[str, int]:
        out = {f"{f.name}_bytes": getattr(self, f.name) for f in dataclasses.fields(self)}
        return out | {"estimated_peak_bytes": self.total}


def _bytes_per_device(tree) -> int:
    """Bytes of one device's shards of every leaf (arrays or ShapeDtypeStructs with a sharding)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def plan_of(compiled, state) -> MemoryPlan | None:
    """The plan of a compiled step whose state argument is ``state``; None where XLA gives no memory analysis."""
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    size = lambda field: int(getattr(mem, f"{field}_size_in_bytes", 0))
    return MemoryPlan(
        parameters=_bytes_per_device((state.params, state.sn, state.step)),
        optimiser=_bytes_per_device((state.g_opt, state.d_opt)),
        ema=_bytes_per_device(state.ema),
        argument=size("argument"),
        output=size("output"),
        alias=size("alias"),
        temp=size("temp"),
        generated_code=size("generated_code"),
    )


def check_devices(config, mesh) -> None:
    """ConfigError naming the option unless ``config`` can run on ``mesh`` (its batch splits over the devices).
    The dataset keys are not checked: a plan reads no data."""
    checked = ml_collections.ConfigDict(config.to_dict())
    checked.update(dataset="synthetic", init_checkpoint="")
    validate(checked, device_count=mesh.size)


def abstract_batch(config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of one global batch as the input pipeline delivers it, split over the mesh."""
    shape = (config.batch_size, config.img_size, config.img_size, 3)  # uint8 RGB of each domain
    return {d: jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=parallel.batch_sharding(mesh)) for d in "AB"}


def abstract_state(config, mesh, optimisers=None):
    """(graph definitions, optimisers, the state's shapes each with the sharding a run gives it, those shardings)
    of ``config`` on ``mesh``; nothing is initialised. ``optimisers``: the run's (g_tx, d_tx), else the config's."""
    g_tx, d_tx = make_optimizers(config) if optimisers is None else optimisers
    graphdefs, state = abstract_train_state(config, g_tx, d_tx)
    shardings = parallel.state_shardings(state, mesh, config.shard_state)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    return graphdefs, g_tx, d_tx, state, shardings


def abstract_step(config, mesh, *, max_traces: int = 1) -> tuple[Callable, object, dict]:
    """(the jitted step a run of ``config`` on ``mesh`` compiles, its state's shapes with their shardings, a batch's
    shapes): lower and compile them with ``jitted.trace(state, batch).lower().compile()``. ``max_traces``: the
    trace guard's limit (``parallel.jit_train_step``), counted per place the step is defined."""
    check_devices(config, mesh)
    graphdefs, g_tx, d_tx, state, shardings = abstract_state(config, mesh)
    step = make_step(config, graphdefs, g_tx, d_tx, mesh)
    jitted = parallel.jit_train_step(step, mesh, state_sharding=shardings, max_traces=max_traces)
    return jitted, state, abstract_batch(config, mesh)


def plan(config, mesh) -> MemoryPlan | None:
    """Compile ``config``'s step for ``mesh`` on shapes only and return its plan. Any number of configs in one
    process: each variant is its own program, traced once, but all from the same definition."""
    jitted, state, batch = abstract_step(config, mesh, max_traces=2**31)
    return plan_of(jitted.trace(state, batch).lower().compile(), state)


# ---------------------------------------------------------------------------------------------------------- variants
def parse_variant(name: str) -> tuple[str, ...]:
    """The options of a variant name ("shard_state+remat"); ValueError naming the known ones."""
    parts = tuple(p for p in name.split("+") if p)
    unknown = [p for p in parts if p not in OPTIONS]
    if not parts or unknown:
        raise ValueError(f"unknown variant {name!r}; join {', '.join(OPTIONS)} with '+'")
    return parts


def variant(config, name: str, device_count: int) -> ml_collections.ConfigDict | None:
    """``config`` with the variant's options on, or None where that changes nothing (already on; shard_state on
    one device)."""
    changes = {}
    for option in parse_variant(name):
        key, value = OPTIONS[option]
        if config[key] != value and not (key == "shard_state" and device_count == 1):
            changes[key] = value
    if not changes:
        return None
    out = ml_collections.ConfigDict(config.to_dict())
    out.update(changes)
    return out


def flags(config, base) -> str:
    """The ``--config.key=value`` flags that turn ``base`` into ``config`` (the keys of ``OPTIONS``)."""
    show = lambda v: str(v).lower() if isinstance(v, bool) else str(v)
    keys = dict.fromkeys(key for key, _ in OPTIONS.values())
    return " ".join(f"--config.{k}={show(config[k])}" for k in keys if config[k] != base[k])


def variant_plans(config, mesh, names: Iterable[str]):
    """(name, variant config, its plan) for each name, compiled one after the other as the caller asks for the
    next; the config is None, and nothing compiled, for a variant that changes nothing or the same as an earlier
    one."""
    seen = set()
    for name in names:
        changed = variant(config, name, mesh.size)
        key = changed and flags(changed, config)
        if changed is None or key in seen:
            yield name, None, None
            continue
        seen.add(key)
        yield name, changed, plan(changed, mesh)


# --------------------------------------------------------------------------------------------------------- pre-flight
def reported_memory(device) -> int | None:
    """The bytes the device's allocator may use, where it says (GPU, TPU); None on a CPU."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def available_memory(config, device) -> tuple[int | None, str]:
    """(bytes a run may plan for per device, where that figure comes from): ``config.device_memory``, else
    ``UGATIT_DEVICE_MEMORY``, else the device's own report (None on a CPU)."""
    if config.get("device_memory", ""):
        return parse_size(config.device_memory), f"config.device_memory={config.device_memory}"
    if os.environ.get(ENV_VAR):
        text = os.environ[ENV_VAR]
        try:
            return parse_size(text), f"{ENV_VAR}={text}"
        except ValueError as e:
            raise ConfigError(f"{ENV_VAR}: {e}") from None
    limit = reported_memory(device)
    return limit, f"as {device.platform}:{device.id} reports"


def preflight(config, mesh, jitted_step: Callable, optimisers=None) -> MemoryPlan | None:
    """Before anything is built or placed: where the devices' memory is known (``available_memory``), compile the
    run's own step on its state's shapes and raise ConfigError if XLA's plan does not fit, naming the cheapest of
    ``FALLBACKS`` that does (each compiled on shapes only) or, if none does, what to try. Checked this early, a
    state that alone would not fit stops here too, not in its random initialisation.

    ``jitted_step(config, graphdefs, g_tx, d_tx, mesh, state_shardings)`` is the loop's (``training.steps``): it
    keeps the step it builds here (with ``optimisers``, the run's (g_tx, d_tx)) for the run, and the compiled
    program goes through the persistent compilation cache (``config.xla_cache_dir``), from which the first step
    then loads it: a run that fits pays the check in seconds. Without the cache the step compiles twice. Returns
    the plan, or None where no memory is known (a CPU without an override) or XLA gives no plan."""
    available, source = available_memory(config, mesh.local_devices[0])  # this process's: it can read them
    if available is None:
        return None
    graphdefs, g_tx, d_tx, state, shardings = abstract_state(config, mesh, optimisers)
    step = jitted_step(config, graphdefs, g_tx, d_tx, mesh, shardings)
    needed = plan_of(step.lower(state, abstract_batch(config, mesh)).compile(), state)
    if needed is None:
        return None
    log.info("the step needs %s per device (XLA's plan) of %s (%s)", gib(needed.total), gib(available), source)
    if needed.total <= available:
        return needed
    head = f"the step needs {gib(needed.total)} per device but the device has {gib(available)} ({source})"
    raise ConfigError(f"{head}: {fallback_advice(config, mesh, available)}")


def fallback_advice(config, mesh, available: int) -> str:
    """What to change so that the step fits ``available`` bytes per device: the cheapest fallback that fits, or
    what to try when even the smallest does not. The smallest is compiled first, then the others in order."""
    smallest_name = FALLBACKS[-1]
    smallest = variant(config, smallest_name, mesh.size)
    if smallest is None:
        found = None
    else:
        log.info("the step does not fit; compiling variants to find one that does")
        found = plan(smallest, mesh)
    if found is None or found.total > available:
        need = f" (the smallest, {flags(smallest, config)}, needs {gib(found.total)})" if found else ""
        tries = [] if config.light else ["--config.light=true"]
        tries += ["fewer images per device (--config.batch_size)", "more devices"]
        return (
            f"no setting of shard_state, compute_dtype and remat fits{need}; try {', '.join(tries[:-1])} or {tries[-1]}"
        )
    for _, changed, fallback in variant_plans(config, mesh, FALLBACKS[:-1]):
        if fallback is not None and fallback.total <= available:
            return f"{flags(changed, config)} fits ({gib(fallback.total)})"
    return f"{flags(smallest, config)} fits ({gib(found.total)})"
