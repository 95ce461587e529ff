"""Multi-process (multi-host style) training on one machine: ``python -m ugatit_jax.launch`` with CPU processes.

Every run is tiny (tests/tiny.py), has a hard timeout and runs in its own process group, which is killed on any
failure. Expensive runs live in module-scoped fixtures so each multi-process training happens once.

Two kinds of runs:
* fixed-batch runs (``_worker``): fixed global batches fed as each process's rows, so a 2x2 run and a 1x4 run see
  the same data and must agree (the real pipeline gives each host its own images by design). The 2x2 runs launch
  this file as a worker script (``python tests/test_multiprocess.py worker SPEC``), the 1x4 ones run in the test
  process on 4 of its 8 devices;
* ``train.py`` itself through the launcher, for resume, kill -9, process-0 outputs and bad input (the reference run
  and its kill -9 twin with the state sharded, the resumes of its checkpoints replicated).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
K_STEPS = 3  # worker runs: steps of global batch 4
WORKER_BATCH = 4
# train.py runs through the launcher. The worker's config differs from theirs only in settings the step program
# does not see, so the 2x2 worker's traced step serves theirs, and its compiled step serves process 0 of theirs from
# the persistent cache (on CPU, JAX's cache key holds a topology fingerprint that differs between the processes of
# one run, so process 1 finds nothing that process 0 wrote and compiles its own; measured with jax 0.10.2). On
# jaxlib >= 0.12.1 every process compiles the programs that span processes (ugatit_jax.xla.compilation_cache).
ITERATIONS = 8
RUN = dict(
    batch_size=WORKER_BATCH,
    iterations=ITERATIONS,
    checkpoint_every=2,
    log_every=1,
    sample_every=1000,
    eval_every=ITERATIONS,
    classifier_steps=10,  # the evaluation's domain classifier: the recipe's 300 steps took a minute of CPU here
)


# ------------------------------------------------------------------------------------------------------- worker
def _worker(spec: dict, devices=None) -> None:
    """One process of a fixed-batch run over ``devices`` (default: all, every process's): ``jobs`` run in order
    (``shard``: with ``config.shard_state``); process 0 writes each job's losses + params. The 1x4 runs call it in
    the test process itself, on 4 of its 8 devices (one process, four devices, as a 1x4 launch, without starting
    Python and compiling in another)."""
    import chex
    import jax
    import numpy as np
    from tiny import random_model, tiny_config

    from ugatit_jax.train import optim, parallel
    from ugatit_jax.train.checkpoints import Checkpointer, abstract_like
    from ugatit_jax.train.state import create_train_state
    from ugatit_jax.training import steps
    from ugatit_jax.xla.compilation_cache import enable_compilation_cache

    parallel.maybe_initialize_distributed()
    # the test session's cache (conftest.py): compiles shared with train.py runs and the tests
    enable_compilation_cache(os.environ.get("UGATIT_TEST_XLA_CACHE") or "~/.cache/ugatit_jax/xla-tests")
    mesh = parallel.make_mesh(devices)
    rng = np.random.default_rng(0)
    shape = (WORKER_BATCH, 32, 32, 3)
    batches = [{d: rng.integers(0, 256, shape, np.uint8) for d in "AB"} for _ in range(K_STEPS)]
    local = WORKER_BATCH // jax.process_count()
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    for job in spec["jobs"]:
        t_job = time.perf_counter()
        chex.clear_trace_counter()
        config = tiny_config(**RUN, xla_cache_dir="", shard_state=bool(job.get("shard")))
        g_tx, d_tx = optim.make_optimizers(config)
        # numpy-drawn weights (the same in every process): an eager init compiles one program per weight shape
        graphdefs, state = create_train_state(random_model(config), g_tx, d_tx)
        shardings = parallel.state_shardings(state, mesh, config.shard_state)
        if job.get("differ"):  # process 1 starts from other weights: every process must refuse the state
            if jax.process_index() == 1:
                state = state.replace(params=jax.tree.map(lambda x: x + 1, state.params))
            try:
                parallel.place_state(state, shardings)
            except parallel.DistributedError as error:
                with open(f"{job['differ']}.{jax.process_index()}", "w") as f:
                    f.write(str(error))
            continue
        state = parallel.place_state(state, shardings)
        if job.get("restore"):
            with Checkpointer(job["restore"], async_save=False) as ckpt:
                state, _, _ = ckpt.restore(abstract_like(state, shardings), job["restore_step"])
        # the trainer's own step (traced-step cache included), so train.py's launches load what this one kept
        step_fn = steps.jitted_step(config, graphdefs, g_tx, d_tx, mesh, shardings)
        ckpt = Checkpointer(job["save"], async_save=False) if job.get("save") else None
        losses = []
        for i in range(int(jax.device_get(state.step)), K_STEPS):
            batch = {
                d: jax.make_array_from_process_local_data(parallel.batch_sharding(mesh), batches[i][d][rows])
                for d in "AB"
            }
            state, metrics = step_fn(state, batch)
            losses.append([float(metrics["d_loss"]), float(metrics["g_loss"])])
            if ckpt and i + 1 == job["save_step"]:
                ckpt.save(i + 1, state, {}, config, force=True)
                ckpt.wait()
        if ckpt:
            ckpt.close()
        # the share of the state's elements one device holds: 1 replicated
        arrays = jax.tree.leaves((state.params, state.g_opt, state.d_opt))
        per_device = sum(x.addressable_shards[0].data.size for x in arrays) / sum(x.size for x in arrays)
        readable = parallel.host_readable(state.params, mesh)  # every process: split ones are gathered
        params = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(readable)}
        if jax.process_index() == 0:
            np.savez(
                job["out"],
                losses=np.array(losses),
                step=int(jax.device_get(state.step)),
                per_device=per_device,
                seconds=time.perf_counter() - t_job,
                **params,
            )
    print("worker done", flush=True)


def _stall_worker(timeout: float) -> None:
    """Step 1 runs on both processes; step 2's collective runs on process 0 only, so it never completes. The
    trainer's watchdog must end both processes (process 1 never started step 2) with one line each."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ugatit_jax.train import parallel
    from ugatit_jax.train.watchdog import Watchdog

    parallel.maybe_initialize_distributed()
    mesh = parallel.make_mesh()
    total = jax.jit(jnp.sum, out_shardings=parallel.replicated(mesh))  # an all-reduce across the processes
    x = jax.make_array_from_process_local_data(parallel.batch_sharding(mesh), np.ones(2, np.float32))
    with Watchdog.for_run(timeout) as watchdog:
        first = total(x)
        watchdog.dispatched(1, first)
        print("step 1:", float(first), flush=True)
        if jax.process_index() == 0:
            watchdog.dispatched(2, total(x))
        time.sleep(600)  # the watchdog ends the process long before


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    sys.path.insert(0, ROOT)
    _worker(json.loads(sys.argv[2]))
    sys.exit(0)
if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "stall":
    sys.path.insert(0, ROOT)
    _stall_worker(float(sys.argv[2]))
    sys.exit(0)

# ---------------------------------------------------------------------------------------------------- the tests
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from golden import reordered_sum_outliers  # noqa: E402
from tiny import subprocess_xla_flags, tiny_config, tiny_flags  # noqa: E402

from ugatit_jax import run_dir  # noqa: E402
from ugatit_jax.train import optim  # noqa: E402
from ugatit_jax.train import state as train_state  # noqa: E402
from ugatit_jax.train.checkpoints import Checkpointer, abstract_like  # noqa: E402

LAUNCH_TIMEOUT = 900  # hard bound per launch (a tiny run on a loaded 2-core machine)
_live: list[subprocess.Popen] = []


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "UGATIT_INIT_TIMEOUT"}
    env["XLA_FLAGS"] = subprocess_xla_flags()  # no forced device count: the launcher sets JAX_NUM_CPU_DEVICES
    env["PYTHONPATH"] = os.pathsep.join([ROOT, HERE])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(cmd: list[str], env: dict | None = None, stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env or _env(),
        stdout=stdout,
        stderr=stderr,
        text=True,
        start_new_session=True,  # its own process group: one killpg ends it and everything it started
    )
    _live.append(proc)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(autouse=True, scope="module")
