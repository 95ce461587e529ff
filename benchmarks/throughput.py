"""Throughput of the jitted train step (U-GAT-IT or NICE-GAN), optionally against the official PyTorch step.

It times exactly what training runs (``trainer.build_model`` / ``make_optimizers`` / ``make_step`` and
``parallel.jit_train_step``) on random uint8 batches, so no dataset is needed. Reported: trace / lower / compile
seconds, median ms per step and images/s (both domains), XLA's FLOP count for one step, achieved TFLOP/s and MFU
against the device's dense peak, XLA's compiled memory analysis and the device's peak memory where it reports one.

  python benchmarks/throughput.py --config configs/emoji.py --steps 50 --json emoji.json
  python benchmarks/throughput.py --config configs/light.py --config.img_size=128 --config.ch=32 \\
      --config.batch_size=1 --torch-reference /path/to/UGATIT-pytorch      # interleaved with the official step
  python benchmarks/throughput.py --config configs/nice_light.py --config.img_size=128 --config.ch=32 \
      --config.batch_size=1 --torch-reference /path/to/NICE-GAN-pytorch    # the same for NICE-GAN
  python benchmarks/throughput.py --sweep --quick --out sweep.md              # markdown table, one subprocess each

On a GPU, ``--torch-reference`` runs the official step there too (cuDNN autotuning on, TF32 matmuls as XLA's
default precision), in float32 and with ``--torch-modes float32,autocast_bf16`` also under
``torch.autocast(dtype=torch.bfloat16)``, each timed with ``torch.cuda.synchronize()`` against ours with
``jax.block_until_ready``. ``--xla-autotune-level``, ``--xla-autotune-cache``, ``--xla-flags`` and
``--compilation-cache`` set what decides GPU compile time; ``--profile DIR`` saves a ``jax.profiler`` trace of a
few steps and prints the kernels that took the most time. ``benchmarks/gpu_suite.sh`` runs the GPU measurements
end to end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

# Dense peak TFLOP/s per device, by a substring of ``device.device_kind`` (first match wins). "float32" is what
# XLA runs for float32 at default precision: TF32 tensor cores on NVIDIA Ampere and later, bf16 passes on TPU.
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.4, "float32": 494.7}),  # SXM
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),
    ("H800", {"bfloat16": 989.4, "float32": 494.7}),
    ("GH200", {"bfloat16": 989.4, "float32": 494.7}),
    ("B200", {"bfloat16": 2250.0, "float32": 1125.0}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("L4", {"bfloat16": 121.0, "float32": 60.0}),
    ("A10", {"bfloat16": 125.0, "float32": 62.5}),
    ("V100", {"bfloat16": 125.0, "float32": 15.7}),  # no bf16 tensor cores: fp16 figure
    ("TPU v6", {"bfloat16": 918.0, "float32": 918.0}),
    ("TPU v5 lite", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("TPU v5", {"bfloat16": 459.0, "float32": 459.0}),  # v5p
    ("TPU v4", {"bfloat16": 275.0, "float32": 275.0}),
)


# ----------------------------------------------------------------------------------------------------------- config
def load_config(path: str, overrides: list[str]):
    """``get_config()`` of a config file plus ``key=value`` overrides, parsed by ml_collections as train.py does."""
    from absl import flags
    from ml_collections import config_flags

    from ugatit_jax.cli import parse_config_flags

    argv = ["throughput", f"--config={path}", *(f"--config.{o}" for o in overrides)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, flag_values=values, sys_argv=argv, lock_config=True)
    parse_config_flags(values, argv)  # bad input: cli.UsageError, one "throughput.py: error:" line (run_script)
    return values.config


def config_summary(config) -> dict:
    keys = ("light", "ch", "n_res", "img_size", "batch_size", "compute_dtype", "remat")
    return {k: config[k] for k in keys} | {"disc_layers": [config.disc_global_layers, config.disc_local_layers]}


# ------------------------------------------------------------------------------------------------------------- peak
def measured_cpu_peak_tflops(n: int = 2048) -> float:
    """Best-of-5 large float32 matmul on the first device: the attainable peak where no table entry exists."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def peak_tflops(device, dtype: str) -> tuple[float | None, str]:
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device.device_kind.lower():
            return peaks[dtype], f"table: {key} {dtype} dense"
    if device.platform == "cpu":
        return measured_cpu_peak_tflops(), "measured: 2048^3 float32 matmul"
    return None, f"unknown device kind {device.device_kind!r}"


# -------------------------------------------------------------------------------------------------------- benchmark
def make_batches(config, sharding, count: int = 2):
    """``count`` distinct random uint8 batches, already placed with the batch sharding."""
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (config.batch_size, config.img_size, config.img_size, 3)
    return [
        jax.device_put({d: rng.integers(0, 256, shape, dtype=np.uint8) for d in "AB"}, sharding) for _ in range(count)
    ]


