"""The official PyTorch step timed alternately with ours, on one device and batch size (``throughput.py
--torch-reference DIR``): every official variant in ``--torch-modes`` gets its own block in each round, so load or
thermal drift hits both alike. The official networks come from the user's checkout (``torch_reference.py``)."""

from __future__ import annotations

import os
import statistics
import time

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
    runner,
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
    """Alternate blocks of official and JAX steps (``runner.step()``: one of ours, timed) on one device and batch
    size, so load or thermal drift hits both alike. Every official variant in ``modes`` gets its own block in each
    round."""
    import jax
    import torch_reference

    from ugatit_jax.errors import UsageError

    unknown = [m for m in modes if m not in TORCH_MODES]
    if unknown:
        raise UsageError(f"--torch-modes: unknown {unknown}; choose from {sorted(TORCH_MODES)}")
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
