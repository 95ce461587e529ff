"""The emoji model shipped in the package: ``load("emoji")`` needs no run, no torch and no download, and it scores on
emoji test images what was measured when it was shipped (``ugatit_jax/weights/emoji/scores.json``).

The test builds the emoji set limited to its first ``SUBSET_LIMIT`` code points (seconds; the train/test split is
a hash of the code point, so its test pairs are test pairs of the full set) and recomputes the scores that need no
domain classifier: high-frequency energy against real targets, content retrieval and the paired distances. The
whole-split numbers of the model card come from ``scripts/ship_model.py``.
"""

import json
import os
import sys

import numpy as np
import pytest

from ugatit_jax import load, loading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import speckle_vs_content  # noqa: E402
from ship_model import SUBSET_KEYS, subset_scores, subset_source  # noqa: E402

FOLDER = os.path.join(loading.PRETRAINED_DIR, "emoji")


def _tolerance(measure: str, want: float, pairs: int) -> float:
    """Retrieval counts hits among the pairs: one rank flipped by float rounding on another XLA is 1 / pairs."""
    return 1.01 / pairs if measure.startswith("top") else 1e-3 * max(1.0, abs(want))


@pytest.fixture(scope="module")
def subset_dir(tmp_path_factory):
    """The small emoji build, made once per test process for this file's tests."""
    return str(tmp_path_factory.mktemp("emoji_subset"))


@pytest.fixture(scope="module")
def shipped():
    with open(os.path.join(FOLDER, "scores.json"), encoding="utf-8") as f:
        return json.load(f)


def test_it_is_shipped_small_and_never_pickled():
    assert "emoji" in loading.pretrained_names()
    weights = os.path.join(FOLDER, loading.WEIGHTS_FILE)
    assert os.path.getsize(weights) < 10e6, "at most 10 MB per family in the wheel"
    with open(weights, "rb") as f:
        assert not f.read(2).startswith(b"\x80"), "msgpack, not a pickle"
    assert os.path.isfile(os.path.join(FOLDER, "MODEL_CARD.md"))


def test_scores_on_emoji_test_images_match_the_shipped_ones(shipped, subset_dir):
    model = load("emoji")
    assert model.name == "pretrained emoji" and model.img_size == 64
    images = np.zeros((3, 64, 64, 3), np.uint8)
    image, cam_logit, heatmap = model.translate(images, "A2B")
    assert image.shape == (3, 64, 64, 3) and cam_logit.shape == (3, 2)

    measured = subset_scores(model, subset_dir)
    expected = shipped["subset"]
    assert measured["pairs"] == expected["pairs"] > 20
    pairs = expected["pairs"]
    for name, want in expected["scores"].items():
        got = measured["scores"][name]
        measure = name.rsplit("/", 1)[-1].removesuffix("_input")
        assert measure in SUBSET_KEYS
        assert abs(got - want) <= _tolerance(measure, want, pairs), (name, got, want)


def test_the_speckle_probe_scores_as_the_evaluator_and_its_filter_removes_speckle(shipped, subset_dir):
    """``scripts/speckle_vs_content.py``: its unfiltered scores are the evaluator's, and the median filter takes the
    A->B translations' high-frequency energy down (what docs/demo.md measures on the whole split)."""
    rows = speckle_vs_content.compare(load("emoji"), subset_source(subset_dir))
    pairs = shipped["subset"]["pairs"]
    for direction, scores in rows.items():
        for row, suffix in (("as translated", ""), ("input", "_input")):
            for name in ("hf_ratio", "top1", "top5"):
                got, want = scores[row][name], shipped["subset"]["scores"][f"eval/{direction}/{name}{suffix}"]
                assert abs(got - want) <= _tolerance(name, want, pairs), (direction, row, name, got, want)
        assert all(-1 < r["own_corr"] < 1 for r in scores.values()), scores
    a2b = rows["A2B"]
    assert a2b["median 3"]["hf_ratio"] < 0.9 * a2b["as translated"]["hf_ratio"], a2b
