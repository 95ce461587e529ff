"""Translate images with a trained U-GAT-IT or NICE-GAN, or write the official test-mode strips of a test split.

Translate files and folders (recursive) in one direction; outputs keep the input names (``<stem>.png``) and
sub-folders, with ``--heatmap`` adding ``<stem>_heatmap.png`` (the attention map over the input)::

    python -m ugatit_jax.translate --workdir runs/emoji --direction A2B --input photos/ a.jpg --output out/
    python -m ugatit_jax.translate --checkpoint selfie2anime_params_latest.pt --direction A2B \\
        --input photos/ --output out/    # official .pt; add --img-size/--ch/--n-res/--light if not the paper's

Test mode, as the official ``--phase test`` (``evaluation/test_split.py``): for every testA (A2B) and testB (B2A)
image a 7-tile strip and an ``index.html`` that shows them (default folder ``RUN/test``)::

    python -m ugatit_jax.translate --workdir runs/emoji --test-split [--output DIR] [--dataset-dir DIR]

Bad input ends with exit code 2 and one ``error:`` line on stderr (``ugatit_jax.cli``). torch is imported only
to read an official checkpoint.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import itertools
import os
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from ugatit_jax import run_dir
from ugatit_jax.cli import UsageError, check_writable, doc_parser, make_main, warn_line
from ugatit_jax.directions import DIRECTIONS
from ugatit_jax.inference import default_batch_size

if TYPE_CHECKING:
    from ugatit_jax.loading import Translator

PROG = "python -m ugatit_jax.translate"
SHAPE_FLAGS = ("img_size", "ch", "n_res", "n_dis", "light")  # --checkpoint only: the official model's shape


# ----------------------------------------------------------------------------
# Translating files and folders
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    """One input file and where its outputs go: ``<output>/<stem>.png`` (+ ``<stem>_heatmap.png``)."""

    path: str
    stem: str  # relative POSIX path under --output, without ".png"


def _is_within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def collect_inputs(inputs: list[str], output: str) -> list[tuple[str, str]]:
    """(path, name relative to its --input) for every image file; folders are searched recursively.

    A folder's images keep their sub-folders. Files under ``output`` are left out when ``output`` lies inside an
    input folder, so a second run does not translate the first run's results.
    """
    from ugatit_jax.data.folders import list_images

    out_real = os.path.realpath(output)
    found, seen = [], set()
    for given in inputs:
        path = os.path.expanduser(given)
        if os.path.isdir(path):
            folder = os.path.realpath(path)
            skip_output = out_real != folder and _is_within(out_real, folder)
            names = list_images(path)
            pairs = [(os.path.join(path, *rel.split("/")), rel) for rel in names]
        elif os.path.isfile(path):
            skip_output = False
            pairs = [(path, os.path.basename(path))]
        else:
            raise UsageError(f"--input {given}: no such file or folder")
        for file, rel in pairs:
            real = os.path.realpath(file)
            if real in seen or (skip_output and _is_within(real, out_real)):
                continue
            seen.add(real)
            found.append((file, rel))
    return found


def output_names(stem: str, heatmap: bool) -> list[str]:
    return [stem + ".png"] + ([stem + "_heatmap.png"] if heatmap else [])


def plan_jobs(found: list[tuple[str, str]], output: str, heatmap: bool) -> tuple[list[Job], int]:
    """Output names for every input, and how many had to change to stay unique.

    ``x.jpg`` becomes ``x.png``; when two inputs would share a name (``x.jpg`` and ``x.png``, or the same file
    name from two --input folders) the later one keeps its extension (``x.png.png``), then gets ``_2``, ``_3``.
    Names compare case-insensitively, so nothing is lost on macOS or Windows file systems either. Writing over an
    input file is refused outright.
    """
    inputs = {os.path.realpath(path) for path, _ in found}
    used: set[str] = set()
    jobs, renamed = [], 0
    for path, rel in found:
        stem = os.path.splitext(rel)[0]
        candidates = itertools.chain([stem, rel], (f"{stem}_{i}" for i in itertools.count(2)))
        for candidate in candidates:
            names = [n.casefold() for n in output_names(candidate, heatmap)]
            if not used.intersection(names):
                break
        used.update(names)
        renamed += candidate != stem
        for name in output_names(candidate, heatmap):
            target = os.path.realpath(os.path.join(output, *name.split("/")))
            if target in inputs:
                raise UsageError(
                    f"--output {output}: writing {name} would overwrite the input file {target}; "
                    "choose an --output folder that holds no inputs"
                )
        jobs.append(Job(path, candidate))
    return jobs, renamed


def _read(path: str, img_size: int):
    """The official test transform of one file, or the exception that made it unreadable."""
    from ugatit_jax.data.images import read_rgb
    from ugatit_jax.data.transforms import test_transform

    try:
        return test_transform(read_rgb(path), img_size)
    except Exception as error:  # noqa: BLE001 - any decoder failure means "unreadable"
        return error


def _read_ahead(pool, jobs, img_size: int, ahead: int):
    """Decode in worker threads (PIL releases the GIL) while the model runs; at most ``ahead`` in flight."""
    queue = collections.deque()
    it = iter(jobs)
    for job in itertools.islice(it, ahead):
        queue.append((job, pool.submit(_read, job.path, img_size)))
    while queue:
        job, future = queue.popleft()
        for nxt in itertools.islice(it, 1):
            queue.append((nxt, pool.submit(_read, nxt.path, img_size)))
        yield job, future.result()


@dataclasses.dataclass
class TranslateResult:
    translated: int
    skipped: list[str]
    compile_s: float
    run_s: float

    @property
    def images_per_s(self) -> float:
        return self.translated / self.run_s if self.run_s > 0 else float("nan")

    @property
    def images_per_s_with_compile(self) -> float:
        total = self.run_s + self.compile_s
        return self.translated / total if total > 0 else float("nan")


def plan(inputs: list[str], output: str, heatmap: bool) -> tuple[list[Job], int]:
    """Every input image and its output names (see ``plan_jobs``), checked before any model is loaded."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output}: is a file; pass a folder (it is created if missing)")
    jobs, renamed = plan_jobs(collect_inputs(inputs, output), output, heatmap)
    if not jobs:
        raise UsageError(f"--input {' '.join(inputs)}: no image files found (looked for .jpg, .png, .bmp, ...)")
    return jobs, renamed


