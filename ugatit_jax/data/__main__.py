"""Command line: ``python -m ugatit_jax.data {describe,build,benchmark} ...``.

Bad input ends with exit code 2 and one ``python -m ugatit_jax.data: error: ...`` line on stderr (``cli.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from ugatit_jax.cli import Parser, make_main
from ugatit_jax.data.errors import DatasetError
from ugatit_jax.data.registry import DATASETS, get_source
from ugatit_jax.data.source import SPLITS

PROG = "python -m ugatit_jax.data"


def _config(args):
    """The run-config keys the data commands read: the dataset's, and for ``benchmark`` the pipeline's."""
    import ml_collections

    from ugatit_jax.data.transforms import CROP_MARGIN

    config = dict(
        dataset=args.dataset,
        dataset_dir=args.dataset_dir or "",
        tfds_name=args.tfds_name or "",
        emoji_limit=getattr(args, "emoji_limit", 0) or 0,
    )
    if args.command == "benchmark":
        pipeline = dict(img_size=args.img_size, batch_size=args.batch_size, num_workers=args.num_workers)
        config |= pipeline | dict(seed=0, crop_margin=CROP_MARGIN)  # the official augmentation
    return ml_collections.ConfigDict(config)


def _describe(args) -> None:
    source = get_source(_config(args))
    print(f"dataset: {source.name}")
    print(f"{'split':<8} {'domain':<7} {'images':>7}  location")
    for split in SPLITS:
        part = source.split(split)
        print(f"{split:<8} {split[-1]:<7} {len(part):>7}  {part.location}")
    if source.test_pairs:
        print(f"test pairs: {len(source.test_pairs)} (testA/<key> <-> testB/<key>)")
        if args.list_pairs:
            for key, index_a, index_b in source.test_pairs:
                print(f"{key}\ttestA[{index_a}]\ttestB[{index_b}]")
        else:
            print(textwrap.fill(" ".join(key for key, _, _ in source.test_pairs), width=100))
    else:
        print("test pairs: none (unpaired dataset)")


def _build(args) -> None:
    if args.dataset != "emoji":
        raise DatasetError(f"--dataset {args.dataset!r} cannot be built here; only 'emoji' is built locally")
    from ugatit_jax.data.emoji import build_emoji_cache, emoji_cache_dir, emoji_source, is_intact

    limit = args.emoji_limit or None
    folder = emoji_cache_dir(args.dataset_dir, limit)
    if args.force or not is_intact(folder, limit):
        folder, manifest = build_emoji_cache(
            args.dataset_dir, limit=limit, num_workers=args.num_workers, force=args.force
        )
        flat, failed = manifest["excluded_flat"], manifest["failed"]
        print(
            f"built emoji dataset in {folder} in {manifest['build_seconds']} s; left out {len(flat)} emoji with "
            f"a flat square (they destabilise instance norm) and {len(failed)} that failed to render"
        )
    source = emoji_source(args.dataset_dir, limit=limit)
    counts = ", ".join(f"{split} {count}" for split, count in source.counts().items())
    print(f"emoji dataset in {os.path.dirname(source.train_a.location)}: {counts}; {len(source.test_pairs)} test pairs")


def _benchmark(args) -> None:
    from ugatit_jax.data.benchmark import benchmark
    from ugatit_jax.data.synthetic import write_random_images

    if args.generate and not os.path.isdir(os.path.join(args.dataset_dir or "", "trainA")):
        if not args.dataset_dir:
            raise DatasetError("--generate needs --dataset-dir to say where to write the images")
        write_random_images(args.dataset_dir, args.generate)
    config = _config(args)
    source = get_source(config)
    result = benchmark(source, config, num_threads=args.num_threads, steps=args.steps)
    print(
        f"{source.name}: img_size {args.img_size}, batch {args.batch_size} per domain, "
        f"{args.num_workers} workers, {args.num_threads} threads: {result['images_per_s']:.1f} images/s (A+B), "
        f"{result['batches_per_s']:.2f} steps/s over {args.steps} steps; start-up {result['startup_s']:.2f} s"
    )


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def dataset_options(command, default):
        command.add_argument("--dataset", choices=DATASETS, default=default)
        command.add_argument(
            "--dataset-dir", default="", help="folder root / emoji cache (holds one folder per build) / TFDS data_dir"
        )
        command.add_argument("--tfds-name", default="", help="TFDS dataset, e.g. cycle_gan/horse2zebra")
        command.add_argument("--emoji-limit", type=int, default=0, help="emoji: only the first N code points")

    describe = commands.add_parser("describe", help="print image counts per split (and emoji test pairs)")
    dataset_options(describe, "emoji")
    describe.add_argument("--list-pairs", action="store_true", help="one line per test pair")
    describe.set_defaults(run=_describe)

    build = commands.add_parser("build", help="build the emoji dataset cache now")
    dataset_options(build, "emoji")
    build.add_argument(
        "--force", action="store_true", help="rebuild even if the build exists (the old one is moved aside, kept)"
    )
    build.add_argument("--num-workers", type=int, default=None, help="render processes (default: one per core)")
    build.set_defaults(run=_build)

    bench = commands.add_parser("benchmark", help="measure training-pipeline throughput")
    dataset_options(bench, "folder")
    bench.add_argument("--img-size", type=int, default=256)
    bench.add_argument("--batch-size", type=int, default=4)
    bench.add_argument("--num-workers", type=int, default=0)
    bench.add_argument("--num-threads", type=int, default=0)
    bench.add_argument("--steps", type=int, default=100)
    bench.add_argument("--generate", type=int, default=0, help="first write N random JPEGs per split if empty")
    bench.set_defaults(run=_benchmark)
    return parser


def _run(args) -> None:
    args.run(args)


main = make_main(PROG, _parser, _run)


if __name__ == "__main__":
    sys.exit(main())
