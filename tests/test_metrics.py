"""KID/FID against closed forms and direct re-computations; L1/PSNR/SSIM against hand-checked values."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from scipy import linalg

from ugatit_jax.evaluation import metrics

# ----------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------


def k_poly(a, b):
    return (float(np.dot(a, b)) / a.shape[0] + 1.0) ** 3


def mmd2_brute(xs, ys):
    """Unbiased MMD^2 written out pair by pair."""
    m, n = len(xs), len(ys)
    sxx = sum(k_poly(xs[i], xs[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k_poly(ys[i], ys[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k_poly(xs[i], ys[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


@pytest.mark.parametrize("per_subset_kernels", [False, True])
def test_kid_matches_brute_force_loop(monkeypatch, per_subset_kernels):
    if per_subset_kernels:  # force the large-set code path
        monkeypatch.setattr(metrics, "_KID_PRECOMPUTE_MAX", 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 6))
    y = rng.standard_normal((25, 6)) * 1.5 + 0.3
    mean, std = metrics.kid(x, y, num_subsets=4, subset_size=20, seed=5)
    # Same draws as documented: per subset, x rows then y rows, without replacement.
    draw = np.random.default_rng(5)
    vals = []
    for _ in range(4):
        ix = draw.choice(30, 20, replace=False)
        iy = draw.choice(25, 20, replace=False)
        vals.append(mmd2_brute(x[ix], y[iy]))
    assert mean == pytest.approx(np.mean(vals), rel=1e-12, abs=1e-12)
    assert std == pytest.approx(np.std(vals), rel=1e-9, abs=1e-12)
    assert std > 0


def test_kid_subset_size_is_clipped_to_smaller_set():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 5))
    y = rng.standard_normal((15, 5)) + 0.5
    # subset_size > both sizes -> m = 12: x is used whole, y is subsampled to 12.
    mean, std = metrics.kid(x, y, num_subsets=3, subset_size=1000, seed=2)
    draw = np.random.default_rng(2)
    vals = []
    for _ in range(3):
        ix = draw.choice(12, 12, replace=False)
        iy = draw.choice(15, 12, replace=False)
        vals.append(mmd2_brute(x[ix], y[iy]))
    assert mean == pytest.approx(np.mean(vals), rel=1e-12)
    assert std == pytest.approx(np.std(vals), rel=1e-9)


def balanced_sample(atoms, counts):
    return np.repeat(atoms, counts, axis=0)


def test_kid_closed_form_on_discrete_distributions():
    """Features on K atoms with exact counts: the unbiased MMD^2 is a closed form in the counts.

    With the full sets as the subset, every subset gives
        (c^T K c - sum_a c_a K_aa) / (N(N-1)) + (same for Y) - 2 c^T K e / N^2,
    and for large N this tends to the population value (p-q)^T K (p-q).
    """
    rng = np.random.default_rng(3)
    d, n = 8, 1000
    atoms = rng.standard_normal((5, d))
    kmat = (atoms @ atoms.T / d + 1) ** 3
    p = np.array([0.3, 0.2, 0.2, 0.2, 0.1])
    q = np.array([0.1, 0.2, 0.2, 0.2, 0.3])
    cx, cy = (p * n).astype(int), (q * n).astype(int)
    x, y = balanced_sample(atoms, cx), balanced_sample(atoms, cy)
    diag = np.diag(kmat)
    exact = (
        (cx @ kmat @ cx - cx @ diag) / (n * (n - 1))
        + (cy @ kmat @ cy - cy @ diag) / (n * (n - 1))
        - 2 * (cx @ kmat @ cy) / n**2
    )
    population = (p - q) @ kmat @ (p - q)
    assert exact == pytest.approx(population, rel=0.02)  # sanity of the closed form itself

    mean, std = metrics.kid(x, y, num_subsets=3, subset_size=n, seed=0)
    assert mean == pytest.approx(exact, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-10 * exact)

    # Random subsets are i.i.d. given the sets and each is unbiased for `exact`,
    # so their mean lies within a few standard errors of it.
    mean, std = metrics.kid(x, y, num_subsets=100, subset_size=200, seed=0)
    assert std > 0
    assert abs(mean - exact) < 4 * std / math.sqrt(100)


def test_kid_same_distribution_is_near_zero_and_shift_is_not():
    rng = np.random.default_rng(4)
    a = np.abs(rng.standard_normal((600, 16)))  # ReLU-like, as Inception pool3 features are
    b = np.abs(rng.standard_normal((600, 16)))
    same, _ = metrics.kid(a, b, num_subsets=20, subset_size=300)
    shifted, _ = metrics.kid(a, b + 0.3, num_subsets=20, subset_size=300)
    assert shifted > 0.1
    assert abs(same) < 0.02 * shifted
    # A set against itself, whole: 2 * (mean off-diagonal kernel - mean kernel), tiny.
    self_val, _ = metrics.kid(a, a, num_subsets=2, subset_size=600)
    kaa = (a @ a.T / 16 + 1) ** 3
    off = (kaa.sum() - np.trace(kaa)) / (600 * 599)
    assert self_val == pytest.approx(2 * (off - kaa.mean()), rel=1e-9)
    assert abs(self_val) < 1e-2 * shifted


def test_kid_rejects_bad_input():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        metrics.kid(x, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.kid(x, np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        metrics.kid(np.zeros(10), x)
    with pytest.raises(ValueError, match="subset_size"):
        metrics.kid(x, x, subset_size=1)


# ----------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------


def exact_gaussian_sample(rng, mu, sigma, n):
    """n points whose sample mean and (N-1) covariance are exactly mu and sigma."""
    z = rng.standard_normal((n, len(mu)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # whiten: cov(z) = I
    return mu + z @ np.linalg.cholesky(sigma).T


def random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_closed_form_diagonal_covariances():
    # Commuting (diagonal) covariances: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (s1_i - s2_i)^2 on std devs.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    expected = 1.0 + 0.0 + 4.0 + (2.0**2 + 0.0 + 1.0**2)  # = 10
    got = metrics.frechet_distance(mu1, np.diag(sd1**2), mu2, np.diag(sd2**2))
    assert got == pytest.approx(expected, rel=1e-12)
    assert metrics.frechet_distance(mu1, np.diag(sd1**2), mu2, np.diag(sd2**2), method="sqrtm") == pytest.approx(
        expected, rel=1e-10
    )


def test_fid_of_samples_with_known_statistics_equals_gaussian_closed_form():
    rng = np.random.default_rng(5)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    x = exact_gaussian_sample(rng, mu1, s1, 500)
    y = exact_gaussian_sample(rng, mu2, s2, 700)
    # Closed form with scipy's general matrix square root (not symmetric).
    closed = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert metrics.fid(x, y) == pytest.approx(closed, rel=1e-9)
    assert metrics.fid(x, y, method="sqrtm") == pytest.approx(closed, rel=1e-9)
    assert closed > 1.0


def pytorch_fid_style(x, y):
    """The usual recipe: np.cov statistics, scipy sqrtm, real part of the trace."""
    m1, m2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def test_fid_agrees_with_scipy_recipe_also_when_covariance_is_singular():
    rng = np.random.default_rng(6)
    # 40 samples in 64 dims: rank-deficient covariances, as with 400 test images vs 2048 dims.
    x = np.abs(rng.standard_normal((40, 64)))
    y = np.abs(rng.standard_normal((50, 64)) * 1.2 + 0.1)
    ref = pytorch_fid_style(x, y)
    assert metrics.fid(x, y) == pytest.approx(ref, rel=1e-6)
    assert metrics.fid(x, y, method="sqrtm") == pytest.approx(ref, rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(7)
    x = np.abs(rng.standard_normal((30, 48)))  # singular covariance
    scale = np.trace(np.cov(x, rowvar=False))
    # sqrt of the ~1e-16 round-off eigenvalues in the 19-dim null space leaves ~1e-8 each
    assert abs(metrics.fid(x, x)) < 1e-6 * scale
    y = exact_gaussian_sample(rng, np.zeros(4), random_spd(rng, 4), 100)
    assert abs(metrics.fid(y, y, method="sqrtm")) < 1e-9


def test_fid_rejects_bad_input():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        metrics.fid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="method"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")
    with pytest.raises(ValueError, match="shapes disagree"):
        metrics.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        metrics.fid(np.full((5, 3), np.nan), np.zeros((5, 3)))


# ----------------------------------------------------------------------------
# Paired metrics
# ----------------------------------------------------------------------------


def test_identical_images():
    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    assert metrics.l1(a, a) == 0.0
    assert metrics.psnr(a, a) == math.inf
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_constant_offset_known_psnr_and_l1():
    rng = np.random.default_rng(9)
    a = rng.integers(0, 250, (2, 16, 16, 3), dtype=np.uint8)
    b = a + np.uint8(5)  # no overflow: a < 250
    assert metrics.psnr(a, b) == pytest.approx(20 * math.log10(255 / 5), rel=1e-12)  # 34.151 dB
    assert metrics.l1(a, b) == pytest.approx(5 / 127.5, rel=1e-12)
    f = rng.uniform(-0.9, 0.8, (2, 16, 16, 3))
    # 0.1 in [-1, 1] units is 0.05 on the [0, 1] scale PSNR uses.
    assert metrics.psnr(f, f + 0.1) == pytest.approx(-20 * math.log10(0.05), rel=1e-9)  # 26.021 dB
    assert metrics.l1(f, f + 0.1) == pytest.approx(0.1, rel=1e-9)


def test_per_image_values_and_mixed_conventions():
    rng = np.random.default_rng(10)
    a = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    b = a.copy()
    b[1] = np.clip(a[1].astype(int) + 20, 0, 255).astype(np.uint8)
    b[2] = 255 - a[2]
    per = metrics.psnr(a, b, reduce=False)
    assert per.shape == (3,) and per[0] == math.inf and per[2] < per[1]
    per_ssim = metrics.ssim(a, b, reduce=False)
    assert per_ssim[0] == pytest.approx(1.0, abs=1e-6) and per_ssim[2] < per_ssim[1] < 1.0
    assert metrics.ssim(a, b) == pytest.approx(per_ssim.mean(), rel=1e-12)
    # uint8 and the same images in [-1, 1] give the same numbers
    fb = b.astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(metrics.ssim(a, fb, reduce=False), per_ssim, atol=1e-6)
    np.testing.assert_allclose(metrics.l1(a, fb, reduce=False), metrics.l1(a, b, reduce=False), rtol=1e-12, atol=1e-12)
    # a single (H, W, C) image works too
    assert metrics.ssim(a[1], b[1]) == pytest.approx(per_ssim[1], abs=1e-6)


def test_ssim_of_constant_images_closed_form():
    # Uniform images: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a = np.full((1, 16, 16, 3), 100, np.uint8)
    b = np.full((1, 16, 16, 3), 150, np.uint8)
    x, y, c1 = 100 / 255, 150 / 255, 0.01**2
    assert metrics.ssim(a, b) == pytest.approx((2 * x * y + c1) / (x * x + y * y + c1), abs=1e-6)


def ssim_brute(x, y, sample_covariance=False):
    """Per-image SSIM on [0, 1] float64 images, window by window over the interior.

    Only pixels whose 11x11 window lies inside the image are scored (the
    border that depends on padding is excluded), so no padding is needed here.
    Variances are computed as weighted central moments, not E[x^2] - E[x]^2.
    """
    t = np.arange(-5, 6)
    g = np.exp(-(t**2) / (2 * 1.5**2))
    g /= g.sum()
    w = np.outer(g, g)
    norm = 121 / 120 if sample_covariance else 1.0
    c1, c2 = 0.01**2, 0.03**2
    n, h, wd, c = x.shape
    out = []
    for k in range(n):
        vals = []
        for i, j, ch in product(range(5, h - 5), range(5, wd - 5), range(c)):
            px = x[k, i - 5 : i + 6, j - 5 : j + 6, ch]
            py = y[k, i - 5 : i + 6, j - 5 : j + 6, ch]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = norm * (w * (px - mx) ** 2).sum()
            vy = norm * (w * (py - my) ** 2).sum()
            cxy = norm * (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        out.append(np.mean(vals))
    return np.array(out)


@pytest.mark.parametrize("sample_covariance", [False, True])
def test_ssim_matches_window_by_window_reference(sample_covariance):
    rng = np.random.default_rng(11)
    # Smooth-ish content plus noise so that luminance, contrast and structure all vary.
    yy, xx = np.mgrid[0:17, 0:19]
    base = 0.5 + 0.4 * np.sin(xx / 3.0)[None, :, :, None] * np.cos(yy / 4.0)[None, :, :, None]
    x = np.clip(base + 0.1 * rng.standard_normal((2, 17, 19, 3)), 0, 1)
    y = np.clip(0.8 * x + 0.1 + 0.05 * rng.standard_normal(x.shape), 0, 1)
    want = ssim_brute(x, y, sample_covariance)
    got = metrics.ssim(2 * x - 1, 2 * y - 1, reduce=False, sample_covariance=sample_covariance)
    # float32 on device against a float64 reference
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert 0.2 < want.min() and want.max() < 0.99  # a non-trivial value, far from 1


def test_ssim_chunking_does_not_change_results(monkeypatch):
    """Chunking must not change results (the last chunk is padded with zeros and dropped)."""
    rng = np.random.default_rng(12)
    a = rng.integers(0, 256, (5, 12, 13, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (5, 12, 13, 3), dtype=np.uint8)
    whole = metrics.ssim(a, b, reduce=False)
    monkeypatch.setattr(metrics, "_SSIM_CHUNK", 2)
    np.testing.assert_allclose(metrics.ssim(a, b, reduce=False), whole, atol=1e-7)


def test_paired_metrics_reject_bad_input():
    a = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="equal shapes"):
        metrics.l1(a, a[:1])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics.psnr(a, np.full((2, 16, 16, 3), 255.0))  # float in [0, 255] is a likely mistake
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(a[:, :8, :8], a[:, :8, :8])
    with pytest.raises(ValueError, match="uint8 or float"):
        metrics.l1(a.astype(np.int32), a.astype(np.int32))


# ----------------------------------------------------------------------------
# High-frequency energy
# ----------------------------------------------------------------------------


def hf_brute(image_uint8):
    """Mean |Laplacian| of BT.601 luma in grey levels, pixel by pixel over the interior."""
    y = image_uint8.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    h, w = y.shape
    values = [
        abs(y[i - 1, j] + y[i + 1, j] + y[i, j - 1] + y[i, j + 1] - 4 * y[i, j])
        for i, j in product(range(1, h - 1), range(1, w - 1))
    ]
    return np.mean(values)


def discs(seed, n=6, size=32):
    """Emoji-like test images: a few soft-edged coloured discs on white."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.full((n, size, size, 3), 255.0)
    for k in range(n):
        for _ in range(3):
            cy, cx, r = rng.uniform(6, size - 6, 2).tolist() + [rng.uniform(3, 8)]
            alpha = np.clip(r - np.hypot(yy - cy, xx - cx), 0, 1)[..., None]  # a 1 px antialiased edge
            out[k] = (1 - alpha) * out[k] + alpha * rng.uniform(0, 255, 3)
    return np.round(out).astype(np.uint8)


