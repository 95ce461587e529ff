"""Score a training run on its test split: KID x 100 and FID per direction, and L1 / PSNR / SSIM where known.

::

    python -m ugatit_jax.evaluate --workdir runs/emoji [--step N] \\
        [--inception-weights pt_inception-2015-12-05-6726825d.pth] [--output results.json] \\
        [--kid-subset-size 1000 --kid-subsets 100] [--dataset-dir DIR] [--batch-size N]

A->B compares the translations of every testA image with the real testB images (and B->A the other way), all at
the model's img_size, as the paper does. KID/FID use our Flax port of pytorch-fid's Inception and its weights file,
which is never downloaded: pass its path (or set UGATIT_INCEPTION_WEIGHTS); without it they are skipped with a
note. Datasets whose test images have a known true translation (``source.test_pairs``, e.g. the emoji set) also
get L1 / PSNR / SSIM of each translation against its target, beside the same metrics for the untranslated input,
the baseline a translation must beat. Results go to a JSON file (default ``RUN/eval/step_<N>.json``) and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from ugatit_jax.translate import (
    Parser,
    UsageError,
    default_batch_size,
    load_run,
    run_cli,
)

PROG = "python -m ugatit_jax.evaluate"
WEIGHTS_ENV = "UGATIT_INCEPTION_WEIGHTS"
DIRECTIONS = (("A2B", "testA", "testB", "genA2B"), ("B2A", "testB", "testA", "genB2A"))
INCEPTION_BATCH = 50


def missing_weights_note() -> str:
    from ugatit_jax.evaluation.inception import FID_WEIGHTS_FILENAME, FID_WEIGHTS_URL

    return (
        f"KID/FID skipped: no Inception weights given. Download {FID_WEIGHTS_FILENAME} (pytorch-fid's release "
        f"asset) from {FID_WEIGHTS_URL} and pass --inception-weights PATH or set {WEIGHTS_ENV}=PATH; "
        "nothing is downloaded automatically."
    )


def load_feature_fn(path: str, option: str):
    """Jitted Inception pool3 features from a pytorch-fid weights file; a bad path is the user's to fix."""
    from ugatit_jax.evaluation.inception import FID_WEIGHTS_FILENAME, load_pytorch_fid_weights, make_feature_fn

    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise UsageError(f"{option}={path}: file not found; it must be pytorch-fid's {FID_WEIGHTS_FILENAME}")
    try:
        model = load_pytorch_fid_weights(path)
    except ValueError as error:  # not a torch file, or not the Inception state dict
        raise UsageError(f"{option}={path}: {error}") from error
    return make_feature_fn(model)


def load_test_split(split, img_size: int, batch_size: int):
    """All readable images of one test split at ``img_size`` (official test transform), their keys, the skipped."""
    from ugatit_jax.data import iterate_test

    batches = iterate_test(split, img_size=img_size, batch_size=batch_size)
    images, keys = [], []
    for batch, batch_keys in batches:
        images.append(batch)
        keys += batch_keys
    array = np.concatenate(images) if images else np.zeros((0, img_size, img_size, 3), np.uint8)
    return array, keys, list(batches.skipped)


def _number(x):
    """JSON has no inf/nan (e.g. the PSNR of identical images): those become null."""
    x = float(x)
    return x if math.isfinite(x) else None


def paired_scores(outputs: np.ndarray, targets: np.ndarray) -> dict:
    from ugatit_jax.evaluation import metrics

    scores = {"l1": _number(metrics.l1(outputs, targets)), "psnr": _number(metrics.psnr(outputs, targets))}
    # SSIM's 11x11 Gaussian window needs images at least that large.
    scores["ssim"] = _number(metrics.ssim(outputs, targets)) if min(outputs.shape[1:3]) >= 11 else None
    return scores


