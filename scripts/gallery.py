"""The README's gallery: a model's translations of test images, both directions, one grid image per direction.

    python scripts/gallery.py --model emoji --output docs/gallery [--count 8] [--scale 2]

``--model`` is anything ``ugatit_jax.load`` reads (a shipped model's name, a run folder). The images are spread
evenly over the test split in its stored order, not picked by hand. Rows: input, translation, attention heat map;
pixels are enlarged ``--scale`` times without smoothing, so what the page shows is what the model made.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ugatit_jax import load  # noqa: E402
from ugatit_jax.cli import Parser, make_main  # noqa: E402
from ugatit_jax.data import get_source, test_transform  # noqa: E402
from ugatit_jax.data.transforms import to_uint8  # noqa: E402
from ugatit_jax.directions import DIRECTIONS  # noqa: E402
from ugatit_jax.evaluation.visualize import save_png  # noqa: E402
from ugatit_jax.nn.cam import colorize_heatmap  # noqa: E402
from ugatit_jax.training.samples import spread_indices  # noqa: E402


def test_images(split, count: int, size: int) -> np.ndarray:
    """``count`` images spread over ``split``, as the evaluator sees them: uint8 (count, size, size, 3)."""
    return np.stack([test_transform(split[i], size) for i in spread_indices(len(split), count)])


def picture(real, image, heatmap, scale: int) -> np.ndarray:
    """uint8 (3 * S * scale, N * S * scale, 3): the input (uint8), translation ([-1, 1]) and heat map rows, one
    column per image."""
    rows = [real, to_uint8(np.asarray(image)), colorize_heatmap(heatmap, real.shape[1:3])]
    tiles = np.stack(rows)  # (3, N, S, S, 3)
    t, n, h, w, c = tiles.shape
    grid = tiles.transpose(0, 2, 1, 3, 4).reshape(t * h, n * w, c)
    return grid.repeat(scale, axis=0).repeat(scale, axis=1)


PROG = "scripts/gallery.py"


def _parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji", help="a shipped model's name or a run folder")
    parser.add_argument("--output", default="docs/gallery", help="folder for <name>_A2B.png and <name>_B2A.png")
    parser.add_argument("--name", default="emoji", help="file name prefix")
    parser.add_argument("--count", type=int, default=8, help="test images per direction")
    parser.add_argument("--scale", type=int, default=2, help="pixel enlargement (nearest neighbour)")
    return parser


def _run(args) -> None:
    model = load(args.model)
    source = get_source(model.config)
    splits = dict(zip(DIRECTIONS, (source.test_a, source.test_b)))
    for direction in DIRECTIONS:
        real = test_images(splits[direction], args.count, model.img_size)
        image, _, heatmap = model.translate(real, direction)
        path = os.path.join(args.output, f"{args.name}_{direction}.png")
        save_png(picture(real, image, heatmap, args.scale), path)
        print(f"wrote {path}: {model.name}, {len(real)} test images, {direction}")


main = make_main(PROG, _parser, _run)


if __name__ == "__main__":
    sys.exit(main())
