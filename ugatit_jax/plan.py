"""The train step's memory per device, before anything runs: XLA's plan of the compiled step, for a config and
for the variants that change it, each marked whether it fits a device's memory.

  python -m ugatit_jax.plan --config configs/default.py --config.img_size=512 --config.batch_size=8 --devices 8
  python -m ugatit_jax.plan --config configs/light.py --devices 1 --device-memory 16GiB --variants none
  python -m ugatit_jax.plan --config configs/default.py --devices 8 --variants shard_state,shard_state+remat

Each row is the step train.py would compile (the same function, with the run's state shardings), compiled on
shapes only: nothing is allocated, so the paper's full model plans on a laptop. On a CPU, --devices N asks JAX
for N CPU devices to stand in for N accelerators (arguments are the same as on a GPU; temporaries follow the
backend's own fusions and convolutions). Variants compile one after the other and print as they finish: a
variant joins shard_state, bfloat16, remat and light with '+'; --variants none plans the config alone.
"""

from __future__ import annotations

import argparse
import json
import sys

from ugatit_jax.cli import Parser, UsageError, check_writable, load_config, run_cli
from ugatit_jax.config import ConfigError, parse_size

PROG = "python -m ugatit_jax.plan"


class _Parser(Parser):
    """Options plus ``--config.key=value`` overrides (``args.overrides``). Parsing also asks JAX for ``--devices``
    CPU devices: that must happen before its backend starts, which the first compile does."""

    def parse_args(self, args=None, namespace=None):
        parsed, rest = self.parse_known_args(args, namespace)
        unknown = [a for a in rest if not a.startswith("--config.")]
        if unknown:
            self.error(f"unrecognised arguments: {' '.join(unknown)} (overrides are --config.key=value)")
        parsed.overrides = [a[len("--config.") :] for a in rest]
        if parsed.devices is not None and parsed.devices < 1:
            self.error(f"--devices {parsed.devices}: give a device count of at least 1")
        if parsed.processes < 1:
            self.error(f"--processes {parsed.processes}: give a process count of at least 1")
        if parsed.devices is not None:
            _ask_for_cpu_devices(parsed.devices)
        return parsed


def _ask_for_cpu_devices(n: int) -> None:
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend started already (a caller in the same process): it has what it has
        pass


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--config", required=True, help="a configs/*.py file; override keys with --config.key=value")
    parser.add_argument("--devices", type=int, default=None, help="devices the batch is split over (default: all)")
    parser.add_argument("--processes", type=int, default=1, help="processes (hosts) the devices belong to")
    parser.add_argument(
        "--device-memory",
        default=None,
        metavar="SIZE",
        help="memory per device to mark fits against, e.g. 16GiB or 80GB (default: what the device reports)",
    )
    parser.add_argument(
        "--variants",
        default="all",
        help="none, all (shard_state, bfloat16, remat, light and shard_state+bfloat16+remat) or a comma list",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every row as JSON")
    return parser


def _variants(text: str) -> tuple[str, ...]:
    from ugatit_jax.train.memory import PLAN_VARIANTS, parse_variant

    if text == "none":
        return ()
    if text == "all":
        return PLAN_VARIANTS
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    for name in names:
        try:
            parse_variant(name)
        except ValueError as e:
            raise UsageError(f"--variants: {e}, or give none or all") from None
    return names


def _describe(config, n: int, processes: int, platform: str) -> str:
    model = f"{'light' if config.light else 'full'} {'NICE-GAN' if config.model == 'nice' else 'U-GAT-IT'}"
    hosts = f" over {processes} processes" if processes > 1 else ""
    options = [config.compute_dtype] + [k for k in ("remat", "shard_state") if config[k]]
    return (
        f"{model}, {config.img_size} px, ch {config.ch}, batch {config.batch_size} on {n} {platform} device(s)"
        f"{hosts}, {', '.join(options)}"
    )


def _row(label: str, plan, available: int | None) -> str:
    from ugatit_jax.train.memory import gib

    cells = [label, plan.parameters, plan.optimiser, plan.ema, plan.temp, plan.total]
    cells = [c if isinstance(c, str) else gib(c) if c else "-" for c in cells]
    if available is not None:
        cells.append("yes" if plan.total <= available else "no")
    return "| " + " | ".join(cells) + " |"


def _run(args) -> None:
    import jax

    from ugatit_jax.train import memory, parallel

    config = load_config(args.config, args.overrides, prog=PROG)
    available = None
    if args.device_memory is not None:
        try:
            available = parse_size(args.device_memory)
        except ValueError as e:
            raise UsageError(f"--device-memory: {e}") from None
    names = _variants(args.variants)
    if args.json:
        check_writable(args.json, name=f"--json={args.json}")
    devices = jax.devices()
    n = len(devices) if args.devices is None else args.devices
    if n > len(devices):
        raise UsageError(
            f"--devices {n}: JAX sees {len(devices)} {devices[0].platform} device(s); plan on the CPU instead "
            f"(JAX_PLATFORMS=cpu), where --devices asks for that many"
        )
    if args.processes > n or n % args.processes:
        raise UsageError(
            f"--processes {args.processes}: {n} device(s) cannot be shared evenly by {args.processes} processes; "
            "give a process count that divides --devices"
        )
    mesh = parallel.make_mesh(devices[:n])
    try:
        memory.check_devices(config, mesh)
    except ConfigError as e:
        raise UsageError(f"{e} (--devices {n})") from None
    if available is None:
        available, _ = memory.available_memory(config, devices[0])
    platform = devices[0].platform
    print(f"{_describe(config, n, args.processes, platform)}; per device, XLA's plan", flush=True)
    fits = f" fits {memory.gib(available)} |" if available else ""
    print(f"| variant | parameters | optimiser | EMA | temporaries | total |{fits}")
    print("|---|---|---|---|---|---|" + ("---|" if available else ""), flush=True)
    rows = []

    def show(name, changed, plan):
        if plan is None:
            raise UsageError(f"XLA gives no memory plan on {platform}; plan on the CPU (JAX_PLATFORMS=cpu)")
        label = "as given" if changed is None else f"{name} (`{memory.flags(changed, config)}`)"
        print(_row(label, plan, available), flush=True)
        flags = "" if changed is None else memory.flags(changed, config)
        fit = None if available is None else plan.total <= available
        rows.append({"variant": name, "flags": flags, **plan.as_dict(), "fits": fit})
        if args.json:  # rewritten after each row: a plan stopped early keeps what it had
            _write_json(args, config, n, platform, available, rows)

    show("as given", None, memory.plan(config, mesh))
    for name, changed, plan in memory.variant_plans(config, mesh, names):
        if changed is None:
            print(f"| {name} | same as given, or as a row above | | | | |" + (" |" if available else ""), flush=True)
        else:
            show(name, changed, plan)


def _write_json(args, config, n, platform, available, rows) -> None:
    record = {
        "config": args.config,
        "overrides": args.overrides,
        "description": _describe(config, n, args.processes, platform),
        "devices": n,
        "processes": args.processes,
        "platform": platform,
        "device_memory_bytes": available,
        "rows": rows,
    }
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)


def main(argv=None) -> int:
    return run_cli(PROG, _parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
