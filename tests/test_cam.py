"""The CAM attention block (shapes, logits, heat map, raw vs normalised weights) and the CAM / heat-map helpers,
including a CAM of a small trained classifier that must point at the evidence."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ugatit_jax.nn.attention import CAMAttention
from ugatit_jax.nn.cam import class_activation_map, colorize_heatmap, overlay_heatmap
from ugatit_jax.nn.spectral_norm import SpectralNorm


def leaky(x):
    return np.where(x > 0, x, 0.2 * x)


def relu(x):
    return np.maximum(x, 0.0)


def make_block(spectral_norm, channels=6, seed=0):
    """Built abstractly and filled from NumPy (eager random init compiles one XLA program per shape: slow)."""
    act = jax.nn.relu if not spectral_norm else (lambda x: jax.nn.leaky_relu(x, 0.2))
    ctor = lambda: CAMAttention(channels, activation=act, spectral_norm=spectral_norm, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(nnx.eval_shape(ctor))
    rng = np.random.default_rng(seed)
    # Classifier weights with a large norm, so that raw and normalised weights differ clearly.
    fill = lambda s: jnp.asarray(rng.standard_normal(s.shape) * (2.0 if s.shape == (channels, 1) else 0.5), s.dtype)
    return nnx.merge(graphdef, jax.tree.map(fill, state))


def reference_block(x, gap_w_logit, gmp_w_logit, gap_w_feat, gmp_w_feat, k1x1, b1x1, act):
    """NumPy float64 CAM block: logits from one pair of weight vectors, the re-weighting from another."""
    x = np.asarray(x, np.float64)
    gap, gmp = x.mean(axis=(1, 2)), x.max(axis=(1, 2))
    logits = np.stack([gap @ gap_w_logit, gmp @ gmp_w_logit], axis=-1)
    h = np.concatenate([x * gap_w_feat, x * gmp_w_feat], axis=-1)
    feats = act(h @ np.asarray(k1x1, np.float64)[0, 0] + np.asarray(b1x1, np.float64))
    return feats, logits, feats.sum(axis=-1, keepdims=True)


def random_features(shape=(2, 5, 7, 6), seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def assert_close(actual, expected, tol=1e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, np.abs(expected).max()))


def test_plain_block_shapes_logits_and_heatmap():
    block = make_block(spectral_norm=False)
    x = random_features()
    feats, logit, heat = block(x)
    assert feats.shape == (2, 5, 7, 6) and logit.shape == (2, 2) and heat.shape == (2, 5, 7, 1)
    wg, wm = np.asarray(block.gap_fc.kernel[...])[:, 0], np.asarray(block.gmp_fc.kernel[...])[:, 0]
    ref = reference_block(x, wg, wm, wg, wm, block.conv1x1.kernel[...], block.conv1x1.bias[...], relu)
    for got, want in zip((feats, logit, heat), ref):
        assert_close(got, want)
    # The heat map is the channel sum of the returned features, exactly as computed from them.
    assert_close(heat, jnp.sum(feats, axis=-1, keepdims=True), tol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_spectral_norm_block_reweights_with_raw_kernel_and_scores_with_normalised(train):
    """The official discriminator multiplies features by weight_orig but computes logits with W / sigma."""
    block = make_block(spectral_norm=True)
    block.train() if train else block.eval()
    x = random_features(seed=2)
    feats, logit, heat = block(x)

    def raw_and_sigma(sn: SpectralNorm):
        # Train mode: the sigma of the forward uses the u, v it stored; eval mode: the stored ones unchanged.
        w = np.asarray(sn.raw_kernel, np.float64)
        return w[:, 0], float(np.asarray(sn.u[...]) @ (w.T @ np.asarray(sn.v[...])))

    (wg, sg), (wm, sm) = raw_and_sigma(block.gap_fc), raw_and_sigma(block.gmp_fc)
    assert abs(sg - 1.0) > 0.1 and abs(sm - 1.0) > 0.1  # otherwise the test could not tell the two apart
    k, b = block.conv1x1.kernel[...], block.conv1x1.bias[...]
    ref = reference_block(x, wg / sg, wm / sm, wg, wm, k, b, leaky)
    for got, want in zip((feats, logit, heat), ref):
        assert_close(got, want)
    # Re-weighting with the normalised weights gives different features.
    wrong = reference_block(x, wg / sg, wm / sm, wg / sg, wm / sm, k, b, leaky)[0]
    assert not np.allclose(feats, wrong, rtol=1e-3)


def test_heatmap_is_channel_sum_in_the_discriminator_block():
    block = make_block(spectral_norm=True, channels=4, seed=3)
    feats, _, heat = block(random_features((3, 4, 4, 4), seed=4))
    np.testing.assert_allclose(heat[..., 0], np.asarray(feats, np.float64).sum(-1), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- class activation maps of a trained classifier

SIZE, SQUARE = 24, 5


def square_images(rng, n, positive=None):
    """Noise images; label 1 ones hold a bright SQUARE x SQUARE patch at a random position."""
    x = rng.normal(0.0, 0.3, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = rng.integers(0, 2, n) if positive is None else np.full(n, int(positive))
    pos = rng.integers(0, SIZE - SQUARE + 1, (n, 2))
    for i in np.flatnonzero(y):
        r, c = pos[i]
        x[i, r : r + SQUARE, c : c + SQUARE] += 1.5
    return x, y, pos


class TinyClassifier(nnx.Module):
    """conv -> conv (stride 2) -> global average pooling -> Dense: the architecture CAM explains."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, rngs=rngs)
        self.fc = nnx.Linear(16, 2, rngs=rngs)

    def features(self, x):
        return jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))  # (B, SIZE / 2, SIZE / 2, 16)

    def __call__(self, x):
        return self.fc(jnp.mean(self.features(x), axis=(1, 2)))


