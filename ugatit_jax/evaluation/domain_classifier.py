"""A small A-vs-B domain classifier, trained once per dataset and cached, to judge "does it look like the target".

Paired L1 / PSNR / SSIM reward copying the input whenever the two domains draw the same content with different
geometry (the emoji set), and Inception KID/FID need weights the user supplies and are meant for photos. A CNN
trained to tell the two *training* splits apart gives a measure for any two-domain dataset in seconds on a CPU:
the share of translations it assigns to the target domain, and a KID in its feature space (the penultimate
layer) between translations and real target images (see ``evaluation/scores.py``).

The recipe is fixed (architecture, 32 px inputs, official-style random flip and crop, steps, seed) so the number
means the same thing in every run; its weights are cached under ``classifiers/<key>/`` next to the emoji cache
(``$UGATIT_DATA_DIR`` or ``~/.cache/ugatit_jax``), keyed by a hash of the recipe and of the training files, so a
changed dataset retrains and an unchanged one loads in milliseconds. Weights are a flat ``numpy.savez`` dict
(no pickle), written to a temporary file and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util

from ugatit_jax.data.transforms import as_model_input, test_transform

log = logging.getLogger("ugatit_jax")

# Bump when anything below changes what a trained classifier is: old cache entries are then never reused.
RECIPE_VERSION = 1
INPUT_SIZE = 32  # enough for outlines, palette and texture; keeps training to seconds on a CPU
SOURCE_SIZE = 64  # training images are kept at this size; crops are resampled from it to INPUT_SIZE
MIN_CROP = 0.75  # random crops keep 75-100% of the side (the official 256-of-286 crop keeps 90%)
WIDTH = 32
STEPS = 300
BATCH_PER_DOMAIN = 32
LEARNING_RATE = 2e-3
SEED = 0
MAX_IMAGES_PER_DOMAIN = 4000  # evenly spaced over a larger split: bounds memory and load time on photo datasets
EVAL_BATCH = 64
WEIGHTS_FILE = "classifier.npz"


def recipe() -> dict:
    """Everything that defines a trained classifier besides its data; part of the cache key."""
    return {
        "version": RECIPE_VERSION,
        "input_size": INPUT_SIZE,
        "source_size": SOURCE_SIZE,
        "min_crop": MIN_CROP,
        "width": WIDTH,
        "steps": STEPS,
        "batch_per_domain": BATCH_PER_DOMAIN,
        "learning_rate": LEARNING_RATE,
        "seed": SEED,
        "max_images_per_domain": MAX_IMAGES_PER_DOMAIN,
    }


class DomainClassifier(nnx.Module):
    """Four 3x3 stride-2 convolutions with ReLU (32 -> 2 px), global average pool, one logit (> 0: domain B).

    No normalisation layers: the classifier must see absolute colour and contrast, which instance norm would
    remove, and batch statistics would make a test image's score depend on its batch.
    """

    def __init__(self, width: int = WIDTH, *, rngs: nnx.Rngs):
        conv = lambda i, o, s: nnx.Conv(i, o, (3, 3), strides=s, padding="SAME", rngs=rngs)
        self.convs = nnx.List([conv(3, width, 2), conv(width, width, 2), conv(width, 2 * width, 2)])
        self.convs.append(conv(2 * width, 2 * width, 2))
        self.head = nnx.Linear(2 * width, 1, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The penultimate layer: (N, 2 * width) pooled activations of float [-1, 1] NHWC images at INPUT_SIZE."""
        for conv in self.convs:
            x = nnx.relu(conv(x))
        return x.mean(axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))[:, 0]


def _resample_matrix(size: int, start: jax.Array, side: jax.Array) -> jax.Array:
    """(N, INPUT_SIZE, size) rows that resample the window [start, start + side) of a length-``size`` axis to
    INPUT_SIZE pixels with a triangle filter widened to the scale when shrinking (antialiased bilinear, as PIL's
    and ``jax.image.resize``'s), each row normalised to sum 1. Two such matmuls replace
    ``jax.image.scale_and_translate``, which took ~7 s to compile here against well under one."""
    scale = side / INPUT_SIZE  # input pixels per output pixel
    centres = start[:, None] + (jnp.arange(INPUT_SIZE) + 0.5)[None] * scale[:, None]  # (N, S) input coordinates
    radius = jnp.maximum(scale, 1.0)[:, None, None]
    distance = jnp.abs((jnp.arange(size) + 0.5)[None, None] - centres[..., None])  # (N, S, size)
    weights = jnp.maximum(0.0, 1.0 - distance / radius)
    return weights / weights.sum(-1, keepdims=True)


def _resample(images: jax.Array, top: jax.Array, left: jax.Array, side: jax.Array) -> jax.Array:
    size = images.shape[1]
    rows, cols = _resample_matrix(size, top, side), _resample_matrix(size, left, side)
    return jnp.einsum("nyh,nhwc,nxw->nyxc", rows, images, cols, precision=jax.lax.Precision.HIGHEST)


