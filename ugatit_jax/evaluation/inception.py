"""FID Inception-v3 (pytorch-fid's TF-ported variant) in Flax NNX, NHWC.

FID/KID numbers are only comparable across papers when every detail of the
feature extractor matches the reference, so this module reproduces
pytorch-fid's ``fid_inception_v3`` exactly: the TF-2015 weights file
``pt_inception-2015-12-05-6726825d.pth``, BatchNorm eps 1e-3 in inference mode,
average pools that ignore padded zeros (``count_include_pad=False``), the max
pool in the last block (``Mixed_7c``), and bilinear resizing to 299x299 with
``align_corners=False`` and no antialiasing.

Attribute names mirror the torch module names so that a state-dict key such as
``Mixed_6b.branch7x7_2.conv.weight`` maps to the module path
``Mixed_6b.branch7x7_2.conv`` without a translation table.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ugatit_jax.interop import state_dict as sd_lib
from ugatit_jax.interop.state_dict import CheckpointMismatchError, Entry, attribute, identity

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "BasicConv2d",
    "InceptionA",
    "InceptionB",
    "InceptionC",
    "InceptionD",
    "InceptionE",
    "InceptionV3",
    "assign_state_dict",
    "extract_features",
    "load_pytorch_fid_weights",
    "make_feature_fn",
    "module_state_dict",
    "resize_bilinear",
    "save_pytorch_fid_format",
]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILENAME
INPUT_SIZE = 299
NUM_CLASSES = 1008  # the TF-2015 graph has 1008 logits; kept so the file round-trips losslessly
FEATURE_DIM = 2048
BN_EPS = 1e-3

_HIGHEST = jax.lax.Precision.HIGHEST


def _he_normal(key, shape, dtype=jnp.float32):
    """He-normal init drawn with NumPy from the JAX key.

    Same distribution as ``nnx.initializers.he_normal`` but eager JAX RNG
    compiles once per kernel shape (~60 shapes, ~17 s on 2 CPU cores); NumPy
    makes building a random model take well under a second. Under tracing
    (e.g. ``nnx.eval_shape``) it falls back to the JAX initializer.
    """
    try:
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        seed = np.asarray(data).astype(np.uint64).ravel().tolist()
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return nnx.initializers.he_normal()(key, shape, dtype)
    fan_in = int(np.prod(shape[:-1]))
    draw = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return jnp.asarray(draw * np.float32(math.sqrt(2.0 / fan_in)), dtype)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
    """conv (no bias) -> BatchNorm (running stats, eps 1e-3) -> ReLU, as in torchvision."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
        precision=_HIGHEST,
        rngs: nnx.Rngs,
    ):
        kh, kw = _pair(kernel_size)
        ph, pw = _pair(padding)
        # He-normal so that random-init activations neither vanish nor explode
        # through ~45 ReLU layers; this makes random-weight parity tests meaningful.
        self.conv = nnx.Conv(
            in_ch,
            out_ch,
            (kh, kw),
            strides=(stride, stride),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=precision,
            kernel_init=_he_normal,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(out_ch, use_running_average=True, epsilon=BN_EPS, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def _max_pool(x: jax.Array, window: int, stride: int, pad: int = 0) -> jax.Array:
    """torch max_pool2d (floor mode); padding acts as -inf, so it never wins."""
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, window, window, 1),
        (1, stride, stride, 1),
        ((0, 0), (pad, pad), (pad, pad), (0, 0)),
    )


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3/stride-1/pad-1 average that divides by the number of real pixels.

    TF's pooling (and hence the FID weights) never counts padded zeros, which
    differs from torchvision's default at image borders.
    """
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    return total / count


class InceptionA(nnx.Module):
    """Mixed_5b/5c/5d (FIDInceptionA): avg-pool branch excludes padding."""

    def __init__(self, in_ch: int, pool_features: int, *, precision=_HIGHEST, rngs: nnx.Rngs):
        c = lambda i, o, k, p=0: BasicConv2d(i, o, k, padding=p, precision=precision, rngs=rngs)
        self.branch1x1 = c(in_ch, 64, 1)
        self.branch5x5_1 = c(in_ch, 48, 1)
        self.branch5x5_2 = c(48, 64, 5, 2)
        self.branch3x3dbl_1 = c(in_ch, 64, 1)
        self.branch3x3dbl_2 = c(64, 96, 3, 1)
        self.branch3x3dbl_3 = c(96, 96, 3, 1)
        self.branch_pool = c(in_ch, pool_features, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a: grid reduction 35 -> 17 (unchanged from torchvision)."""

    def __init__(self, in_ch: int, *, precision=_HIGHEST, rngs: nnx.Rngs):
        c = lambda i, o, k, s=1, p=0: BasicConv2d(i, o, k, stride=s, padding=p, precision=precision, rngs=rngs)
        self.branch3x3 = c(in_ch, 384, 3, 2)
        self.branch3x3dbl_1 = c(in_ch, 64, 1)
        self.branch3x3dbl_2 = c(64, 96, 3, 1, 1)
        self.branch3x3dbl_3 = c(96, 96, 3, 2)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = _max_pool(x, 3, 2)
        return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b..6e (FIDInceptionC): factorised 7x7 convs; avg-pool excludes padding."""

    def __init__(self, in_ch: int, channels_7x7: int, *, precision=_HIGHEST, rngs: nnx.Rngs):
        c = lambda i, o, k, p=0: BasicConv2d(i, o, k, padding=p, precision=precision, rngs=rngs)
        c7 = channels_7x7
        self.branch1x1 = c(in_ch, 192, 1)
        self.branch7x7_1 = c(in_ch, c7, 1)
        self.branch7x7_2 = c(c7, c7, (1, 7), (0, 3))
        self.branch7x7_3 = c(c7, 192, (7, 1), (3, 0))
        self.branch7x7dbl_1 = c(in_ch, c7, 1)
        self.branch7x7dbl_2 = c(c7, c7, (7, 1), (3, 0))
        self.branch7x7dbl_3 = c(c7, c7, (1, 7), (0, 3))
        self.branch7x7dbl_4 = c(c7, c7, (7, 1), (3, 0))
        self.branch7x7dbl_5 = c(c7, 192, (1, 7), (0, 3))
        self.branch_pool = c(in_ch, 192, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(bd))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        bp = self.branch_pool(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a: grid reduction 17 -> 8 (unchanged from torchvision)."""

    def __init__(self, in_ch: int, *, precision=_HIGHEST, rngs: nnx.Rngs):
        c = lambda i, o, k, s=1, p=0: BasicConv2d(i, o, k, stride=s, padding=p, precision=precision, rngs=rngs)
        self.branch3x3_1 = c(in_ch, 192, 1)
        self.branch3x3_2 = c(192, 320, 3, 2)
        self.branch7x7x3_1 = c(in_ch, 192, 1)
        self.branch7x7x3_2 = c(192, 192, (1, 7), 1, (0, 3))
        self.branch7x7x3_3 = c(192, 192, (7, 1), 1, (3, 0))
        self.branch7x7x3_4 = c(192, 192, 3, 2)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(b7)))
        bp = _max_pool(x, 3, 2)
        return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b (``pool='avg'``, FIDInceptionE_1) and Mixed_7c (``pool='max'``, FIDInceptionE_2).

    The TF graph behind the FID weights uses a 3x3 *max* pool in the last
    block; replicating that quirk is required for comparable FID values.
    """

    def __init__(self, in_ch: int, *, pool: str, precision=_HIGHEST, rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"InceptionE: pool must be 'avg' or 'max', got {pool!r}")
        c = lambda i, o, k, p=0: BasicConv2d(i, o, k, padding=p, precision=precision, rngs=rngs)
        self.pool = pool
        self.branch1x1 = c(in_ch, 320, 1)
        self.branch3x3_1 = c(in_ch, 384, 1)
        self.branch3x3_2a = c(384, 384, (1, 3), (0, 1))
        self.branch3x3_2b = c(384, 384, (3, 1), (1, 0))
        self.branch3x3dbl_1 = c(in_ch, 448, 1)
        self.branch3x3dbl_2 = c(448, 384, 3, 1)
        self.branch3x3dbl_3a = c(384, 384, (1, 3), (0, 1))
        self.branch3x3dbl_3b = c(384, 384, (3, 1), (1, 0))
        self.branch_pool = c(in_ch, 192, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        if self.pool == "max":
            pooled = _max_pool(x, 3, 1, 1)
        else:
            pooled = _avg_pool_3x3_exclude_pad(x)
        bp = self.branch_pool(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) interpolation weights of torch's bilinear, align_corners=False, no antialias.

    Written as a matrix so the resize is two small matmuls and, unlike
    ``jax.image.resize``, never low-pass filters when shrinking (torch does not).
    The arithmetic follows torch's float32 kernel, whose source index
    ``scale * (i + 0.5) - 0.5`` is one fused multiply-add (a single rounding);
    emulating that keeps the weights bit-equal instead of ~2e-6 off.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        # float64 holds the float32 x (i + 0.5) product exactly, so one final
        # rounding to float32 reproduces the FMA.
        src = f32(float(scale) * (i + 0.5) - 0.5)
        src = max(src, f32(0.0))
        i0 = min(math.floor(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = min(max(src - f32(i0), f32(0.0)), f32(1.0))
        m[i, i0] += f32(1.0) - frac
        m[i, i1] += frac
    return m


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resize NHWC images like ``F.interpolate(mode='bilinear', align_corners=False)``."""
    _, h, w, _ = images.shape
    mh = jnp.asarray(_bilinear_matrix(h, size[0]))
    mw = jnp.asarray(_bilinear_matrix(w, size[1]))
    x = jnp.einsum("oh,bhwc->bowc", mh, images, precision=_HIGHEST)
    return jnp.einsum("pw,bowc->bopc", mw, x, precision=_HIGHEST)