def evaluate(gens, source, *, feature_fn=None, kid_subset_size=1000, kid_subsets=100, batch_size=8) -> dict:
    """Every metric of the run on ``source``'s test split, as a JSON-ready dict (see the module docstring)."""
    from ugatit_jax.evaluation import metrics
    from ugatit_jax.evaluation.inception import extract_features
    from ugatit_jax.inference import make_generator_fn, translate_images

    size = gens.img_size
    started = time.perf_counter()
    real, keys, skipped = {}, {}, []
    for split in ("testA", "testB"):
        real[split], keys[split], bad = load_test_split(source.split(split), size, max(1, batch_size))
        skipped += bad
    counts = {split: len(keys[split]) for split in real}
    if not all(counts.values()):
        empty = next(split for split, n in counts.items() if not n)
        raise UsageError(f"the test split {empty} of {source.name} has no readable images; nothing to evaluate")

    # One compiled generator and one compiled Inception for both directions: fixed batch shapes.
    batch = min(batch_size, max(counts.values()))
    generate = make_generator_fn(gens.graphdef)
    fake = {}
    for name, src, _, gen in DIRECTIONS:
        fake[name] = translate_images(generate, gens.params[gen], real[src], batch)[0]

    notes = []
    features = {}
    if feature_fn is None:
        notes.append(missing_weights_note())
    else:
        inception_batch = min(INCEPTION_BATCH, max(counts.values()))
        for key, images in [*real.items(), *fake.items()]:
            features[key] = extract_features(feature_fn, images, batch_size=inception_batch)

    index = {split: {key: i for i, key in enumerate(keys[split])} for split in keys}
    pairs = [
        (index["testA"][key], index["testB"][key])
        for key, _, _ in source.test_pairs
        if key in index["testA"] and key in index["testB"]
    ]
    if not source.test_pairs:
        notes.append(f"L1/PSNR/SSIM skipped: {source.name} has no paired ground truth (unpaired test split).")

    directions = {}
    for name, src, tgt, _ in DIRECTIONS:
        entry = {"source": src, "target": tgt, "translated": counts[src], "real_targets": counts[tgt]}
        if features:
            m = min(kid_subset_size, counts[src], counts[tgt])
            if m >= 2:
                mean, std = metrics.kid(
                    features[name], features[tgt], num_subsets=kid_subsets, subset_size=kid_subset_size
                )
                entry.update(
                    kid_x100=_number(100 * mean),
                    kid_x100_std=_number(100 * std),
                    kid_subset_size=m,
                    fid=_number(metrics.fid(features[name], features[tgt])),
                )
            else:
                notes.append(f"{name}: KID/FID need at least 2 images on each side; skipped.")
        if pairs:
            rows_src = np.array([p[0] if src == "testA" else p[1] for p in pairs])
            rows_tgt = np.array([p[1] if src == "testA" else p[0] for p in pairs])
            target = real[tgt][rows_tgt]
            entry["paired"] = {
                "pairs": len(pairs),
                "translation": paired_scores(fake[name][rows_src], target),
                "input_baseline": paired_scores(real[src][rows_src], target),
            }
        directions[name] = entry

    return {
        "model": gens.name,
        "step": gens.step,
        "dataset": source.name,
        "img_size": size,
        "test_images": counts,
        "skipped_images": skipped,
        "kid": {"subsets": kid_subsets, "subset_size": kid_subset_size, "seed": 0} if features else None,
        "directions": directions,
        "notes": notes,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _fmt(value, spec: str) -> str:
    """``format(value, spec)``, or a dash of the same width for a metric that was not computed."""
    return format(value, spec) if value is not None else format("-", ">" + spec.split(".")[0])


def format_table(results: dict) -> str:
    """The printed summary: one row per direction; paired columns show translation | input baseline."""
    header = (
        f"{'direction':<9} {'images':>6} {'KIDx100':>8} {'± std':>7} {'FID':>8}   "
        f"{'L1':>6} {'PSNR':>6} {'SSIM':>6}   {'input L1':>8} {'PSNR':>6} {'SSIM':>6}"
    )
    lines = [
        f"{results['model']} on the {results['dataset']} test split at {results['img_size']} px",
        header,
        "-" * len(header),
    ]
    for name, entry in results["directions"].items():
        paired = entry.get("paired") or {}
        ours, base = paired.get("translation", {}), paired.get("input_baseline", {})
        lines.append(
            f"{name[0] + '->' + name[2]:<9} {entry['translated']:>6} {_fmt(entry.get('kid_x100'), '8.3f')} "
            f"{_fmt(entry.get('kid_x100_std'), '7.3f')} {_fmt(entry.get('fid'), '8.2f')}   "
            f"{_fmt(ours.get('l1'), '6.4f')} {_fmt(ours.get('psnr'), '6.2f')} {_fmt(ours.get('ssim'), '6.4f')}   "
            f"{_fmt(base.get('l1'), '8.4f')} {_fmt(base.get('psnr'), '6.2f')} {_fmt(base.get('ssim'), '6.4f')}"
        )
    lines += [f"note: {note}" for note in results["notes"]]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    parser.add_argument("--workdir", required=True, help="a train.py run folder")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--dataset-dir", default=None, help="the dataset's folder, if it moved since training")
    parser.add_argument(
        "--inception-weights",
        default=None,
        help=f"pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: ${WEIGHTS_ENV}; none: KID/FID skipped)",
    )
    parser.add_argument("--output", default=None, help="results JSON (default: WORKDIR/eval/step_<N>.json)")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="images per KID subset (capped at N)")
    parser.add_argument("--kid-subsets", type=int, default=100, help="number of random KID subsets")
    parser.add_argument("--batch-size", type=int, default=None, help="generator batch size (default: 8; 1 on CPU)")
    return parser


def _run(args) -> None:
    import ml_collections

    from ugatit_jax.data import get_source

    for flag, value, low in (
        ("--kid-subset-size", args.kid_subset_size, 2),
        ("--kid-subsets", args.kid_subsets, 1),
        ("--batch-size", 1 if args.batch_size is None else args.batch_size, 1),
    ):
        if value < low:
            raise UsageError(f"{flag} {value}: must be at least {low}")
    weights, option = args.inception_weights, "--inception-weights"
    if not weights and os.environ.get(WEIGHTS_ENV):
        weights, option = os.environ[WEIGHTS_ENV], WEIGHTS_ENV
    feature_fn = load_feature_fn(weights, option) if weights else None  # fail fast, before translating

    gens = load_run(args.workdir, args.step)
    config = ml_collections.ConfigDict(gens.config.to_dict())
    if args.dataset_dir:
        config.dataset_dir = args.dataset_dir
    results = evaluate(
        gens,
        get_source(config),
        feature_fn=feature_fn,
        kid_subset_size=args.kid_subset_size,
        kid_subsets=args.kid_subsets,
        batch_size=args.batch_size or default_batch_size(),
    )
    results["workdir"] = os.path.abspath(os.path.expanduser(args.workdir))
    results["inception_weights"] = os.path.abspath(os.path.expanduser(weights)) if weights else None
    output = args.output or os.path.join(results["workdir"], "eval", f"step_{gens.step}.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, output)
    print(format_table(results))
    print(f"results written to {output}")


def main(argv=None) -> int:
    return run_cli(PROG, _parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
