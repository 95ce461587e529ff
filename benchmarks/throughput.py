"""Throughput of the jitted U-GAT-IT train step, optionally against the official PyTorch step.

It times exactly what training runs (``trainer.build_model`` / ``make_optimizers`` / ``make_step`` and
``parallel.jit_train_step``) on random uint8 batches, so no dataset is needed. Reported: trace / lower / compile
seconds, median ms per step and images/s (both domains), XLA's FLOP count for one step, achieved TFLOP/s and MFU
against the device's dense peak, XLA's compiled memory analysis and the device's peak memory where it reports one.

  python benchmarks/throughput.py --config configs/emoji.py --steps 50 --json emoji.json
  python benchmarks/throughput.py --config configs/light.py --config.img_size=128 --config.ch=32 \\
      --config.batch_size=1 --torch-reference /path/to/UGATIT-pytorch      # interleaved with the official step
  python benchmarks/throughput.py --sweep --quick --out sweep.md              # markdown table, one subprocess each
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
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

    argv = ["throughput", f"--config={path}", *(f"--config.{o}" for o in overrides)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, flag_values=values, sys_argv=argv, lock_config=True)
    try:
        values(argv)
    except (AttributeError, KeyError) as e:  # ml_collections' message is just the quoted key
        key = str(e).strip("'\"")
        raise SystemExit(f"unknown config key {key!r}; the keys are listed in ugatit_jax/config.py") from None
    except flags.Error as e:
        raise SystemExit(str(e)) from None
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

    from ugatit_jax.train import parallel, trainer
    from ugatit_jax.train.state import create_train_state

    devices = jax.devices()[: n_devices or jax.device_count()]
    if config.batch_size % len(devices):
        raise SystemExit(f"batch_size {config.batch_size} is not divisible by {len(devices)} devices; use --devices")
    mesh = parallel.make_mesh(devices)
    model = trainer.build_model(config)
    g_tx, d_tx = trainer.make_optimizers(config)
    graphdefs, state = create_train_state(model, g_tx, d_tx)
    state = parallel.replicate(state, mesh)
    step_fn = parallel.jit_train_step(trainer.make_step(config, graphdefs, g_tx, d_tx), mesh)
    return devices, state, step_fn, make_batches(config, parallel.batch_sharding(mesh))


def abstract_setup(config, n_devices: int | None):
    """Shapes only (no parameter is allocated): compile even the 279M-parameter full model on a small machine."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ugatit_jax.train import parallel, trainer
    from ugatit_jax.train.state import D_NAMES, G_NAMES, TrainState, split_model

    devices = jax.devices()[: n_devices or jax.device_count()]
    mesh = parallel.make_mesh(devices)
    model = nnx.eval_shape(lambda: trainer.build_model(config))
    g_tx, d_tx = trainer.make_optimizers(config)
    graphdefs, params, sn = split_model(model)
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        sn=sn,
        g_opt=jax.eval_shape(g_tx.init, {n: params[n] for n in G_NAMES}),
        d_opt=jax.eval_shape(d_tx.init, {n: params[n] for n in D_NAMES}),
    )
    step_fn = parallel.jit_train_step(trainer.make_step(config, graphdefs, g_tx, d_tx), mesh)
    shape = (config.batch_size, config.img_size, config.img_size, 3)
    batch = {d: jax.ShapeDtypeStruct(shape, jnp.uint8) for d in "AB"}
    return devices, state, step_fn, batch


def compile_only(config, n_devices: int | None) -> dict:
    devices, state, step_fn, batch = abstract_setup(config, n_devices)
    lowered, compiled, compile_times = compile_step(step_fn, state, batch)
    result = {"config": config_summary(config), "platform": devices[0].platform, "compile_only": True}
    result |= {"device_kind": devices[0].device_kind, "device_count": len(devices), **compile_times}
    result |= {"load_average": os.getloadavg()[0]}
    return result | analyse(lowered, compiled, len(devices))


def compile_step(step_fn, state, batch):
    """Trace, lower and compile separately (each is a real cost of starting a run)."""
    t0 = time.perf_counter()
    traced = step_fn.trace(state, batch)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
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
) -> dict:
    devices, state, step_fn, batches = setup(config, n_devices)
    lowered, compiled, compile_times = compile_step(step_fn, state, batches[0])
    result = {"config": config_summary(config), "platform": devices[0].platform}
    result |= {"device_kind": devices[0].device_kind, "device_count": len(devices), **compile_times}
    result |= analyse(lowered, compiled, len(devices))
    result["load_average_before"] = os.getloadavg()[0]  # 1-minute; other processes' load skews CPU timings
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
    if torch_reference:
        result["torch"] = compare_with_torch(config, runner, torch_reference, steps, warmup, rounds, torch_detach)
    return result


