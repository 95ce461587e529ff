"""Ours or the model's? Train the official PyTorch code on the embedded emoji set, judged like our runs.

The official networks (``networks.py`` of znxlwm/UGATIT-pytorch, or of alpc91/NICE-GAN-pytorch for a NICE-GAN
config, from a checkout or bare git directory the user names; none of that code is in this repository) are
trained with ``torch_reference.official_step`` (the official loop of that family, Adam with coupled L2) and the
official linear learning-rate decay from the half-way step, on **exactly our batches**: the same data pipeline,
transforms, seed and settings as ``train.py --config configs/emoji.py`` (or ``configs/nice_emoji.py``). At the end
the translating networks are written in the official checkpoint format, loaded by ``ugatit_jax.load`` and judged by
the same evaluation as a training run of ours, into the file a run's evaluation goes to (``RUN/eval/step_<N>.json``,
``ugatit_jax/run_dir.py``), so the two can be compared number for number::

    python benchmarks/official_emoji.py --official /path/to/UGATIT-pytorch --workdir runs/official_emoji \\
        [--config configs/emoji.py] [--config.seed=1 ...] [--threads 2]
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))


def official_lr(config, step: int) -> float:
    """The official schedule: constant, then after ``iterations // 2`` minus ``lr / (iterations // 2)`` per step."""
    half = config.iterations // 2
    if not config.decay_flag or step <= half:
        return config.lr
    return config.lr - (step - half) * (config.lr / half)


def train_official(networks, config, workdir: pathlib.Path, threads: int | None, log_every: int = 50):
    """``config.iterations`` official steps on our pipeline's batches; returns the official step object."""
    import numpy as np
    import torch
    from torch_reference import official_step

    from ugatit_jax import data as data_lib

    official = official_step(networks, config, threads=threads)
    source = data_lib.get_source(config)
    # the pipeline train.py builds (config_options), on this one process
    batches = data_lib.make_train_iterator(source, **data_lib.config_options(config), process_index=0, process_count=1)
    to_torch = lambda x: torch.from_numpy(np.transpose(x.astype(np.float32) / 127.5 - 1.0, (0, 3, 1, 2)).copy())
    log = open(workdir / "official_losses.jsonl", "w")  # noqa: SIM115
    start = time.perf_counter()
    for step in range(1, config.iterations + 1):
        lr = official_lr(config, step)
        for optim in (official.G_optim, official.D_optim):
            optim.param_groups[0]["lr"] = lr
        batch = next(batches)
        d_loss, g_loss = official(to_torch(batch["A"]), to_torch(batch["B"]))
        if step % log_every == 0 or step == config.iterations:
            elapsed = time.perf_counter() - start
            record = {"step": step, "d_loss": d_loss, "g_loss": g_loss, "lr": lr, "seconds": elapsed}
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"step {step}/{config.iterations}: d_loss {d_loss:.4f} g_loss {g_loss:.4f} ({elapsed:.0f} s)")
    batches.close()
    log.close()
    return official


def evaluate_checkpoint(config, checkpoint: pathlib.Path) -> dict:
    """The official translating networks, loaded by ``ugatit_jax.load``, judged by the evaluator our runs use."""
    from ugatit_jax import data as data_lib
    from ugatit_jax import load
    from ugatit_jax.evaluation.evaluator import Evaluator

    shape = {k: config[k] for k in ("img_size", "ch", "n_res", "light")}
    if config.model == "nice":
        shape["n_dis"] = config.n_dis
    translator = load(str(checkpoint), model=config.model, **shape)
    translators = {d: (lambda x, d=d: translator.translate(x, d)[0]) for d in ("A2B", "B2A")}
    evaluator = Evaluator(data_lib.get_source(config), config.img_size, batch_size=32)
    return evaluator(translators)


def main(argv=None) -> None:
    from ugatit_jax.cli import Parser

    parser = Parser(prog="official_emoji.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--official", required=True, help="checkout or bare git dir: UGATIT-pytorch (NICE-GAN-pytorch for NICE)"
    )
    parser.add_argument("--workdir", required=True, help="where the official checkpoint and evaluation go")
    parser.add_argument("--config", default=str(ROOT / "configs" / "emoji.py"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args, rest = parser.parse_known_args(argv)
    overrides = [a.removeprefix("--config.") for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")

    import torch
    from throughput import load_config
    from torch_reference import import_official

    from ugatit_jax import run_dir
    from ugatit_jax.evaluation.evaluator import format_table, write_record
    from ugatit_jax.models.family import get_family

    config = load_config(args.config, overrides)
    workdir = pathlib.Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    networks = import_official(args.official, config.model, option="--official")
    official = train_official(networks, config, workdir, args.threads)
    checkpoint = workdir / "official_params.pt"
    names = dict.fromkeys(n for nets in get_family(config).translation_networks.values() for n in nets)
    torch.save({name: getattr(official, name).state_dict() for name in names}, checkpoint)
    record = evaluate_checkpoint(config, checkpoint)
    record["official"] = {"losses": str(workdir / "official_losses.jsonl"), "checkpoint": str(checkpoint)}
    write_record(record, run_dir.eval_file(str(workdir), config.iterations))
    family = "NICE-GAN" if config.model == "nice" else "U-GAT-IT"
    print(format_table(record, title=f"official {family}, {config.iterations} steps"))


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from ugatit_jax.cli import run_script

    run_script("official_emoji.py", main)