class InceptionV3(nnx.Module):
    """pytorch-fid's FID Inception-v3 up to the 2048-d pool3 features.

    Input: NHWC images in [-1, 1] (float) or uint8 in [0, 255], any spatial
    size. pytorch-fid takes [0, 1] images, resizes, then maps to [-1, 1];
    resizing is linear with weights summing to one, so resizing our [-1, 1]
    input directly gives the same tensor.

    ``precision`` defaults to HIGHEST so GPU/TPU runs do not silently switch to
    TF32/bf16 convolutions and shift FID relative to the float32 reference.
    """

    def __init__(self, *, rngs: nnx.Rngs, precision=_HIGHEST):
        kw = {"precision": precision, "rngs": rngs}
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, **kw)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, **kw)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, **kw)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, **kw)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, **kw)
        self.Mixed_5b = InceptionA(192, 32, **kw)
        self.Mixed_5c = InceptionA(256, 64, **kw)
        self.Mixed_5d = InceptionA(288, 64, **kw)
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b = InceptionC(768, 128, **kw)
        self.Mixed_6c = InceptionC(768, 160, **kw)
        self.Mixed_6d = InceptionC(768, 160, **kw)
        self.Mixed_6e = InceptionC(768, 192, **kw)
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = InceptionE(1280, pool="avg", **kw)
        self.Mixed_7c = InceptionE(2048, pool="max", **kw)
        # Unused for FID; kept so a pytorch-fid file loads and saves without loss.
        self.fc = nnx.Linear(FEATURE_DIM, NUM_CLASSES, precision=precision, kernel_init=_he_normal, rngs=rngs)

    def __call__(self, images: jax.Array, *, resize: bool = True) -> jax.Array:
        """Pool3 features (B, 2048); ``resize=False`` skips the 299x299 resize."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"InceptionV3 expects NHWC RGB images of shape (B, H, W, 3), got {images.shape}")
        if images.dtype == jnp.uint8:
            x = images.astype(jnp.float32) / 127.5 - 1.0
        else:
            x = images.astype(jnp.float32)
        if resize:
            x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = _max_pool(x, 3, 2)
        for block in (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
            self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
            self.Mixed_7c,
        ):  # fmt: skip
            x = block(x)
        return jnp.mean(x, axis=(1, 2))

    def logits(self, features: jax.Array) -> jax.Array:
        """1008-way ImageNet logits of the TF graph (e.g. for Inception Score)."""
        return self.fc(features)


# ----------------------------------------------------------------------------
# State-dict mapping (pytorch-fid key format <-> NNX variables)
# ----------------------------------------------------------------------------


def _named_basic_convs(module: nnx.Module, prefix: str = "") -> Iterator[tuple[str, BasicConv2d]]:
    """BasicConv2d submodules with torch-style dotted names, in definition order."""
    for name, child in vars(module).items():
        if isinstance(child, BasicConv2d):
            yield prefix + name, child
        elif isinstance(child, nnx.Module):
            yield from _named_basic_convs(child, prefix + name + ".")


_BN_COUNTER = ".bn.num_batches_tracked"  # a training counter some torch versions save beside each batch norm
_HINT = f"; expected pytorch-fid's {FID_WEIGHTS_FILENAME} from {FID_WEIGHTS_URL}"  # ends every error of a bad file


def _entries(module: nnx.Module) -> Iterator[Entry]:
    """The pytorch-fid key mapping of a module (the whole network, or a single block), in torch order."""
    for name, bc in _named_basic_convs(module):
        yield f"{name}.conv.weight", attribute(bc.conv, "kernel"), sd_lib.conv_to_ours, sd_lib.conv_to_torch
        for key, ours in (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var")):
            yield f"{name}.bn.{key}", attribute(bc.bn, ours), identity, identity
    fc = getattr(module, "fc", None)
    if isinstance(fc, nnx.Linear):
        yield "fc.weight", attribute(fc, "kernel"), sd_lib.transpose, sd_lib.transpose
        yield "fc.bias", attribute(fc, "bias"), identity, identity


def module_state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
    """Torch-layout float32 arrays keyed like pytorch-fid (works for a single block too)."""
    return sd_lib.state_dict(_entries(module))


def assign_state_dict(
    module: nnx.Module, state_dict: Mapping[str, np.ndarray], *, source: str = "state dict"
) -> nnx.Module:
    """Copy torch-layout arrays into ``module`` in place after checking every key and shape (``state_dict.py``:
    a rejected file leaves the module untouched). ``*.bn.num_batches_tracked`` (a training counter some torch
    versions save) is accepted and ignored beside its batch norm."""
    entries = list(_entries(module))
    expected = {key for key, *_ in entries}
    # counters beside an expected batch norm are dropped; any other stays and is refused as unexpected
    counted = {
        k for k in state_dict if k.endswith(_BN_COUNTER) and k.removesuffix(_BN_COUNTER) + ".bn.weight" in expected
    }
    weights = {k: v for k, v in state_dict.items() if k not in counted}
    sd_lib.load_state_dict(entries, weights, source=source, hint=_HINT)
    return module


def load_pytorch_fid_weights(path: str | os.PathLike, *, precision=_HIGHEST) -> InceptionV3:
    """Build an InceptionV3 from pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``.

    Uses ``torch.load(weights_only=True)`` so a hostile file cannot run code;
    nothing is downloaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights not found at {path!r}. Download {FID_WEIGHTS_FILENAME} "
            f"(the pytorch-fid GitHub release asset) from {FID_WEIGHTS_URL} and pass its path; "
            "nothing is downloaded automatically."
        )
    raw = sd_lib.torch_load(path, hint=_HINT)
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and hasattr(v, "shape") for k, v in raw.items()):
        keys = f" with keys {list(raw)[:5]}" if isinstance(raw, Mapping) else ""
        raise CheckpointMismatchError(
            f"{path}: expected a flat state dict of tensors, got {type(raw).__name__}{keys}{_HINT}"
        )
    model = InceptionV3(rngs=nnx.Rngs(0), precision=precision)
    return assign_state_dict(model, raw, source=path)