def compare_with_torch(config, runner: Runner, path: str, steps: int, warmup: int, rounds: int, detach: bool) -> dict:
    """Alternate blocks of official and JAX steps, so load or thermal drift hits both alike."""
    import torch_reference

    threads = os.cpu_count() or 1
    official = torch_reference.OfficialStep(
        torch_reference.import_official(path), config, threads=threads, detach=detach
    )
    batches = [official.random_batch(i) for i in range(2)]
    for i in range(warmup):
        official(*batches[i % 2])
    per_round = max(1, steps // rounds)
    t_torch, t_jax = [], []
    for r in range(rounds):
        for i in range(per_round):
            t = time.perf_counter()
            official(*batches[(r + i) % 2])
            t_torch.append(time.perf_counter() - t)
        t_jax += [runner.step() for _ in range(per_round)]
    torch_ms = statistics.median(t_torch) * 1e3
    jax_ms = statistics.median(t_jax) * 1e3
    return {
        "torch_ms_min": min(t_torch) * 1e3,
        "jax_ms_min": min(t_jax) * 1e3,
        "load_average": os.getloadavg()[0],
        "reference": str(path),
        "detach": detach,
        "torch_version": official.torch.__version__,
        "torch_threads": official.torch.get_num_threads(),
        "rounds": rounds,
        "steps_each": len(t_torch),
        "torch_ms_per_step": torch_ms,
        "jax_ms_per_step": jax_ms,
        "speedup": torch_ms / jax_ms,
        "speedup_of_minima": min(t_torch) / min(t_jax),
    }


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
    """One combination in a fresh process: (its result, "") or (None, why it was skipped)."""
    label = f"{'light' if combo['light'] else 'full'} {combo['img_size']}px b{combo['batch_size']} "
    label += f"{combo['compute_dtype']} x{n}"
    if combo["batch_size"] % n:
        return None, f"skipped: batch not divisible by {n} devices"
    overrides = base_overrides + [f"{k}={v}" for k, v in combo.items()]
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "r.json"
        cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps)]
        cmd += ["--warmup", str(args.warmup), "--devices", str(n), "--json", str(out)]
        cmd += [f"--config.{o}" for o in overrides]
        print(f"[sweep] {label} ...", flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.combo_timeout)
        except subprocess.TimeoutExpired:
            print(f"[sweep] {label}: over {args.combo_timeout}s", flush=True)
            return None, f"skipped: over {args.combo_timeout}s"
        if proc.returncode == 0 and out.is_file():
            r = json.loads(out.read_text())
            print(f"[sweep] {label}: {r['ms_per_step']:.1f} ms/step, compile {r['compile_s']:.1f}s", flush=True)
            return r, ""
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        why = "does not fit in device memory" if "RESOURCE_EXHAUSTED" in proc.stderr else tail[0][:120]
        print(f"[sweep] {label}: {why}", flush=True)
        return None, f"skipped: {why}"


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
        if r:
            est = (r.get("memory_analysis") or {}).get("estimated_peak_bytes")
            cells += [
                _fmt(r["ms_per_step"], ".1f"),
                _fmt(r["images_per_s"], ".1f"),
                _fmt(r["lower_s"] + r["trace_s"] + r["compile_s"], ".1f"),
                _fmt(r["achieved_tflops_per_device"], ".2f"),
                _fmt(100 * r["mfu"] if r["mfu"] is not None else None, ".1f") + ("%" if r["mfu"] else ""),
                _fmt(gib(est), ".2f"),
                _fmt(gib(r["peak_memory_bytes"]), ".2f"),
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
    p.add_argument("--json", help="write the results here")
    p.add_argument("--compile-only", action="store_true", help="trace/lower/compile on abstract inputs; no run")
    p.add_argument("--torch-reference", metavar="DIR", help="official UGATIT-pytorch checkout (or its bare git dir)")
    p.add_argument("--torch-detach", action="store_true", help="detach the fakes in the official D update (faster)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved torch/JAX blocks with --torch-reference")
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
    return args, overrides


def main(argv=None) -> None:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    if args.sweep:
        run_sweep(args, overrides)
        return
    config = load_config(args.config, overrides)
    if args.compile_only:
        result = compile_only(config, args.devices)
        print(json.dumps(result, indent=1))
        print(
            f"trace {result['trace_s']:.1f}s + lower {result['lower_s']:.1f}s + compile {result['compile_s']:.1f}s",
            file=sys.stderr,
        )
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
        return
    result = run_benchmark(
        config,
        steps=args.steps,
        warmup=args.warmup,
        n_devices=args.devices,
        torch_reference=args.torch_reference,
        torch_detach=args.torch_detach,
        rounds=args.rounds,
    )
    print(json.dumps(result, indent=1))
    print(
        f"{result['ms_per_step']:.1f} ms/step, {result['images_per_s']:.1f} images/s; trace {result['trace_s']:.1f}s "
        f"+ lower {result['lower_s']:.1f}s + compile {result['compile_s']:.1f}s",
        file=sys.stderr,
    )
    if "torch" in result:
        t = result["torch"]
        print(
            f"official torch {t['torch_ms_per_step']:.1f} ms/step vs ours {t['jax_ms_per_step']:.1f} ms/step "
            f"(interleaved medians): {t['speedup']:.2f}x; minima {t['torch_ms_min']:.1f} vs {t['jax_ms_min']:.1f} ms",
            file=sys.stderr,
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