def test_hf_energy_flat_ramp_checkerboard_and_impulse():
    # No padding: flat images and linear ramps have no edge at the border either.
    flat = np.full((2, 9, 11, 3), 77, np.uint8)
    ramp = np.broadcast_to((8 * np.arange(32, dtype=np.uint8))[None, None, :, None], (1, 32, 32, 3))
    assert metrics.hf_energy(flat) == 0.0 and metrics.hf_energy(ramp) == pytest.approx(0.0, abs=1e-12)
    assert metrics.hf_energy(np.full((1, 8, 8, 3), 0.3)) == 0.0
    checker = np.broadcast_to((255 * (np.indices((32, 32)).sum(0) % 2)).astype(np.uint8)[None, ..., None], ramp.shape)
    assert metrics.hf_energy(checker) == pytest.approx(4 * 255, rel=1e-12)  # every pixel: 4 neighbours 255 away
    # grey levels of [0, 255] luma: a pure-red impulse in a black 5x5 image; the 3x3 valid region holds the
    # centre (|-4 x 0.299 x 255|) and its 4 neighbours (0.299 x 255 each)
    impulse = np.zeros((5, 5, 3), np.uint8)
    impulse[2, 2, 0] = 255
    assert metrics.hf_energy(impulse) == pytest.approx(8 * 0.299 * 255 / 9, rel=1e-12)


