"""The shared evaluator on constructed translators: every score against the maths it stands for.

The synthetic set's test B images are the colour inverses of its test A images (same keys), so ``255 - x`` is the
perfect translation in both directions and the identity is the untranslated input. The domain classifier is
trained with a shortened recipe into a temporary cache (``STEPS`` patched: part of the key).
"""

import numpy as np
import pytest

from ugatit_jax.data import synthetic_source
from ugatit_jax.evaluation import domain_classifier as dc
from ugatit_jax.evaluation import evaluator as ev
from ugatit_jax.evaluation import metrics, retrieval

SIZE = 32


@pytest.fixture(scope="module")
def short_classifier(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dc, "STEPS", 10)
        mp.setenv("UGATIT_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        yield


@pytest.fixture(scope="module")
def source():
    return synthetic_source(num_train=8, num_test=12, height=SIZE, width=SIZE)


@pytest.fixture(scope="module")
def evaluator(short_classifier, source):
    return ev.Evaluator(source, SIZE, batch_size=5)  # 12 images: the last batch is padded


@pytest.fixture(scope="module")
def records(evaluator):
    perfect = {"A2B": lambda x: 255 - x, "B2A": lambda x: 255 - x}
    copy = {"A2B": lambda x: x, "B2A": lambda x: x.astype(np.float32) / 127.5 - 1}  # uint8 or [-1, 1] outputs
    return evaluator(perfect), evaluator(copy)


NOISE = np.random.default_rng(0).normal(0, 20, (SIZE, SIZE, 3))  # one fixed pattern: translations reproducible


def noisy(x):
    """The perfect translation plus pixel noise."""
    return np.clip(255 - x + NOISE, 0, 255).astype(np.uint8)


def blurred(x):
    """The perfect translation under a 3x3 box blur."""
    p = np.pad(255 - x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return np.round(sum(p[:, i : i + SIZE, j : j + SIZE] for i in range(3) for j in range(3)) / 9).astype(np.uint8)


@pytest.fixture(scope="module")
def noisy_and_blurred(evaluator):
    """A->B noisy, B->A blurred: one more scoring of 12 small images, the set-up reused."""
    return evaluator({"A2B": noisy, "B2A": blurred})


def test_perfect_translation_scores_against_the_maths(evaluator, records):
    perfect, _ = records
    fixed = evaluator._prepare()
    test = fixed["test"]
    a, b = test.images["testA"], test.images["testB"]
    s = perfect["scores"]
    assert s["eval/A2B/top1"] == s["eval/A2B/top5"] == s["eval/B2A/top1"] == 1.0
    assert s["eval/A2B/l1"] == 0.0 and s["eval/A2B/ssim"] == pytest.approx(1.0)
    assert "eval/A2B/psnr" not in s and any("psnr" in n for n in perfect["notes"])  # infinite for identical images
    # the real test B images pass for B exactly as often as the perfect A->B translations
    logits_b, feats_b = fixed["score"](b)
    assert s["eval/A2B/target_rate"] == dc.target_rate(logits_b, "B")
    assert s["eval/A2B/kid_domain"] == pytest.approx(metrics.kid(feats_b, feats_b)[0])
    # baselines: the untranslated input
    logits_a, feats_a = fixed["score"](a)
    assert s["eval/A2B/target_rate_input"] == dc.target_rate(logits_a, "B")
    assert s["eval/A2B/kid_domain_input"] == pytest.approx(metrics.kid(feats_a, feats_b)[0])
    assert s["eval/A2B/l1_input"] == pytest.approx(metrics.l1(a, b))
    assert s["eval/B2A/psnr_input"] == pytest.approx(metrics.psnr(b, a))
    gallery = retrieval.content_features(b)
    assert s["eval/A2B/top5_input"] == retrieval.top_k(retrieval.content_features(a), gallery)[5]
    assert s["eval/classifier_accuracy"] == dc.held_out_accuracy(logits_a, logits_b)
    # the inverse is exactly as busy as the real target; so is the input here (test B is test A inverted)
    assert s["eval/A2B/hf_ratio"] == pytest.approx(1.0, rel=1e-12) == s["eval/B2A/hf_ratio"]
    assert s["eval/A2B/hf_ratio_input"] == pytest.approx(metrics.hf_ratio(a, b), rel=1e-12)
    assert perfect["pairs"] == 12 and perfect["test_images"] == {"testA": 12, "testB": 12}


def test_copying_the_input_scores_exactly_the_baseline(records):
    _, copy = records
    s = copy["scores"]
    for d in ("A2B", "B2A"):
        for name in ("target_rate", "kid_domain", "hf_ratio", "top1", "top5", "l1", "psnr", "ssim"):
            assert s[f"eval/{d}/{name}"] == pytest.approx(s[f"eval/{d}/{name}_input"], abs=1e-6), (d, name)


def test_keys_follow_one_scheme_and_baselines_do_not_change(records):
    perfect, copy = records
    measures = {"target_rate", "kid_domain", "hf_ratio", "top1", "top5", "l1", "psnr", "ssim"}
    expected = {f"eval/{d}/{m}{s}" for d in ("A2B", "B2A") for m in measures for s in ("", "_input")}
    assert set(copy["scores"]) == expected | {"eval/classifier_accuracy"}
    for k, v in perfect["scores"].items():
        if k.endswith("_input"):
            assert copy["scores"][k] == v  # computed once, reused
    table = ev.format_table(copy)
    assert "A->B" in table and "input" in table and "target_rate" in table and "top5" in table


def test_hf_ratio_sees_noise_and_blur_in_record_and_table(evaluator, noisy_and_blurred):
    s = noisy_and_blurred["scores"]
    test = evaluator._prepare()["test"]
    a, b = test.images["testA"], test.images["testB"]
    # the inputs are exactly as busy as their targets here (test B is test A inverted)
    assert s["eval/A2B/hf_ratio_input"] == pytest.approx(1.0) == s["eval/B2A/hf_ratio_input"]
    assert s["eval/A2B/hf_ratio"] > 1.5 and s["eval/B2A/hf_ratio"] < 0.8
    assert s["eval/A2B/hf_ratio"] == pytest.approx(metrics.hf_ratio(noisy(a), b), rel=1e-12)
    assert s["eval/B2A/hf_ratio"] == pytest.approx(metrics.hf_ratio(blurred(b), a), rel=1e-12)
    row = next(line for line in ev.format_table(noisy_and_blurred).splitlines() if line.startswith("hf_ratio"))
    cells = [float(v) for v in row.split()[-4:]]  # A->B, its input, B->A, its input
    want = [s[f"eval/{d}/hf_ratio{i}"] for d in ("A2B", "B2A") for i in ("", "_input")]
    assert cells == pytest.approx(want, abs=6e-4)  # printed to 3 decimals


def test_unpaired_data_and_small_images(short_classifier):
    source = synthetic_source(num_train=4, num_test=3, height=8, width=8)
    source.test_pairs = []
    record = ev.Evaluator(source, 8)({"A2B": lambda x: x, "B2A": lambda x: x})
    assert "eval/A2B/target_rate" in record["scores"] and "eval/A2B/kid_domain_input" in record["scores"]
    assert "eval/A2B/hf_ratio" in record["scores"] and "eval/B2A/hf_ratio_input" in record["scores"]
    assert not any("top1" in k or "/l1" in k for k in record["scores"])
    assert any("no known test pairs" in n for n in record["notes"])
    paired = synthetic_source(num_train=4, num_test=3, height=8, width=8)
    record = ev.Evaluator(paired, 8)({"A2B": lambda x: x, "B2A": lambda x: x})
    assert "eval/A2B/l1" in record["scores"] and "eval/A2B/ssim" not in record["scores"]  # SSIM needs 11 px
    assert any("ssim" in n for n in record["notes"])
