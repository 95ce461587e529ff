"""The GPU measurements, end to end and unattended, inside a fixed time budget (``gpu_suite.sh`` runs this).

Rows run in priority order, each ``throughput.py`` in its own process with its own time limit, and the suite's
budget caps them all: what runs out of time is written as "timed out after N s while <phase>" with whatever it had
measured, what never started as "not run: suite budget spent". ``gpu_suite.md`` (and ``gpu_suite.json``) under
``--out`` are rewritten after every row, so a run killed from outside still leaves every finished row.

Order: (1) full model, 256 px, batch 1, float32, interleaved with the official PyTorch float32 step, with one
``jax.profiler`` trace; (2) the same in bfloat16, against the official step under bfloat16 autocast (and float32);
(3) light, batch 8, bfloat16 (MFU); (4) where bfloat16 compile time goes: compile only with autotuning off, then
with a per-fusion autotune cache cold and warm; (5) the rest of light/full x 256 x batch 1/4/8/16 x
float32/bfloat16. When the bfloat16 step does not finish compiling inside row 2's limit and compiles with
autotuning off, the later bfloat16 rows run with autotuning off (their XLA column says so).

``--dry-run`` runs the same plan on the CPU at tiny sizes (ch 4, 32 px, batch 1/2) to prove the plumbing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import profile_summary  # noqa: E402  (neither imports jax at module level: this process never touches the GPU)
import sweep  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "throughput.py"
TINY = ["--config.ch=4", "--config.n_res=1", "--config.disc_global_layers=4", "--config.disc_local_layers=3"]
COMPILING = ("setup", "tracing", "lowering", "compiling")
MIN_ROW_S = 20  # a row given less than this is not started (dry run: 3)
RESERVE_S = 5  # kept back from the budget for the last write


@dataclasses.dataclass
class Row:
    key: str
    purpose: str
    light: bool
    batch: int
    dtype: str
    timeout: float
    compile_only: bool = False
    torch_modes: tuple[str, ...] = ()
    profile: bool = False
    xla: list[str] = dataclasses.field(default_factory=list)
    fixed_limit: bool = False  # --timeout-scale leaves its limit alone
    # Filled in when it runs.
    status: str = "pending"  # pending | ran | timed out | failed | not run | stopped
    note: str = ""
    seconds: float | None = None
    result: dict | None = None
    cmd: list[str] | None = None
    log_tail: list[str] | None = None

    @property
    def model(self) -> str:
        return "light" if self.light else "full"


class Suite:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.out = pathlib.Path(args.out).resolve()
        self.work = pathlib.Path(args.work).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget
        self.started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.official = args.official if args.official and pathlib.Path(args.official).exists() else None
        self.env: dict = {}
        self.rows: list[Row] = []
        self.state = "starting"
        self.bf16_xla: list[str] = []  # XLA options every later bfloat16 row gets (autotuning off if needed)
        self.img = 32 if self.dry else 256

    # ------------------------------------------------------------------------------------------------ commands
    def command(self, row: Row) -> list[str]:
        json_path = self.work / f"{row.key}.json"
        config = ROOT / "configs" / ("emoji.py" if self.dry else "default.py")
        cmd = [sys.executable, str(SCRIPT), "--config", str(config), "--devices", "1", "--json", str(json_path)]
        cmd += [f"--config.light={str(row.light).lower()}", f"--config.img_size={self.img}"]
        cmd += [f"--config.batch_size={row.batch}", f"--config.compute_dtype={row.dtype}"]
        cmd += TINY if self.dry else []
        if row.compile_only:
            cmd += ["--compile-only"]
        else:
            cmd += ["--steps", "2" if self.dry else "20", "--warmup", "1" if self.dry else "3"]
        if row.torch_modes and self.official:
            cmd += ["--torch-reference", self.official, "--torch-modes", ",".join(row.torch_modes)]
            cmd += ["--rounds", "1" if self.dry else "5"]
        if row.profile:
            cmd += ["--profile", str(self.work / "profile"), "--profile-steps", "1" if self.dry else "3"]
        if self.dry and self.args.dry_cache:
            cmd += ["--compilation-cache", self.args.dry_cache]  # repeated dry runs skip the CPU compiles
        return cmd + row.xla

    def remaining(self) -> float:
        return self.deadline - time.monotonic() - RESERVE_S

    def run(self, row: Row) -> Row:
        if row not in self.rows:
            self.rows.append(row)
        row.timeout *= 1.0 if row.fixed_limit else self.args.timeout_scale
        timeout = min(row.timeout, self.remaining())
        if timeout < (3 if self.dry else MIN_ROW_S):
            row.status, row.note = "not run", "not run: suite budget spent"
            self.write()
            return row
        row.cmd = self.command(row)
        self.state = f"running {row.key}"
        self.write()
        print(f"[gpu_suite] {row.key}: {row.purpose} (limit {timeout:.0f} s)", flush=True)
        log = self.work / f"{row.key}.log"
        json_path = self.work / f"{row.key}.json"
        started = time.monotonic()
        try:
            row.result, row.note, row.seconds = sweep.run_row(row.cmd, json_path, timeout, log)
        except BaseException:  # the suite is being stopped: keep what this row had measured
            row.seconds = time.monotonic() - started
            row.result = json.loads(json_path.read_text()) if json_path.is_file() else None
            phase = (row.result or {}).get("phase")
            where = f" while {sweep.PHASE_WORDS.get(phase, phase)}" if phase else ""
            row.status, row.note = "stopped", f"stopped after {row.seconds:.0f} s{where} (the suite was stopped)"
            row.log_tail = log.read_text(errors="replace").splitlines()[-40:] if log.is_file() else None
            raise
        row.log_tail = log.read_text(errors="replace").splitlines()[-40:] if log.is_file() else None
        if row.note.startswith("timed out"):
            row.status = "timed out"
            if timeout < row.timeout:
                row.note += f" (cut from {row.timeout:.0f} s by the suite budget)"
        else:
            row.status = "failed" if row.note else "ran"
        print(f"[gpu_suite] {row.key}: {row.note or 'ran'} ({row.seconds:.0f} s)", flush=True)
        if row.profile and row.result and (row.result.get("profile") or {}).get("xplane"):
            self.keep_trace(row.result["profile"])
        self.write()
        return row

    def skip(self, row: Row, why: str) -> None:
        row.status, row.note = "not run", why
        self.rows.append(row)
        self.write()

    def keep_trace(self, profile: dict) -> None:
        """The trace file comes back with the results when it is small enough (16 MiB a file)."""
        src = pathlib.Path(profile["xplane"])
        if src.stat().st_size <= 15 * 2**20:
            shutil.copyfile(src, self.out / "profile.xplane.pb")
            profile["copied_to"] = str(self.out / "profile.xplane.pb")
        else:
            profile["not_copied"] = f"{src.stat().st_size / 2**20:.0f} MiB: over what comes back from the machine"

    # ----------------------------------------------------------------------------------------------- environment
    def probe_environment(self) -> bool:
        """Versions and devices, in a child process (this one must not hold the GPU); False: nothing can run."""
        self.state = "checking the environment"
        smi = shutil.which("nvidia-smi")
        if smi:
            query = "name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu"
            try:
                p = subprocess.run(
                    [smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
                )
                self.env["nvidia-smi"] = (p.stdout or p.stderr).strip()
            except (OSError, subprocess.TimeoutExpired) as e:
                self.env["nvidia-smi"] = f"failed: {e}"
        else:
            self.env["nvidia-smi"] = "not found"
        self.env["wheels"] = os.environ.get("GPU_SUITE_WHEELS", "none installed")
        self.env["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
        self.env["official code"] = self.official or "none carried (no torch comparison)"
        limit = max(10.0, min(120.0, self.remaining() / 3))
        try:
            p = subprocess.run(
                [sys.executable, "-c", PROBE],
                capture_output=True,
                text=True,
                timeout=limit,
                cwd=ROOT,
                env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"),  # it only looks
            )
            info = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
            if not info:
                info = {"probe": f"failed: {(p.stderr.strip().splitlines() or ['no output'])[-1][:300]}"}
        except subprocess.TimeoutExpired:  # go on: the rows say for themselves what works
            info = {"probe": f"did not finish in {limit:.0f} s"}
        except (OSError, json.JSONDecodeError) as e:
            info = {"probe": f"failed: {e}"}
        self.env |= info
        self.write()
        if "ugatit_jax" in info and info["ugatit_jax"] != "ok":
            self.state = f"stopped: the package does not import here ({info['ugatit_jax']})"
            return False
        if not self.dry and info.get("jax platform", "gpu") != "gpu":
            self.state = f"stopped: JAX sees no GPU here ({info.get('jax devices', info.get('probe', '?'))})"
            return False
        return True

    # --------------------------------------------------------------------------------------------------- report
    def write(self) -> None:
        (self.out / "gpu_suite.md").write_text(self.markdown())
        raw = {
            "started": self.started,
            "elapsed_s": time.monotonic() - self.t0,
            "budget_s": self.args.budget,
            "dry_run": self.dry,
            "state": self.state,
            "environment": self.env,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }
        tmp = self.out / "gpu_suite.json.tmp"
        tmp.write_text(json.dumps(raw, indent=1, default=str))
        tmp.replace(self.out / "gpu_suite.json")

    def markdown(self) -> str:
        kind = self.env.get("jax devices", "devices not known yet")
        title = "GPU suite (CPU dry run)" if self.dry else "GPU suite"
        elapsed = time.monotonic() - self.t0
        lines = [
            f"# {title}: {kind}",
            "",
            f"Started {self.started}; {elapsed:.0f} s of a {self.args.budget:.0f} s budget; state: **{self.state}**.",
            "",
            "## Environment",
            "",
            "| | |",
            "|---|---|",
        ]
        lines += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in self.env.items()]
        lines += ["", "## Ours against the official PyTorch step", ""]
        lines += self.torch_section()
        lines += ["", "## Train-step rows", ""]
        lines += [
            "Each row is `benchmarks/throughput.py` in its own process (command lines in `gpu_suite.json`). ms/step: "
            "median of the timed steps; images/s counts both domains; MFU against the dense peak of the compute "
            "dtype (float32 = TF32); trace/lower/compile: seconds of each stage of starting the step.",
            "",
            "| # | row | model | img | batch | dtype | XLA options | ms/step | images/s | trace s | lower s "
            "| compile s | TFLOP/s | MFU | peak mem GiB | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, row in enumerate(self.rows, 1):
            r = row.result or {}
            f = sweep._fmt
            mfu = r.get("mfu")
            peak = r.get("peak_memory_bytes") or (r.get("memory_analysis") or {}).get("estimated_peak_bytes")
            estimated = " (est.)" if peak and not r.get("peak_memory_bytes") else ""
            note = row.note or ("compile only" if row.compile_only else "")
            if row.status == "pending":
                note = "not run yet"
            cells = [
                i,
                f"{row.key}: {row.purpose}",
                row.model,
                self.img,
                row.batch,
                row.dtype,
                " ".join(row.xla) or "default",
                f(r.get("ms_per_step"), ".1f"),
                f(r.get("images_per_s"), ".1f"),
                f(r.get("trace_s"), ".1f"),
                f(r.get("lower_s"), ".1f"),
                f(r.get("compile_s"), ".1f"),
                f(r.get("achieved_tflops_per_device"), ".1f"),
                f(100 * mfu if mfu is not None else None, ".1f") + ("%" if mfu is not None else ""),
                f(peak / 2**30 if peak else None, ".2f") + estimated,
                note.replace("|", "/"),
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        profiled = [r for r in self.rows if r.result and r.result.get("profile")]
        for row in profiled:
            lines += ["", f"## Profile: {row.key}", "", profile_summary.profile_table(row.result["profile"]).rstrip()]
            if row.result["profile"].get("not_copied"):
                lines += ["", f"The trace stayed on the machine ({row.result['profile']['not_copied']})."]
            if row.result["profile"].get("copied_to"):
                lines += ["", "The trace itself: `profile.xplane.pb` beside this file (xprof or TensorBoard opens it)."]
        failed = [r for r in self.rows if r.status in ("failed", "timed out", "stopped") and r.log_tail]
        if failed:
            lines += ["", "## Last lines of rows that did not finish", ""]
            for row in failed:
                lines += [f"`{row.key}`:", "", "```", *row.log_tail[-8:], "```", ""]
        return "\n".join(lines) + "\n"

    def torch_section(self) -> list[str]:
        if not self.official:
            return ["No official code was carried (`.official/ugatit` or `UGATIT_OFFICIAL_DIR`): nothing to compare."]
        lines = [
            "Same device, config and batch; blocks of official and our steps alternate (interleaved medians). The "
            "official step: cuDNN autotuning on (`cudnn.benchmark`), float32 matmul precision as listed, losses "
            "fetched every step as the official loop prints them; `autocast_bf16` = `torch.autocast(dtype="
            "torch.bfloat16)` around its forward passes and losses.",
            "",
            "| our row | ours ms/step | official variant | official ms/step | ours faster by | of minima | device | "
            "torch | matmul precision |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        any_row = False
        for row in self.rows:
            t = (row.result or {}).get("torch")
            if not t:
                continue
            for mode, m in t["modes"].items():
                any_row = True
                lines.append(
                    f"| {row.key} | {t['jax_ms_per_step']:.1f} | {mode} | {m['torch_ms_per_step']:.1f} | "
                    f"**{m['speedup']:.2f}x** | {m['speedup_of_minima']:.2f}x | {t['device_name']} | "
                    f"{t['torch_version']} | {t['float32_matmul_precision']} |"
                )
        if not any_row:
            lines.append("| (no comparison finished yet) | | | | | | | | |")
        return lines


PROBE = r"""
import json, os, platform, sys
info = {"python": platform.python_version()}
try:
    import jax
    devs = jax.devices()
    info["jax"] = jax.__version__
    info["jax platform"] = devs[0].platform
    info["jax devices"] = f"{len(devs)} x {devs[0].device_kind}"