def translate_jobs(
    model: Translator,
    direction: str,
    jobs: list[Job],
    output: str,
    *,
    heatmap: bool = False,
    batch_size: int = 8,
    progress: bool = False,
) -> TranslateResult:
    """Translate planned jobs; unreadable files are skipped with a warning, none readable is an error.

    The generator is compiled once, ahead of time, for one fixed batch shape (the last batch is padded), so the
    compile time is known separately from the throughput.
    """
    import jax
    from tqdm import tqdm

    from ugatit_jax.evaluation.visualize import save_png
    from ugatit_jax.inference import padded_batches
    from ugatit_jax.nn.cam import overlay_heatmap
    from ugatit_jax.pixels import to_uint8

    size = model.img_size
    batch = min(batch_size, len(jobs))
    t0 = time.perf_counter()
    spec = jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8)
    compiled = model.translate_fn.lower(model.state, spec, direction).compile()
    translate = lambda images: compiled(model.state, images)  # noqa: E731
    compile_s = time.perf_counter() - t0

    os.makedirs(output, exist_ok=True)
    skipped: list[str] = []
    readable: list[Job] = []
    bar = tqdm(total=len(jobs), unit="img", disable=None if progress else True, dynamic_ncols=True)

    def images(pool):
        for job, image in _read_ahead(pool, jobs, size, ahead=2 * batch):
            if isinstance(image, Exception):
                skipped.append(job.path)
                warn_line(f"skipping unreadable image {job.path} ({type(image).__name__}: {image})")
                bar.update(1)
                continue
            readable.append(job)
            yield image

    def write(pending) -> None:
        chunk, inputs_u8, result = pending
        fake, _, heat = jax.device_get(result)
        n = len(chunk)
        fake = to_uint8(fake[:n])
        overlays = overlay_heatmap(inputs_u8[:n], heat[:n]) if heatmap else None
        for i, job in enumerate(chunk):
            base = os.path.join(output, *job.stem.split("/"))
            save_png(fake[i], base + ".png")
            if heatmap:
                save_png(overlays[i], base + "_heatmap.png")
        bar.update(n)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        pending = None
        for k, (arr, n) in enumerate(padded_batches(images(pool), batch)):
            result = translate(arr)  # asynchronous: the previous batch is written meanwhile
            if pending is not None:
                write(pending)
            pending = (readable[k * batch : k * batch + n], arr, result)
        if pending is not None:
            write(pending)
    run_s = time.perf_counter() - t0
    bar.close()
    if not readable:
        raise UsageError(f"--input: none of the {len(jobs)} image file(s) could be read; see the warnings above")
    return TranslateResult(len(readable), skipped, compile_s, run_s)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    what = "Translate images with a trained model, or write test-split strips (--test-split)."
    parser = doc_parser(PROG, __doc__, what)
    model = parser.add_argument_group("model (one of --workdir / --checkpoint / --pretrained)")
    model.add_argument("--workdir", help="a train.py run folder; the model shape comes from its saved config")
    model.add_argument("--step", type=int, default=None, help="checkpoint step of --workdir (default: latest)")
    model.add_argument(
        "--no-ema", action="store_true", help="--workdir trained with ema_decay: its trained weights, not the average"
    )
    model.add_argument("--checkpoint", help="an official PyTorch checkpoint (.pt) instead of --workdir")
    model.add_argument("--pretrained", metavar="NAME", help="a model shipped in the package, e.g. emoji")
    model.add_argument("--model", choices=("ugatit", "nice"), default=None, help="--checkpoint only (default ugatit)")
    model.add_argument("--img-size", type=int, default=None, help="--checkpoint only (default 256)")
    model.add_argument("--ch", type=int, default=None, help="--checkpoint only (default 64)")
    model.add_argument("--n-res", type=int, default=None, help="--checkpoint only (default 4; NICE-GAN 6)")
    model.add_argument("--n-dis", type=int, default=None, help="--checkpoint only, NICE-GAN (default 7)")
    model.add_argument("--light", action="store_true", default=None, help="--checkpoint only: the light model")
    parser.add_argument("--direction", choices=DIRECTIONS, help="A2B or B2A (translate mode)")
    parser.add_argument("--input", nargs="+", metavar="PATH", help="image files and/or folders (recursive)")
    parser.add_argument("--output", help="output folder (test mode default: WORKDIR/test)")
    parser.add_argument("--heatmap", action="store_true", help="also write <stem>_heatmap.png (attention map)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per compiled batch (default: 8; 1 on CPU, fastest there)"
    )
    parser.add_argument("--test-split", action="store_true", help="test mode: strips of every test image + index")
    parser.add_argument("--dataset-dir", default=None, help="test mode: the dataset's folder, if it moved")
    return parser


