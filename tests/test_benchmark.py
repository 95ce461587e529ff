"""Smoke tests of the throughput benchmark: the script runs end to end on a tiny config and writes its JSON."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from ugatit_jax.cli import UsageError

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "throughput.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_suite  # noqa: E402
import profile_summary  # noqa: E402
import sweep  # noqa: E402
import throughput  # noqa: E402
import torch_compare  # noqa: E402
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
OFFICIAL_NICE = os.environ.get("UGATIT_NICE_OFFICIAL_DIR", "")  # the same of alpc91/NICE-GAN-pytorch


def test_two_steps_write_the_json(tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(SCRIPT), "--config", str(ROOT / "configs/emoji.py"), *TINY]
    cmd += ["--steps", "2", "--warmup", "1", "--devices", "1", "--json", str(out)]
    # The test session's persistent XLA cache (test_mixed_precision compiles the same step in-process), through
    # the script's own option; one traced step after timing, whose trace must be saved.
    cmd += ["--compilation-cache", jax.config.jax_compilation_cache_dir, "--profile", str(tmp_path / "prof")]
    cmd += ["--profile-steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    for key in (
        "ms_per_step", "images_per_s", "trace_s", "lower_s", "compile_s", "flops_per_step", "flops_per_device",
        "achieved_tflops_per_device", "peak_tflops_per_device", "peak_source", "mfu", "memory_analysis",
        "peak_memory_bytes", "device_kind", "device_count", "platform", "losses", "config", "xla_flags",
        "compilation_cache", "profile",
    ):  # fmt: skip
        assert key in r, key
    assert r["phase"] == "done" and r["device_count"] == 1 and r["steps"] == 2
    assert r["ms_per_step"] > 0 and r["flops_per_step"] > 0 and 0 < r["mfu"]
    assert r["config"]["img_size"] == 32 and r["config"]["ch"] == 4
    assert r["images_per_s"] == pytest.approx(2 * 2 / (r["ms_per_step"] / 1e3))
    assert r["compilation_cache"] == jax.config.jax_compilation_cache_dir
    profile = r["profile"]
    assert pathlib.Path(profile["xplane"]).is_file() and profile["steps"] == 1
    assert str(tmp_path / "prof") in profile["xplane"]
    assert "top" in profile or "note" in profile  # XLA:CPU's ops summarised, or why not
    assert "[throughput] compiling" in proc.stderr  # phases are reported as they start


def test_xla_and_torch_options():
    args, overrides = throughput.parse_args(
        ["--xla-autotune-level", "0", "--xla-flags=--xla_gpu_enable_triton_gemm=false", "--config.ch=8",
         "--torch-modes", "float32,autocast_bf16"]
    )  # fmt: skip
    assert sweep.xla_options(args) == ["--xla_gpu_autotune_level=0", "--xla_gpu_enable_triton_gemm=false"]
    assert overrides == ["ch=8"] and args.torch_modes == ("float32", "autocast_bf16")
    passed = ["--xla-autotune-level", "0", "--xla-flags=--xla_gpu_enable_triton_gemm=false"]
    assert sweep.pass_through_options(args) == passed
    assert throughput.parse_args(passed)[0].xla_flags == args.xla_flags
    with pytest.raises(SystemExit):
        throughput.parse_args(["--torch-modes", "float16"])
    assert torch_compare.torch_device_for("cuda:1", "cpu") == "cuda:1"


def test_profile_summary_counts_device_kernels_once():
    """A GPU-shaped trace: kernels on a stream line, and a derived "XLA Ops" line that must not count again."""
    from jax.profiler import ProfileData

    events = "".join(
        f"events {{ metadata_id: {m} offset_ps: {i * 4_000_000} duration_ps: {ps} "
        f'stats {{ metadata_id: 10 str_value: "{op}" }} }} '
        for i, (m, ps, op) in enumerate([(1, 3_000_000, "convolution.1"), (2, 1_000_000, "fusion.2")] * 2)
    )
    trace = f"""planes {{ id: 1 name: "/device:GPU:0"
      lines {{ id: 1 name: "Stream #13(Compute)" {events} }}
      lines {{ id: 2 name: "XLA Ops" events {{ metadata_id: 2 duration_ps: 99000000 }} }}
      event_metadata {{ key: 1 value {{ id: 1 name: "cudnn_conv_kernel" }} }}
      event_metadata {{ key: 2 value {{ id: 2 name: "loop_fusion" }} }}
      stat_metadata {{ key: 10 value {{ id: 10 name: "hlo_op" }} }} }}
    planes {{ id: 2 name: "/host:CPU" }}"""
    s = profile_summary.summarise_profile(ProfileData.from_text_proto(trace), steps=2)
    assert s["source"] == "/device:GPU:0" and s["kernel_ms_per_step"] == pytest.approx(0.004)
    assert [k["kernel"] for k in s["top"]] == ["cudnn_conv_kernel", "loop_fusion"]
    assert s["top"][0]["share"] == pytest.approx(0.75) and s["top"][0]["calls_per_step"] == 1
    assert s["top"][0]["hlo_op"] == "convolution.1"
    table = profile_summary.profile_table(s | {"xplane": "t.xplane.pb", "ms_per_step_traced": 0.01})
    assert "| `cudnn_conv_kernel` | 0.003 | 75.0% | 1.0 | convolution.1 |" in table


def test_run_row_reports_timeouts_failures_and_results(tmp_path):
    """A row is one process with a time limit: what it measured before the limit is kept, with the phase."""
    out = tmp_path / "r.json"
    slow = ["sh", "-c", f"""echo '{{"phase": "compiling", "trace_s": 1.5}}' > {out}; exec sleep 60"""]
    result, note, seconds = sweep.run_row(slow, out, timeout=5)
    assert note == "timed out after 5 s while compiling" and result["trace_s"] == 1.5 and seconds < 30
    write = "import json, sys; open(sys.argv[1], 'w').write(json.dumps({'phase': 'done', 'trace_s': 1.5}))"
    broken = [sys.executable, "-c", "import sys; print('[throughput] setup'); sys.exit('no such device')"]
    assert sweep.run_row(broken, out, timeout=60)[:2] == (None, "no such device")
    fine = [sys.executable, "-c", write, str(out)]
    assert sweep.run_row(fine, out, timeout=60)[:2] == ({"phase": "done", "trace_s": 1.5}, "")


def test_config_overrides_are_typed():
    c = throughput.load_config(str(ROOT / "configs/emoji.py"), ["ch=8", "light=false", "compute_dtype=bfloat16"])
    assert c.ch == 8 and c.light is False and c.compute_dtype == "bfloat16"
    with pytest.raises(UsageError, match="unknown config key 'no_such_key' in a --config.* override"):
        throughput.load_config(str(ROOT / "configs/emoji.py"), ["no_such_key=1"])
    with pytest.raises(UsageError, match="--config=/no/such.py: cannot load it"):
        throughput.load_config("/no/such.py", [])


def test_sweep_grid_and_table():
    full = sweep.sweep_grid(quick=False, device_count=8)
    assert len(full) == 2 * 2 * 3 * 2 * 2  # light/full x img x batch x dtype x {1, 8} devices
    quick = sweep.sweep_grid(quick=True, device_count=1)
    assert {(c["light"], c["img_size"]) for c in quick} == {(True, 256), (False, 256)}
    combo = dict(light=True, img_size=128, batch_size=4, compute_dtype="float32")
    result = {"ms_per_step": 10.0, "images_per_s": 800.0, "trace_s": 1, "lower_s": 1, "compile_s": 3,
              "achieved_tflops_per_device": 1.5, "mfu": 0.25, "memory_analysis": {"estimated_peak_bytes": 2**30},
              "peak_memory_bytes": None}  # fmt: skip
    table = sweep.sweep_table([(combo, 1, result, ""), (combo, 8, None, "skipped: does not fit")], "c.py", [])
    assert "| light | 128 | 4 | float32 | 1 | 10.0 | 800.0 | 5.0 | 1.50 | 25.0% | 1.00 | - |  |" in table
    assert "skipped: does not fit" in table


def test_peak_table_knows_the_lent_gpus():
    class Dev:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    assert throughput.peak_tflops(Dev(), "bfloat16")[0] == pytest.approx(989.4)
    Dev.device_kind = "NVIDIA H200"
    assert throughput.peak_tflops(Dev(), "float32")[0] == pytest.approx(494.7)


def test_torch_reference_needs_networks_py(tmp_path):
    with pytest.raises(UsageError, match="no networks.py"):
        torch_reference.locate_networks(tmp_path)


@pytest.mark.skipif(
    not OFFICIAL or not pathlib.Path(OFFICIAL).exists(),
    reason="no official UGATIT-pytorch checkout (UGATIT_OFFICIAL_DIR)",
)
def test_official_step_runs_at_our_config():
    config = throughput.load_config(str(ROOT / "configs/emoji.py"), [a[len("--config.") :] for a in TINY])
    networks = torch_reference.import_official(OFFICIAL)
    official = torch_reference.official_step(networks, config, threads=1)
    d_loss, g_loss = official(*official.random_batch(0))
    assert d_loss > 0 and g_loss > 0
    # The same step under bfloat16 autocast (on the CPU here): same networks and seed, losses close to float32's.
    autocast = torch_reference.official_step(networks, config, threads=1, autocast="bfloat16")
    d_bf16, g_bf16 = autocast(*autocast.random_batch(0))
    assert d_bf16 == pytest.approx(d_loss, rel=0.05) and g_bf16 == pytest.approx(g_loss, rel=0.05)


@pytest.mark.skipif(
    not OFFICIAL_NICE or not pathlib.Path(OFFICIAL_NICE).exists(),
    reason="no official NICE-GAN-pytorch checkout (UGATIT_NICE_OFFICIAL_DIR)",
)
def test_official_nice_step_runs_at_our_config():
    overrides = [a[len("--config.") :] for a in TINY] + ["model=nice", "n_dis=6", "img_size=64"]
    config = throughput.load_config(str(ROOT / "configs/emoji.py"), overrides)
    networks = torch_reference.import_official(OFFICIAL_NICE, "nice")
    official = torch_reference.official_step(networks, config, threads=1)
    assert isinstance(official, torch_reference.OfficialNiceStep)
    d_loss, g_loss = official(*official.random_batch(0))
    assert d_loss > 0 and g_loss > 0
    before = [p.detach().clone() for p in official.disA.parameters()]
    official(*official.random_batch(1))
    assert any(not (a == b.detach()).all() for a, b in zip(before, official.disA.parameters()))
    if OFFICIAL:  # U-GAT-IT's networks.py for a NICE config: one line naming the right repository
        with pytest.raises(UsageError, match="NICE-GAN-pytorch"):
            torch_reference.import_official(OFFICIAL, "nice")


def test_gpu_suite_tables(tmp_path):
    """The suite's report from finished, timed-out and unrun rows (no process is started)."""
    ns = type("Args", (), {"out": tmp_path, "work": tmp_path / "w", "budget": 60.0, "official": str(tmp_path),
                           "dry_run": True, "timeout_scale": 1.0})()  # fmt: skip
    suite = gpu_suite.Suite(ns)
    ran = gpu_suite.Row("full-b1-f32", "vs official", False, 1, "float32", 150, torch_modes=("float32",))
    ran.status, ran.result = "ran", {
        "ms_per_step": 50.0, "images_per_s": 40.0, "trace_s": 3.0, "lower_s": 1.0, "compile_s": 40.0,
        "achieved_tflops_per_device": 44.0, "mfu": 0.089, "peak_memory_bytes": 2**31,
        "torch": {"jax_ms_per_step": 50.0, "device_name": "NVIDIA H200", "torch_version": "2.11",
                  "float32_matmul_precision": "high",
                  "modes": {"float32": {"torch_ms_per_step": 80.0, "speedup": 1.6, "speedup_of_minima": 1.5}}},
        "profile": {"xplane": "/x.xplane.pb", "source": "/device:GPU:0", "kernel_ms_per_step": 40.0,
                    "kernels_per_step": 900, "ms_per_step_traced": 51.0,
                    "top": [{"kernel": "cudnn_conv", "ms_per_step": 10.0, "share": 0.25, "calls_per_step": 4,
                             "hlo_op": "convolution.1"}]},
    }  # fmt: skip
    late = gpu_suite.Row("full-b1-bf16", "vs autocast", False, 1, "bfloat16", 170)
    late.status, late.note, late.result = "timed out", "timed out after 170 s while compiling", {"trace_s": 3.5}
    late.log_tail = ["[throughput] compiling (t=9.0s)"]
    never = gpu_suite.Row("light-b16-f32", "sweep", True, 16, "float32", 90)
    never.status, never.note = "not run", "not run: suite budget spent"
    suite.rows = [ran, late, never]
    suite.write()
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "| full-b1-f32 | 50.0 | float32 | 80.0 | **1.60x** | 1.50x | NVIDIA H200 | 2.11 | high |" in md
    assert "| 1 | full-b1-f32: vs official | full | 32 | 1 | float32 | default | 50.0 | 40.0 | 3.0 | 1.0 | 40.0 " in md
    assert "| 2 | full-b1-bf16: vs autocast | full | 32 | 1 | bfloat16 | default | - | - | 3.5 | - | - " in md
    assert "timed out after 170 s while compiling" in md and "not run: suite budget spent" in md
    assert "| `cudnn_conv` | 10.000 | 25.0% | 4.0 | convolution.1 |" in md
    raw = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [r["status"] for r in raw["rows"]] == ["ran", "timed out", "not run"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_config_file_loads_and_validates(path):
    from ugatit_jax.config import validate

    validate(throughput.load_config(str(path), ["dataset_dir=/data/selfie2anime"]))  # the paper's need a folder


def test_nice_emoji_is_the_emoji_demo_for_the_other_family():
    emoji = throughput.load_config(str(ROOT / "configs/emoji.py"), []).to_dict()
    nice = throughput.load_config(str(ROOT / "configs/nice_emoji.py"), []).to_dict()
    assert {k: (emoji[k], v) for k, v in nice.items() if emoji[k] != v} == {
        "model": ("ugatit", "nice"),
        "n_dis": (7, 6),
    }


def test_a_wrong_official_checkout_is_one_line_before_compiling(tmp_path):
    """throughput.py checks --torch-reference before it compiles anything: one error line, exit 2."""
    cmd = [sys.executable, str(ROOT / "benchmarks/throughput.py"), "--config", str(ROOT / "configs/nice_light.py")]
    proc = subprocess.run([*cmd, "--torch-reference", str(tmp_path)], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("throughput.py: error: --torch-reference") and "NICE-GAN-pytorch" in lines[0]


def test_no_script_ends_bad_input_with_a_message_exit():
    """The benchmarks and scripts report bad input as an ``errors.ExpectedError`` (``cli.run_script`` prints its
    one line), never ``raise SystemExit("message")``: one convention for every entry point."""
    import ast

    found = []
    for path in sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "scripts").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            call = node.exc if isinstance(node, ast.Raise) else None
            if isinstance(call, ast.Call) and ast.unparse(call.func) == "SystemExit":
                if call.args and not (isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, int)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found