except Exception as e:
    info["jax"] = f"failed: {type(e).__name__}: {e}"[:300]
try:
    import flax
    info["flax"] = flax.__version__
    from flax import nnx  # noqa: F401
    info["flax.nnx"] = "ok"
except Exception as e:
    info["flax.nnx"] = f"failed: {type(e).__name__}: {e}"[:300]
try:
    import torch
    info["torch"] = torch.__version__
    info["torch CUDA"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
    info["cuDNN (torch)"] = str(torch.backends.cudnn.version())
except Exception as e:
    info["torch"] = f"failed: {type(e).__name__}: {e}"[:300]
try:
    sys.path.insert(0, os.getcwd())
    import ugatit_jax.training.loop  # noqa: F401
    info["ugatit_jax"] = "ok"
except Exception as e:
    info["ugatit_jax"] = f"failed: {type(e).__name__}: {e}"[:300]
print(json.dumps(info))
"""


def plan_and_run(suite: Suite) -> None:
    dry = suite.dry
    big = 2 if dry else 8
    torch_f32 = ("float32",)
    torch_bf16 = ("autocast_bf16", "float32")
    if dry:  # a limit nothing can meet: proves a row that runs out of time is written, not lost
        suite.run(Row("probe", "dry run: a 3 s limit", True, 1, "float32", 3, True, fixed_limit=True))
    suite.run(Row("full-b1-f32", "vs official f32; profile", False, 1, "float32", 150, False, torch_f32, True))
    r2 = suite.run(Row("full-b1-bf16", "vs official autocast bf16", False, 1, "bfloat16", 170, False, torch_bf16))
    bf16_slow = r2.status == "timed out" and (r2.result or {}).get("phase", "setup") in COMPILING
    at0 = Row("bf16-autotune-off", "bf16 compile, autotuning off", False, 1, "bfloat16", 110, True)
    at0.xla = ["--xla-autotune-level", "0"]
    if bf16_slow:  # find out at once whether autotuning is what takes the time, and use that for the rest
        suite.run(at0)
        if at0.status == "ran":
            suite.bf16_xla = ["--xla-autotune-level", "0"]
    suite.run(Row(f"light-b{big}-bf16", "MFU", True, big, "bfloat16", 110, xla=list(suite.bf16_xla)))
    if not bf16_slow:
        suite.run(at0)
    cache = ["--xla-autotune-cache", str(suite.work / "autotune-cache")]
    cold = Row("bf16-cache-cold", "bf16 compile, autotune cache cold", False, 1, "bfloat16", 120, True, xla=cache)
    warm = Row("bf16-cache-warm", "bf16 compile, autotune cache warm", False, 1, "bfloat16", 100, True, xla=cache)
    if bf16_slow:
        why = "not run: the default bf16 compile outlasted its limit in full-b1-bf16"
        suite.skip(cold, why)
        suite.skip(warm, why)
    else:
        shutil.rmtree(suite.work / "autotune-cache", ignore_errors=True)
        suite.run(cold)
        if cold.status == "ran":
            suite.run(warm)
        else:
            suite.skip(warm, "not run: the cold-cache compile did not finish")
    f32_at0 = Row("f32-autotune-off", "f32 compile, autotuning off", False, 1, "float32", 90, True)
    f32_at0.xla = ["--xla-autotune-level", "0"]
    done = {(r.light, r.batch, r.dtype) for r in suite.rows if not r.compile_only}
    batches = (1, 2) if dry else (1, 4, 8, 16)
    sweep = [  # bfloat16 and small batches first: what the earlier rows do not already answer
        (light, b, dt)
        for dt in ("bfloat16", "float32")
        for b in batches
        for light in (True, False)
        if (light, b, dt) not in done
    ]
    pending = [
        Row(
            f"{'light' if light else 'full'}-b{b}-{'bf16' if dt == 'bfloat16' else 'f32'}",
            "sweep",
            light,
            b,
            dt,
            90,
            xla=list(suite.bf16_xla) if dt == "bfloat16" else [],
        )
        for light, b, dt in sweep
    ]
    suite.rows += pending + [f32_at0]  # listed from now on, "not run yet" until they run
    for row in [*pending, f32_at0]:
        suite.run(row)


class Stopped(BaseException):
    """SIGTERM while the suite runs: like Ctrl-C it ends the suite, which still writes what it measured (a stop,
    not an error: no error line, exit status 0)."""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/gpu_suite_out", help="gpu_suite.md/.json go here")
    p.add_argument("--work", default="/tmp/gpu_suite_work", help="rows' JSON, logs, profile, autotune cache")
    p.add_argument("--budget", type=float, default=450, help="seconds for everything (env check included)")
    p.add_argument("--official", default=os.environ.get("UGATIT_OFFICIAL_DIR") or str(ROOT / ".official/ugatit"))
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiplies every row's time limit")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: proves the plumbing")
    p.add_argument("--dry-cache", default="", help="with --dry-run: a persistent XLA compilation cache")
    args = p.parse_args(argv)
    suite = Suite(args)

    def stop(signum, frame):
        raise Stopped(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        if suite.probe_environment():
            plan_and_run(suite)
            suite.state = f"finished in {time.monotonic() - suite.t0:.0f} s"
    except (Stopped, KeyboardInterrupt) as e:
        suite.state = f"stopped ({e or 'interrupted'}) during {suite.state}"
        for row in suite.rows:
            if row.status == "pending":
                row.status, row.note = "not run", "not run: suite stopped"
    finally:
        suite.write()
        print((suite.out / "gpu_suite.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
