"""Ctrl-C and kill -9 of the commands (ugatit_jax/interrupts.py): one ``<prog>: interrupted`` line and exit 130,
no traceback; a killed emoji build leaves no process and no pipe behind, and the next build removes its folder.

Real processes get real signals. Ctrl-C is sent as a terminal sends it, to the whole process group. A command
gets it while it loads its modules (once jaxlib is loaded: seconds of imports still to go, 3-4.5 s on the 2-core
test machine) or, the build and launch, while they work.
"""

import glob
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest
from tiny import subprocess_xla_flags

from ugatit_jax import cli, interrupts
from ugatit_jax.data import emoji

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
LIMIT = 800  # enough emoji that the render processes are still busy when the signal comes


def _start(args, cwd=ROOT, path=()):
    """``python *args`` as a terminal starts it; ``path``: folders searched for modules before the project's."""
    pythonpath = os.pathsep.join([*map(str, path), ROOT])
    env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1", XLA_FLAGS=subprocess_xla_flags())
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group and session, as a terminal's foreground job
        # ... with Ctrl-C at its default, as a terminal gives it: a job a non-interactive shell started in the
        # background (`cmd &`) inherits SIGINT ignored, and so would every command started from it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _session(sid: int) -> list[int]:
    """The processes of session ``sid``: a command's and every process it started (orphans keep the session)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.split("/")[2]))
    return found


def _wait_for(condition, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args} ended ({proc.returncode}): {proc.communicate()[1].decode()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def _importing_jax(proc) -> bool:
    try:
        with open(f"/proc/{proc.pid}/maps") as f:
            return "/jaxlib/" in f.read()
    except OSError:
        return False


def _rendering(root: str) -> bool:
    return bool(glob.glob(os.path.join(root, ".*.building-*", "train*", "*.png")))


def _assert_interrupted(proc, prog: str, timeout: float = 30) -> str:
    _, err = proc.communicate(timeout=timeout)
    err = err.decode()
    lines = err.strip().splitlines()
    assert proc.returncode == 130, err[-2000:]
    assert lines and lines[-1].split("\r")[-1] == f"{prog}: interrupted", err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    return err


@pytest.fixture
def tiny_image(tmp_path):
    from PIL import Image

    path = tmp_path / "in.png"
    Image.new("RGB", (72, 72), "white").save(path)
    return str(path)


def test_ctrl_c_of_every_command_is_one_line_and_exit_130(tmp_path, tiny_image):
    out = tmp_path / "out"
    commands = {
        "translate": ["--pretrained", "emoji", "--direction", "A2B", "--input", tiny_image, "--output", str(out)],
        "evaluate": ["--pretrained", "emoji", "--dataset-dir", str(tmp_path / "eval-data"), "--kid-subsets", "2"],
        "export": ["--pretrained", "emoji", "--direction", "A2B", "--output", str(out / "a2b.bin")],
        "report": ["--workdir", str(tmp_path / "no-run")],
        "plan": ["--config", "configs/emoji.py", "--devices", "1"],
        "data": ["build", "--dataset", "emoji", "--dataset-dir", str(tmp_path / "data"), "--emoji-limit", str(LIMIT)],
    }
    procs = {name: _start(["-m", f"ugatit_jax.{name}", *args]) for name, args in commands.items()}
    try:
        waiting = dict(procs)
        while waiting:  # each gets Ctrl-C as soon as it loads jaxlib: seconds of imports still to go
            for name, proc in list(waiting.items()):
                if _importing_jax(proc) or proc.poll() is not None:
                    os.killpg(proc.pid, signal.SIGINT)
                    del waiting[name]
            time.sleep(0.01)
        for name, proc in procs.items():
            _assert_interrupted(proc, f"python -m ugatit_jax.{name}")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert not os.path.exists(out / "a2b.bin")


def test_ctrl_c_of_a_build_at_work_and_kill_9_of_a_train_py_building(tmp_path, caplog):
    """Ctrl-C: the render processes (which get the signal too) print nothing, the build stops at once and leaves
    no folder. SIGKILL of train.py (the parent only, as an OOM killer does) while it builds the emoji set: its
    render processes and multiprocessing's resource tracker end with it, the caller's pipe reaches EOF, and the
    next build removes the temporary folder it left."""
    built, killed = str(tmp_path / "built"), str(tmp_path / "killed")
    build = _start(["-m", "ugatit_jax.data", "build", "--dataset-dir", built, "--emoji-limit", str(LIMIT)])
    train = _start(
        [
            "train.py",
            "--config",
            "configs/emoji.py",
            "--workdir",
            str(tmp_path / "run"),
            f"--config.dataset_dir={killed}",
            f"--config.emoji_limit={LIMIT}",
        ]
    )
    try:
        _wait_for(lambda: _rendering(built) and _rendering(killed), 120, "both builds to render", (build, train))
        assert len(_session(build.pid)) >= 3 and len(_session(train.pid)) >= 3  # itself, workers, tracker
        os.killpg(build.pid, signal.SIGINT)
        os.kill(train.pid, signal.SIGKILL)
        _assert_interrupted(build, "python -m ugatit_jax.data", timeout=15)
        train.communicate(timeout=15)  # EOF on stdout and stderr: nothing holds the pipes any more
        assert train.returncode == -signal.SIGKILL
        _wait_for(lambda: not _session(build.pid) and not _session(train.pid), 10, "every process to end")
    finally:
        for proc in (build, train):
            for pid in _session(proc.pid):
                os.kill(pid, signal.SIGKILL)
    assert os.listdir(built) == []
    (stale,) = glob.glob(os.path.join(killed, ".*.building-*"))
    assert f".building-{train.pid}@" in stale
    with caplog.at_level(logging.INFO, logger="ugatit_jax.data.emoji"):
        emoji.build_emoji_cache(killed, limit=24, progress=False)
    assert not os.path.exists(stale) and f"removed {stale}" in caplog.text
    assert os.listdir(killed) == [emoji.cache_key(24)]


def test_ctrl_c_of_launch_ends_its_processes(tmp_path):
    child = "import time; print('ready', flush=True); time.sleep(120)"
    proc = _start(["-m", "ugatit_jax.launch", "--processes", "2", "--grace", "5", "--", sys.executable, "-c", child])
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: sum(b"ready" in line for line in lines) == 2, 60, "both processes to start")
        os.killpg(proc.pid, signal.SIGINT)
        proc.stdout = None  # read by the thread
        err = _assert_interrupted(proc, "python -m ugatit_jax.launch")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    children = [int(line.split()[-1]) for line in err.splitlines() if line.startswith("[launch] p")]
    assert len(children) == 2 and not any(_session(pid) for pid in children)


def test_run_cli_reports_ctrl_c_after_cleaning_up(capsys):
    cleaned = []

    def run(args):
        try:
            raise KeyboardInterrupt
        finally:
            cleaned.append(True)

    assert cli.run_cli("prog", cli.Parser(prog="prog"), run, []) == 130 and cleaned
    assert capsys.readouterr().err == "prog: interrupted\n"
    with pytest.raises(SystemExit) as exit_:
        cli.run_script("bench.py", lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    assert exit_.value.code == 130 and capsys.readouterr().err == "bench.py: interrupted\n"


# Commands whose Ctrl-C lands where Python itself mishandles it. Each runs as a ``-m`` module that Python starts as
# it starts ``python -m ugatit_jax.report`` (the package records the command while it loads), under ``cli.run_cli``.
_COMMAND = """
import ctypes, gc, sys, time
sys.argv, sys.orig_argv = ["-m"], [sys.executable, "-m", "ugatit_jax.report"]
from ugatit_jax import cli

