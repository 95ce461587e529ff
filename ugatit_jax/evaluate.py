"""Score a training run on its test split with the evaluator training uses: same numbers, same key names.

::

    python -m ugatit_jax.evaluate --workdir runs/emoji [--step N] \\   (or --pretrained emoji)
        [--inception-weights pt_inception-2015-12-05-6726825d.pth] [--output results.json] \\
        [--kid-subset-size 1000 --kid-subsets 100] [--dataset-dir DIR] [--batch-size N]

Per direction, beside the untranslated input's score: the share of translations a domain classifier (trained once
per dataset on the training splits, cached) takes for the target domain, a KID in that classifier's features, the
high-frequency energy relative to real targets (1.0 as busy; above: speckled, below: blurred), and on datasets with
known test pairs (emoji) content retrieval top-1/top-5 and L1/PSNR/SSIM against the true target (see
``ugatit_jax/evaluation/evaluator.py``). KID x 100 / FID on Inception features are added when you pass
pytorch-fid's weights file (or set UGATIT_INCEPTION_WEIGHTS); it is never downloaded. Results go to a JSON file
(default ``RUN/eval/step_<N>.json``, where training writes its own evaluations) and a table.
"""

from __future__ import annotations

import argparse
import os
import sys

from ugatit_jax import run_dir
from ugatit_jax.cli import UsageError, check_run_or_pretrained, check_writable, doc_parser, make_main
from ugatit_jax.inference import default_batch_size

PROG = "python -m ugatit_jax.evaluate"
WEIGHTS_ENV = "UGATIT_INCEPTION_WEIGHTS"


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
    except ValueError as error:  # not a torch file, or not the Inception state dict; the error names the file
        raise UsageError(f"{option}: {error}") from error
    return make_feature_fn(model)


def _parser() -> argparse.ArgumentParser:
    parser = doc_parser(PROG, __doc__)
    parser.add_argument("--workdir", help="a train.py run folder")
    parser.add_argument("--pretrained", metavar="NAME", help="a model shipped in the package (e.g. emoji) instead")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument(
        "--no-ema", action="store_true", help="a run trained with ema_decay: its trained weights, not the average"
    )
    parser.add_argument("--dataset-dir", default=None, help="the dataset's folder, if it moved since training")
    parser.add_argument(
        "--inception-weights",
        default=None,
        help=f"pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: ${WEIGHTS_ENV}; none: KID/FID skipped)",
    )
    parser.add_argument(
        "--output", default=None, help="results JSON (default: WORKDIR/eval/step_<N>.json; --pretrained: none)"
    )
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="images per KID subset (capped at N)")
    parser.add_argument("--kid-subsets", type=int, default=100, help="number of random KID subsets")
    parser.add_argument("--batch-size", type=int, default=None, help="generator batch size (default: 8; 1 on CPU)")
    return parser


def _run(args) -> None:
    import ml_collections

    from ugatit_jax.data import get_source
    from ugatit_jax.evaluation.evaluator import format_table, write_record

    check_run_or_pretrained(args)
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

    from ugatit_jax.loading import load_pretrained, load_run

    model = (
        load_pretrained(args.pretrained) if args.pretrained else load_run(args.workdir, args.step, ema=not args.no_ema)
    )
    output = args.output
    if output is None and args.workdir:
        output = run_dir.eval_file(args.workdir, model.step)
        check_writable(output, name=f"{output} (the default --output)")
    elif output:
        check_writable(output, name=f"--output {output}")
    config = ml_collections.ConfigDict(model.config.to_dict())
    if args.dataset_dir:
        config.dataset_dir = args.dataset_dir
    record = evaluate(
        model,
        get_source(config),
        inception_fn=feature_fn,
        kid_subset_size=args.kid_subset_size,
        kid_subsets=args.kid_subsets,
        batch_size=args.batch_size or default_batch_size(),
        classifier_steps=config.get("classifier_steps"),  # the run's (runs saved before the key: the recipe's)
    )
    if feature_fn is None:
        record["notes"].append(missing_weights_note())
    record["workdir"] = os.path.abspath(os.path.expanduser(args.workdir)) if args.workdir else None
    record["inception_weights"] = os.path.abspath(os.path.expanduser(weights)) if weights else None
    if output:
        write_record(record, output)
    print(format_table(record, f"{model.name}: {record['dataset']} test split at {record['img_size']} px"))
    if output:
        print(f"results written to {output}")


def evaluate(model, source, **kwargs) -> dict:
    """The evaluator's record for a ``loading.Translator`` (a run's checkpoint or an official .pt); ``kwargs`` go
    to ``Evaluator``. Adds the model's name and step, as training's records have them."""
    from ugatit_jax.evaluation.evaluator import Evaluator, make_translators

    translators = make_translators(model.family, model.graphdefs)(model.state)
    record = Evaluator(source, model.img_size, **kwargs)(translators)
    return {"model": model.name, "step": model.step, **record}


main = make_main(PROG, _parser, _run)


if __name__ == "__main__":
    sys.exit(main())
