"""The XLA options of a benchmark run and the sweep over models, sizes, batches and dtypes (``throughput.py
--sweep``): each combination is ``throughput.py`` in its own process with a time limit (``run_row``, also what
``gpu_suite.py`` runs its rows with), and the results become one markdown table."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

SCRIPT = pathlib.Path(__file__).resolve().with_name("throughput.py")


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
        cmd = [sys.executable, str(SCRIPT), "--config", args.config, "--steps", str(args.steps)]
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
