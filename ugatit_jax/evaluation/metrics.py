"""Evaluation metrics: KID and FID on Inception features, paired L1/PSNR/SSIM, and high-frequency energy.

U-GAT-IT reports KID x 100 (mean +- std over random subsets); FID is added
because most follow-up work reports it. Feature-space metrics run in float64
NumPy: they are cheap next to feature extraction, and FID's matrix square root
needs the precision. SSIM runs as a jitted JAX function so that it uses the
accelerator when there is one.

Image conventions for the paired metrics and ``hf_energy``: arrays of shape (N, H, W, C) or
(H, W, C), either uint8 in [0, 255] or float in [-1, 1] (the generator's
range); the two arguments may use different conventions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "feature_statistics",
    "fid",
    "frechet_distance",
    "hf_energy",
    "hf_ratio",
    "kid",
    "l1",
    "psnr",
    "ssim",
]


# ----------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------

# Above this many samples per set, kernel matrices are built per subset instead
# of once for all samples (3 x n^2 float64 would no longer fit comfortably).
_KID_PRECOMPUTE_MAX = 4096


def _check_features(name: str, f) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 samples, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name}: features contain NaN or inf")
    return f


def _check_pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _check_features("feats_x", x), _check_features("feats_y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: feats_x {x.shape}, feats_y {y.shape}")
    return x, y


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cubic polynomial kernel (a.b / d + 1)^3, the KID kernel of Binkowski et al."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2: within-set sums skip the diagonal, the cross term averages all pairs."""
    m, n = kxx.shape[0], kyy.shape[0]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(
    feats_x,
    feats_y,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) of the unbiased MMD^2 over random subsets.

    Each subset draws ``m = min(subset_size, len(feats_x), len(feats_y))``
    rows of ``feats_x`` and then ``m`` rows of ``feats_y``, each without
    replacement, with ``np.random.default_rng(seed).choice``; subsets are
    independent of each other. ``std`` is the plain (ddof=0) standard
    deviation over subsets, as in Binkowski et al.'s reference code. (TF-GAN's
    ``kernel_classifier_distance_and_std`` instead uses disjoint blocks and
    returns the standard error of the mean.) Papers print both numbers x 100.
    When both sets have at most ``subset_size`` rows, every subset is the
    whole of both sets, so the mean is the full-sample estimate and std is 0.
    """
    x, y = _check_pair(feats_x, feats_y)
    if num_subsets < 1:
        raise ValueError(f"kid: num_subsets must be >= 1, got {num_subsets}")
    m = min(int(subset_size), x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"kid: subset_size must be >= 2, got {subset_size}")
    rng = np.random.default_rng(seed)
    precompute = max(x.shape[0], y.shape[0]) <= _KID_PRECOMPUTE_MAX
    if precompute:
        kxx_all, kyy_all, kxy_all = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    values = np.empty(num_subsets, np.float64)
    for s in range(num_subsets):
        ix = rng.choice(x.shape[0], m, replace=False)
        iy = rng.choice(y.shape[0], m, replace=False)
        if precompute:
            kxx = kxx_all[np.ix_(ix, ix)]
            kyy = kyy_all[np.ix_(iy, iy)]
            kxy = kxy_all[np.ix_(ix, iy)]
        else:
            xs, ys = x[ix], y[iy]
            kxx, kyy, kxy = _poly_kernel(xs, xs), _poly_kernel(ys, ys), _poly_kernel(xs, ys)
        values[s] = _mmd2_unbiased(kxx, kyy, kxy)
    return float(values.mean()), float(values.std())


# ----------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased (N-1) covariance, as pytorch-fid computes them; cache these per dataset."""
    f = _check_features("feats", feats)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) via symmetric eigendecompositions.

    S1 S2 has the same eigenvalues as S1^1/2 S2 S1^1/2, which is symmetric PSD,
    so the trace of the square root is the sum of square roots of its
    eigenvalues. Unlike a general ``sqrtm`` this stays real and accurate when
    the covariances are singular (fewer images than feature dimensions);
    round-off negatives are clipped to zero.
    """
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root1 @ sigma2 @ root1
    ev = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    """pytorch-fid's procedure, kept for bit-for-bit comparisons with published numbers."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        max_imag = np.max(np.abs(np.diagonal(covmean).imag))
        if max_imag > 1e-3:
            raise ValueError(
                f"frechet_distance: sqrtm produced an imaginary diagonal component of {max_imag:.3g}; "
                "use method='eigh', which is stable for singular covariances"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, *, method: str = "eigh", eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2).

    ``method='eigh'`` (default) is the stable eigen-based trace;
    ``method='sqrtm'`` follows pytorch-fid (scipy ``sqrtm``, ``eps`` diagonal
    offset if the result is not finite, small imaginary parts dropped).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes disagree: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}"
        )
    if method == "eigh":
        tr_covmean = _trace_sqrt_product_eigh(s1, s2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_product_sqrtm(s1, s2, eps)
    else:
        raise ValueError(f"frechet_distance: method must be 'eigh' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid(feats_x, feats_y, *, method: str = "eigh") -> float:
    """Frechet Inception Distance between two feature sets (N, D)."""
    x, y = _check_pair(feats_x, feats_y)
    return frechet_distance(*feature_statistics(x), *feature_statistics(y), method=method)


# ----------------------------------------------------------------------------
# Paired image metrics
# ----------------------------------------------------------------------------


def _as_batch(name: str, images) -> np.ndarray:
    """Validated (N, H, W, C) uint8 or float array in [-1, 1]; not yet converted."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"{name}: expected (N, H, W, C) or (H, W, C) images, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: expected uint8 or float images, got dtype {a.dtype}")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3 or not np.isfinite([lo, hi]).all():
        raise ValueError(
            f"{name}: float images must lie in [-1, 1], found range [{lo:.4g}, {hi:.4g}]; "
            "map [0, 1] images with 2*x-1 or pass uint8"
        )
    return a


def _unit(a: np.ndarray, dtype=np.float64) -> np.ndarray:
    """[0, 1] scale: uint8 / 255, float (x + 1) / 2."""
    if a.dtype == np.uint8:
        return a.astype(dtype) / dtype(255.0)
    return (a.astype(dtype) + dtype(1.0)) / dtype(2.0)


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_batch("images_a", a), _as_batch("images_b", b)
    if x.shape != y.shape:
        raise ValueError(f"paired metrics need equal shapes, got {x.shape} and {y.shape}")
    return x, y


def _reduce(per_image: np.ndarray, reduce: bool):
    return float(per_image.mean()) if reduce else per_image


def l1(images_a, images_b, *, reduce: bool = True):
    """Mean absolute error in [-1, 1] units (the scale of U-GAT-IT's cycle/identity L1 losses)."""
    x, y = _paired(images_a, images_b)
    return _reduce(2.0 * np.abs(_unit(x) - _unit(y)).mean(axis=(1, 2, 3)), reduce)


def psnr(images_a, images_b, *, reduce: bool = True):
    """PSNR in dB with data range 1 on [0, 1] images (equivalently 255 on uint8).

    Computed per image, then averaged; identical images give ``inf``.
    """
    x, y = _paired(images_a, images_b)
    mse = ((_unit(x) - _unit(y)) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        per_image = 10.0 * np.log10(1.0 / mse)
    return _reduce(per_image, reduce)


_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scipy/skimage truncation, an 11x11 window
_SSIM_K1, _SSIM_K2 = 0.01, 0.03
_SSIM_CHUNK = 64  # images per jitted call: bounds memory at 256 px (~10 maps of 64x256x256x3 f32)


def _gaussian_taps() -> np.ndarray:
    t = np.arange(-_SSIM_RADIUS, _SSIM_RADIUS + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / _SSIM_SIGMA) ** 2)
    return (k / k.sum()).astype(np.float32)


@jax.jit
def _ssim_batch(x: jax.Array, y: jax.Array, cov_norm: jax.Array) -> jax.Array:
    """SSIM maps of float32 [0, 1] NHWC images, without the padding-dependent border."""
    taps = jnp.asarray(_gaussian_taps())
    r = _SSIM_RADIUS
    h, w = x.shape[1], x.shape[2]

    def blur(a):
        # Separable Gaussian, 'valid' part only: skimage pads and then crops
        # exactly the r-pixel border the padding influences, so the padding
        # mode never reaches the score and need not be computed.
        a = sum(taps[i] * a[:, i : i + h - 2 * r] for i in range(2 * r + 1))
        return sum(taps[i] * a[:, :, i : i + w - 2 * r] for i in range(2 * r + 1))

    c1, c2 = _SSIM_K1**2, _SSIM_K2**2  # data range 1
    # (Co)variances are shift-invariant: computing them on data centred by the
    # per-image, per-channel mean avoids float32 cancellation in E[x^2] - E[x]^2
    # (flat regions then give exactly zero variance instead of ~1e-8 noise,
    # which is not negligible next to C2 = 9e-4).
    mx = jnp.mean(x, axis=(1, 2), keepdims=True)
    my = jnp.mean(y, axis=(1, 2), keepdims=True)
    xc, yc = x - mx, y - my
    c = x.shape[-1]
    # One blur over the five maps stacked on the channel axis (about twice as
    # fast on CPU as five separate blurs).
    moments = blur(jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1))
    ucx, ucy, exx, eyy, exy = (moments[..., i * c : (i + 1) * c] for i in range(5))
    vx = cov_norm * (exx - ucx * ucx)
    vy = cov_norm * (eyy - ucy * ucy)
    vxy = cov_norm * (exy - ucx * ucy)
    ux, uy = ucx + mx, ucy + my
    # The average is taken on the host in float64: a float32 sum over ~2e5
    # values drifts by ~1e-6, more than the rest of the computation.
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(images_a, images_b, *, reduce: bool = True, sample_covariance: bool = False):
    """SSIM of Wang et al. (2004): Gaussian window sigma 1.5 (11x11), K1 0.01, K2 0.03, data range 1.

    Matches ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``
    on [0, 1] images: channels are scored separately and averaged, and the
    5-pixel border that depends on padding is excluded. ``sample_covariance=True``
    applies skimage's default N/(N-1) factor (N = 121) instead.
    Float32 on device; agrees with a float64 evaluation to ~1e-6.
    """
    x, y = _paired(images_a, images_b)
    n, h, w, _ = x.shape
    if h < 2 * _SSIM_RADIUS + 1 or w < 2 * _SSIM_RADIUS + 1:
        raise ValueError(f"ssim: images must be at least 11x11 (the Gaussian window), got {h}x{w}")
    npix = (2 * _SSIM_RADIUS + 1) ** 2
    cov_norm = jnp.float32(npix / (npix - 1) if sample_covariance else 1.0)
    chunk = min(n, _SSIM_CHUNK)
    per_image = np.empty(n, np.float64)
    for start in range(0, n, chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        m = xs.shape[0]
        if m < chunk:  # keep one compiled shape; padded entries are dropped
            pad = ((0, chunk - m), (0, 0), (0, 0), (0, 0))
            xs, ys = np.pad(xs, pad), np.pad(ys, pad)
        # converted chunk by chunk: 400 float64 images of 256 px would take 1.3 GB
        out = _ssim_batch(jnp.asarray(_unit(xs, np.float32)), jnp.asarray(_unit(ys, np.float32)), cov_norm)
        per_image[start : start + m] = np.asarray(out)[:m].mean(axis=(1, 2, 3), dtype=np.float64)
    return _reduce(per_image, reduce)


# ----------------------------------------------------------------------------
# High-frequency energy: speckled or blurred?
# ----------------------------------------------------------------------------

_BT601 = np.array([0.299, 0.587, 0.114])  # luma weights of R, G, B
_HF_CHUNK = 64  # images per step: the float64 RGB copy of a step stays near 100 MB at 256 px


def hf_energy(images, *, reduce: bool = True):
    """Mean absolute Laplacian of luminance, in grey levels of the [0, 255] scale.

    Luma is BT.601 (0.299 R + 0.587 G + 0.114 B) of uint8 [0, 255] or float [-1, 1] images, both mapped to
    [0, 255] first, so the same picture gives the same number in either convention. The Laplacian is the 3x3
    4-neighbour stencil (up + down + left + right - 4 x centre) on the valid region only: the (H-2) x (W-2)
    pixels whose neighbours all exist, so no padding rule adds edges at the border. Per image the mean over
    that region; ``reduce`` averages the images. A flat image scores 0, a linear ramp 0, a 0/255 checkerboard
    1020. It measures how busy an image is at the finest scale: pixel noise and hard speckles raise it, blur
    lowers it; compare it only between sets of the same size and content (``hf_ratio``).
    """
    x = _as_batch("images", images)
    n, h, w, c = x.shape
    if c != 3 or h < 3 or w < 3:
        raise ValueError(f"hf_energy: expected RGB images of at least 3x3, got shape {x.shape}")
    per_image = np.empty(n, np.float64)
    for start in range(0, n, _HF_CHUNK):
        chunk = x[start : start + _HF_CHUNK].astype(np.float64)
        if x.dtype != np.uint8:
            chunk = (chunk + 1.0) * 127.5  # [-1, 1] -> [0, 255]
        y = chunk @ _BT601  # (n, H, W) luma in [0, 255]
        lap = y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4.0 * y[:, 1:-1, 1:-1]
        per_image[start : start + len(y)] = np.abs(lap).mean(axis=(1, 2))  # lap: (n, H-2, W-2)
    return _reduce(per_image, reduce)


def hf_ratio(images, reference) -> float:
    """``hf_energy(images) / hf_energy(reference)``: 1.0 is as busy as the reference set (real target images),
    well above is speckled or noisy, well below is blurred. ``inf`` or ``nan`` if the reference is flat."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(hf_energy(images)) / np.float64(hf_energy(reference)))