def setup(config, n_devices: int | None):
    """The project's own model, optimisers, state and jitted step on a mesh of ``n_devices`` devices."""
    import jax

    from ugatit_jax.models.family import build_model
    from ugatit_jax.train import parallel
    from ugatit_jax.train.optim import make_optimizers
    from ugatit_jax.train.state import create_train_state, ema_names
    from ugatit_jax.training.steps import make_step

    devices = jax.devices()[: n_devices or jax.device_count()]
    if config.batch_size % len(devices):
        raise SystemExit(f"batch_size {config.batch_size} is not divisible by {len(devices)} devices; use --devices")
    mesh = parallel.make_mesh(devices)
    model = build_model(config)
    g_tx, d_tx = make_optimizers(config)
    graphdefs, state = create_train_state(model, g_tx, d_tx, ema=ema_names(config))  # the run's step, EMA included
    state = parallel.replicate(state, mesh)
    step_fn = parallel.jit_train_step(make_step(config, graphdefs, g_tx, d_tx), mesh)
    return devices, state, step_fn, make_batches(config, parallel.batch_sharding(mesh))


def abstract_setup(config, n_devices: int | None):
    """Shapes only (no parameter is allocated): compile even the 279M-parameter full model on a small machine."""
    import jax
    import jax.numpy as jnp

    from ugatit_jax.train import parallel
    from ugatit_jax.train.optim import make_optimizers
    from ugatit_jax.train.state import abstract_train_state
    from ugatit_jax.training.steps import make_step

    devices = jax.devices()[: n_devices or jax.device_count()]
    mesh = parallel.make_mesh(devices)
    g_tx, d_tx = make_optimizers(config)
    graphdefs, state = abstract_train_state(config, g_tx, d_tx)  # either family's networks and optimisers
    step_fn = parallel.jit_train_step(make_step(config, graphdefs, g_tx, d_tx), mesh)
    shape = (config.batch_size, config.img_size, config.img_size, 3)
    batch = {d: jax.ShapeDtypeStruct(shape, jnp.uint8) for d in "AB"}
    return devices, state, step_fn, batch


class Progress:
    """The result as it grows: printed phase by phase and, with a path, rewritten as JSON after each phase, so a
    run killed by a time limit still leaves what it had measured (``"phase"`` says how far it got)."""

    def __init__(self, path: str | None = None):
        self.path, self.result, self.t0 = path, {}, time.perf_counter()

    def phase(self, name: str, **values) -> None:
        self.result.update(values, phase=name)
        print(f"[throughput] {name} (t={time.perf_counter() - self.t0:.1f}s)", file=sys.stderr, flush=True)
        self.write()

    def write(self) -> None:
        if self.path:
            tmp = pathlib.Path(f"{self.path}.tmp")
            tmp.write_text(json.dumps(self.result, indent=1, default=str))
            tmp.replace(self.path)  # atomic: a reader never sees half a file


def compile_only(config, n_devices: int | None, progress: Progress | None = None) -> dict:
    progress = progress or Progress()
    progress.phase("setup")
    devices, state, step_fn, batch = abstract_setup(config, n_devices)
    result = progress.result
    result |= {"config": config_summary(config), "platform": devices[0].platform, "compile_only": True}
    result |= {"device_kind": devices[0].device_kind, "device_count": len(devices), **xla_settings()}
    lowered, compiled, _ = compile_step(step_fn, state, batch, progress)
    result |= {"load_average": os.getloadavg()[0]}
    result |= analyse(lowered, compiled, len(devices))
    progress.phase("done")
    return result


def compile_step(step_fn, state, batch, progress: Progress | None = None):
    """Trace, lower and compile separately (each is a real cost of starting a run)."""
    progress = progress or Progress()
    progress.phase("tracing")
    t0 = time.perf_counter()
    traced = step_fn.trace(state, batch)
    t1 = time.perf_counter()
    progress.phase("lowering", trace_s=t1 - t0)
    lowered = traced.lower()
    t2 = time.perf_counter()
    progress.phase("compiling", lower_s=t2 - t1)
    compiled = lowered.compile()
    t3 = time.perf_counter()
    progress.phase("compiled", compile_s=t3 - t2)
    return lowered, compiled, {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2}


def _cost(analysis) -> dict:
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per module
        analysis = analysis[0] if analysis else {}
    return analysis or {}


