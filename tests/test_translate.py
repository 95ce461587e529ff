"""``python -m ugatit_jax.translate``: folders with bad files, official .pt checkpoints, test-split strips, errors.

The run is a real run folder (the trainer's Checkpointer, config and state layout) holding a tiny randomly
initialised model, made without training: what is tested here is everything after the checkpoint, and a train
step would only add half a minute of compilation.
"""

import html
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from tiny import save_tiny_run

from ugatit_jax import loading, translate
from ugatit_jax.data.images import read_rgb
from ugatit_jax.data.transforms import test_transform, to_uint8
from ugatit_jax.evaluation.visualize import strip
from ugatit_jax.models.family import get_family
from ugatit_jax.nn.cam import overlay_heatmap
from ugatit_jax.translate import main

STEP = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config, model = save_tiny_run(workdir, STEP)
    model.eval()
    gens = loading.Translator.from_model(
        model, get_family(config), config.img_size, config=config, step=STEP, name="tiny step 2"
    )
    return workdir, model, gens


def expected_translation(gens, direction: str, path: str):
    """What the CLI should write for one file: (translation, heat-map overlay), computed directly."""
    image = test_transform(read_rgb(path), gens.img_size)[None]
    fake, _, heat = gens.translate(image, direction)
    return to_uint8(np.asarray(fake))[0], overlay_heatmap(image, np.asarray(heat))[0]


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def write_inputs(root):
    rng = np.random.default_rng(1)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), np.uint8)).save(root / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 30), np.uint8)).save(root / "sub" / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 36, 4), np.uint8)).save(root / "sub" / "rgba.png")
    (root / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(root / ".hidden.png")


def test_translate_folder_and_file_keep_names_skip_corrupt_and_write_heatmaps(run, tmp_path, capsys):
    workdir, _, gens = run
    write_inputs(tmp_path / "in")
    single = tmp_path / "b.bmp"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), np.uint8)).save(single)
    out = tmp_path / "out"
    argv = ["--workdir", workdir, "--direction", "A2B", "--input", str(tmp_path / "in"), str(single)]
    # batch 3 for 4 readable images: one full batch and one padded one
    assert main([*argv, "--output", str(out), "--heatmap", "--batch-size", "3"]) == 0
    captured = capsys.readouterr()
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    stems = ["a", "b", "sub/gray", "sub/rgba"]
    assert written == sorted([f"{s}.png" for s in stems] + [f"{s}_heatmap.png" for s in stems])
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "corrupt.png" in warnings[0]
    assert "translated 4 image(s) A2B" in captured.out and "1 unreadable file(s) skipped" in captured.out
    assert float(re.search(r"([0-9.]+) images/s", captured.out).group(1)) > 0
    # The run's checkpoint is restored exactly: the CLI's output equals a direct translation with its weights.
    for stem, source in (("a", tmp_path / "in" / "a.jpg"), ("sub/gray", tmp_path / "in" / "sub" / "gray.jpg")):
        fake, overlay = expected_translation(gens, "A2B", str(source))
        np.testing.assert_array_equal(png(out / f"{stem}.png"), fake)
        # heat maps are min-max stretched, so batch-size-dependent float rounding may move a pixel by one level
        np.testing.assert_allclose(png(out / f"{stem}_heatmap.png"), overlay, atol=1)
    assert png(out / "sub" / "rgba.png").shape == (32, 32, 3)


def test_output_names_stay_unique_and_inputs_are_never_overwritten(tmp_path):
    folder = tmp_path / "in"
    (folder / "results").mkdir(parents=True)
    for name in ("x.jpg", "x.png", "y_heatmap.jpg", "y.jpg", "results/old.png"):
        Image.new("RGB", (4, 4)).save(folder / name)
    out = str(folder / "results")
    found = translate.collect_inputs([str(folder), str(folder / "x.jpg")], out)
    assert [rel for _, rel in found] == ["x.jpg", "x.png", "y.jpg", "y_heatmap.jpg"]  # no duplicate, no results/
    jobs, renamed = translate.plan_jobs(found, out, heatmap=True)
    assert [job.stem for job in jobs] == ["x", "x.png", "y", "y_heatmap.jpg"] and renamed == 2
    with pytest.raises(translate.UsageError, match=r"writing \S+ would overwrite the input file"):
        translate.plan_jobs(translate.collect_inputs([str(folder)], str(folder)), str(folder), heatmap=False)
    with pytest.raises(translate.UsageError, match="--input .*nope: no such file or folder"):
        translate.collect_inputs([str(tmp_path / "nope")], out)


