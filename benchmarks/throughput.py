"""Throughput of the jitted train step (U-GAT-IT or NICE-GAN), optionally against the official PyTorch step.

It times exactly what training runs (``build_model`` / ``make_optimizers`` / ``train.family_step.make_step`` and
``parallel.jit_train_step``, with the config's state shardings) on random uint8 batches, so no dataset is needed.
Reported: trace / lower / compile seconds, median ms per step and images/s (both domains), XLA's FLOP count for one
step, achieved TFLOP/s and MFU against the device's dense peak, XLA's compiled memory plan per device (the state's
parts and the temporaries, as ``python -m ugatit_jax.plan`` prints it) and the device's peak memory where it
reports one. ``--compile-only`` compiles the step ``train.py`` would (``train.memory.abstract_step``) on shapes
only, so its ``memory_analysis`` is that command's plan.

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
end to end. The official step's timing lives in ``torch_compare.py``, the profile's summary in
``profile_summary.py``, the XLA options and the sweep in ``sweep.py``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from profile_summary import capture_profile, profile_table  # noqa: E402  (these import no jax at module level)
from sweep import apply_xla_options, run_sweep, xla_settings  # noqa: E402
from torch_compare import TORCH_MODES, compare_with_torch  # noqa: E402

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
    """``get_config()`` of a config file plus ``key=value`` overrides, parsed by ml_collections as train.py does;
    bad input is one ``throughput.py: error:`` line (``cli.run_script``)."""
    from ugatit_jax.cli import load_config as load

    return load(path, overrides, prog="throughput")


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


def devices_and_mesh(config, n_devices: int | None):
    """The first ``n_devices`` devices (None: all) and their mesh; one error line where the count or the config's
    batch does not fit them."""
    import jax

    from ugatit_jax.errors import UsageError
    from ugatit_jax.train import memory, parallel

    available = jax.devices()
    n = len(available) if n_devices is None else n_devices
    if n > len(available):
        raise UsageError(
            f"--devices {n}: JAX sees {len(available)} {available[0].platform} device(s); on a CPU, "
            f"JAX_NUM_CPU_DEVICES={n} gives it {n}"
        )
    devices = available[:n]
    mesh = parallel.make_mesh(devices)
    memory.check_devices(config, mesh)  # e.g. a batch that does not split over the devices: names the option
    return devices, mesh


def setup(config, n_devices: int | None):
    """The project's own model, optimisers, state (placed as ``config.shard_state`` says) and jitted step on a mesh
    of ``n_devices`` devices."""
    from ugatit_jax.models.family import build_model
    from ugatit_jax.train import parallel
    from ugatit_jax.train.family_step import make_step
    from ugatit_jax.train.optim import make_optimizers
    from ugatit_jax.train.state import create_train_state, ema_names

    devices, mesh = devices_and_mesh(config, n_devices)
    model = build_model(config)
    g_tx, d_tx = make_optimizers(config)
    graphdefs, state = create_train_state(model, g_tx, d_tx, ema=ema_names(config))  # the run's step, EMA included
    shardings = parallel.state_shardings(state, mesh, config.shard_state)
    state = parallel.place_state(state, shardings)
    step = make_step(config, graphdefs, g_tx, d_tx, mesh)
    step_fn = parallel.jit_train_step(step, mesh, state_sharding=shardings)
    return devices, state, step_fn, make_batches(config, parallel.batch_sharding(mesh))


def abstract_setup(config, n_devices: int | None):
    """Shapes only (no parameter is allocated): the step ``train.py`` would compile for ``config`` on
    ``n_devices`` devices (``train.memory.abstract_step``, the one ``python -m ugatit_jax.plan`` compiles), so
    even the paper's full model compiles on a small machine."""
    from ugatit_jax.train import memory

    devices, mesh = devices_and_mesh(config, n_devices)
    step_fn, state, batch = memory.abstract_step(config, mesh)
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
    result |= analyse(lowered, compiled, len(devices), state)
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


def analyse(lowered, compiled, n_devices: int, state) -> dict:
    """FLOPs of one step and XLA's memory plan per device (``train.memory.plan_of``; ``state``: the step's state
    argument, arrays or shapes with their shardings).

    The FLOP count is the cost analysis of the *lowered* (global, not yet partitioned or optimised) program: the
    model's FLOPs, the same on every backend. The compiled program's count is kept for reference only: on GPU it
    leaves out convolutions and matmuls that run as library calls (cuDNN, cuBLAS), so it undercounts ~10x.
    """
    from ugatit_jax.train import memory

    flops = model_flops(lowered)
    compiled_cost = _cost(compiled.cost_analysis())
    out = {"flops_per_step": flops, "flops_per_device": flops / n_devices if flops else None}
    out["compiled_flops_per_device"] = compiled_cost.get("flops")
    out["bytes_accessed_per_device"] = compiled_cost.get("bytes accessed")
    plan = memory.plan_of(compiled, state)
    if plan is not None:
        out["memory_analysis"] = plan.as_dict()
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
    result |= analyse(lowered, compiled, len(devices), state)
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


# ------------------------------------------------------------------------------------------------------------- main
def parse_args(argv):
    from ugatit_jax.cli import Parser

    p = Parser(prog="throughput.py", description=__doc__.splitlines()[0])
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
    if args.devices is not None and args.devices < 1:
        p.error(f"--devices {args.devices}: give a device count of at least 1")
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
    devices_and_mesh(config, args.devices)  # a device count or batch that cannot work: one line, before any phase
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
