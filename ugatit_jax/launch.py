"""Start a multi-process (multi-host style) run on this machine: ``python -m ugatit_jax.launch``.

  python -m ugatit_jax.launch --processes 2 --devices-per-process 2 -- \\
      train.py --config configs/emoji.py --workdir runs/emoji2x2

Each child gets the plain variables ``ugatit_jax.train.parallel.maybe_initialize_distributed`` reads, exactly as
one would set them by hand on separate hosts: ``JAX_COORDINATOR_ADDRESS`` (a free port on 127.0.0.1),
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, ``JAX_NUM_CPU_DEVICES`` (fake CPU devices per process),
``JAX_PLATFORMS=cpu`` (unless ``--platforms`` says otherwise) and ``UGATIT_INIT_TIMEOUT``. Every output line
of child i is prefixed with ``[pi]``. If any child fails (or is killed), the others get SIGTERM, then SIGKILL
after ``--grace`` seconds, and the launcher exits non-zero; children run in their own process groups, so
their worker processes go too, and they are killed if the launcher itself dies.

Exit status: 0 when every child exits 0; else the first failing child's status (128 + N for signal N);
2 with one ``error:`` line for bad launcher arguments; Ctrl-C ends the children as above, then the last line is
``python -m ugatit_jax.launch: interrupted`` and the status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from ugatit_jax.cli import UsageError, reported
from ugatit_jax.interrupts import interrupted_line, set_parent_death_signal

PROG = "python -m ugatit_jax.launch"
POLL_S = 0.1


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(
    base: dict,
    *,
    process_id: int,
    processes: int,
    devices: int,
    coordinator: str,
    platforms: str,
    init_timeout: int,
) -> dict:
    env = dict(base)
    # A forced host device count from a parent (tests' XLA_FLAGS) would override JAX_NUM_CPU_DEVICES.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    env.update(
        JAX_COORDINATOR_ADDRESS=coordinator,
        JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(process_id),
        JAX_NUM_CPU_DEVICES=str(devices),
        UGATIT_INIT_TIMEOUT=str(init_timeout),
        PYTHONUNBUFFERED="1",
    )
    if platforms:
        env["JAX_PLATFORMS"] = platforms
    return env


def _die_with_parent() -> None:
    """In the child before exec: own process group, and SIGKILL when the launcher dies (Linux)."""
    os.setsid()
    set_parent_death_signal(signal.SIGKILL)


def _pump(stream, prefix: bytes, out, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        if not line.endswith(b"\n"):
            line += b"\n"
        with lock:
            out.buffer.write(prefix + line)
            out.flush()
    stream.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


class Launcher:
    def __init__(self, command: list[str], args: argparse.Namespace):
        self.command = command
        self.args = args
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.stop_signal: int | None = None
        self.stopped_by: int | None = None  # the signal that ended the run, if one did (not a child's failure)

    def log(self, message: str) -> None:
        with self.lock:
            print(f"[launch] {message}", file=sys.stderr, flush=True)

    def start(self) -> None:
        a = self.args
        coordinator = a.coordinator or f"127.0.0.1:{free_port()}"
        for i in range(a.processes):
            env = child_env(
                os.environ,
                process_id=i,
                processes=a.processes,
                devices=a.devices_per_process,
                coordinator=coordinator,
                platforms=a.platforms,
                init_timeout=a.init_timeout,
            )
            proc = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
            self.procs.append(proc)
            prefix = f"[p{i}] ".encode()
            for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
                t = threading.Thread(target=_pump, args=(stream, prefix, out, self.lock), daemon=True)
                t.start()
                self.threads.append(t)
            self.log(f"p{i} pid {proc.pid}")
        self.log(f"{a.processes} process(es) x {a.devices_per_process} device(s), coordinator {coordinator}")

    def _handle_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def wait(self) -> int:
        """Until all exit 0, or the first failure; then end the rest. Returns the exit status."""
        failed: tuple[int, int] | None = None
        while failed is None and self.stop_signal is None:
            codes = [p.poll() for p in self.procs]
            if all(c == 0 for c in codes):
                return self._finish(0)
            failed = next(((i, c) for i, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is None:
                time.sleep(POLL_S)
        if failed is not None:
            i, code = failed
            how = f"signal {-code}" if code < 0 else f"status {code}"
            self.log(f"p{i} exited with {how}: ending the other processes")
            status = _status(code)
        else:
            self.log(f"received signal {self.stop_signal}: ending all processes")
            self.stopped_by = self.stop_signal
            status = 128 + self.stop_signal
        self.end_all(settle=self.args.settle if failed is not None else 0.0)
        return self._finish(status)

    def end_all(self, settle: float) -> None:
        """Give the others ``settle`` s to exit on their own (they may be printing their own error), then
        SIGTERM each process group, then SIGKILL what is left after the grace period."""
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(POLL_S)
        for p in self.procs:
            if p.poll() is None:
                _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + self.args.grace
        while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
            time.sleep(POLL_S)
        for i, p in enumerate(self.procs):
            if p.poll() is None:
                self.log(f"p{i} still running {self.args.grace:g} s after SIGTERM: SIGKILL")
            _signal_group(p, signal.SIGKILL)  # also any worker left in the group of an exited child
        for p in self.procs:
            p.wait()

    def _finish(self, status: int) -> int:
        for t in self.threads:
            t.join(timeout=5)
        return status


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(message)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1 :]
    else:
        own, command = argv, []
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, required=True, help="number of processes (JAX_NUM_PROCESSES)")
    p.add_argument("--devices-per-process", type=int, default=1, help="fake CPU devices per process")
    p.add_argument("--platforms", default="cpu", help="JAX_PLATFORMS for the children ('' = leave as is)")
    p.add_argument("--coordinator", default="", help="host:port (default: a free port on 127.0.0.1)")
    p.add_argument("--init-timeout", type=int, default=300, help="seconds to wait for all processes to join")
    p.add_argument("--settle", type=float, default=2.0, help="seconds the others get to exit after a failure")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    args = p.parse_args(own)
    if args.processes < 1:
        raise UsageError(f"--processes={args.processes}: must be at least 1")
    if args.devices_per_process < 1:
        raise UsageError(f"--devices-per-process={args.devices_per_process}: must be at least 1")
    if args.init_timeout < 1:
        raise UsageError(f"--init-timeout={args.init_timeout}: must be at least 1 second")
    if args.grace < 0 or args.settle < 0:
        raise UsageError("--grace and --settle must be >= 0")
    if args.coordinator:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--coordinator={args.coordinator}: expected host:port")
    if not command:
        raise UsageError("no command: put it after '--', e.g. -- train.py --config configs/emoji.py --workdir runs/x")
    if command[0].endswith(".py"):
        if not os.path.isfile(command[0]):
            raise UsageError(f"{command[0]}: no such file")
        command = [sys.executable, *command]
    return args, command


def main(argv: list[str] | None = None) -> int:
    return reported(PROG, lambda: launch(sys.argv[1:] if argv is None else argv))


def launch(argv: list[str]) -> int:
    """Starts the children and waits for them; returns the exit status (see the module's docstring)."""
    args, command = parse_args(argv)
    launcher = Launcher(command, args)
    previous = {s: signal.signal(s, launcher._handle_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        launcher.start()
        status = launcher.wait()
        return interrupted_line(PROG) if launcher.stopped_by == signal.SIGINT else status
    except OSError as e:
        launcher.end_all(settle=0.0)
        raise UsageError(f"cannot start {command[0]}: {e}") from e
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