def model_flops(lowered) -> float | None:
    """FLOPs of the lowered (unoptimised) program."""
    try:
        flops = _cost(lowered.cost_analysis()).get("flops")
    except NotImplementedError:
        flops = None
    if flops:
        return flops
    # PJRT plugins (the CUDA one) do not analyse unoptimised HLO; XLA:CPU's analysis of the same module counts
    # the same operations. Private API, so any failure just means "unknown".
    try:
        from jax._src import xla_bridge
        from jax._src.lib import _jax

        module = lowered._lowering.hlo().as_hlo_module()
        return _cost(_jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)).get("flops")
    except Exception:  # noqa: BLE001
        return None


def analyse(lowered, compiled, n_devices: int) -> dict:
    """FLOPs of one step and XLA's memory plan.

    The FLOP count is the cost analysis of the *lowered* (global, not yet partitioned or optimised) program: the
    model's FLOPs, the same on every backend. The compiled program's count is kept for reference only: on GPU it
    leaves out convolutions and matmuls that run as library calls (cuDNN, cuBLAS), so it undercounts ~10x.
    """
    flops = model_flops(lowered)
    compiled_cost = _cost(compiled.cost_analysis())
    out = {"flops_per_step": flops, "flops_per_device": flops / n_devices if flops else None}
    out["compiled_flops_per_device"] = compiled_cost.get("flops")
    out["bytes_accessed_per_device"] = compiled_cost.get("bytes accessed")
    mem = compiled.memory_analysis()
    if mem is not None:
        fields = ("argument", "output", "alias", "temp", "generated_code")
        out["memory_analysis"] = {f"{k}_bytes": int(getattr(mem, f"{k}_size_in_bytes", 0)) for k in fields}
        m = out["memory_analysis"]
        m["estimated_peak_bytes"] = m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"]
    return out


class Runner:
    """Runs the compiled step, donating the state each time as training does."""

    def __init__(self, compiled, state, batches):
        self.compiled, self.state, self.batches, self.i = compiled, state, batches, 0
        self.metrics = None

    def step(self) -> float:
        import jax

        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        t = time.perf_counter()
        self.state, self.metrics = self.compiled(self.state, batch)
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - t


def summarise_times(seconds: list[float]) -> dict:
    ms = sorted(1e3 * s for s in seconds)
    q = lambda f: ms[min(len(ms) - 1, int(f * len(ms)))]
    return {"ms_per_step": statistics.median(ms), "ms_mean": statistics.fmean(ms), "ms_p10": q(0.1), "ms_p90": q(0.9)}


def peak_memory(devices) -> int | None:
    stats = [d.memory_stats() for d in devices]
    if not all(stats):
        return None
    return max(s.get("peak_bytes_in_use", 0) for s in stats)


def run_benchmark(
    config,
    *,
    steps: int,
    warmup: int,
    n_devices: int | None,
    torch_reference: str | None = None,
    torch_detach: bool = False,
    rounds: int = 5,
    torch_device: str = "auto",
    torch_modes: tuple[str, ...] = ("float32",),
    torch_matmul_precision: str = "high",
    profile_dir: str | None = None,
    profile_steps: int = 3,
    progress: Progress | None = None,
) -> dict:
    progress = progress or Progress()
    result = progress.result
    progress.phase("setup")
    devices, state, step_fn, batches = setup(config, n_devices)
    result |= {"config": config_summary(config), "platform": devices[0].platform}
    result |= {"device_kind": devices[0].device_kind, "device_count": len(devices), **xla_settings()}
    lowered, compiled, _ = compile_step(step_fn, state, batches[0], progress)
    result |= analyse(lowered, compiled, len(devices))
    result["load_average_before"] = os.getloadavg()[0]  # 1-minute; other processes' load skews CPU timings
    progress.phase("timing")
    runner = Runner(compiled, state, batches)
    for _ in range(warmup):
        runner.step()
    times = [runner.step() for _ in range(steps)]
    result |= {"steps": steps, "warmup": warmup, **summarise_times(times)}
    step_s = result["ms_per_step"] / 1e3
    result["images_per_s"] = 2 * config.batch_size / step_s  # one batch of each domain per step
    flops = result["flops_per_device"]
    peak, source = peak_tflops(devices[0], config.compute_dtype)
    result["achieved_tflops_per_device"] = flops / step_s / 1e12 if flops else None
    result |= {"peak_tflops_per_device": peak, "peak_source": source}
    result["mfu"] = result["achieved_tflops_per_device"] / peak if flops and peak else None
    result["peak_memory_bytes"] = peak_memory(devices)
    result["losses"] = {k: float(runner.metrics[k]) for k in ("d_loss", "g_loss")}
    result["load_average_after"] = os.getloadavg()[0]
    progress.phase("timed")
    if torch_reference:
        progress.phase("torch")
        result["torch"] = compare_with_torch(
            config,
            runner,
            torch_reference,
            steps,
            warmup,
            rounds,
            torch_detach,
            device=torch_device,
            modes=torch_modes,
            matmul_precision=torch_matmul_precision,
        )
        progress.phase("torch done")
    if profile_dir:
        progress.phase("profiling")
        result["profile"] = capture_profile(runner, profile_dir, profile_steps)
        progress.phase("profiled")
    progress.phase("done")
    return result


