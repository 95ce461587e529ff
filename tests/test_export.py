"""python -m ugatit_jax.export: serialized StableHLO that jax alone reloads and that equals ``translate``."""

import subprocess
import sys

import numpy as np
from tiny import save_tiny_run

import ugatit_jax.interop
from ugatit_jax import load
from ugatit_jax.export import main

RELOAD = """
import sys
import numpy as np, jax
assert "ugatit_jax" not in sys.modules
with open(sys.argv[1], "rb") as f:
    fn = jax.export.deserialize(bytearray(f.read()))
x = np.load(sys.argv[2])
image, cam_logit, heatmap = fn.call(x)
np.save(sys.argv[3], np.asarray(image))
assert "ugatit_jax" not in sys.modules
"""


def test_export_round_trip_without_the_package(tmp_path, capsys):
    workdir = tmp_path / "run"
    config, _ = save_tiny_run(str(workdir), 2)
    out = tmp_path / "a2b.bin"
    assert main(["--workdir", str(workdir), "--direction", "A2B", "--output", str(out)]) == 0
    model = load(str(workdir))
    rng = np.random.default_rng(0)
    for batch in (1, 3):  # the batch dimension is symbolic
        x = rng.uniform(-1, 1, (batch, config.img_size, config.img_size, 3)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        script = tmp_path / "reload.py"
        script.write_text(RELOAD)
        subprocess.run(
            [sys.executable, str(script), str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
            check=True,
            cwd=tmp_path,
        )
        expected = np.asarray(model.translate(x, "A2B")[0])
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5)


def test_export_bad_input_is_one_line(tmp_path, capsys):
    assert main(["--workdir", str(tmp_path / "nope"), "--direction", "A2B", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --workdir=" in err


def test_onnx_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    """Without jax2onnx, --format onnx names the extra to install, before it reads the run."""
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # ``import jax2onnx`` then fails as if it were not installed
    monkeypatch.delitem(sys.modules, "ugatit_jax.interop.onnx_export", raising=False)
    monkeypatch.delattr(ugatit_jax.interop, "onnx_export", raising=False)
    argv = ["--workdir", str(tmp_path / "nope"), "--direction", "A2B", "--output", str(tmp_path / "x"), "--format"]
    assert main([*argv, "onnx"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "python -m ugatit_jax.export: error: --format onnx needs the onnx extra: pip install 'ugatit-jax[onnx]'\n"
    )