def test_cam_of_trained_classifier_points_at_the_evidence():
    """Train to detect a bright square anywhere; the class-1 CAM must peak on (or next to) the square."""
    # He-normal weights from NumPy (flax's default truncated-normal init takes seconds to compile on CPU).
    graphdef, state = nnx.split(nnx.eval_shape(lambda: TinyClassifier(nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def he_normal(s):
        if len(s.shape) == 1:  # biases
            return jnp.zeros(s.shape, s.dtype)
        return jnp.asarray(rng.standard_normal(s.shape) * math.sqrt(2.0 / math.prod(s.shape[:-1])), s.dtype)

    net = nnx.merge(graphdef, jax.tree.map(he_normal, state))
    opt = nnx.Optimizer(net, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(net, opt, x, y):
        def loss_fn(net):
            return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(net)
        opt.update(net, grads)
        return loss

    for _ in range(120):
        x, y, _ = square_images(rng, 32)
        loss = step(net, opt, jnp.asarray(x), jnp.asarray(y))
    assert float(loss) < 0.05

    x, _, pos = square_images(np.random.default_rng(1), 20, positive=True)
    x = jnp.asarray(x)
    assert np.mean(np.argmax(net(x), axis=-1) == 1) >= 0.9
    feats = net.features(x)
    cam = np.asarray(class_activation_map(feats, net.fc.kernel[...], 1, (SIZE, SIZE)))
    assert cam.shape == (20, SIZE, SIZE) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6

    def peaks_on_square(maps):
        hits = 0
        for m, (r0, c0) in zip(maps, pos):
            r, c = np.unravel_index(np.argmax(m), m.shape)
            # Chebyshev distance from the peak to the square (0 inside it).
            hits += max(0, r0 - r, r - (r0 + SQUARE - 1), c0 - c, c - (c0 + SQUARE - 1)) <= 2
        return hits

    assert peaks_on_square(cam) >= 18, f"CAM peak on the square in only {peaks_on_square(cam)} of 20 images"
    # Control: the other class's weights point elsewhere, so the result does depend on the class weights.
    other = np.asarray(class_activation_map(feats, net.fc.kernel[...], 0, (SIZE, SIZE)))
    assert peaks_on_square(other) <= 5


def test_class_activation_map_formula_and_per_image_class():
    """relu(sum_k w_k^c f_k), min-max normalised per image; class_idx may differ per image."""
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    kernel = rng.standard_normal((6, 3)).astype(np.float32)
    classes = np.array([0, 2, 1])
    cam = np.asarray(class_activation_map(feats, kernel, classes, (4, 5)))  # same size: resize is the identity
    for i, c in enumerate(classes):
        m = relu(np.einsum("hwk,k->hw", feats[i].astype(np.float64), kernel[:, c].astype(np.float64)))
        m = (m - m.min()) / (m.max() - m.min())
        np.testing.assert_allclose(cam[i], m, rtol=1e-5, atol=1e-6)
    big = class_activation_map(feats, kernel, 1, (8, 10))
    assert big.shape == (3, 8, 10)


# ---------------------------------------------------------------- heat-map colouring

DARK_RED, DARK_BLUE = (128, 0, 0), (0, 0, 128)  # jet at 1.0 is (0.5, 0, 0) and at 0.0 (0, 0, 0.5)


@pytest.mark.parametrize("with_channel", [False, True])
def test_colorize_heatmap_jet_extremes(with_channel):
    rng = np.random.default_rng(3)
    hm = rng.standard_normal((2, 5, 6)).astype(np.float32)
    hm[1] = hm[0] * 10.0 + 5.0  # each map is normalised on its own: same colours
    rgb = colorize_heatmap(hm[..., None] if with_channel else hm)
    assert rgb.shape == (2, 5, 6, 3) and rgb.dtype == np.uint8
    for i in range(2):
        hi = np.unravel_index(np.argmax(hm[i]), hm[i].shape)
        lo = np.unravel_index(np.argmin(hm[i]), hm[i].shape)
        assert tuple(rgb[i][hi]) == DARK_RED
        assert tuple(rgb[i][lo]) == DARK_BLUE
    np.testing.assert_array_equal(rgb[0], rgb[1])
    # Middle values are neither: jet passes through cyan/green/yellow.
    mid = np.abs(hm[0] - np.median(hm[0])).argmin()
    assert rgb[0].reshape(-1, 3)[mid][1] > 100


def test_colorize_heatmap_resizes_and_handles_constant_maps():
    rgb = colorize_heatmap(np.zeros((1, 4, 4, 1), np.float32), out_size=(16, 12))
    assert rgb.shape == (1, 16, 12, 3) and rgb.dtype == np.uint8
    assert np.all(rgb.reshape(-1, 3) == DARK_BLUE)  # a constant map normalises to 0 everywhere


def test_overlay_heatmap_blends_resized_colours_over_the_image():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (2, 16, 20, 3), dtype=np.uint8)
    hm = rng.standard_normal((2, 4, 5, 1)).astype(np.float32)
    out = overlay_heatmap(image, hm)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(overlay_heatmap(image, hm, alpha=0.0), image)
    colour = colorize_heatmap(hm, (16, 20))
    np.testing.assert_array_equal(overlay_heatmap(image, hm, alpha=1.0), colour)
    expected = np.round(0.5 * image.astype(np.float32) + 0.5 * colour.astype(np.float32))
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
