"""python -m ugatit_jax.export --format onnx: the ONNX file, run by onnxruntime, equals ``translate`` at any batch.

Needs the ``onnx`` extra (jax2onnx, onnx, onnxruntime); without it the file is skipped, and test_export.py checks
the command's error line instead.
"""

import numpy as np
import pytest
from tiny import random_model, save_tiny_run, tiny_config

pytest.importorskip("jax2onnx", reason="needs the onnx extra: pip install '.[onnx]'")
onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install '.[onnx]'")

from ugatit_jax import load  # noqa: E402
from ugatit_jax.export import main  # noqa: E402
from ugatit_jax.interop.onnx_export import onnx_translation, save_onnx  # noqa: E402
from ugatit_jax.loading import Translator  # noqa: E402
from ugatit_jax.models.family import get_family  # noqa: E402

TOLERANCE = 1e-4  # max abs difference from ``translate``, per output


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _max_differences(session, model, direction, batch, seed=0) -> dict:
    """Max abs difference of each output between onnxruntime and ``translate``, with the largest |value| of each
    (the scale its float32 rounding works at)."""
    rng = np.random.default_rng(seed + batch)
    x = rng.uniform(-1, 1, (batch, model.img_size, model.img_size, 3)).astype(np.float32)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))
    expected = dict(zip(("image", "cam_logit", "heatmap"), (np.asarray(y) for y in model.translate(x, direction))))
    assert set(got) == set(expected)
    out = {}
    for name, want in expected.items():
        assert got[name].shape == want.shape and got[name].dtype == np.float32, name
        out[name] = (float(np.abs(got[name] - want).max()), float(np.abs(want).max()))
    return out


def _check_signature(session, size):
    (x,) = session.get_inputs()
    assert (x.name, x.type) == ("input", "tensor(float)")
    assert isinstance(x.shape[0], str) and x.shape[1:] == [size, size, 3]  # a named, dynamic batch dimension
    assert [o.name for o in session.get_outputs()] == ["image", "cam_logit", "heatmap"]


def test_ugatit_run_exports_to_onnx_equal_to_translate(tmp_path, capsys):
    """The acceptance check: a run's A->B translator through the command, at batch 3 and 1."""
    workdir = tmp_path / "run"
    config, _ = save_tiny_run(str(workdir), 2)
    out = tmp_path / "onnx" / "a2b.onnx"
    argv = ["--workdir", str(workdir), "--direction", "A2B", "--output", str(out), "--format", "onnx"]
    assert main(argv) == 0
    assert f"wrote {out}: " in capsys.readouterr().out and out.is_file()
    onnx.checker.check_model(str(out))
    session = _session(out)
    _check_signature(session, config.img_size)
    model = load(str(workdir))
    for batch in (3, 1):
        for name, (difference, _) in _max_differences(session, model, "A2B", batch).items():
            assert difference <= TOLERANCE, (batch, name, difference)


def test_nice_exports_to_onnx_equal_to_translate(tmp_path):
    """NICE-GAN's translation (the source discriminator's encoder, then the target generator), B->A, at batch 3 and
    2; and a model over the single-file limit keeps its weights in a sidecar that onnxruntime finds.

    Its random weights and spectral-norm vectors make CAM logits and heat maps in the hundreds, where float32
    rounding alone is about 1e-6 of the value: those outputs are held to 1e-4 of their largest value; the image (in
    [-1, 1]) to 1e-4.
    """
    config = tiny_config(model="nice", img_size=48, n_dis=6, n_res=1)  # n_dis 6, the minimum, needs 48 px
    model = Translator.from_model(random_model(config), get_family(config), config.img_size)
    proto = onnx_translation(model, "B2A")
    for limit, files in ((2**31, ["b2a.onnx"]), (0, ["b2a.onnx", "b2a.onnx.data"])):
        folder = tmp_path / str(limit)
        written = save_onnx(proto, str(folder / "b2a.onnx"), single_file_limit=limit)
        assert written == [str(folder / f) for f in files] and sorted(p.name for p in folder.iterdir()) == files
        session = _session(folder / "b2a.onnx")
        _check_signature(session, config.img_size)
        for batch in (3, 2):
            for name, (difference, scale) in _max_differences(session, model, "B2A", batch).items():
                assert difference <= TOLERANCE * (1 if name == "image" else max(1.0, scale)), (batch, name)