def save_pytorch_fid_format(model: InceptionV3, path: str | os.PathLike) -> None:
    """Write ``model`` as a pytorch-fid-compatible state dict (inverse of the loader)."""
    sd_lib.torch_save(module_state_dict(model), path)


# ----------------------------------------------------------------------------
# Batched feature extraction
# ----------------------------------------------------------------------------


def make_feature_fn(model: InceptionV3) -> Callable[[jax.Array], jax.Array]:
    """Jitted ``images (B,H,W,3) -> (B, 2048) float32``.

    Weights are passed as an argument rather than closed over, so the 95 MB
    of parameters are not baked into the compiled program as constants.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def _features(state, images):
        return nnx.merge(graphdef, state)(images).astype(jnp.float32)

    def feature_fn(images):
        return _features(state, images)

    return feature_fn


def extract_features(
    feature_fn: Callable[[jax.Array], jax.Array],
    images: np.ndarray,
    *,
    batch_size: int = 50,
) -> np.ndarray:
    """Features of many images in fixed-size batches (the last one zero-padded).

    A constant batch shape means a single compilation however many images
    there are. ``images``: (N, H, W, 3), uint8 or float in [-1, 1].
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"extract_features: expected (N, H, W, 3) images, got {images.shape}")
    if images.dtype != np.uint8:
        lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(
                f"extract_features: float images must lie in [-1, 1], found range [{lo:.3g}, {hi:.3g}]; "
                "convert [0, 1] images with 2*x-1 or pass uint8"
            )
    n = images.shape[0]
    out = np.zeros((n, FEATURE_DIM), np.float32)
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        m = batch.shape[0]
        if m < batch_size:
            pad = np.zeros((batch_size - m, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad], axis=0)
        out[start : start + m] = np.asarray(feature_fn(jnp.asarray(batch)))[:m]
    return out
