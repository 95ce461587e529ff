"""Does a model's speckle cost it content? Its translations of the test pairs, scored as they are and after a median
filter that removes isolated specks.

    python scripts/speckle_vs_content.py --model emoji [--size 3] [--dataset-dir DIR]

Per direction: ``hf_ratio`` against the real test targets and top-1 / top-5 content retrieval, as the evaluator
computes them (``evaluation.metrics``, ``evaluation.retrieval``), of the translations, of the same translations
through PIL's ``MedianFilter(size)`` (per channel) and of the untranslated inputs; beside them ``own_corr``, the
mean correlation of each image's retrieval thumbnail with its own target's (1 = the same colour layout).
Retrieval ranks, so an image can be nearer its own target than the input is and still rank lower, if it is
nearer all the other targets too. A median filter replaces each pixel by the median of its
neighbourhood: it removes specks smaller than half the window and keeps edges and colour masses. So if filtering
brings ``hf_ratio`` near 1 and leaves retrieval where it was, the speckle is not what keeps retrieval low; the
colour layout the generator draws is. The filter is a probe, never part of a translation.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ugatit_jax import load  # noqa: E402
from ugatit_jax.cli import Parser, UsageError, make_main  # noqa: E402
from ugatit_jax.directions import DIRECTIONS  # noqa: E402


def median_filtered(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, 3): each image through ``MedianFilter(size)``, each channel on its own."""
    window = ImageFilter.MedianFilter(size)
    return np.stack([np.asarray(Image.fromarray(x).filter(window)) for x in images])


def _scores(fake: np.ndarray, targets: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    from ugatit_jax.evaluation import metrics, retrieval

    ours, theirs = retrieval.content_features(fake), retrieval.content_features(targets)  # (N, 192), standardised
    hits = retrieval.top_k(ours, theirs)
    return {
        "hf_ratio": metrics.hf_ratio(fake, reference),
        **{f"top{k}": v for k, v in hits.items()},
        "own_corr": float((ours * theirs).mean(axis=1).mean()),  # unit variance per row: the mean product is r
    }


def compare(model, source, size: int = 3, batch_size: int = 8) -> dict[str, dict[str, dict[str, float]]]:
    """{direction: {"as translated" / "median <size>" / "input": scores}} on ``source``'s test pairs."""
    from ugatit_jax.evaluation.evaluator import load_test_set
    from ugatit_jax.inference import padded_batches
    from ugatit_jax.pixels import to_uint8

    test = load_test_set(source, model.img_size)
    if not len(test.pairs):
        raise UsageError(f"{source.name} has no test pairs (a known true translation per test image) to retrieve")
    out = {}
    for direction, (src, tgt, col_src, col_tgt) in zip(
        DIRECTIONS, (("testA", "testB", 0, 1), ("testB", "testA", 1, 0)), strict=True
    ):
        inputs, targets = test.images[src][test.pairs[:, col_src]], test.images[tgt][test.pairs[:, col_tgt]]
        # One batch shape, so one compiled translation: the last batch is padded (inference.padded_batches).
        batches = padded_batches(inputs, batch_size)
        fake = np.concatenate([to_uint8(np.asarray(model.translate(x, direction)[0]))[:n] for x, n in batches])
        out[direction] = {
            "as translated": _scores(fake, targets, test.images[tgt]),
            f"median {size}": _scores(median_filtered(fake, size), targets, test.images[tgt]),
            "input": _scores(inputs, targets, test.images[tgt]),
        }
    return out


PROG = "scripts/speckle_vs_content.py"


def _parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji", help="a shipped model's name or a run folder")
    parser.add_argument("--size", type=int, default=3, help="the median filter's window, odd (3 = 3x3)")
    parser.add_argument("--dataset-dir", default=None, help="the dataset's folder, if it moved since training")
    return parser


def _run(args) -> None:
    import ml_collections

    from ugatit_jax.data import get_source

    if args.size < 3 or args.size % 2 == 0:
        raise UsageError(f"--size {args.size}: must be odd and at least 3")
    model = load(args.model)
    if model.config is None:
        raise UsageError(
            f"--model {args.model}: an official checkpoint names no dataset; give a run or a shipped model"
        )
    config = ml_collections.ConfigDict(model.config.to_dict())
    if args.dataset_dir:
        config.dataset_dir = args.dataset_dir
    for direction, rows in compare(model, get_source(config), args.size).items():
        for name, s in rows.items():
            scores = "  ".join(f"{key} {s[key]:.3f}" for key in ("hf_ratio", "top1", "top5", "own_corr"))
            print(f"{model.name} {direction} {name:>14}: {scores}")


main = make_main(PROG, _parser, _run)


if __name__ == "__main__":
    sys.exit(main())
