"""``python -m ugatit_jax.evaluate``: the shared evaluator's record, KID/FID with their input baseline, the
missing-weights note, one-line errors.

KID/FID run with a randomly initialised Inception written in pytorch-fid's file format: the numbers mean nothing,
but the whole path (reading the file, features, KID subsets, FID, JSON) is exercised. The synthetic set has two
test images per domain and known pairs (testB = inverted testA). The domain classifier is trained with a
shortened recipe into a temporary cache. The evaluator's own maths is tested in test_evaluator.py, and that
training and this CLI give the same keys and numbers in test_report.py.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from tiny import save_tiny_run

from ugatit_jax import evaluate, loading
from ugatit_jax.data import get_source, test_transform
from ugatit_jax.evaluate import main
from ugatit_jax.evaluation import domain_classifier, metrics
from ugatit_jax.evaluation.inception import FID_WEIGHTS_FILENAME
from ugatit_jax.models.family import get_family

STEP = 2


@pytest.fixture(scope="module", autouse=True)
def short_classifier(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(domain_classifier, "STEPS", 10)
        mp.setenv("UGATIT_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, generators). Loading a checkpoint through the CLI is tested in test_translate.py, so the tests
    here hand the CLI the generators directly (``load_run`` patched) and skip a second restore."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config, model = save_tiny_run(workdir, STEP)
    model.eval()
    family = get_family(config)
    return workdir, loading.Translator.from_model(
        model, family, config.img_size, config=config, step=STEP, name="tiny step 2"
    )


@pytest.fixture
def cli(run, monkeypatch):
    monkeypatch.setattr(loading, "load_run", lambda workdir, step=None, ema=True: run[1])
    monkeypatch.delenv(evaluate.WEIGHTS_ENV, raising=False)
    return run[0]


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from ugatit_jax.evaluation.inception import InceptionV3, save_pytorch_fid_format

    path = str(tmp_path_factory.mktemp("inception") / "random_inception.pth")
    save_pytorch_fid_format(InceptionV3(rngs=nnx.Rngs(0)), path)
    return path


def test_kid_fid_and_paired_metrics_with_input_baseline(run, cli, inception_file, tmp_path, monkeypatch, capsys):
    # FID's 2048x2048 eigendecompositions cost ~10 s per call on 2 cores whatever the number of images, and
    # metrics.fid has its own tests: here it only has to be called on the right features, so it sees 64 of them.
    calls = []
    real_fid = metrics.fid

    def fid_on_64_dims(x, y, **kwargs):
        calls.append((np.shape(x), np.shape(y)))
        return real_fid(np.asarray(x)[:, :64], np.asarray(y)[:, :64], **kwargs)

    monkeypatch.setattr(metrics, "fid", fid_on_64_dims)
    output = str(tmp_path / "results.json")
    argv = ["--workdir", cli, "--inception-weights", inception_file, "--output", output]
    assert main([*argv, "--kid-subset-size", "2", "--kid-subsets", "3", "--batch-size", "3"]) == 0
    results = json.load(open(output))
    assert results["step"] == STEP and results["dataset"] == "synthetic" and results["img_size"] == 32
    assert results["test_images"] == {"testA": 2, "testB": 2} and results["pairs"] == 2
    assert results["kid"] == {"subsets": 3, "subset_size": 2, "seed": 0}
    assert results["inception_weights"] == os.path.abspath(inception_file)
    source = get_source(run[1].config)
    real = {s: np.stack([test_transform(x, 32) for x in source.split(s)]) for s in ("testA", "testB")}
    scores = results["scores"]
    for name, src, tgt in (("A2B", "testA", "testB"), ("B2A", "testB", "testA")):
        for key in ("kid_x100", "kid_x100_std", "fid", "kid_x100_input", "fid_input", "target_rate", "top1"):
            assert np.isfinite(scores[f"eval/{name}/{key}"]), key
        assert 0 < scores[f"eval/{name}/hf_ratio"] < np.inf
        assert scores[f"eval/{name}/hf_ratio_input"] == pytest.approx(metrics.hf_ratio(real[src], real[tgt]))
        # the baseline is the untranslated input against the true target
        assert scores[f"eval/{name}/l1_input"] == pytest.approx(metrics.l1(real[src], real[tgt]))
        assert scores[f"eval/{name}/ssim_input"] == pytest.approx(metrics.ssim(real[src], real[tgt]))
        assert scores[f"eval/{name}/l1"] != scores[f"eval/{name}/l1_input"]
    assert calls == [((2, 2048), (2, 2048))] * 4  # translation and input, per direction
    out = capsys.readouterr().out
    table = out.splitlines()
    assert "tiny step 2" in table[0] and table[1].split() == ["A->B", "input", "B->A", "input"]
    rows = {line.split()[0]: line.split()[-4:] for line in table[3:] if line and not line.startswith("note")}
    measures = {"target_rate", "kid_domain", "hf_ratio", "top1", "top5", "l1", "psnr", "ssim", "kid_x100", "fid"}
    assert measures <= set(rows)
    assert "-" not in rows["kid_x100"] and "-" not in rows["target_rate"] and "-" not in rows["hf_ratio"]
    assert f"results written to {output}" in out


def test_without_weights_kid_fid_are_skipped_with_a_note(cli, capsys):
    assert main(["--workdir", cli]) == 0
    results = json.load(open(os.path.join(cli, "eval", f"step_{STEP}.json")))  # the default --output
    assert results["inception_weights"] is None
    note = results["notes"][-1]
    assert FID_WEIGHTS_FILENAME in note and "--inception-weights" in note and evaluate.WEIGHTS_ENV in note
    assert "eval/A2B/kid_x100" not in results["scores"] and "eval/A2B/l1" in results["scores"]
    out = capsys.readouterr().out
    assert "note: KID/FID skipped" in out and FID_WEIGHTS_FILENAME in out


def test_unpaired_dataset_notes_that_paired_metrics_are_skipped(run):
    source = get_source(run[1].config)
    source.test_pairs = []
    results = evaluate.evaluate(run[1], source, batch_size=2)
    assert "eval/B2A/l1" not in results["scores"] and "eval/B2A/target_rate" in results["scores"]
    assert any("no known test pairs" in note for note in results["notes"])


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--inception-weights", "{missing}"], None, "--inception-weights={missing}: file not found"),
        ([], "{missing}", f"{evaluate.WEIGHTS_ENV}={{missing}}: file not found"),
        (["--inception-weights", "{junk}"], None, "not a readable PyTorch file"),
        (["--kid-subsets", "0"], None, "--kid-subsets 0: must be at least 1"),
    ],
)
def test_bad_input_exits_2_with_one_line(cli, tmp_path, monkeypatch, capsys, argv, env, message):
    paths = {"missing": str(tmp_path / "nope.pth"), "junk": str(tmp_path / "junk.pth")}
    (tmp_path / "junk.pth").write_text("not a torch file")
    if env:
        monkeypatch.setenv(evaluate.WEIGHTS_ENV, env.format(**paths))
    assert main(["--workdir", cli, *[a.format(**paths) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{evaluate.PROG}: error:") and message.format(**paths) in err


def test_missing_workdir_fails_in_a_real_process_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ugatit_jax.evaluate", "--workdir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != evaluate.WEIGHTS_ENV},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "--workdir=" in result.stderr and "does not exist" in result.stderr
    assert not os.path.exists(tmp_path / "nope")
    assert main([]) == 2  # one of --workdir and --pretrained is required
