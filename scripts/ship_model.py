"""Ship a trained run as a package model (``load(NAME)``): its translating (EMA) weights, config and scores.

    python scripts/ship_model.py --workdir runs/emoji_shipped --name emoji [--output ugatit_jax/weights]

Writes ``<output>/<name>/weights.msgpack`` and ``config.json`` (``loading.save_pretrained``) and ``scores.json``:
``full``, the evaluator's record on the whole test split (the recipe's domain classifier: the numbers of the model
card), and ``subset``, the scores ``tests/test_shipped_model.py`` recomputes on the test emoji of a small build
(``SUBSET_LIMIT``; the split is a hash of the code point, so they are test emoji of the full set too), which need
no domain classifier. The model card (``MODEL_CARD.md``) is written by hand from these numbers.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ugatit_jax.cli import Parser, make_main  # noqa: E402
from ugatit_jax.loading import PRETRAINED_DIR, load_pretrained, load_run, save_pretrained  # noqa: E402

SUBSET_LIMIT = 400  # emoji of the small build the test evaluates on: seconds to build, about 40 test pairs
SUBSET_KEYS = ("hf_ratio", "top1", "top5", "l1", "psnr", "ssim")  # what needs no domain classifier


def subset_source(dataset_dir: str):
    """The emoji build limited to ``SUBSET_LIMIT`` code points, built in (or read from) ``dataset_dir``."""
    import ml_collections

    from ugatit_jax.data import get_source

    return get_source(
        ml_collections.ConfigDict(
            {"dataset": "emoji", "dataset_dir": dataset_dir, "emoji_limit": SUBSET_LIMIT, "tfds_name": ""}
        )
    )


def subset_scores(model, dataset_dir: str) -> dict:
    """The classifier-free scores of ``model`` on the test pairs of the emoji build limited to ``SUBSET_LIMIT``."""
    from ugatit_jax.evaluate import evaluate

    classifiers = os.path.join(dataset_dir, "classifiers")
    record = evaluate(model, subset_source(dataset_dir), classifier_dir=classifiers, classifier_steps=10)
    keep = {k: v for k, v in record["scores"].items() if k.rsplit("/", 1)[-1].removesuffix("_input") in SUBSET_KEYS}
    return {"emoji_limit": SUBSET_LIMIT, "pairs": record["pairs"], "scores": keep}


PROG = "scripts/ship_model.py"


def _parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="the train.py run to ship (latest checkpoint)")
    parser.add_argument("--name", required=True, help="the name load() will take, e.g. emoji")
    parser.add_argument("--output", default=PRETRAINED_DIR, help="the folder of shipped models")
    return parser


def _run(args) -> None:
    from ugatit_jax.data import get_source
    from ugatit_jax.evaluate import evaluate

    run = load_run(args.workdir)
    folder = os.path.join(args.output, args.name)
    path = save_pretrained(run, folder)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.2f} MB): {run.name}")
    import ugatit_jax.loading as loading

    loading.PRETRAINED_DIR = args.output  # read back what was written, as load() will
    model = load_pretrained(args.name)
    full = evaluate(model, get_source(run.config), classifier_steps=run.config.get("classifier_steps"))
    with tempfile.TemporaryDirectory() as tmp:
        subset = subset_scores(model, tmp)
    with open(os.path.join(folder, "scores.json"), "w", encoding="utf-8") as f:
        json.dump({"full": full, "subset": subset}, f, indent=1, sort_keys=True)
    from ugatit_jax.evaluation.evaluator import format_table

    print(format_table(full, f"{model.name}: {full['dataset']} test split"))
    print(json.dumps(subset, indent=1))


main = make_main(PROG, _parser, _run)


if __name__ == "__main__":
    sys.exit(main())