def resize_to_input(images: jax.Array) -> jax.Array:
    """Float square NHWC images of any size -> INPUT_SIZE (a translation at 256 px is judged at 32 px): the
    augmentation's crop of the whole image, so test images sit inside the training distribution."""
    n, size = images.shape[0], images.shape[1]
    zero, whole = jnp.zeros((n,)), jnp.full((n,), float(size))
    return _resample(images, zero, zero, whole)


def random_crop_flip(key: jax.Array, images: jax.Array, min_crop: float = MIN_CROP) -> jax.Array:
    """Official-style augmentation at INPUT_SIZE: flip with p=0.5, a random square crop of ``min_crop``-100% of the
    side at a random position, resampled to INPUT_SIZE. Crops near 100% are ``resize_to_input`` of the whole
    image, so the classifier sees test-like images too and cannot key on cropping."""
    n, size = images.shape[0], images.shape[1]
    k_flip, k_frac, k_pos = jax.random.split(key, 3)
    flip = jax.random.bernoulli(k_flip, 0.5, (n,))
    images = jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)
    side = size * jax.random.uniform(k_frac, (n,), minval=min_crop, maxval=1.0)
    top, left = ((size - side)[:, None] * jax.random.uniform(k_pos, (n, 2))).T
    return _resample(images, top, left, side)


# ----------------------------------------------------------------------------
# Cache key and storage
# ----------------------------------------------------------------------------


def cache_root() -> str:
    """``$UGATIT_DATA_DIR/classifiers`` or ``~/.cache/ugatit_jax/classifiers``: beside the emoji cache."""
    from ugatit_jax.data.emoji import default_cache_dir

    return os.path.join(os.path.dirname(default_cache_dir()), "classifiers")


def split_fingerprint(split) -> dict:
    """What identifies a split's contents cheaply: files by (path, size, mtime), in-memory images by their bytes,
    anything else (TFDS) by its location and keys. A rebuilt or edited dataset therefore gets a new key."""
    entry = {"location": split.location, "count": len(split)}
    digest = hashlib.sha256()
    if hasattr(split, "files") and hasattr(split, "folder"):
        for file in split.files:
            st = os.stat(os.path.join(split.folder, file))
            digest.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    elif hasattr(split, "images"):
        for key, image in zip(split.keys, split.images):
            a = np.ascontiguousarray(image)
            digest.update(f"{key}\0{a.shape}\0{a.dtype}\n".encode())
            digest.update(a.tobytes())
    else:
        digest.update("\n".join(map(str, split.keys)).encode())
    entry["sha256"] = digest.hexdigest()
    return entry


def classifier_key(source) -> str:
    """Hash of the recipe and the two training splits: the classifier's cache folder name."""
    identity = {
        "recipe": recipe(),
        "trainA": split_fingerprint(source.train_a),
        "trainB": split_fingerprint(source.train_b),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _flat_params(state) -> dict[str, np.ndarray]:
    """{'convs/0/kernel': array}: npz member names; list indices of ``nnx.List`` become digits."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    return {"/".join(map(str, path)): np.asarray(value) for path, value in flat.items()}


def save_weights(model: DomainClassifier, path: str, meta: dict) -> None:
    """A flat {'convs/0/kernel': array} npz plus a JSON metadata string, written atomically (temp file + rename)."""
    flat = _flat_params(nnx.state(model, nnx.Param))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".classifier-", suffix=".npz", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __meta__=np.array(json.dumps(meta)), **flat)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_weights(path: str) -> tuple[DomainClassifier, dict] | None:
    """The classifier and its metadata from ``save_weights``' file; None if missing, unreadable or mismatched."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("__meta__")))
    except (OSError, ValueError, KeyError):
        return None
    if meta.get("recipe") != recipe():
        return None
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: DomainClassifier(rngs=nnx.Rngs(0))), nnx.Param)
    paths = traverse_util.flatten_dict(nnx.to_pure_dict(abstract))
    names = {"/".join(map(str, path)): path for path in paths}
    if set(names) != set(arrays) or any(arrays[n].shape != paths[p].shape for n, p in names.items()):
        return None
    pure = traverse_util.unflatten_dict({path: jnp.asarray(arrays[name]) for name, path in names.items()})
    nnx.replace_by_pure_dict(abstract, pure)
    return nnx.merge(graphdef, abstract), meta


# ----------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------


