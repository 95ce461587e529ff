"""Smoke tests of the throughput benchmark: the script runs end to end on a tiny config and writes its JSON."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "throughput.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402
import torch_reference  # noqa: E402

TINY = [
    "--config.ch=4",
    "--config.n_res=1",
    "--config.img_size=32",
    "--config.disc_global_layers=4",
    "--config.disc_local_layers=3",
    "--config.batch_size=2",
]
OFFICIAL = os.environ.get("UGATIT_OFFICIAL_DIR", "")  # a checkout (or bare clone) of znxlwm/UGATIT-pytorch


def test_two_steps_write_the_json(tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(SCRIPT), "--config", str(ROOT / "configs/emoji.py"), *TINY]
    cmd += ["--steps", "2", "--warmup", "1", "--devices", "1", "--json", str(out)]
    # The test session's persistent XLA cache: test_mixed_precision compiles the same step in-process.
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    for key in (
        "ms_per_step", "images_per_s", "trace_s", "lower_s", "compile_s", "flops_per_step", "flops_per_device",
        "achieved_tflops_per_device", "peak_tflops_per_device", "peak_source", "mfu", "memory_analysis",
        "peak_memory_bytes", "device_kind", "device_count", "platform", "losses", "config",
    ):  # fmt: skip
        assert key in r, key
    assert r["device_count"] == 1 and r["steps"] == 2
    assert r["ms_per_step"] > 0 and r["flops_per_step"] > 0 and 0 < r["mfu"]
    assert r["config"]["img_size"] == 32 and r["config"]["ch"] == 4
    assert r["images_per_s"] == pytest.approx(2 * 2 / (r["ms_per_step"] / 1e3))


def test_config_overrides_are_typed():
    c = throughput.load_config(str(ROOT / "configs/emoji.py"), ["ch=8", "light=false", "compute_dtype=bfloat16"])
    assert c.ch == 8 and c.light is False and c.compute_dtype == "bfloat16"
    with pytest.raises(SystemExit, match="unknown config key"):
        throughput.load_config(str(ROOT / "configs/emoji.py"), ["no_such_key=1"])


def test_sweep_grid_and_table():
    full = throughput.sweep_grid(quick=False, device_count=8)
    assert len(full) == 2 * 2 * 3 * 2 * 2  # light/full x img x batch x dtype x {1, 8} devices
    quick = throughput.sweep_grid(quick=True, device_count=1)
    assert {(c["light"], c["img_size"]) for c in quick} == {(True, 256), (False, 256)}
    combo = dict(light=True, img_size=128, batch_size=4, compute_dtype="float32")
    result = {"ms_per_step": 10.0, "images_per_s": 800.0, "trace_s": 1, "lower_s": 1, "compile_s": 3,
              "achieved_tflops_per_device": 1.5, "mfu": 0.25, "memory_analysis": {"estimated_peak_bytes": 2**30},
              "peak_memory_bytes": None}  # fmt: skip
    table = throughput.sweep_table([(combo, 1, result, ""), (combo, 8, None, "skipped: does not fit")], "c.py", [])
    assert "| light | 128 | 4 | float32 | 1 | 10.0 | 800.0 | 5.0 | 1.50 | 25.0% | 1.00 | - |  |" in table
    assert "skipped: does not fit" in table


def test_peak_table_knows_the_lent_gpus():
    class Dev:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    assert throughput.peak_tflops(Dev(), "bfloat16")[0] == pytest.approx(989.4)
    Dev.device_kind = "NVIDIA H200"
    assert throughput.peak_tflops(Dev(), "float32")[0] == pytest.approx(494.7)


def test_torch_reference_needs_networks_py(tmp_path):
    with pytest.raises(SystemExit, match="no networks.py"):
        torch_reference.locate_networks(tmp_path)


@pytest.mark.skipif(
    not OFFICIAL or not pathlib.Path(OFFICIAL).exists(),
    reason="no official UGATIT-pytorch checkout (UGATIT_OFFICIAL_DIR)",
)
def test_official_step_runs_at_our_config():
    config = throughput.load_config(str(ROOT / "configs/emoji.py"), [a[len("--config.") :] for a in TINY])
    official = torch_reference.OfficialStep(torch_reference.import_official(OFFICIAL), config, threads=1)
    d_loss, g_loss = official(*official.random_batch(0))
    assert d_loss > 0 and g_loss > 0