def run(args):
{body}

sys.exit(cli.run_cli("python -m ugatit_jax.report", cli.Parser(prog="report"), run, []))
"""
_LANDS_IN = {
    # In code an extension ran through PyRun_*: Python marks the interrupt unhandled and, leaving a -m module, would
    # end the process by SIGINT (status -2) although the command caught it and wrote its line.
    "pyrun": """    run_string = ctypes.pythonapi.PyRun_String
    run_string.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
    run_string.restype = ctypes.py_object
    run_string(b"raise KeyboardInterrupt", 257, {}, {})  # 257: Py_file_input""",
    # In a garbage-collector callback (JAX has one): Python prints "Exception ignored" and a traceback and drops
    # it, and the command ran on (here: for 60 s).
    "gc_callback": """    def callback(phase, info):
        if phase == "start":
            raise KeyboardInterrupt
    gc.callbacks.append(callback)
    gc.collect()
    time.sleep(60)""",
}


@pytest.mark.parametrize("where", sorted(_LANDS_IN))
def test_a_ctrl_c_python_would_mishandle_still_ends_the_command(tmp_path, where):
    (tmp_path / "command.py").write_text(_COMMAND.format(body=_LANDS_IN[where]))
    proc = _start(["-m", "command"], path=[tmp_path])
    try:
        _assert_interrupted(proc, "python -m ugatit_jax.report", timeout=50)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize(
    "argv0, orig_argv, prog",
    [
        ("-m", ["python", "-m", "ugatit_jax.translate", "--input", "x"], "python -m ugatit_jax.translate"),
        ("-m", ["python", "-X", "dev", "-mugatit_jax.data", "build"], "python -m ugatit_jax.data"),
        ("-m", ["python", "-m", "ugatit_jax.data.emoji"], None),  # not a command
        ("-m", ["python", "-m", "pytest", "tests"], None),
        ("train.py", ["python", "train.py"], None),  # train.py keeps its own Ctrl-C (finish the step, save)
        ("-c", ["python", "-c", "from multiprocessing.spawn import spawn_main"], None),  # a worker
    ],
)
def test_only_a_starting_command_gets_the_loading_handler(monkeypatch, argv0, orig_argv, prog):
    monkeypatch.setattr(sys, "argv", [argv0, *orig_argv[3:]])
    monkeypatch.setattr(sys, "orig_argv", orig_argv)
    assert interrupts.command_prog() == prog


def test_only_folders_of_dead_builders_on_this_host_are_removed(tmp_path):
    gone = _dead_pid()
    host = emoji._host()
    folders = {
        f".v2-all-00000000.building-{gone}@{host}-abc_1234": False,  # its builder is gone: removed
        f".v2-all-00000000.building-{os.getpid()}@{host}-abc_1234": True,  # still building
        f".v2-all-00000000.building-{gone}@other.host-abc_1234": True,  # another machine's (shared file system)
        ".v2-all-00000000.building-abc_1234": True,  # the earlier form, no builder recorded
    }
    for name in folders:
        os.makedirs(tmp_path / name / "trainA")
    emoji._note_leftovers(str(tmp_path), "v2-all-11111111")
    assert {name: (tmp_path / name).exists() for name in folders} == folders


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