# The official step's variants: float32 (cuDNN/TF32 as PyTorch runs it) and bfloat16 autocast, the fastest thing
# a PyTorch user would run without changing the code's maths.
TORCH_MODES = {"float32": None, "autocast_bf16": "bfloat16"}


def torch_device_for(requested: str, jax_platform: str) -> str:
    """``auto``: the GPU when ours runs on one and torch sees CUDA, else the CPU."""
    if requested != "auto":
        return requested
    import torch_reference

    torch = torch_reference.import_torch()
    return "cuda" if jax_platform == "gpu" and torch.cuda.is_available() else "cpu"


def compare_with_torch(
    config,
    runner: Runner,
    path: str,
    steps: int,
    warmup: int,
    rounds: int,
    detach: bool,
    *,
    device: str = "auto",
    modes: tuple[str, ...] = ("float32",),
    matmul_precision: str = "high",
) -> dict:
    """Alternate blocks of official and JAX steps on one device and batch size, so load or thermal drift hits
    both alike. Every official variant in ``modes`` gets its own block in each round."""
    import jax
    import torch_reference

    unknown = [m for m in modes if m not in TORCH_MODES]
    if unknown:
        raise SystemExit(f"--torch-modes: unknown {unknown}; choose from {sorted(TORCH_MODES)}")
    device = torch_device_for(device, jax.devices()[0].platform)
    torch = torch_reference.import_torch()
    if device.startswith("cuda"):
        # XLA's default precision for float32 dots and convolutions on NVIDIA is TF32; "high" lets PyTorch's
        # matmuls use it too (its convolutions already do: cudnn.allow_tf32 is on by default).
        torch.set_float32_matmul_precision(matmul_precision)
    networks = torch_reference.import_official(path, config.model)
    threads = os.cpu_count() or 1
    officials = {
        m: torch_reference.official_step(
            networks, config, threads=threads, detach=detach, device=device, autocast=TORCH_MODES[m]
        )
        for m in modes
    }
    first = next(iter(officials.values()))
    batches = [first.random_batch(i) for i in range(2)]  # one pair of batches, on the device, for every variant

    def timed(official, batch) -> tuple[float, tuple[float, float]]:
        official.synchronize()
        t = time.perf_counter()
        losses = official(*batch)  # .item() of both losses: the official loop prints them every step
        official.synchronize()
        return time.perf_counter() - t, losses

    for official in officials.values():
        for i in range(warmup):  # cuDNN's autotuning (cudnn.benchmark) happens here, untimed
            timed(official, batches[i % 2])
    per_round = max(1, steps // rounds)
    t_torch, losses = {m: [] for m in modes}, {}
    t_jax = []
    for r in range(rounds):
        for m, official in officials.items():
            for i in range(per_round):
                seconds, losses[m] = timed(official, batches[(r + i) % 2])
                t_torch[m].append(seconds)
        t_jax += [runner.step() for _ in range(per_round)]
    jax_ms = statistics.median(t_jax) * 1e3
    out = {
        "reference": str(path),
        "device": device,
        "device_name": torch.cuda.get_device_name(first.device) if first.device.type == "cuda" else "cpu",
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "detach": detach,
        "rounds": rounds,
        "steps_each": per_round * rounds,
        "jax_ms_per_step": jax_ms,
        "jax_ms_min": min(t_jax) * 1e3,
        "load_average": os.getloadavg()[0],
        "modes": {},
    }
    for m in modes:
        torch_ms = statistics.median(t_torch[m]) * 1e3
        out["modes"][m] = {
            "torch_ms_per_step": torch_ms,
            "torch_ms_min": min(t_torch[m]) * 1e3,
            "speedup": torch_ms / jax_ms,  # > 1: ours is faster
            "speedup_of_minima": min(t_torch[m]) / min(t_jax),
            "losses": dict(zip(("d_loss", "g_loss"), losses[m])),
        }
    # The first variant's numbers also at the top level, as before variants existed.
    out |= {k: v for k, v in out["modes"][modes[0]].items() if k != "losses"}
    return out


# ---------------------------------------------------------------------------------------------------------- profile
# Lines of a device plane that xprof derives from the kernels (they would count each kernel twice).
DERIVED_LINES = ("XLA Modules", "XLA Ops", "Steps", "Framework Ops", "Framework Name Scope", "Source code")


def capture_profile(runner: Runner, directory: str, steps: int = 3) -> dict:
    """A ``jax.profiler`` trace of ``steps`` more steps into ``directory``; then its kernels, summed by name, if
    the trace can be read here (``jax.profiler.ProfileData``), else only where it was saved."""
    import jax

    root = pathlib.Path(directory).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.rglob("*.xplane.pb"))
    times = []
    try:
        jax.profiler.start_trace(str(root))
    except Exception as e:  # noqa: BLE001 -- e.g. no CUPTI: the timings measured so far stand
        return {"dir": str(root), "steps": 0, "note": f"jax.profiler could not start ({type(e).__name__}: {e})"}
    try:
        for i in range(steps):
            with jax.profiler.StepTraceAnnotation("train_step", step_num=i):
                times.append(runner.step())
    finally:
        jax.profiler.stop_trace()
    out = {"dir": str(root), "steps": steps, "ms_per_step_traced": statistics.median(times) * 1e3}
    written = sorted(set(root.rglob("*.xplane.pb")) - before, key=lambda f: f.stat().st_mtime)
    if not written:
        out["note"] = f"jax.profiler wrote no .xplane.pb under {root}"
        return out
    out |= {"xplane": str(written[-1]), "xplane_bytes": written[-1].stat().st_size}
    try:
        out |= summarise_xplane(written[-1], steps)
    except Exception as e:  # noqa: BLE001 -- any reader failure leaves the saved trace as the result
        out["note"] = f"trace saved; not summarised here ({type(e).__name__}: {e})"
    return out