def _reap():
    yield
    for proc in _live:
        _kill(proc)
        with contextlib.suppress(Exception):
            proc.communicate(timeout=10)


def _finish(proc: subprocess.Popen, timeout: float = LAUNCH_TIMEOUT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"timed out after {timeout} s:\n{out[-3000:]}\n{err[-5000:]}") from None
    return proc.returncode, out, err


def _launch_cmd(processes: int, devices: int, *command: str, extra=()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ugatit_jax.launch",
        "--processes",
        str(processes),
        "--devices-per-process",
        str(devices),
        "--init-timeout",
        "600",  # a loaded test machine can start one process minutes after the other
        *extra,
        "--",
        *command,
    ]


def _launch(processes: int, devices: int, *command: str, extra=(), timeout=LAUNCH_TIMEOUT) -> tuple[int, str, str]:
    return _finish(_start(_launch_cmd(processes, devices, *command, extra=extra)), timeout)


def _worker_run(processes: int, devices: int, jobs: list[dict]) -> float:
    t = time.perf_counter()
    code, out, err = _launch(
        processes, devices, os.path.join(HERE, "test_multiprocess.py"), "worker", json.dumps({"jobs": jobs})
    )
    assert code == 0, f"{out[-3000:]}\n{err[-6000:]}"
    assert out.count("worker done") == processes, out
    return time.perf_counter() - t


