"""Export one direction of a trained model as serialized StableHLO (``jax.export``), for serving without this package.

    python -m ugatit_jax.export --workdir runs/emoji --direction A2B --output a2b.bin [--step N]

The file holds the translation with its weights as constants and a symbolic batch dimension: input float32
(B, S, S, 3) in [-1, 1], outputs ``(image (B, S, S, 3) in [-1, 1], cam_logit, heatmap)``. Loading it needs jax
alone::

    import jax, numpy as np
    with open("a2b.bin", "rb") as f:
        translate = jax.export.deserialize(bytearray(f.read()))
    image, cam_logit, heatmap = translate.call(np.zeros((3, 64, 64, 3), np.float32))
"""

from __future__ import annotations

import argparse
import os
import sys

from ugatit_jax.cli import Parser, UsageError, make_main
from ugatit_jax.directions import DIRECTIONS

PROG = "python -m ugatit_jax.export"


def export_translation(model, direction: str):
    """``jax.export.Exported`` of ``model.translate(x, direction)`` with a symbolic batch and the weights inlined
    (an ``nnx.State`` is not serializable as an argument, so the function closes over it)."""
    import jax
    import jax.numpy as jnp
    from jax import export

    from ugatit_jax.loading import check_direction

    check_direction(direction)
    state, fn, size = model.state, model.translate_fn, model.img_size
    (batch,) = export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return export.export(jax.jit(lambda x: fn(state, x, direction)))(spec)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a train.py run folder")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--direction", required=True, choices=DIRECTIONS)
    parser.add_argument("--output", required=True, help="file to write the serialized function to")
    return parser


def _run(args) -> None:
    from ugatit_jax.loading import load_run

    if os.path.isdir(args.output):
        raise UsageError(f"--output {args.output}: is a folder; give a file name, e.g. {args.direction.lower()}.bin")
    model = load_run(args.workdir, args.step)
    exported = export_translation(model, args.direction)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        f.write(exported.serialize())
    print(
        f"wrote {args.output}: {model.name} {args.direction}, input float32 (B, {model.img_size}, "
        f"{model.img_size}, 3) in [-1, 1], symbolic batch"
    )


main = make_main(PROG, _parser, _run)


if __name__ == "__main__":
    sys.exit(main())
