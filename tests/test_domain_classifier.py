"""The domain classifier: learns a two-domain task from the training splits only, caches by content, loads back.

Domain A draws horizontal stripes and domain B vertical ones (random colours, frequency and phase): only spatial
structure separates them, and the random flip keeps the orientation. A shortened recipe (``steps``) keeps the
test to seconds; the step count is part of the cache key.
"""

import os

import numpy as np
import pytest

from ugatit_jax.data import ArraySplit, UnpairedSource
from ugatit_jax.evaluation import domain_classifier as dc

STEPS = 60


def stripes(rng, n, vertical, size=48):
    out = []
    for _ in range(n):
        period = rng.integers(6, 13)
        phase = rng.integers(0, period)
        on = ((np.arange(size) + phase) % period) < period // 2
        mask = np.broadcast_to(on[None, :] if vertical else on[:, None], (size, size))
        a, b = rng.integers(0, 256, (2, 3))
        out.append(np.where(mask[..., None], a, b).astype(np.uint8))
    return out


def stripe_source(seed=0, n=64):
    rng = np.random.default_rng(seed)
    splits = {name: ArraySplit(stripes(rng, n, name.endswith("B")), name=name) for name in ("trainA", "trainB")}
    test = {name: ArraySplit(stripes(rng, 32, name.endswith("B")), name=name) for name in ("testA", "testB")}
    return UnpairedSource("stripes", splits["trainA"], splits["trainB"], test["testA"], test["testB"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("classifiers"))
    source = stripe_source()
    model, info = dc.load_or_train(source, cache, steps=STEPS)
    return cache, source, model, info


def test_learns_held_out_images_and_reports_features(trained):
    _, source, model, info = trained
    assert info["trained_now"] and info["train_images"] == {"trainA": 64, "trainB": 64}
    score = dc.make_scorer(model)
    test_a, test_b = np.stack(list(source.test_a)), np.stack(list(source.test_b))
    (logits_a, feats_a), (logits_b, _) = score(test_a), score(test_b)
    assert feats_a.shape == (32, 2 * dc.WIDTH) and logits_a.shape == (32,)
    assert dc.held_out_accuracy(logits_a, logits_b) >= 0.9
    # target_rate reads the same logits: translations into B that are really B images pass for B.
    assert dc.target_rate(logits_b, "B") == pytest.approx(float(np.mean(logits_b > 0)))
    assert dc.target_rate(logits_a, "B") == pytest.approx(1 - float(np.mean(logits_a <= 0)))
    # Any input size is judged at 32 px: 2x nearest upsampling hardly moves the logits.
    big = test_a.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(score(big)[0], logits_a, atol=0.5 + 0.1 * np.abs(logits_a).max())


def test_second_call_loads_the_cache_without_training(trained, monkeypatch):
    cache, source, model, info = trained
    monkeypatch.setattr(dc, "train_classifier", lambda *a, **k: pytest.fail("retrained despite a cached classifier"))
    loaded, info2 = dc.load_or_train(source, cache, steps=STEPS)
    assert not info2["trained_now"] and info2["path"] == info["path"] and info2["key"] == info["key"]
    assert os.path.dirname(info["path"]) == os.path.join(cache, info["key"])
    images = np.stack(list(source.test_b))
    np.testing.assert_array_equal(dc.make_scorer(loaded)(images)[0], dc.make_scorer(model)(images)[0])
    assert not [f for f in os.listdir(os.path.dirname(info["path"])) if f != dc.WEIGHTS_FILE]  # no temp litter


def test_key_follows_training_data_and_recipe_not_test_data(trained, monkeypatch):
    _, source, _, _ = trained
    key = dc.classifier_key(source)
    other_test = stripe_source()
    other_test.test_a = stripe_source(seed=5).test_a
    assert dc.classifier_key(other_test) == key  # test images never reach the classifier
    changed = stripe_source()
    changed.train_b.images[3] = 255 - changed.train_b.images[3]
    assert dc.classifier_key(changed) != key
    monkeypatch.setattr(dc, "RECIPE_VERSION", dc.RECIPE_VERSION + 1)
    assert dc.classifier_key(source) != key


def test_folder_fingerprint_uses_file_size_and_mtime(tmp_path):
    from PIL import Image

    from ugatit_jax.data.folders import ImageFolder

    (tmp_path / "s").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "s" / "a.png")
    before = dc.split_fingerprint(ImageFolder(str(tmp_path / "s")))
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / "s" / "a.png")
    os.utime(tmp_path / "s" / "a.png", ns=(1, 1))
    assert dc.split_fingerprint(ImageFolder(str(tmp_path / "s")))["sha256"] != before["sha256"]


def test_corrupt_or_foreign_weights_file_is_retrained(tmp_path):
    path = tmp_path / "k" / dc.WEIGHTS_FILE
    path.parent.mkdir()
    path.write_bytes(b"not an npz")
    assert dc.load_weights(str(path)) is None
    np.savez(path, __meta__=np.array('{"recipe": {}}'))
    assert dc.load_weights(str(path)) is None


def test_resize_matches_jax_image_resize():
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(0).random((2, 72, 72, 3)), jnp.float32)
    want = jax.image.resize(x, (2, dc.INPUT_SIZE, dc.INPUT_SIZE, 3), "linear", antialias=True)
    np.testing.assert_allclose(dc.resize_to_input(x), want, atol=1e-5)