def test_official_checkpoint_translates_like_the_same_weights_loaded_directly(run, tmp_path, capsys):
    from ugatit_jax.interop.torch_import import save_official_checkpoint

    _, model, gens = run
    pt = tmp_path / "tiny.pt"
    save_official_checkpoint(model, pt)
    image = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 40, 3), np.uint8)).save(image)
    shape = ["--img-size", "32", "--ch", "4", "--n-res", "1", "--light"]
    argv = ["--checkpoint", str(pt), *shape, "--direction", "B2A", "--input", str(image)]
    assert main([*argv, "--output", str(tmp_path / "out")]) == 0
    fake, _ = expected_translation(gens, "B2A", str(image))
    np.testing.assert_array_equal(png(tmp_path / "out" / "face.png"), fake)
    capsys.readouterr()
    # The paper's default shape (full, ch 64, 256 px) does not fit: the importer's error, one line, exit 2.
    argv = ["--checkpoint", str(pt), "--direction", "B2A", "--input", str(image)]
    assert main([*argv, "--output", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: --checkpoint=" in err and "missing key 'genA2B." in err
    assert "img_size 256, ch 64, n_res 4, full" in err
    # A file torch refuses is named as such, without the shape advice that cannot help.
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    argv = ["--checkpoint", str(tmp_path / "junk.pt"), "--direction", "B2A", "--input", str(image)]
    assert main([*argv, "--output", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable PyTorch file" in err and "shape flags" not in err


def test_test_split_writes_a_strip_per_image_and_an_index(run, monkeypatch, capsys):
    workdir, _, gens = run
    # already covered above; saves time
    monkeypatch.setattr(loading, "load_run", lambda workdir, step=None, ema=True: gens)
    assert main(["--workdir", workdir, "--test-split", "--batch-size", "4"]) == 0
    assert "A2B 2, B2A 2" in capsys.readouterr().out
    out = os.path.join(workdir, "test")
    strips = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert strips == ["A2B/0000.png", "A2B/0001.png", "B2A/0000.png", "B2A/0001.png", "index.html"]
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert re.findall(r'<img src="([^"]+)"', page) == strips[:4]
    assert page.index('id="A2B"') < page.index("A2B/0000.png") < page.index('id="B2A"') < page.index("B2A/0000.png")
    # Each strip is visualize.strip of that image alone (the official 7-tile column).
    from ugatit_jax.data import get_source

    source = get_source(gens.config)
    image = test_transform(source.test_b[1], 32)[None]
    outputs = gens.cycle(image, "B2A")
    expected = strip(jax.device_get(outputs))
    assert expected.shape == (7 * 32, 32, 3)
    np.testing.assert_allclose(png(os.path.join(out, "B2A", "0001.png")), expected, atol=1)  # batch 2 vs 1 rounding


def test_index_escapes_and_quotes_names(tmp_path):
    from ugatit_jax.evaluation import test_strips as report

    path = report.write_index(str(tmp_path), "t<1>", [("A2B", "A → B", [("A2B/a b&<c>.png", "a b&<c>")])])
    page = open(path, encoding="utf-8").read()
    assert 'src="A2B/a%20b%26%3Cc%3E.png"' in page and "<figcaption>a b&amp;&lt;c&gt;</figcaption>" in page
    assert "<title>t&lt;1&gt;</title>" in page and html.unescape("&rarr;") in page
    assert report.safe_relpath("../../etc/x") == "etc/x" and report.safe_relpath("/") == "_"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workdir", "{missing}", "--direction", "A2B", "--input", "x", "--output", "o"], "--workdir="),
        (["--workdir", "{run}", "--checkpoint", "x.pt", "--test-split"], "exactly one of --workdir"),
        (["--workdir", "{run}", "--ch", "8", "--direction", "A2B", "--input", "x", "--output", "o"], "--ch applies"),
        (["--workdir", "{run}", "--direction", "A2B", "--output", "o"], "--input is required"),
        (["--checkpoint", "{missing}", "--direction", "A2B", "--input", "x", "--output", "o"], "file not found"),
        (["--workdir", "{run}", "--test-split", "--heatmap"], "--heatmap does not apply"),
    ],
)
def test_bad_input_exits_2_with_one_line(run, tmp_path, capsys, argv, message):
    workdir = run[0]
    argv = [a.format(missing=str(tmp_path / "missing"), run=workdir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{translate.PROG}: error:") and message in err
    assert not os.path.exists(tmp_path / "missing")  # a mistyped --workdir is not created


def test_unreadable_only_inputs_and_usage_errors(run, tmp_path, monkeypatch, capsys):
    workdir, _, gens = run
    monkeypatch.setattr(loading, "load_run", lambda workdir, step=None, ema=True: gens)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    assert (
        main(["--workdir", workdir, "--direction", "A2B", "--input", str(tmp_path / "bad.jpg"), "--output", "o"]) == 2
    )
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("warning: skipping unreadable image") and "none of the 1 image file(s)" in err[-1]
    with pytest.raises(SystemExit) as exit_info:
        main(["--workdir", workdir, "--direction", "X2Y", "--input", "x", "--output", "o"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'X2Y'" in err


def test_command_line_process_fails_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ugatit_jax.translate", "--workdir", str(tmp_path / "nope"), "--test-split"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr
