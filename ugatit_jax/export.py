"""Export one direction of a trained model for serving without this package: serialized StableHLO or ONNX.

    python -m ugatit_jax.export --workdir runs/emoji --direction A2B --output a2b.bin [--step N]
    python -m ugatit_jax.export --workdir runs/emoji --direction A2B --output a2b.onnx --format onnx
    python -m ugatit_jax.export --pretrained emoji --direction B2A --output b2a.bin
    python -m ugatit_jax.export --workdir runs/emoji --output emoji_params.pt --format pt [--no-ema]

Either file holds the translation with its weights as constants and a symbolic (dynamic) batch dimension: input
float32 (B, S, S, 3) in [-1, 1], outputs ``(image (B, S, S, 3) in [-1, 1], cam_logit, heatmap)``. The default,
``--format stablehlo`` (``jax.export``), loads with jax alone::

    import jax, numpy as np
    with open("a2b.bin", "rb") as f:
        translate = jax.export.deserialize(bytearray(f.read()))
    image, cam_logit, heatmap = translate.call(np.zeros((3, 64, 64, 3), np.float32))

``--format pt`` writes the whole run (every network, both directions) in the official release's checkpoint
format (needs the ``torch`` extra); a run trained with ``ema_decay`` > 0 writes its averaged translating
networks unless ``--no-ema``. ``--format onnx`` (jax2onnx; needs the ``onnx`` extra) names the input
``input`` and the outputs ``image``, ``cam_logit``, ``heatmap``::

    import numpy as np, onnxruntime
    session = onnxruntime.InferenceSession("a2b.onnx", providers=["CPUExecutionProvider"])
    image, cam_logit, heatmap = session.run(None, {"input": np.zeros((3, 64, 64, 3), np.float32)})
"""

from __future__ import annotations

import argparse
import os
import sys

from ugatit_jax.cli import (
    Parser,
    UsageError,
    add_run_or_pretrained,
    check_run_or_pretrained,
    check_writable,
    make_main,
)
from ugatit_jax.directions import DIRECTIONS

PROG = "python -m ugatit_jax.export"
FORMATS = ("stablehlo", "onnx", "pt")
SUFFIX = {"stablehlo": "bin", "onnx": "onnx", "pt": "pt"}


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
    add_run_or_pretrained(parser)
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="stablehlo",
        help="stablehlo (jax.export, the default), onnx, or pt (the official checkpoint format, whole run)",
    )
    parser.add_argument("--direction", choices=DIRECTIONS, help="the direction to export (stablehlo, onnx)")
    parser.add_argument("--output", required=True, help="file to write")
    return parser


def _onnx_module():
    """``ugatit_jax.interop.onnx_export``, or a usage error naming the extra when jax2onnx or onnx is missing."""
    try:
        from ugatit_jax.interop import onnx_export
    except ModuleNotFoundError as error:
        if error.name not in ("jax2onnx", "onnx"):
            raise
        raise UsageError("--format onnx needs the onnx extra: pip install 'ugatit-jax[onnx]'") from None
    return onnx_export


def _check(args) -> None:
    """Every flag that does not fit the others, before anything is loaded."""
    check_run_or_pretrained(args)
    if args.format == "pt":
        if args.pretrained:
            raise UsageError(
                "--format pt needs --workdir: the official format holds every network, a shipped model only "
                "the translating ones"
            )
        if args.direction:
            raise UsageError("--direction does not apply to --format pt, which writes both directions")
    elif not args.direction:
        raise UsageError(f"--direction is required for --format {args.format} (A2B or B2A)")
    if os.path.isdir(args.output):
        example = f"{(args.direction or 'emoji').lower()}.{SUFFIX[args.format]}"
        raise UsageError(f"--output {args.output}: is a folder; give a file name, e.g. {example}")
    check_writable(args.output, name=f"--output {args.output}")


def _export_official(args) -> None:
    from ugatit_jax.interop.state_dict import import_torch
    from ugatit_jax.interop.torch_import import save_official_checkpoint
    from ugatit_jax.loading import restore_run

    try:
        import_torch()  # before the run is read: fail fast
    except ImportError as error:
        raise UsageError(f"--format pt: {error}") from None
    config, model, step = restore_run(args.workdir, args.step, ema=not args.no_ema)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_official_checkpoint(model, args.output)
    averaged = " (averaged translating networks)" if config.get("ema_decay", 0.0) > 0 and not args.no_ema else ""
    print(f"wrote {args.output}: step {step} of {args.workdir}{averaged}, the official {config.model} format")


def _run(args) -> None:
    from ugatit_jax.loading import load_pretrained, load_run

    _check(args)
    if args.format == "pt":
        return _export_official(args)
    onnx_export = _onnx_module() if args.format == "onnx" else None  # before the model loads: fail fast
    if args.pretrained:
        model = load_pretrained(args.pretrained)
    else:
        model = load_run(args.workdir, args.step, ema=not args.no_ema)
    shape = f"float32 (B, {model.img_size}, {model.img_size}, 3) in [-1, 1]"
    if onnx_export is not None:
        proto = onnx_export.onnx_translation(model, args.direction)
        written = onnx_export.save_onnx(proto, args.output)
        print(
            f"wrote {' and '.join(written)}: {model.name} {args.direction}, ONNX opset {onnx_export.opset(proto)}, "
            f"input 'input' {shape}, dynamic batch; outputs image, cam_logit, heatmap"
        )
        return
    exported = export_translation(model, args.direction)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        f.write(exported.serialize())
    print(f"wrote {args.output}: {model.name} {args.direction}, input {shape}, symbolic batch")


main = make_main(PROG, _parser, _run)


if __name__ == "__main__":
    sys.exit(main())
