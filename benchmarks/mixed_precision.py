"""bfloat16 vs float32 training on the same batches: how far apart the losses drift (a measurement, not a test).

Both runs start from the same float32 parameters (same seed) and see the same batches of the config's dataset;
only ``compute_dtype`` differs. Reported: per-step relative differences of d_loss and g_loss, and of their means
over windows of steps (GAN losses are noisy step to step; the windowed means are what a training curve shows).

  python benchmarks/mixed_precision.py --config configs/emoji.py --steps 200 --json bf16.json
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def collect_batches(config, steps: int):
    from ugatit_jax import data as data_lib

    source = data_lib.get_source(config)
    it = data_lib.make_train_iterator(
        source, img_size=config.img_size, global_batch_size=config.batch_size, seed=config.seed, num_workers=0
    )
    batches = [next(it) for _ in range(steps)]
    it.close()
    return batches


def train(config, batches) -> tuple[list[dict], float]:
    """The benchmark's own set-up (the training step as train.py builds it) on one device, on ``batches``."""
    import chex
    import jax
    import throughput

    chex.clear_trace_counter()  # one step per dtype in this process; each is traced once
    _, state, step, _ = throughput.setup(config, 1)
    history = []
    t0 = time.perf_counter()
    for batch in batches:
        state, metrics = step(state, batch)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return history, time.perf_counter() - t0


def first_non_finite(history: list[dict]) -> int | None:
    """1-based step whose metrics (losses or gradient norms) first hold a NaN or inf."""
    for i, metrics in enumerate(history):
        if not all(math.isfinite(v) for v in metrics.values()):
            return i + 1
    return None


def compare(f32: list[dict], bf16: list[dict], window: int) -> dict:
    """Compares the steps before either run's first non-finite step."""
    bad = [s for s in (first_non_finite(f32), first_non_finite(bf16)) if s is not None]
    n = min(bad) - 1 if bad else len(f32)
    f32, bf16 = f32[:n], bf16[:n]
    out = {"steps_compared": n}
    for key in ("d_loss", "g_loss"):
        a = [h[key] for h in f32]
        b = [h[key] for h in bf16]
        per_step = [abs(y - x) / abs(x) for x, y in zip(a, b)]
        windows = []
        for i in range(0, len(a) - window + 1, window):
            ma, mb = statistics.fmean(a[i : i + window]), statistics.fmean(b[i : i + window])
            windows.append({"steps": [i + 1, i + window], "f32": ma, "bf16": mb, "rel_diff": abs(mb - ma) / abs(ma)})
        out[key] = {
            "per_step_rel_diff_median": statistics.median(per_step),
            "per_step_rel_diff_max": max(per_step),
            "first_step": {"f32": a[0], "bf16": b[0], "rel_diff": per_step[0]},
            "last_step": {"f32": a[-1], "bf16": b[-1], "rel_diff": per_step[-1]},
            "windows": windows,
            "window_rel_diff_max": max(w["rel_diff"] for w in windows) if windows else None,
        }
    return out


def main(argv=None) -> None:
    import throughput

    from ugatit_jax.cli import Parser

    p = Parser(prog="mixed_precision.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "emoji.py"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--window", type=int, default=50, help="steps per averaged window")
    p.add_argument("--json", help="write the results here")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    overrides = [a[len("--config.") :] for a in rest if a.startswith("--config.")]
    base = throughput.load_config(args.config, [o for o in overrides if not o.startswith("compute_dtype=")])
    batches = collect_batches(base, args.steps)
    runs, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        config = throughput.load_config(args.config, overrides + [f"compute_dtype={dtype}"])
        runs[dtype], seconds[dtype] = train(config, batches)
        print(f"{dtype}: {args.steps} steps in {seconds[dtype]:.0f}s (compilation included)", file=sys.stderr)
    result = {
        "config": throughput.config_summary(base),
        "steps": args.steps,
        "seconds_incl_compile": seconds,
        "first_non_finite_step": {k: first_non_finite(v) for k, v in runs.items()},
        "comparison": compare(runs["float32"], runs["bfloat16"], args.window),
        "history": runs,
    }
    comparison = {k: v for k, v in result["comparison"].items() if isinstance(v, dict) and "windows" in v}
    summary = {k: {kk: v for kk, v in c.items() if kk != "windows"} for k, c in comparison.items()}
    print(json.dumps({"first_non_finite_step": result["first_non_finite_step"], **summary}, indent=1))
    for key, c in comparison.items():
        for w in c["windows"]:
            print(f"{key} steps {w['steps']}: f32 {w['f32']:.4f}  bf16 {w['bf16']:.4f}  ({w['rel_diff']:.2%})")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    from ugatit_jax.cli import run_script

    run_script("mixed_precision.py", main)