def check_model_args(args) -> None:
    """The cheap checks of --workdir / --checkpoint / --pretrained (exactly one, flags that fit it, the path or name
    exists), up front."""
    if sum(bool(x) for x in (args.workdir, args.checkpoint, args.pretrained)) != 1:
        raise UsageError("give exactly one of --workdir RUN, --checkpoint FILE.pt and --pretrained NAME")
    if args.pretrained:
        from ugatit_jax.loading import pretrained_names

        given = [f"--{k.replace('_', '-')}" for k in (*SHAPE_FLAGS, "model", "step") if getattr(args, k) is not None]
        if given:
            raise UsageError(f"{given[0]} does not apply to --pretrained: a shipped model has one shape and step")
        if args.pretrained not in pretrained_names():
            names = ", ".join(pretrained_names()) or "none"
            raise UsageError(f"--pretrained {args.pretrained}: no such shipped model; available: {names}")
    elif args.workdir:
        given = [f"--{k.replace('_', '-')}" for k in SHAPE_FLAGS if getattr(args, k) is not None]
        given += ["--model"] if args.model is not None else []
        if given:
            raise UsageError(f"{given[0]} applies to --checkpoint only; a run's model shape comes from its config")
        from ugatit_jax.loading import run_dir_or_fail

        run_dir_or_fail(args.workdir)
    else:
        if args.step is not None:
            raise UsageError("--step applies to --workdir only; an official checkpoint holds one step")
        if not os.path.isfile(os.path.expanduser(args.checkpoint)):
            raise UsageError(f"--checkpoint={args.checkpoint}: file not found; pass an official U-GAT-IT .pt file")