def test_hf_energy_matches_pixel_loop_and_conventions(monkeypatch):
    rng = np.random.default_rng(13)
    a = rng.integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    per = metrics.hf_energy(a, reduce=False)
    np.testing.assert_allclose(per, [hf_brute(x) for x in a], rtol=1e-12)
    assert metrics.hf_energy(a) == pytest.approx(per.mean(), rel=1e-12)
    # the same images in [-1, 1] give the same number, on the [0, 255] scale
    np.testing.assert_allclose(metrics.hf_energy(a.astype(np.float32) / 127.5 - 1, reduce=False), per, rtol=1e-5)
    monkeypatch.setattr(metrics, "_HF_CHUNK", 2)  # chunking changes nothing
    np.testing.assert_allclose(metrics.hf_energy(a, reduce=False), per, rtol=1e-15)


def test_hf_ratio_one_for_itself_above_for_noise_below_for_blur():
    real, other = discs(0), discs(1)
    assert metrics.hf_ratio(real, real) == 1.0
    assert 0.5 < metrics.hf_ratio(other, real) < 2.0  # the same kind of image: about as busy
    rng = np.random.default_rng(14)
    noisy = np.clip(other + rng.normal(0, 12, other.shape), 0, 255).astype(np.uint8)
    padded = np.pad(other.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[:, i : i + 32, j : j + 32] for i in range(3) for j in range(3)) / 9  # 3x3 box blur
    blurred = np.round(blurred).astype(np.uint8)
    base = metrics.hf_ratio(other, real)
    assert metrics.hf_ratio(noisy, real) > 1.5 * base
    assert metrics.hf_ratio(blurred, real) < 0.8 * base
    # the inverse image is exactly as busy (the evaluator's perfect synthetic translation)
    assert metrics.hf_ratio(255 - real, real) == pytest.approx(1.0, rel=1e-12)
    with np.errstate(all="raise"):  # a flat reference: no division warning, a non-finite ratio
        assert metrics.hf_ratio(real, np.full_like(real, 255)) == math.inf


def test_hf_energy_rejects_bad_input():
    with pytest.raises(ValueError, match="RGB images of at least 3x3"):
        metrics.hf_energy(np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="RGB images of at least 3x3"):
        metrics.hf_energy(np.zeros((2, 2, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics.hf_energy(np.full((1, 8, 8, 3), 255.0))