def summarise_xplane(path, steps: int, top: int = 15) -> dict:
    from jax.profiler import ProfileData

    return summarise_profile(ProfileData.from_file(str(path)), steps, top)


def summarise_profile(data, steps: int, top: int = 15) -> dict:
    """Kernel time per step by kernel name, from a ``jax.profiler.ProfileData``: the device planes' kernels
    (GPU/TPU; on a GPU the per-stream lines, not the lines xprof derives from them), else XLA:CPU's ops (host
    events that carry an ``hlo_op``)."""
    planes = list(data.planes)
    device = [p for p in planes if p.name.startswith("/device:")]
    events = []  # (name, duration_ns, hlo_op)
    if device:
        source = ", ".join(p.name for p in device)
        for plane in device:
            lines = [ln for ln in plane.lines if not ln.name.startswith(DERIVED_LINES)]
            streams = [ln for ln in lines if ln.name.startswith("Stream")]
            for line in streams or lines:
                for e in line.events:
                    events.append((e.name, e.duration_ns, dict(e.stats).get("hlo_op")))
    else:
        source = "host threads' XLA ops (no device plane)"
        for plane in planes:
            for line in plane.lines:
                for e in line.events:
                    op = dict(e.stats).get("hlo_op")
                    if op:
                        events.append((e.name, e.duration_ns, op))
    if not events:
        return {"note": f"trace saved; it holds no kernel events ({len(planes)} planes)", "source": source}
    total = sum(ns for _, ns, _ in events)
    by_name: dict[str, list] = {}
    for name, ns, op in events:
        entry = by_name.setdefault(name, [0.0, 0, op])
        entry[0] += ns
        entry[1] += 1
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][0])
    return {
        "source": source,
        "kernel_ms_per_step": total / steps / 1e6,
        "kernels_per_step": len(events) / steps,
        "top": [
            {
                "kernel": name,
                "ms_per_step": ns / steps / 1e6,
                "share": ns / total,
                "calls_per_step": n / steps,
                "hlo_op": op,
            }
            for name, (ns, n, op) in ranked[:top]
        ],
    }


def profile_table(profile: dict) -> str:
    """The summary as markdown (or the note saying why there is none)."""
    lines = [f"Trace: `{profile.get('xplane') or profile.get('dir')}`"]
    if "top" not in profile:
        return "\n".join(lines + ["", profile.get("note", "not summarised")]) + "\n"
    lines += [
        f"Source: {profile['source']}; kernel time {profile['kernel_ms_per_step']:.2f} ms per step "
        f"({profile['kernels_per_step']:.0f} kernels) against {profile['ms_per_step_traced']:.2f} ms per traced "
        "step (wall clock).",
        "",
        "| kernel | ms/step | share | calls/step | e.g. HLO op |",
        "|---|---|---|---|---|",
    ]
    for k in profile["top"]:
        name = k["kernel"] if len(k["kernel"]) <= 90 else k["kernel"][:87] + "..."
        lines.append(
            f"| `{name}` | {k['ms_per_step']:.3f} | {100 * k['share']:.1f}% | {k['calls_per_step']:.1f} "
            f"| {k['hlo_op'] or '-'} |"
        )
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------------------- XLA
def xla_options(args) -> list[str]:
    """XLA flags named by the command line; GPU ones are accepted (and ignored) by XLA:CPU."""
    flags = []
    if args.xla_autotune_level is not None:
        flags.append(f"--xla_gpu_autotune_level={args.xla_autotune_level}")
    if args.xla_autotune_cache:
        path = pathlib.Path(args.xla_autotune_cache).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        flags.append(f"--xla_gpu_per_fusion_autotune_cache_dir={path}")
    if args.xla_flags:
        flags += args.xla_flags.split()
    return flags