def check_flags(args) -> None:
    """Every flag, once, before anything is read or loaded: the mode's (translating files, or ``--test-split``),
    the model's (``check_model_args``) and the batch size. What runs after relies on them."""
    if args.test_split:
        for flag, value in (("--direction", args.direction), ("--input", args.input), ("--heatmap", args.heatmap)):
            if value:
                raise UsageError(f"{flag} does not apply to --test-split (which translates the whole test split)")
    else:
        given = (("--direction", args.direction), ("--input", args.input), ("--output", args.output))
        missing = [flag for flag, value in given if not value]
        if missing:
            raise UsageError(f"{missing[0]} is required (or use --test-split)")
        if args.dataset_dir:
            raise UsageError("--dataset-dir applies to --test-split only")
    check_model_args(args)
    if args.batch_size is not None and args.batch_size <= 0:
        raise UsageError(f"--batch-size {args.batch_size}: must be positive")
    if args.test_split and args.checkpoint and not (args.output and args.dataset_dir):
        raise UsageError("--test-split with --checkpoint needs --dataset-dir ROOT (with testA/ testB/) and --output")
    if args.test_split and args.pretrained and not args.output:
        raise UsageError("--test-split with --pretrained needs --output FOLDER")


def load_model(args) -> Translator:
    """From --workdir, --checkpoint or --pretrained; the shape flags of a checkpoint default to its release's paper
    model."""
    from ugatit_jax.loading import load_official, load_pretrained, load_run

    if args.pretrained:
        return load_pretrained(args.pretrained)
    if args.workdir:
        return load_run(args.workdir, args.step, ema=not args.no_ema)
    shape = {k: getattr(args, k) for k in SHAPE_FLAGS}
    return load_official(os.path.expanduser(args.checkpoint), model=args.model or "ugatit", **shape)


def _run(args) -> None:
    check_flags(args)
    batch_size = args.batch_size or default_batch_size()
    if args.test_split:
        _run_test_split(args, batch_size)
        return
    jobs, renamed = plan(args.input, args.output, args.heatmap)
    check_writable(args.output, folder=True, name=f"--output {args.output}")
    model = load_model(args)
    result = translate_jobs(
        model, args.direction, jobs, args.output, heatmap=args.heatmap, batch_size=batch_size, progress=True
    )
    if renamed:
        print(f"note: {renamed} output name(s) changed to stay unique (extension kept, or _2, _3 added)")
    skipped = f", {len(result.skipped)} unreadable file(s) skipped" if result.skipped else ""
    print(
        f"translated {result.translated} image(s) {args.direction} into {args.output}{skipped}: "
        f"{result.images_per_s:.2f} images/s ({result.images_per_s_with_compile:.2f} with the "
        f"{result.compile_s:.1f} s compilation)"
    )


def _run_test_split(args, batch_size: int) -> None:
    from ugatit_jax.evaluation.test_split import split_source, write_test_split

    output = args.output or run_dir.test_dir(args.workdir)
    check_writable(output, folder=True, name=f"--output {output}")
    model = load_model(args)
    source = split_source(model, args.dataset_dir)
    result = write_test_split(model, source, output, batch_size=batch_size, progress=True)
    counts = ", ".join(f"{k} {v}" for k, v in result["counts"].items())
    print(f"wrote test strips ({counts}) and {result['index']}")
    if result["skipped"]:
        print(f"{len(result['skipped'])} unreadable test image(s) skipped")


main = make_main(PROG, _parser, _run)


if __name__ == "__main__":
    sys.exit(main())
