"""U-GAT-IT generator (full and light) and multi-scale discriminator, in the official layer order, NHWC.

Attribute names below are ours; ``torch_import.py`` maps them to the official state-dict keys.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ugatit_jax.nn import layers
from ugatit_jax.nn.attention import CAMAttention
from ugatit_jax.nn.norms import ILN, AdaILN, instance_norm
from ugatit_jax.nn.spectral_norm import SpectralNorm

N_DOWNSAMPLING = 2  # fixed in the official generator: features are img_size / 4 wide


class ResnetBlock(nnx.Module):
    """Encoder residual block: (pad, conv3, IN, ReLU, pad, conv3, IN) + skip."""

    def __init__(self, dim: int, *, dtype=None, rngs: nnx.Rngs):
        self.conv1 = layers.conv(dim, dim, 3, use_bias=False, dtype=dtype, rngs=rngs)
        self.conv2 = layers.conv(dim, dim, 3, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        y = jax.nn.relu(instance_norm(self.conv1(layers.reflect_pad(x, 1))))
        y = instance_norm(self.conv2(layers.reflect_pad(y, 1)))
        return x + y


class ResnetAdaILNBlock(nnx.Module):
    """Decoder residual block whose normalisations take gamma, beta from the attention MLP."""

    def __init__(self, dim: int, *, dtype=None, rngs: nnx.Rngs):
        self.conv1 = layers.conv(dim, dim, 3, use_bias=False, dtype=dtype, rngs=rngs)
        self.norm1 = AdaILN(dim)
        self.conv2 = layers.conv(dim, dim, 3, use_bias=False, dtype=dtype, rngs=rngs)
        self.norm2 = AdaILN(dim)

    def __call__(self, x, gamma, beta):
        y = jax.nn.relu(self.norm1(self.conv1(layers.reflect_pad(x, 1)), gamma, beta))
        y = self.norm2(self.conv2(layers.reflect_pad(y, 1)), gamma, beta)
        return x + y


class UpBlock(nnx.Module):
    """Nearest x2 upsampling, pad, conv3, ILN, ReLU."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, dtype=None, rngs: nnx.Rngs):
        out_ch = out_ch or in_ch // 2  # the generator halves the channels at every step
        self.conv = layers.conv(in_ch, out_ch, 3, use_bias=False, dtype=dtype, rngs=rngs)
        self.norm = ILN(out_ch)

    def __call__(self, x):
        x = layers.upsample_nearest2x(x)
        return jax.nn.relu(self.norm(self.conv(layers.reflect_pad(x, 1))))