def apply_xla_options(args) -> None:
    """XLA_FLAGS before the backend starts (they are read once, then), and the persistent compilation cache."""
    flags = xla_options(args)
    if flags:
        try:  # private API: only for a warning
            from jax._src import xla_bridge

            started = xla_bridge.backends_are_initialized()
        except Exception:  # noqa: BLE001
            started = False
        if started:
            print("[throughput] warning: jax already started; XLA flags not applied", file=sys.stderr)
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
    if args.compilation_cache:
        import jax

        path = pathlib.Path(args.compilation_cache).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def xla_settings() -> dict:
    import jax

    return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "compilation_cache": jax.config.jax_compilation_cache_dir}


# ------------------------------------------------------------------------------------------------------------ sweep
def sweep_grid(quick: bool, device_count: int, imgs=None, batches=None, dtypes=None) -> list[dict]:
    """light/full x img x batch x dtype x devices ({1, all}); ``quick``: 256 px, batch 1 and 4, all devices."""
    counts = [device_count] if quick else sorted({1, device_count})
    imgs = imgs or ((256,) if quick else (128, 256))
    batches = batches or ((1, 4) if quick else (1, 4, 16))
    dtypes = dtypes or ("float32", "bfloat16")
    return [
        dict(light=light, img_size=img, batch_size=b, compute_dtype=dt, devices=n)
        for light in (True, False)
        for img in imgs
        for b in batches
        for dt in dtypes
        for n in counts
    ]


def run_sweep(args, base_overrides: list[str]) -> None:
    """Each combination runs in its own process: clean peak-memory counters, and an OOM cannot poison the rest."""
    import jax

    ints = lambda text: tuple(int(v) for v in text.split(",")) if text else None
    dtypes = tuple(args.sweep_dtype.split(",")) if args.sweep_dtype else None
    grid = sweep_grid(args.quick, jax.device_count(), ints(args.sweep_img), ints(args.sweep_batch), dtypes)
    rows, results = [], []
    for combo in grid:
        n = combo.pop("devices")
        result, note = sweep_one(args, combo, n, base_overrides)
        rows.append((combo, n, result, note))
        results += [result] if result else []
        # Rewritten after every combination: a sweep cut short still leaves every finished row.
        pathlib.Path(args.out).write_text(sweep_table(rows, args.config, base_overrides))
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    print(sweep_table(rows, args.config, base_overrides))


def sweep_one(args, combo: dict, n: int, base_overrides: list[str]) -> tuple[dict | None, str]:
    """One combination in a fresh process: (its result, "") or (what it had measured or None, why not)."""
    label = f"{'light' if combo['light'] else 'full'} {combo['img_size']}px b{combo['batch_size']} "
    label += f"{combo['compute_dtype']} x{n}"
    if combo["batch_size"] % n:
        return None, f"skipped: batch not divisible by {n} devices"
    overrides = base_overrides + [f"{k}={v}" for k, v in combo.items()]
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "r.json"
        cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps)]
        cmd += ["--warmup", str(args.warmup), "--devices", str(n), "--json", str(out)]
        cmd += pass_through_options(args)
        cmd += [f"--config.{o}" for o in overrides]
        print(f"[sweep] {label} ...", flush=True)
        result, note, _ = run_row(cmd, out, args.combo_timeout)
    if not note:
        print(f"[sweep] {label}: {result['ms_per_step']:.1f} ms/step, compile {result['compile_s']:.1f}s", flush=True)
        return result, ""
    print(f"[sweep] {label}: {note}", flush=True)
    return result, note if note.startswith("timed out") else f"skipped: {note}"


def pass_through_options(args) -> list[str]:
    """This process's XLA options, for the sweep's child processes."""
    out = []
    if args.xla_autotune_level is not None:
        out += ["--xla-autotune-level", str(args.xla_autotune_level)]
    for flag, value in (
        ("--xla-autotune-cache", args.xla_autotune_cache),
        ("--xla-flags", args.xla_flags),
        ("--compilation-cache", args.compilation_cache),
    ):
        if value:
            out.append(f"{flag}={value}")  # one word: a value like "--xla_gpu_..." is not taken for an option
    return out


