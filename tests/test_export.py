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


def test_official_format_with_and_without_the_average(tmp_path, capsys):
    """--format pt writes every network in the official format; an EMA run's generators hold the average, or the
    trained weights with --no-ema."""
    import jax
    import torch  # noqa: F401 - the torch extra is part of the test install

    from ugatit_jax.interop import torch_import
    from ugatit_jax.loading import restore_run

    workdir = tmp_path / "run"
    save_tiny_run(str(workdir), 2, ema_decay=0.9)
    for flags, ema in (([], True), (["--no-ema"], False)):
        out = tmp_path / f"ema_{ema}.pt"
        assert main(["--workdir", str(workdir), "--output", str(out), "--format", "pt", *flags]) == 0
        printed = capsys.readouterr().out
        assert ("averaged" in printed) == ema, printed
        dicts = torch_import.read_official_checkpoint(out)
        assert set(dicts) == {"genA2B", "genB2A", "disGA", "disGB", "disLA", "disLB"}
        _, model, _ = restore_run(str(workdir), ema=ema)
        want = torch_import.official_state_dicts(model)
        for name, entries in want.items():
            for key, value in entries.items():
                np.testing.assert_array_equal(dicts[name][key], value, err_msg=f"{name}.{key}")
    _, averaged, _ = restore_run(str(workdir))
    _, trained, _ = restore_run(str(workdir), ema=False)
    differ = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(averaged.genA2B), jax.tree.leaves(trained.genA2B))
    ]
    assert max(differ) > 0, "the tiny run's average should differ from its trained weights"


def test_flags_that_do_not_fit(tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    cases = [
        (["--output", out, "--direction", "A2B"], "give exactly one of --workdir RUN and --pretrained NAME"),
        (["--pretrained", "emoji", "--output", out, "--format", "pt"], "--format pt needs --workdir"),
        (["--workdir", "w", "--output", out, "--format", "pt", "--direction", "A2B"], "--direction does not apply"),
        (["--workdir", "w", "--output", out], "--direction is required for --format stablehlo"),
        (["--pretrained", "emoji", "--output", out, "--direction", "A2B", "--step", "2"], "--step applies to"),
    ]
    for argv, expect in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expect in err, (argv, err)
