"""The official train / test transforms and the uint8 <-> [-1, 1] conversions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ugatit_jax.data.transforms import CROP_MARGIN, test_transform, to_model_range, to_uint8, train_transform


def _image(height=40, width=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _resized(image, size):
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


@pytest.mark.parametrize("margin", [None, 8, 0])
def test_train_transform_is_flip_then_resize_then_crop(margin):
    """The official order; ``crop_margin`` (default: the official 30 px) sets the resize before the crop."""
    image, size = _image(), 16
    m = CROP_MARGIN if margin is None else margin
    resized = _resized(image, size + m)
    flipped = _resized(image[:, ::-1], size + m)
    seen_flip = {False: 0, True: 0}
    for seed in range(40):
        kwargs = {} if margin is None else {"crop_margin": margin}
        out = train_transform(image, np.random.default_rng(seed), size, **kwargs)
        assert out.shape == (size, size, 3) and out.dtype == np.uint8
        rng = np.random.default_rng(seed)  # same draws, same order as the transform
        flip = rng.random() < 0.5
        top, left = rng.integers(0, m + 1, size=2)
        expected = (flipped if flip else resized)[top : top + size, left : left + size]
        np.testing.assert_array_equal(out, expected)
        seen_flip[bool(flip)] += 1
    assert min(seen_flip.values()) >= 10  # p = 0.5, both branches exercised


def test_train_transform_crops_reach_every_margin():
    image, size = _image(), 8
    offsets = set()
    for seed in range(300):
        rng = np.random.default_rng(seed)
        rng.random()
        offsets.update(int(v) for v in rng.integers(0, CROP_MARGIN + 1, size=2))
        train_transform(image, np.random.default_rng(seed), size)
    assert offsets == set(range(CROP_MARGIN + 1))


def test_test_transform_is_a_plain_bilinear_resize():
    image = _image(30, 70)
    out = test_transform(image, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _resized(image, 24))


def test_to_model_range_maps_uint8_to_minus_one_one():
    x = np.arange(256, dtype=np.uint8)
    y = to_model_range(x)
    assert y.dtype == np.float32
    assert y[0] == -1.0 and y[255] == 1.0
    np.testing.assert_allclose(y, x / 127.5 - 1.0, atol=1e-6)


def test_to_model_range_and_back_is_exact_on_numpy_and_jax():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    np.testing.assert_array_equal(to_uint8(to_model_range(x)), x)
    y = jax.jit(lambda v: to_uint8(to_model_range(v)))(jnp.asarray(x))
    assert y.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(y), x)
    assert jax.jit(to_model_range)(jnp.asarray(x)).dtype == jnp.float32


def test_to_uint8_clips_and_rounds():
    out = to_uint8(np.array([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0], np.float32))
    np.testing.assert_array_equal(out, [0, 0, 128, 255, 255, 255])  # 127.5 rounds half to even -> 128
    assert out.dtype == np.uint8


def test_to_model_range_rejects_non_uint8():
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(np.zeros(3, np.float32))