def _evenly_spaced(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else sorted(set(np.linspace(0, n - 1, k).round().astype(int).tolist()))


def load_train_images(split, size: int = SOURCE_SIZE, limit: int = MAX_IMAGES_PER_DOMAIN) -> np.ndarray:
    """uint8 (N, size, size, 3): up to ``limit`` evenly spaced images of ``split`` (unreadable ones replaced by the
    next readable one, as in training), resized as the test transform resizes."""
    return np.stack([test_transform(split[i], size) for i in _evenly_spaced(len(split), limit)])


def train_classifier(images_a: np.ndarray, images_b: np.ndarray, *, steps: int, seed: int = SEED):
    """(classifier, final training loss) on uint8 (N, H, W, 3) images of each domain; deterministic given seed.

    Each step draws BATCH_PER_DOMAIN images of each domain (numpy RNG) and augments them on the device.
    """
    model = DomainClassifier(rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(LEARNING_RATE)
    opt_state = tx.init(params)
    labels = jnp.concatenate([jnp.zeros(BATCH_PER_DOMAIN), jnp.ones(BATCH_PER_DOMAIN)])

    @jax.jit
    def step(params, opt_state, batch, key):
        x = random_crop_flip(key, as_model_input(batch))

        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(x)
            return optax.sigmoid_binary_cross_entropy(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    loss = jnp.nan
    for _ in range(steps):
        ia = rng.integers(0, len(images_a), BATCH_PER_DOMAIN)
        ib = rng.integers(0, len(images_b), BATCH_PER_DOMAIN)
        key, sub = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, np.concatenate([images_a[ia], images_b[ib]]), sub)
    return nnx.merge(graphdef, params), float(loss)


def load_or_train(source, cache_dir: str | None = None, *, steps: int | None = None) -> tuple[DomainClassifier, dict]:
    """The dataset's cached classifier, training and caching it on the training splits first if needed.

    Returns (classifier, info); info has the cache key and path, whether it was trained now, the training time
    and image counts. ``steps`` other than the recipe's STEPS (tests) is part of the key.
    """
    steps = STEPS if steps is None else steps
    key = classifier_key(source) if steps == STEPS else f"{classifier_key(source)}-steps{steps}"
    path = os.path.join(os.path.expanduser(cache_dir or cache_root()), key, WEIGHTS_FILE)
    loaded = load_weights(path)
    if loaded is not None:
        model, meta = loaded
        return model, {**meta, "key": key, "path": path, "trained_now": False}
    started = time.perf_counter()
    images_a, images_b = load_train_images(source.train_a), load_train_images(source.train_b)
    loaded_s = time.perf_counter() - started
    model, loss = train_classifier(images_a, images_b, steps=steps)
    meta = {
        "recipe": recipe(),
        "dataset": source.name,
        "train_images": {"trainA": len(images_a), "trainB": len(images_b)},
        "steps": steps,
        "final_loss": loss,
        "load_seconds": round(loaded_s, 2),
        "train_seconds": round(time.perf_counter() - started - loaded_s, 2),
    }
    save_weights(model, path, meta)
    log.info(
        "domain classifier for %s trained in %.1f s (+%.1f s loading %d + %d images); cached in %s",
        source.name,
        meta["train_seconds"],
        loaded_s,
        len(images_a),
        len(images_b),
        path,
    )
    return model, {**meta, "key": key, "path": path, "trained_now": True}


# ----------------------------------------------------------------------------
# Applying it
# ----------------------------------------------------------------------------


def make_scorer(model: DomainClassifier) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``fn(uint8 or [-1, 1] float NHWC images of any size) -> (logits (N,), features (N, D))`` as numpy, in
    fixed-size padded batches (one compilation per image size)."""
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def apply(params, x):
        model = nnx.merge(graphdef, params)
        h = model.features(resize_to_input(as_model_input(x)))
        return model.head(h)[:, 0], h

    def score(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from ugatit_jax.inference import padded_batches

        logits, feats = [], []
        batch = max(1, min(EVAL_BATCH, len(images)))
        for x, n in padded_batches(list(images), batch):
            lo, fe = apply(params, x)
            logits.append(np.asarray(lo[:n]))
            feats.append(np.asarray(fe[:n]))
        if not logits:
            return np.zeros((0,), np.float32), np.zeros((0, 2 * WIDTH), np.float32)
        return np.concatenate(logits), np.concatenate(feats)

    return score


def held_out_accuracy(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Share of test images assigned to their own domain (A: logit <= 0, B: logit > 0), both domains pooled."""
    correct = int(np.sum(np.asarray(logits_a) <= 0)) + int(np.sum(np.asarray(logits_b) > 0))
    return correct / max(1, len(logits_a) + len(logits_b))


def target_rate(logits: np.ndarray, target: str) -> float:
    """Share of images the classifier assigns to domain ``target`` ('A' or 'B'): for translations X->Y, how often
    they pass for Y; for the untranslated inputs, the baseline (about 1 - held-out accuracy on X)."""
    if target not in ("A", "B"):
        raise ValueError(f"target_rate: target must be 'A' or 'B', got {target!r}")
    logits = np.asarray(logits)
    if not len(logits):
        return float("nan")
    return float(np.mean(logits > 0 if target == "B" else logits <= 0))