def _worker_here(jobs: list[dict]) -> float:
    """A 1-process x 4-device fixed-batch run in this process, on 4 of its devices; returns its wall time."""
    t = time.perf_counter()
    _worker({"jobs": jobs}, jax.devices()[:4])
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------- per-host input (pipeline)
def _indexed_source(n: int):
    """Flat images whose colour encodes their index (flip, resize and crop keep a flat image flat)."""
    from ugatit_jax.data import ArraySplit, UnpairedSource

    split = lambda name, offset: ArraySplit(
        [np.full((8, 8, 3), 10 + 4 * (i + offset), np.uint8) for i in range(n)], name=name
    )
    return UnpairedSource("indexed", split("trainA", 0), split("trainB", 50), split("testA", 0), split("testB", 0))


def _indices(images: np.ndarray, offset: int) -> list[int]:
    values = images.reshape(len(images), -1)
    assert np.all(values == values[:, :1]), "augmentation changed a flat image"
    return [int(round((v - 10) / 4)) - offset for v in values[:, 0]]


@pytest.mark.parametrize("n_images,hosts,global_batch", [(12, 2, 4), (12, 3, 6), (10, 2, 2)])
def test_each_image_once_per_epoch_across_hosts(n_images, hosts, global_batch):
    """Over one epoch (n_images / hosts per host) the hosts' batches hold every training image exactly once."""
    from ugatit_jax.data import make_train_iterator

    source = _indexed_source(n_images)
    per_host = n_images // hosts
    seen = {"A": [], "B": []}
    for host in range(hosts):
        it = make_train_iterator(
            source, img_size=8, global_batch_size=global_batch, seed=3, process_index=host, process_count=hosts
        )
        batches = [next(it) for _ in range(per_host // (global_batch // hosts))]
        for domain, offset in (("A", 0), ("B", 50)):
            seen[domain] += _indices(np.concatenate([b[domain] for b in batches]), offset)
    for domain in "AB":
        assert sorted(seen[domain]) == list(range(n_images)), (domain, sorted(seen[domain]))


def test_saved_position_resumes_each_host():
    """Each host's state, gathered into a checkpoint's data item, puts that host back where it was."""
    from ugatit_jax.data import make_train_iterator
    from ugatit_jax.train.checkpoints import host_data_state

    source = _indexed_source(12)
    make = lambda host: make_train_iterator(
        source, img_size=8, global_batch_size=4, seed=1, process_index=host, process_count=2
    )
    iterators = [make(h) for h in range(2)]
    for it in iterators:
        for _ in range(5):  # into the second epoch
            next(it)
    saved = {"processes": [it.get_state() for it in iterators]}  # what Checkpointer.save stores with 2 processes
    expected = [[_indices(next(it)["A"], 0) for _ in range(4)] for it in iterators]
    for host in range(2):
        fresh = make(host)
        fresh.set_state(host_data_state(saved, fresh.get_state()))
        assert [_indices(next(fresh)["A"], 0) for _ in range(4)] == expected[host]
    assert expected[0] != expected[1]


# ----------------------------------------------------------------------------- 2x2 vs 1x4, checkpoints across them
@pytest.fixture(scope="module")
def fixed_runs(tmp_path_factory):
    """A: 1x4 from init (checkpoint at step 1). B: 2x2 from init (checkpoint at 1), then, in the same processes,
    D: 2x2 from A's step-1 checkpoint, E: 2x2 with ``shard_state`` from init (checkpoint at 1) and F: 2x2 sharded
    from A's step-1 checkpoint. C: 1x4 from B's step-1 checkpoint, G: 1x4 (replicated) from E's. All end at step
    K_STEPS. The 1x4 runs (A, C, G) run in this process on 4 of its devices, the 2x2 ones (B, D, E, F) in one
    launch of two processes."""
    d = tmp_path_factory.mktemp("fixed")
    path = lambda name: str(d / name)
    times = {}
    times["1x4"] = _worker_here([dict(out=path("A.npz"), save=path("ckA"), save_step=1)])
    times["2x2"] = _worker_run(
        2,
        2,
        [
            dict(out=path("B.npz"), save=path("ckB"), save_step=1),
            dict(out=path("D.npz"), restore=path("ckA"), restore_step=1),
            dict(differ=path("differ")),
            dict(out=path("E.npz"), save=path("ckE"), save_step=1, shard=True),
            dict(out=path("F.npz"), restore=path("ckA"), restore_step=1, shard=True),
        ],
    )
    times["1x4 restore"] = _worker_here(
        [
            dict(out=path("C.npz"), restore=path("ckB"), restore_step=1),
            dict(out=path("G.npz"), restore=path("ckE"), restore_step=1),
        ]
    )
    runs = {k: dict(np.load(path(f"{k}.npz"))) for k in "ABCDEFG"}
    times["2x2 sharded jobs (E, F) within 2x2"] = float(runs["E"]["seconds"] + runs["F"]["seconds"])
    runs["differ"] = [(d / f"differ.{i}").read_text() if (d / f"differ.{i}").exists() else None for i in range(2)]
    runs["times"] = times
    return runs


def _assert_close_run(got: dict, ref: dict, steps: int) -> dict:
    """Losses rtol 1e-5; parameters by ``golden.reordered_sum_outliers`` (as the 8-vs-1-device tests): every element
    within 1e-4 of its tensor's scale except at most 0.1% of all, none beyond Adam's reach. Returns the largest
    differences."""
    config = tiny_config()
    assert int(got["step"]) == int(ref["step"]) == K_STEPS
    n = len(got["losses"])
    np.testing.assert_allclose(got["losses"], ref["losses"][-n:], rtol=1e-5)
    worst = {"loss_rel": float(np.max(np.abs(got["losses"] - ref["losses"][-n:]) / np.abs(ref["losses"][-n:])))}
    pairs = ((key, got[key], ref[key]) for key in ref if key not in ("losses", "step", "per_device", "seconds"))
    outliers, total, worst["param_abs"] = reordered_sum_outliers(pairs, config.lr, steps)
    assert outliers <= 1e-3 * total, f"{outliers} of {total} elements beyond 1e-4 relative"
    worst["outliers"] = f"{outliers} of {total}"
    return worst


@pytest.mark.parametrize("run", ["B", "E"], ids=["replicated", "sharded"])
def test_two_processes_match_one(fixed_runs, run, record_property):
    """2 processes x 2 devices, the state replicated (B) or split over all four devices (E: parameters and both Adam
    states, ``config.shard_state``), and 1 process x 4 devices replicated, same global batches: same losses and
    parameters."""
    got = fixed_runs[run]
    assert float(fixed_runs["A"]["per_device"]) == 1.0
    if run == "E":  # really split: each device holds about a quarter of the state
        assert float(got["per_device"]) < 0.5, float(got["per_device"])
    worst = _assert_close_run(got, fixed_runs["A"], K_STEPS)
    record_property("2x2_vs_1x4", worst)
    record_property("wall_s", fixed_runs["times"])
    print(f"2x2 ({run}) vs 1x4 largest differences:", worst, "wall times:", fixed_runs["times"])


def test_checkpoint_crosses_process_counts(fixed_runs):
    """Written by 2 processes, restored by 1 (C), and the reverse (D): training continues equal."""
    print("2->1:", _assert_close_run(fixed_runs["C"], fixed_runs["A"], K_STEPS))
    print("1->2:", _assert_close_run(fixed_runs["D"], fixed_runs["B"], K_STEPS))
    assert len(fixed_runs["C"]["losses"]) == len(fixed_runs["D"]["losses"]) == K_STEPS - 1


def test_checkpoint_crosses_layouts(fixed_runs):
    """Written by 2 processes sharded, restored by 1 replicated (G), and 1 replicated -> 2 sharded (F): training
    continues equal to the uninterrupted 1x4 run."""
    print("2 sharded -> 1 replicated:", _assert_close_run(fixed_runs["G"], fixed_runs["A"], K_STEPS))
    print("1 replicated -> 2 sharded:", _assert_close_run(fixed_runs["F"], fixed_runs["A"], K_STEPS))
    assert float(fixed_runs["F"]["per_device"]) < 0.5 and float(fixed_runs["G"]["per_device"]) == 1.0
    assert len(fixed_runs["F"]["losses"]) == len(fixed_runs["G"]["losses"]) == K_STEPS - 1


def test_processes_refuse_differing_initial_states(fixed_runs):
    """``parallel.place_state`` builds each process's shards from its own copy: a copy that differs (here process
    1's weights, + 1) is an error on every process, not a silently inconsistent replica."""
    p0, p1 = fixed_runs["differ"]
    assert p0 and "process 0 holds a different initial state than process(es) [1]" in p0, p0
    assert p1 and "process 1 holds a different initial state than process(es) [0]" in p1, p1


# ------------------------------------------------------------------------------------------ train.py through launch


def _train_cmd(workdir, *flags) -> list[str]:
    return ["train.py", "--config", "configs/default.py", "--workdir", str(workdir), *tiny_flags(**RUN), *flags]


# Runs past the reference skip the final evaluation (process 0's alone, no part of the state the tests compare):
# its classifier and translators would cost every launch seconds of compiling.
NO_EVAL = "--config.eval_every=0"
# The reference run and its kill -9 twin split the state over the processes' devices; the warm relaunch and the
# 1-process resume continue its checkpoints replicated.
SHARDED = "--config.shard_state=true"


def _final_state(workdir, step=None):
    config = tiny_config()
    g_tx, d_tx = optim.make_optimizers(config)
    _, abstract = train_state.abstract_train_state(config, g_tx, d_tx)  # the construction traced once per process
    with Checkpointer(str(workdir), async_save=False, read_only=True) as ckpt:
        step = ckpt.latest_step() if step is None else step
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        state, data, _ = ckpt.restore(abstract_like(abstract, sharding), step)
    return step, jax.device_get(state), data


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 2x2 train.py run with the state sharded (``SHARDED``: process 0's sample strips and
    evaluation read networks gathered from both processes); process 1 runs with umask 077, so every file it creates
    is private."""
    workdir = tmp_path_factory.mktemp("ref") / "run"
    command = shlex.join([sys.executable, *_train_cmd(workdir, SHARDED)])
    script = f'if [ "$JAX_PROCESS_ID" = 1 ]; then umask 077; else umask 022; fi; exec {command}'
    t = time.perf_counter()
    code, out, err = _launch(2, 2, "sh", "-c", script)
    assert code == 0, f"{out[-3000:]}\n{err[-6000:]}"
    return workdir, out, err, time.perf_counter() - t


def test_only_process_zero_writes_outputs_and_all_save(reference_run):
    workdir, out, err, wall = reference_run
    print(f"2x2 train.py, {ITERATIONS} steps: {wall:.0f} s")
    assert "[p0]" in err and "[p1]" in err
    private = lambda p: (os.stat(p).st_mode & 0o077) == 0
    for folder in ("tensorboard", "samples", "eval"):
        files = [os.path.join(r, f) for r, _, fs in os.walk(workdir / folder) for f in fs]
        assert files, folder
        assert not [f for f in files if private(f)], f"process 1 wrote into {folder}"
    assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [p.name for p in (workdir / "eval").iterdir()] == [f"step_{ITERATIONS}.json"]
    record = json.loads((workdir / "eval" / f"step_{ITERATIONS}.json").read_text())
    assert record["classifier"]["steps"] == 10 and record["classifier"]["key"].endswith("-steps10")
    ckpt_files = [os.path.join(r, f) for r, _, fs in os.walk(workdir / "checkpoints") for f in fs]
    by_p1 = [f for f in ckpt_files if private(f)]
    assert by_p1, "process 1 wrote no checkpoint file"
    for step in (ITERATIONS - 4, ITERATIONS - 2, ITERATIONS):
        assert (workdir / "checkpoints" / str(step) / "state" / "ocdbt.process_1").is_dir()
    step, state, data = _final_state(workdir)
    assert step == ITERATIONS and int(state.step) == ITERATIONS
    hosts = data["processes"]
    assert [h["process_index"] for h in hosts] == [0, 1] and {h["step"] for h in hosts} == {ITERATIONS}


def _pids(launcher_err: str) -> dict[int, int]:
    return {int(i): int(pid) for i, pid in re.findall(r"\[launch\] p(\d+) pid (\d+)", launcher_err)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _lines_by_process(err: str) -> dict[int, list[str]]:
    """The launcher's output per child. A line without the ``[pN]`` prefix continues the one before it: the
    progress bar's carriage returns read as line ends here (text mode)."""
    found: dict[int, list[str]] = collections.defaultdict(list)
    process = None
    for line in err.splitlines():
        m = re.match(r"\[p(\d+)\] (.*)", line)
        if m:
            process, line = int(m.group(1)), m.group(2)
        elif line.startswith("[launch]"):
            process = None
        if process is not None:
            found[process].append(line)
    return found


def _persistent_misses(lines: list[str]) -> list[str]:
    """The programs JAX looked up in the persistent cache and did not find (JAX_EXPLAIN_CACHE_MISSES)."""
    return [m.group(1) for line in lines if (m := re.search(r"PERSISTENT COMPILATION CACHE MISS for '([^']+)'", line))]


def test_kill_minus_9_one_process_then_warm_relaunch(reference_run, tmp_path, record_property):
    """kill -9 of process 1 mid-run (state sharded, as the reference): the launcher ends process 0 and exits
    non-zero quickly; the newest complete checkpoint restores; re-launching resumes and ends bit-equal to the
    uninterrupted run.

    The relaunch is also the warm launch that hung for good on jaxlib 0.12.1 (docs/multiprocess_jax012.md): the
    killed run traced and compiled the step, so both processes load the traced step, and where mixing cached and
    fresh executables is safe process 0 still loads the compiled step (process 1 never finds one on CPU); where it
    is not, no process looks the step up at all."""
    from ugatit_jax.xla.compilation_cache import mixed_executables_hang

    workdir = tmp_path / "run"
    log = tmp_path / "launcher.err"
    with open(log, "w") as err_file:
        proc = _start(_launch_cmd(2, 2, *_train_cmd(workdir, SHARDED), extra=("--grace", "5")), stderr=err_file)
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    folder = workdir / "checkpoints"
    while not (folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())):
        assert proc.poll() is None, "the run ended before its first checkpoint:\n" + log.read_text()[-4000:]
        if time.monotonic() > deadline:
            _kill(proc)
            raise AssertionError("no checkpoint in time:\n" + log.read_text()[-4000:])
        time.sleep(0.05)
    pids = _pids(log.read_text())
    os.kill(pids[1], signal.SIGKILL)
    t_kill = time.monotonic()
    code, out, _ = _finish(proc, timeout=120)
    elapsed = time.monotonic() - t_kill
    err = log.read_text()
    record_property("kill9_to_launcher_exit_s", elapsed)
    print(f"kill -9 of p1 -> launcher exit: {elapsed:.1f} s (status {code})")
    assert code != 0
    assert elapsed < 60
    assert not _alive(pids[0]) and not _alive(pids[1]), "a training process outlived the launcher"
    with Checkpointer(str(workdir), read_only=True) as ckpt:
        last = ckpt.latest_step()
        assert last is not None and last < ITERATIONS, "the run finished before the kill"
        assert ckpt.damage(last) is None
    step, state, _ = _final_state(workdir, last)
    assert int(state.step) == last

    t = time.perf_counter()
    env = _env() | {"JAX_EXPLAIN_CACHE_MISSES": "1"}
    code, out, err = _finish(_start(_launch_cmd(2, 2, *_train_cmd(workdir, NO_EVAL, SHARDED)), env=env))
    print(f"warm 2x2 relaunch from step {last}: {time.perf_counter() - t:.0f} s")
    assert code == 0, err[-6000:]
    assert "resumed from" in err and f"at step {last}" in err
    lines = _lines_by_process(err)
    for i in range(2):
        assert any(re.search(r"train step loaded from .*\(not traced\)", line) for line in lines[i]), lines[i][-20:]
    misses = [_persistent_misses(lines[i]) for i in range(2)]
    step_missed = [sorted({name for name in names if name.startswith("jit_step")}) for names in misses]
    assert misses[1], "JAX_EXPLAIN_CACHE_MISSES reported nothing: process 1 finds no entry of process 0's"
    if mixed_executables_hang():
        assert step_missed == [[], []], step_missed  # the guard: nobody looked the step up
    else:
        assert step_missed[0] == [] and step_missed[1], step_missed  # process 0 loaded it, process 1 compiled
    ref_step, ref_state, ref_data = _final_state(reference_run[0])
    step, state, data = _final_state(workdir)
    assert step == ref_step == ITERATIONS and data == ref_data
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(ref_state)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _losses(workdir) -> dict[int, tuple[float, float]]:
    """``step -> (d_loss, g_loss)`` from a run's ``metrics.jsonl``."""
    lines = (json.loads(line) for line in (workdir / run_dir.METRICS).read_text().splitlines())
    return {r["step"]: (r["d_loss"], r["g_loss"]) for r in lines}


def test_two_process_run_resumes_in_one(reference_run, tmp_path):
    """train.py in 1 process x 4 devices, replicated, resumes a 2-process sharded run's checkpoint (the data order
    changes: logged)."""
    workdir = tmp_path / "run"
    shutil.copytree(reference_run[0] / "checkpoints", workdir / "checkpoints")
    for step in (ITERATIONS - 2, ITERATIONS):  # resume from the oldest kept one
        shutil.rmtree(workdir / "checkpoints" / str(step))
    code, out, err = _launch(1, 4, *_train_cmd(workdir, NO_EVAL))
    assert code == 0, err[-6000:]
    assert f"at step {ITERATIONS - 4}" in err and "written by 2 process(es), this run has 1" in err
    step, state, data = _final_state(workdir)
    assert step == ITERATIONS and data["process_count"] == 1 and data["step"] == ITERATIONS
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))