class AdaILNGenerator(nnx.Module):
    """The generator both families share: a front end of the subclass's (``_init_front`` and its ``__call__``),
    then the AdaILN decoder: an MLP from the feature map to AdaILN's gamma, beta, ``n_res`` AdaILN residual blocks,
    two up-sampling blocks and a 7x7 convolution to RGB.

    One constructor for both, so the arguments, the size check and the official creation order (front end first,
    then the decoder) are written once. Attribute names stay the generator's own, so checkpoints and the official
    key mapping see one flat module. ``light=False`` feeds the whole (H/4 * W/4 * 4ch) feature map to the MLP
    (the paper's models, ~280M parameters at 256 px); ``light=True`` feeds its global average.
    """

    N_RES: int  # the official default number of AdaILN residual blocks
    ADAILN_BLOCK: type  # (dim, *, dtype, rngs) -> block(x, gamma, beta)
    UP_BLOCK: type  # (in_ch, *, dtype, rngs) -> block(x): twice the size, half the channels

    def __init__(
        self,
        ch: int = 64,
        n_res: int | None = None,  # None: N_RES
        img_size: int = 256,
        light: bool = False,
        *,
        out_ch: int = 3,
        dtype=None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        if img_size % 2**N_DOWNSAMPLING:  # the MLP reads a feature map of exactly img_size / 4
            raise ValueError(f"img_size must be divisible by {2**N_DOWNSAMPLING}, got {img_size}")
        n_res = self.N_RES if n_res is None else n_res
        self._init_front(ch, n_res, dtype=dtype, rngs=rngs)
        dim = ch * 2**N_DOWNSAMPLING
        feat = img_size // 2**N_DOWNSAMPLING
        linear = functools.partial(layers.linear, use_bias=False, dtype=dtype, rngs=rngs)
        self.light = light
        self.img_size = img_size
        self.fc1 = linear(dim if light else feat * feat * dim, dim)
        self.fc2 = linear(dim, dim)
        self.gamma = linear(dim, dim)
        self.beta = linear(dim, dim)
        self.adailn_blocks = nnx.List([self.ADAILN_BLOCK(dim, dtype=dtype, rngs=rngs) for _ in range(n_res)])
        self.up = nnx.List([self.UP_BLOCK(dim // 2**i, dtype=dtype, rngs=rngs) for i in range(N_DOWNSAMPLING)])
        self.to_rgb = layers.conv(ch, out_ch, 7, use_bias=False, dtype=dtype, rngs=rngs)
        self.dtype = dtype
        self.remat = remat

    def _init_front(self, ch: int, n_res: int, *, dtype, rngs: nnx.Rngs) -> None:
        """Create what comes before the decoder (called first: the official creation order)."""
        raise NotImplementedError

    def decode(self, x: jax.Array) -> jax.Array:
        """Feature map (B, H/4, W/4, 4ch) -> image (B, H, W, out_ch) in [-1, 1], float32."""
        if self.light:
            h = self.fc1(jnp.mean(x, axis=(1, 2)))  # (B, 4ch)
        else:
            h = layers.wide_layer(self.fc1, x.reshape(x.shape[0], -1))  # (B, H/4 * W/4 * 4ch) -> (B, 4ch)
        h = jax.nn.relu(self.fc2(jax.nn.relu(h)))
        gamma, beta = self.gamma(h), self.beta(h)  # (B, 4ch) each
        call = self._block_call()
        for block in self.adailn_blocks:
            x = call(block, x, gamma, beta)
        for up in self.up:
            x = up(x)  # (B, H/2, W/2, 2ch), then (B, H, W, ch)
        return jnp.tanh(self.to_rgb(layers.reflect_pad(x, 3))).astype(jnp.float32)

    def _block_call(self):
        """remat: recompute each residual block in the backward pass instead of storing its activations.

        A Python loop over the blocks, not lax.scan over stacked ones: on XLA:CPU the scanned weight-gradient
        convolution leaves the Eigen path (the emoji step took 5.3 s instead of 0.55 s) for 6% less compile time
        at 256 px."""
        return nnx.remat(_call_block) if self.remat else _call_block


class Generator(AdaILNGenerator):
    """ResnetGenerator of the official release: encoder (stem, two stride-2 convs, ``n_res`` residual blocks), CAM
    attention, then the AdaILN decoder on the attended features (``light`` as there; the full model has 279M
    parameters at 256 px). Arguments: ``AdaILNGenerator``. Returns ``(image (B, H, W, 3) in [-1, 1], cam_logit
    (B, 2), heatmap (B, H/4, W/4, 1))``.
    """

    N_RES = 4
    ADAILN_BLOCK = ResnetAdaILNBlock
    UP_BLOCK = UpBlock

    def _init_front(self, ch, n_res, *, dtype, rngs):
        conv = functools.partial(layers.conv, dtype=dtype, rngs=rngs)
        dim = ch * 2**N_DOWNSAMPLING
        self.stem = conv(3, ch, 7, use_bias=False)
        self.down = nnx.List([conv(ch * 2**i, ch * 2 ** (i + 1), 3, 2, use_bias=False) for i in range(N_DOWNSAMPLING)])
        self.res_blocks = nnx.List([ResnetBlock(dim, dtype=dtype, rngs=rngs) for _ in range(n_res)])
        self.cam = CAMAttention(dim, activation=jax.nn.relu, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = jax.nn.relu(instance_norm(self.stem(layers.reflect_pad(x, 3))))
        for down in self.down:
            x = jax.nn.relu(instance_norm(down(layers.reflect_pad(x, 1))))
        call = self._block_call()
        for block in self.res_blocks:
            x = call(block, x)
        x, cam_logit, heatmap = self.cam(x)  # x: (B, H/4, W/4, 4ch)
        return self.decode(x), cam_logit.astype(jnp.float32), heatmap.astype(jnp.float32)


def _call_block(block, *args):
    return block(*args)


def _leaky_relu(x):
    return jax.nn.leaky_relu(x, 0.2)


class Discriminator(nnx.Module):
    """PatchGAN-style discriminator with CAM attention; every conv and classifier is spectral-normalised.

    ``n_layers`` counts like the official code: 7 for the global and 5 for the local discriminator. There are
    ``n_layers - 2`` stride-2 convs, one stride-1 conv, the CAM block and a stride-1 classifier conv, so at
    256 px the global one outputs 6x6 (heat map 7x7) and the local one 30x30 (heat map 31x31). Returns
    ``(out (B, h, w, 1), cam_logit (B, 2), heatmap (B, h + 1, w + 1, 1))``.
    """

    def __init__(self, ndf: int = 64, n_layers: int = 5, *, in_ch: int = 3, dtype=None, rngs: nnx.Rngs):
        if n_layers < 3:
            raise ValueError(f"n_layers must be at least 3, got {n_layers}")

        def sn_conv(cin, cout, stride, use_bias=True):
            return SpectralNorm(layers.conv(cin, cout, 4, stride, use_bias=use_bias, dtype=dtype, rngs=rngs), rngs=rngs)

        chans = [in_ch] + [ndf * 2**i for i in range(n_layers - 1)]  # in, ndf, 2ndf, ..., ndf*2^(n-2)
        strides = [2] * (n_layers - 2) + [1]
        self.convs = nnx.List([sn_conv(chans[i], chans[i + 1], s) for i, s in enumerate(strides)])
        dim = chans[-1]
        self.cam = CAMAttention(dim, activation=_leaky_relu, spectral_norm=True, dtype=dtype, rngs=rngs)
        self.classifier = sn_conv(dim, 1, 1, use_bias=False)
        self.dtype = dtype

    def __call__(self, x, groups: int = 1):
        """``groups`` > 1: x interleaves that many batches (row j * groups + k: sample j of batch k), and the result
        equals ``groups`` consecutive calls, one per batch, each advancing the power iteration once."""
        if self.dtype is not None:
            x = x.astype(self.dtype)
        for conv in self.convs:
            x = _leaky_relu(conv(layers.reflect_pad(x, 1), groups))
        x, cam_logit, heatmap = self.cam(x, groups)
        out = self.classifier(layers.reflect_pad(x, 1), groups)
        return out.astype(jnp.float32), cam_logit.astype(jnp.float32), heatmap.astype(jnp.float32)


class UGATIT(nnx.Module):
    """The six networks of U-GAT-IT: two generators, global and local discriminators for both domains."""

    # Which networks the generator and the discriminator optimisers hold (the training state reads these).
    GENERATORS = ("genA2B", "genB2A")
    DISCRIMINATORS = ("disGA", "disGB", "disLA", "disLB")
    NAMES = ("genA2B", "genB2A", "disGA", "disGB", "disLA", "disLB")

    def __init__(
        self,
        ch: int = 64,
        n_res: int = 4,
        img_size: int = 256,
        light: bool = False,
        disc_global_layers: int = 7,
        disc_local_layers: int = 5,
        *,
        disc_ch: int | None = None,
        dtype=None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        gen = functools.partial(Generator, ch, n_res, img_size, light, dtype=dtype, remat=remat, rngs=rngs)
        disc = functools.partial(Discriminator, disc_ch or ch, dtype=dtype, rngs=rngs)  # official: disc_ch = ch
        self.genA2B, self.genB2A = gen(), gen()
        self.disGA, self.disGB = disc(disc_global_layers), disc(disc_global_layers)
        self.disLA, self.disLB = disc(disc_local_layers), disc(disc_local_layers)