PHASE_WORDS = {
    "setup": "building the model",
    "tracing": "tracing",
    "lowering": "lowering",
    "compiling": "compiling",
    "compiled": "analysing the compiled step",
    "timing": "timing our step",
    "timed": "timing our step",
    "torch": "timing the official step",
    "profiling": "profiling",
}


def kill_group(proc: subprocess.Popen) -> None:
    """End a row's process and everything it started (it runs in its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_row(cmd: list[str], json_path, timeout: float, log_path=None, env=None) -> tuple[dict | None, str, float]:
    """Run one benchmark command in its own process group with a time limit.

    Returns (its JSON: complete, or partial as far as it got, or None; a note: "" when it finished, else why not,
    e.g. "timed out after 170 s while compiling"; the seconds it ran). Output goes to ``log_path`` (default: a
    temporary file); its last line explains a failure.
    """
    json_path = pathlib.Path(json_path)
    json_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log_file = pathlib.Path(log_path or pathlib.Path(tmp) / "row.log")
        t0 = time.perf_counter()
        with open(log_file, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
            try:
                rc = proc.wait(timeout=max(timeout, 0.1))
            except subprocess.TimeoutExpired:
                kill_group(proc)
                rc = None
            except BaseException:  # the caller is being stopped: take the row down with it
                kill_group(proc)
                raise
        seconds = time.perf_counter() - t0
        text = log_file.read_text(errors="replace")
    result = None
    if json_path.is_file():
        try:
            result = json.loads(json_path.read_text())
        except json.JSONDecodeError:
            result = None
    if rc is None:
        phase = (result or {}).get("phase")
        note = f"timed out after {timeout:.0f} s" + (f" while {PHASE_WORDS.get(phase, phase)}" if phase else "")
        return result, note, seconds
    if rc == 0 and result and result.get("phase") == "done":
        return result, "", seconds
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        return result, "does not fit in device memory", seconds
    tail = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("[throughput]")][-1:]
    why = tail[0].strip()[:160] if tail else f"exit status {rc}, no output"
    return result, why if rc else f"no result written ({why})", seconds


def _fmt(x, spec):
    return format(x, spec) if x is not None else "-"


def sweep_table(rows, config_path: str, overrides: list[str]) -> str:
    import jax

    head = [
        f"# Train-step throughput sweep: {jax.devices()[0].device_kind} ({jax.device_count()} device(s))",
        "",
        f"Base config `{config_path}` {' '.join('--config.' + o for o in overrides)}; ch and n_res from it. "
        "ms/step is the median of the timed steps; images/s counts both domains; TFLOP/s and MFU per device "
        "from XLA's cost analysis against the dense peak of the compute dtype; memory is XLA's compiled estimate "
        "(arguments + outputs - donated + temporaries) and the device's peak where it reports one.",
        "",
        "| model | img | batch | dtype | devices | ms/step | images/s | compile s | TFLOP/s | MFU | est. mem GiB "
        "| peak mem GiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    gib = lambda b: b / 2**30 if b else None
    lines = []
    for combo, n, r, note in rows:
        model = "light" if combo["light"] else "full"
        cells = [model, combo["img_size"], combo["batch_size"], combo["compute_dtype"], n]
        if r:  # complete, or partial (a row that ran out of time after compiling)
            est = (r.get("memory_analysis") or {}).get("estimated_peak_bytes")
            phases = [r.get(k) for k in ("trace_s", "lower_s", "compile_s")]
            mfu = r.get("mfu")
            cells += [
                _fmt(r.get("ms_per_step"), ".1f"),
                _fmt(r.get("images_per_s"), ".1f"),
                _fmt(sum(phases) if None not in phases else None, ".1f"),
                _fmt(r.get("achieved_tflops_per_device"), ".2f"),
                _fmt(100 * mfu if mfu is not None else None, ".1f") + ("%" if mfu else ""),
                _fmt(gib(est), ".2f"),
                _fmt(gib(r.get("peak_memory_bytes")), ".2f"),
                note,
            ]
        else:
            cells += ["-"] * 7 + [note]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(head + lines) + "\n"


# ------------------------------------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "light.py"), help="a configs/*.py file")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--devices", type=int, default=None, help="use the first N devices (default: all)")
    p.add_argument("--json", help="write the results here (rewritten after each phase: a killed run leaves a part)")
    p.add_argument("--compile-only", action="store_true", help="trace/lower/compile on abstract inputs; no run")
    p.add_argument(
        "--torch-reference",
        metavar="DIR",
        help="official checkout or bare git dir: UGATIT-pytorch (NICE-GAN-pytorch for NICE)",
    )
    p.add_argument("--torch-detach", action="store_true", help="detach the fakes in the official D update (faster)")
    p.add_argument("--torch-device", default="auto", help="auto (cuda when ours runs on a GPU), cpu, cuda or cuda:N")
    p.add_argument(
        "--torch-modes",
        default="float32",
        help=f"comma-separated official-step variants to time, each interleaved with ours: {','.join(TORCH_MODES)}",
    )
    p.add_argument(
        "--torch-matmul-precision",
        default="high",
        choices=("highest", "high", "medium"),
        help="torch.set_float32_matmul_precision on CUDA (high = TF32, as XLA's default precision)",
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved torch/JAX blocks with --torch-reference")
    p.add_argument("--xla-autotune-level", type=int, help="--xla_gpu_autotune_level (0: no autotuning; default 4)")
    p.add_argument("--xla-autotune-cache", metavar="DIR", help="--xla_gpu_per_fusion_autotune_cache_dir")
    p.add_argument("--xla-flags", help="more XLA flags, space-separated, appended to $XLA_FLAGS: --xla-flags='--a=1'")
    p.add_argument("--compilation-cache", metavar="DIR", help="JAX's persistent compilation cache (every program)")
    p.add_argument("--profile", metavar="DIR", help="after timing, save a jax.profiler trace and list top kernels")
    p.add_argument("--profile-steps", type=int, default=3, help="steps traced with --profile")
    p.add_argument("--sweep", action="store_true", help="light/full x 128/256 x batch 1/4/16 x f32/bf16 x devices")
    p.add_argument("--quick", action="store_true", help="with --sweep: 256 px, batch 1/4 only (a few minutes)")
    p.add_argument("--sweep-img", help="with --sweep: comma-separated image sizes instead of the default ones")
    p.add_argument("--sweep-batch", help="with --sweep: comma-separated batch sizes")
    p.add_argument("--sweep-dtype", help="with --sweep: comma-separated compute dtypes (float32,bfloat16)")
    p.add_argument("--out", default="sweep.md", help="markdown table of --sweep")
    p.add_argument("--combo-timeout", type=int, default=600, help="seconds per sweep combination")
    args, rest = p.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            p.error(f"unrecognised argument {item}")
        overrides.append(item[len("--config.") :])
    args.torch_modes = tuple(m for m in args.torch_modes.split(",") if m)
    unknown = [m for m in args.torch_modes if m not in TORCH_MODES]
    if unknown:
        p.error(f"--torch-modes: unknown {unknown}; choose from {','.join(TORCH_MODES)}")
    return args, overrides


def main(argv=None) -> None:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.torch_reference and args.torch_device != "cpu":
        # JAX takes 75% of a GPU's memory at start by default; leave the official step room beside ours.
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    if args.sweep:
        run_sweep(args, overrides)  # each child applies the XLA options itself
        return
    apply_xla_options(args)
    config = load_config(args.config, overrides)
    if args.torch_reference:  # a wrong checkout fails now, not after our step has compiled and run
        import torch_reference

        torch_reference.import_official(args.torch_reference, config.model)
        torch_reference.check_detach(config.model, args.torch_detach)
    progress = Progress(args.json)
    if args.compile_only:
        result = compile_only(config, args.devices, progress)
        print(json.dumps(result, indent=1))
        print(
            f"trace {result['trace_s']:.1f}s + lower {result['lower_s']:.1f}s + compile {result['compile_s']:.1f}s",
            file=sys.stderr,
        )
        return
    result = run_benchmark(
        config,
        steps=args.steps,
        warmup=args.warmup,
        n_devices=args.devices,
        torch_reference=args.torch_reference,
        torch_detach=args.torch_detach,
        rounds=args.rounds,
        torch_device=args.torch_device,
        torch_modes=args.torch_modes,
        torch_matmul_precision=args.torch_matmul_precision,
        profile_dir=args.profile,
        profile_steps=args.profile_steps,
        progress=progress,
    )
    print(json.dumps(result, indent=1))
    print(
        f"{result['ms_per_step']:.1f} ms/step, {result['images_per_s']:.1f} images/s; trace {result['trace_s']:.1f}s "
        f"+ lower {result['lower_s']:.1f}s + compile {result['compile_s']:.1f}s",
        file=sys.stderr,
    )
    if "torch" in result:
        t = result["torch"]
        for mode, m in t["modes"].items():
            print(
                f"official torch ({mode}, {t['device']}) {m['torch_ms_per_step']:.1f} ms/step vs ours "
                f"{t['jax_ms_per_step']:.1f} ms/step (interleaved medians): {m['speedup']:.2f}x; minima "
                f"{m['torch_ms_min']:.1f} vs {t['jax_ms_min']:.1f} ms",
                file=sys.stderr,
            )
    if "profile" in result:
        print(profile_table(result["profile"]), file=sys.stderr)


if __name__ == "__main__":
    from ugatit_jax.cli import run_script

    run_script("throughput.py", main)
