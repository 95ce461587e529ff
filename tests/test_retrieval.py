"""Content retrieval maths on constructed inputs: ranks, top-k, the perfect translation and the input baseline."""

import numpy as np
import pytest

from ugatit_jax.evaluation import retrieval


def test_ranks_count_strictly_nearer_gallery_rows():
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    queries = np.array([[0.9, 0.0], [1.0, 0.0], [0.0, 0.0]])  # nearest to row 1, exactly row 1, nearest to row 0
    np.testing.assert_array_equal(retrieval.ranks(queries, gallery), [1, 0, 2])
    assert retrieval.top_k(queries, gallery, ks=(1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def images(seed, n=30, size=32):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return coarse.repeat(size // 4, axis=1).repeat(size // 4, axis=2)  # distinct 8x8 thumbnails


def test_perfect_translation_scores_100_and_the_input_baseline_is_computed():
    targets = images(0)
    inputs = 255 - targets  # the same layout, another "style": standardised thumbnails are exact negatives
    scores = retrieval.retrieval_scores(targets.copy(), inputs, targets)
    assert scores["top1"] == scores["top5"] == 1.0
    expected = retrieval.top_k(retrieval.content_features(inputs), retrieval.content_features(targets))
    assert scores["top1_input"] == expected[1] and scores["top5_input"] == expected[5]
    assert scores["top1_input"] < 0.2  # a negative is far from its own target


def test_style_blind_to_brightness_and_contrast_but_not_to_content():
    targets = images(1)
    restyled = (0.5 * targets + 40).astype(np.uint8)  # darker, lower contrast, same layout
    assert retrieval.retrieval_scores(restyled, restyled, targets)["top1"] == 1.0
    collapsed = np.repeat(targets[:1], len(targets), axis=0)  # one image for every input: mode collapse
    scores = retrieval.retrieval_scores(collapsed, targets, targets)
    assert scores["top1"] == pytest.approx(1 / len(targets)) and scores["top1_input"] == 1.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        retrieval.content_features(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="must be equal"):
        retrieval.ranks(np.zeros((3, 4)), np.zeros((2, 4)))
