"""One translation direction as an ONNX model (converted by jax2onnx), for onnxruntime or any other ONNX runtime.

The graph is ``Translator.translate`` for one direction with the weights as initializers and a dynamic batch
dimension ``B``: input ``input`` float32 (B, S, S, 3) in [-1, 1]; outputs ``image`` (B, S, S, 3) in [-1, 1],
``cam_logit`` and ``heatmap``, as ``translate`` returns them. Running it::

    import numpy as np, onnxruntime
    session = onnxruntime.InferenceSession("a2b.onnx", providers=["CPUExecutionProvider"])
    image, cam_logit, heatmap = session.run(None, {"input": np.zeros((3, 64, 64, 3), np.float32)})

This module needs the ``onnx`` extra (jax2onnx, onnx, onnxruntime); ``python -m ugatit_jax.export --format onnx``
imports it only then.
"""

from __future__ import annotations

import contextlib
import logging
import os

import jax
import jax2onnx
import onnx

from ugatit_jax.loading import Translator, check_direction

INPUT_NAMES = ("input",)
OUTPUT_NAMES = ("image", "cam_logit", "heatmap")
# protobuf cannot serialize a message of 2 GiB or more: a larger model (e.g. a full U-GAT-IT at 512 px; the full
# paper model at 256 px is about 1.1 GB) keeps its weights in a ``<file>.data`` sidecar next to the graph.
SINGLE_FILE_LIMIT = 2**31 - 2**26


@contextlib.contextmanager
def _quiet_value_info():
    """onnx_ir logs one warning per intermediate value whose element type jax2onnx left unset ("The value type for
    shape [4] is not known ... Skipping serialization"): that value's optional shape annotation is left out of the
    file, which changes nothing a runtime computes, and dozens of such lines would bury the export's own message."""
    logger = logging.getLogger("onnx_ir.serde")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def onnx_translation(model: Translator, direction: str) -> onnx.ModelProto:
    """The ONNX model of ``model.translate(x, direction)`` for float32 input (B, S, S, 3), B dynamic."""
    check_direction(direction)
    state, fn, size = model.state, model.translate_fn, model.img_size
    # Traced with jit disabled, so the graph holds no ``jit`` calls (``translate_fn``'s own, ``jax.nn.relu``'s):
    # jax2onnx 0.17.1 lowers a ``jit`` call through ``jax._src.core.ClosedJaxpr``, which jax 0.11 merged into
    # ``Jaxpr``, so every export with jax >= 0.11 failed. It inlines jit bodies anyway: the nodes are the same.
    with _quiet_value_info(), jax.disable_jit():
        return jax2onnx.to_onnx(
            lambda x: fn(state, x, direction),  # closes over the weights: they become initializers
            [("B", size, size, 3)],
            model_name=f"{model.family.name}_{direction}",
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
        )


def save_onnx(proto: onnx.ModelProto, path: str, single_file_limit: int = SINGLE_FILE_LIMIT) -> list[str]:
    """Writes ``proto`` to ``path``, its weights to ``<path>.data`` when the model is ``single_file_limit`` bytes
    or larger (``proto``'s weights then refer to that file); returns the files written."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if proto.ByteSize() < single_file_limit:
        onnx.save_model(proto, path)
        return [path]
    data = os.path.basename(path) + ".data"
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    return [path, os.path.join(os.path.dirname(path), data)]


def opset(proto: onnx.ModelProto) -> int:
    """The model's version of the default ONNX operator set."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