# ----------------------------------------------------------------------------------------------------- bad input
def _error_lines(err: str, processes: int) -> list[str]:
    """The last line each process printed on stderr; each must be one ``train.py: error:`` line."""
    assert "Traceback" not in err, err[-4000:]
    last = {}
    for line in err.splitlines():
        m = re.match(r"\[p(\d+)\] (.*)", line)
        if m and m.group(2).strip():
            last[int(m.group(1))] = m.group(2)
    assert sorted(last) == list(range(processes)), err[-4000:]
    for i, line in last.items():
        assert line.startswith("train.py: error:"), (i, line)
    return list(last.values())


def test_batch_not_divisible_by_processes(tmp_path):
    t = time.perf_counter()
    code, out, err = _launch(2, 1, *_train_cmd(tmp_path / "run", "--config.batch_size=3"), timeout=LAUNCH_TIMEOUT)
    assert code != 0
    for line in _error_lines(err, 2):
        assert "config.batch_size=3" in line and "divisible" in line
    print(f"failed cleanly in {time.perf_counter() - t:.1f} s")


def test_different_configs_across_processes(tmp_path):
    config = tmp_path / "per_host.py"
    config.write_text(
        "import os\nfrom ugatit_jax.config import base_config\n\n\ndef get_config():\n    c = base_config()\n"
        "    c.lr = 1e-4 if os.environ.get('JAX_PROCESS_ID') == '0' else 2e-4\n    return c\n"
    )
    command = ["train.py", "--config", str(config), "--workdir", str(tmp_path / "run"), *tiny_flags(**RUN)]
    code, out, err = _launch(2, 1, *command, timeout=LAUNCH_TIMEOUT)
    assert code != 0
    for line in _error_lines(err, 2):
        assert "different configs" in line and "lr: p0=0.0001, p1=0.0002" in line


