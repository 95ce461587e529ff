"""A ``jax.profiler`` trace of a few train steps (``throughput.py --profile DIR``) and its summary: kernel time per
step by kernel name, from the device planes (GPU, TPU) or XLA:CPU's ops."""

from __future__ import annotations

import pathlib
import statistics

# Lines of a device plane that xprof derives from the kernels (they would count each kernel twice).
DERIVED_LINES = ("XLA Modules", "XLA Ops", "Steps", "Framework Ops", "Framework Name Scope", "Source code")


def capture_profile(runner, directory: str, steps: int = 3) -> dict:
    """A ``jax.profiler`` trace of ``steps`` more steps (``runner.step()``: one timed step) into ``directory``;
    then its kernels, summed by name, if the trace can be read here (``jax.profiler.ProfileData``), else only
    where it was saved."""
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
