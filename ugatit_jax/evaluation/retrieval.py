"""Content kept: is a translation nearer its own true target than the other test targets are?

For datasets whose test images have a known true translation (the emoji set's 389 pairs), each translation is a
query against the gallery of all paired targets; top-k is the share of queries whose own target is among the k
nearest. A generator that keeps *which* emoji it was given scores high; one that draws a generic target-style
image (mode collapse) falls to chance, k / gallery size. The untranslated input is scored the same way as the
baseline, and the target itself scores 100%.

The content space is deliberately crude and style-blind: an 8x8 area-averaged colour thumbnail, standardised per
image (zero mean, unit variance over its 192 values). At 8 px the outlines, line widths and shading that tell
OpenMoji from Twemoji are averaged away, leaving the layout of colour masses (a yellow disc, a red heart, a
flag's stripes); the standardisation removes overall brightness and contrast, which OpenMoji's black outlines
shift. On the emoji test pairs this was the best of the simple spaces tried (grey or colour, 4-32 px, blurred or
not, foreground masks, chroma): the input finds its own target in the top 5 about a quarter of the time, against
1.3% by chance. It measures *what* is drawn, not how well; the domain classifier's scores measure the style.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMBNAIL = 8
TOP_K = (1, 5)


def content_features(images: np.ndarray, size: int = THUMBNAIL) -> np.ndarray:
    """(N, size * size * 3) float64: area-averaged thumbnails of uint8 NHWC images, standardised per image."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"content_features: expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    thumbs = np.stack(
        [np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BOX), np.float64) for x in images]
    ).reshape(len(images), -1)
    thumbs -= thumbs.mean(axis=1, keepdims=True)
    return thumbs / (thumbs.std(axis=1, keepdims=True) + 1e-6)


def ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Rank of query i's own item (gallery row i) among all gallery rows by squared L2 distance: the number of
    rows strictly nearer, so 0 is a hit at top-1 and a tie never counts against the query."""
    queries, gallery = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    if queries.shape != gallery.shape or queries.ndim != 2:
        raise ValueError(f"ranks: queries {queries.shape} and gallery {gallery.shape} must be equal (N, D)")
    distance = (queries**2).sum(1)[:, None] - 2 * queries @ gallery.T + (gallery**2).sum(1)[None]
    own = np.diagonal(distance)[:, None]
    # The expanded form rounds: a tolerance keeps an exact copy of the target (distance 0) a hit.
    tolerance = 1e-9 * (1.0 + np.abs(own))
    return (distance < own - tolerance).sum(axis=1)


def top_k(queries: np.ndarray, gallery: np.ndarray, ks=TOP_K) -> dict[int, float]:
    """{k: share of queries whose own gallery row is among the k nearest}."""
    r = ranks(queries, gallery)
    return {k: float((r < k).mean()) if len(r) else float("nan") for k in ks}


def retrieval_scores(translations: np.ndarray, inputs: np.ndarray, targets: np.ndarray, ks=TOP_K) -> dict:
    """top-k of the translations and of the untranslated inputs, all uint8 (N, H, W, 3) in pair order; keys
    ``top1``, ``top5``, ``top1_input``, ``top5_input``."""
    gallery = content_features(targets)
    ours = top_k(content_features(translations), gallery, ks)
    base = top_k(content_features(inputs), gallery, ks)
    return {**{f"top{k}": v for k, v in ours.items()}, **{f"top{k}_input": v for k, v in base.items()}}