def test_workdir_in_use_ends_every_process(tmp_path):
    """A 2-process run on a workdir locked by a live run: process 0 finds the lock, the other learns it through an
    all-gather, and each ends with the one line naming the holder (none waits in a collective for the other)."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = _start(["sleep", "600"])
    lock = {"host": socket.gethostname(), "pid": holder.pid, "started": "2024-01-02 03:04:05", "heartbeat": time.time()}
    (workdir / ".lock").write_text(json.dumps(lock))
    try:
        code, out, err = _launch(2, 1, *_train_cmd(workdir), timeout=LAUNCH_TIMEOUT)
    finally:
        _kill(holder)
    assert code == 2, err[-3000:]
    for line in _error_lines(err, 2):
        assert "is in use by another training run" in line and f"pid {holder.pid}, started 2024-01-02" in line, line
    assert json.loads((workdir / ".lock").read_text()) == lock


def test_wrong_coordinator_address(tmp_path):
    """Process 1 is pointed at a port where nothing listens: both end with one error line within the timeout."""
    from ugatit_jax.launch import free_port

    good, bad = free_port(), free_port()
    procs = []
    for i, port in enumerate((good, bad)):
        env = _env() | {
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(i),
            "JAX_PLATFORMS": "cpu",
            "UGATIT_INIT_TIMEOUT": "5",
        }
        procs.append(_start([sys.executable, *_train_cmd(tmp_path / "run")], env=env))
    t = time.perf_counter()
    for proc in procs:
        code, out, err = _finish(proc, timeout=LAUNCH_TIMEOUT)
        assert code == 2, err[-3000:]
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1].startswith("train.py: error: could not join process"), lines[-5:]
        assert "JAX_COORDINATOR_ADDRESS" in lines[-1]
    print(f"both processes ended {time.perf_counter() - t:.1f} s after start")


def test_launcher_bad_input(capsys):
    """In-process (starting Python and importing the package costs more than the check itself)."""
    from ugatit_jax.launch import main

    for args, expect in (
        (["--processes", "0", "--", "train.py"], "--processes=0"),
        (["--processes", "2"], "no command"),
        (["--processes", "2", "--devices-per-process", "x", "--", "train.py"], "invalid int"),
        (["--processes", "2", "--", "no_such_script.py"], "no such file"),
        (["--processes", "2", "--coordinator", "nohostport", "--", "train.py"], "host:port"),
    ):
        assert main(args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("python -m ugatit_jax.launch: error:"), lines
        assert expect in lines[0], lines[0]


def test_launcher_ends_the_others_when_one_fails():
    """A child exiting 3 while the other sleeps: the sleeper is ended (SIGTERM) and the launcher exits 3, fast."""
    script = 'if [ "$JAX_PROCESS_ID" = 0 ]; then sleep 1; echo out; exit 3; else exec sleep 600; fi'
    code, out, err = _launch(
        2, 1, "sh", "-c", script, extra=("--settle", "0.5", "--grace", "2"), timeout=LAUNCH_TIMEOUT
    )
    assert code == 3 and "[p0] out" in out
    assert "p0 exited with status 3: ending the other processes" in err
    pids = _pids(err)
    assert not _alive(pids[1])


def test_watchdog_ends_a_stalled_run():
    """Process 0 waits in a collective that process 1 never joins: within the stall timeout, both processes end
    with one line naming step 2 and who did not answer, and the launcher exits with the watchdog's status."""
    from ugatit_jax.train.watchdog import EXIT_STATUS

    t = time.perf_counter()
    code, out, err = _launch(2, 2, os.path.join(HERE, "test_multiprocess.py"), "stall", "3", extra=("--settle", "10"))
    print(f"stalled run ended in {time.perf_counter() - t:.1f} s (status {code})")
    assert out.count("step 1: 4.0") == 2, out
    assert code == EXIT_STATUS, err[-3000:]
    for line in _error_lines(err, 2):
        assert "no progress for 3 s (config.stall_timeout): step 2 did not finish" in line, line
        assert line.endswith("processes that did not answer: 0 (waiting in it), 1 (not started)"), line
