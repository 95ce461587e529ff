"""Shipped models: the folder format round trip, the name lookup and the commands' --pretrained flag."""

import json
import os

import jax
import numpy as np
import pytest
from tiny import save_tiny_run

from ugatit_jax import load, loading, translate
from ugatit_jax.config import ConfigError


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny run saved as a shipped-model folder ``tiny`` under a folder standing in for the package's."""
    root = tmp_path_factory.mktemp("weights")
    run = tmp_path_factory.mktemp("run")
    save_tiny_run(str(run))
    model = loading.load_run(str(run))
    path = loading.save_pretrained(model, str(root / "tiny"))
    return root, model, path


@pytest.fixture
def package_weights(shipped, monkeypatch):
    root, _, _ = shipped
    monkeypatch.setattr(loading, "PRETRAINED_DIR", str(root))
    return shipped


def test_round_trip_is_exact(package_weights):
    _, model, path = package_weights
    with open(path, "rb") as f:
        assert not f.read(2).startswith(b"\x80"), "msgpack, not a pickle"
    assert loading.pretrained_names() == ["tiny"]
    shipped = load("tiny")
    assert shipped.name == "pretrained tiny" and shipped.img_size == model.img_size
    for a, b in zip(jax.tree.leaves(shipped.state), jax.tree.leaves(model.state)):
        np.testing.assert_array_equal(a, b)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    for got, want in zip(shipped.translate(images, "A2B"), model.translate(images, "A2B")):
        np.testing.assert_array_equal(got, want)


def test_unknown_name_and_a_damaged_file(package_weights, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="no such shipped model; available: tiny"):
        loading.load_pretrained("nope")
    with pytest.raises(ConfigError, match="not found"):  # neither a path nor a shipped name
        load("nope.pt")
    root, _, path = package_weights
    broken = tmp_path / "broken"
    broken.mkdir()
    with open(os.path.join(os.path.dirname(path), loading.CONFIG_FILE)) as f:
        saved = json.load(f)
    saved["config"]["ch"] = 8  # the weights no longer fit the config
    (broken / loading.CONFIG_FILE).write_text(json.dumps(saved))
    (broken / loading.WEIGHTS_FILE).write_bytes(open(path, "rb").read())
    monkeypatch.setattr(loading, "PRETRAINED_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="does not fit its config"):
        loading.load_pretrained("broken")


def test_translate_flag(package_weights, tmp_path, capsys):
    """``translate --pretrained NAME``: images out; the run-only and checkpoint-only flags refused in one line."""
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(src / "x.png")
    out = tmp_path / "out"
    base = ["--pretrained", "tiny", "--direction", "A2B", "--input", str(src), "--output", str(out)]
    assert translate.main(base) == 0
    assert (out / "x.png").is_file()
    for extra, expect in ((["--step", "3"], "--step does not apply"), (["--ch", "8"], "--ch does not apply")):
        argv = ["--pretrained", "tiny", "--direction", "A2B", "--input", str(src), "--output", str(out), *extra]
        assert translate.main(argv) == 2
        assert expect in capsys.readouterr().err
    argv = ["--pretrained", "nope", "--direction", "A2B", "--input", str(src), "--output", str(out)]
    assert translate.main(argv) == 2
    assert "no such shipped model" in capsys.readouterr().err


def test_export_and_evaluate_flags(package_weights, tmp_path, capsys):
    """``export --pretrained``: the shipped model's translation as StableHLO, equal to ``translate``;
    ``evaluate --pretrained`` refuses --step in one line."""
    from ugatit_jax import evaluate, export

    out = tmp_path / "b2a.bin"
    assert export.main(["--pretrained", "tiny", "--direction", "B2A", "--output", str(out)]) == 0
    with open(out, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    x = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(exported.call(x)[0], load("tiny").translate(x, "B2A")[0], atol=1e-5)
    assert evaluate.main(["--pretrained", "tiny", "--step", "3"]) == 2
    assert "--step applies to --workdir only" in capsys.readouterr().err
