"""NICE-GAN (Chen et al., CVPR 2020, "Reusing Discriminators for Encoding"), in the official layer order, NHWC.

U-GAT-IT's successor drops the generators' encoders: each domain's discriminator starts with an encoder whose
output, the code ``z``, feeds both the discriminator's own classification heads and the *other* domain's
generator, which is a decoder only. A->B is ``gen2B(disA(x).z)``; B->A is ``gen2A(disB(x).z)``.

* ``NiceDiscriminator``: encoder (two stride-2 convs) -> residual CAM block (``z``, ``cam_logit``, ``heatmap``) ->
  two heads from ``z``: a local one (70 px receptive field at ``n_dis`` 7) and a global one two strides deeper.
  Every conv and the CAM classifier are spectral-normalised.
* ``NiceGenerator``: conv + ILN on ``z``, an MLP to AdaILN's ``gamma``, ``beta`` (full: on the flattened map; light:
  on its global average), ``n_res`` AdaILN residual blocks, two sub-pixel (PixelShuffle) up-samplings, to RGB.
  The norms are the softmax-``rho`` variants (``SoftmaxILN``, ``SoftmaxAdaILN``); nothing is clipped.

Attribute names are ours; ``interop/torch_import.py`` maps them to the official state-dict keys.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ugatit_jax.models.ugatit import N_DOWNSAMPLING, AdaILNGenerator, ResnetAdaILNBlock
from ugatit_jax.nn import layers
from ugatit_jax.nn.attention import ResidualCAMAttention
from ugatit_jax.nn.norms import SoftmaxAdaILN, SoftmaxILN
from ugatit_jax.nn.spectral_norm import SpectralNorm

MIN_N_DIS = 6  # the official layer ranges only chain up from 6 layers (the shared part is n_dis - 6 convs)


def _leaky_relu(x):
    return jax.nn.leaky_relu(x, 0.2)


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
    """torch's PixelShuffle on NHWC: channel c * r * r + i * r + j becomes pixel (h * r + i, w * r + j) of c.

    Keeping torch's channel order means the preceding conv's kernel imports with the plain layout change.
    """
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (r * r), r, r)  # (B, H, W, C, i, j)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # (B, H, i, W, j, C)
    return x.reshape(b, h * r, w * r, c // (r * r))


class NiceDiscOutput(NamedTuple):
    """One discriminator call. Shapes at 256 px, ``n_dis`` 7: out_local (B, 30, 30, 1), out_global (B, 6, 6, 1),
    cam_logit (B, 1), heatmap (B, 64, 64, 1), z (B, 64, 64, 2ch)."""

    out_local: jax.Array  # official out0
    out_global: jax.Array  # official out1
    cam_logit: jax.Array
    heatmap: jax.Array
    z: jax.Array


class NiceDiscriminator(nnx.Module):
    """Encoder + CAM block + local and global heads; all outputs are float32 whatever the compute dtype.

    ``encode`` and ``classify`` are the two halves of ``__call__``: a training step can run the encoder on inputs
    that only become known later (a translation needs the other domain's code) and still batch the heads.
    """

    def __init__(self, ch: int = 64, n_dis: int = 7, *, in_ch: int = 3, dtype=None, rngs: nnx.Rngs):
        if n_dis < MIN_N_DIS:
            raise ValueError(f"n_dis must be at least {MIN_N_DIS}, got {n_dis}")

        def sn_conv(cin, cout, stride, use_bias=True):
            return SpectralNorm(layers.conv(cin, cout, 4, stride, use_bias=use_bias, dtype=dtype, rngs=rngs), rngs=rngs)

        # Layer creation follows the official module order (model, fc, conv1x1, Dis0_0, Dis0_1, conv0, Dis1_0, ...)
        # so that a seeded init draws the same streams for the same layers.
        self.encoder = nnx.List([sn_conv(in_ch, ch, 2), sn_conv(ch, 2 * ch, 2)])  # (H, W) -> (H/4, W/4), 2ch
        self.cam = ResidualCAMAttention(2 * ch, activation=_leaky_relu, spectral_norm=True, dtype=dtype, rngs=rngs)
        # Shared stride-2 convs (official Dis0_0): 2ch -> ... -> ch * 2^(n_dis - 5).
        self.shared = nnx.List([sn_conv(ch * 2 ** (i - 1), ch * 2**i, 2) for i in range(2, n_dis - 4)])
        wide = ch * 2 ** (n_dis - 5)
        self.local_conv = sn_conv(wide, 2 * wide, 1)  # Dis0_1
        self.local_out = sn_conv(2 * wide, 1, 1, use_bias=False)  # conv0
        # Global head: two more stride-2 convs (Dis1_0), a stride-1 conv (Dis1_1), the classifier (conv1).
        self.global_down = nnx.List([sn_conv(wide, 2 * wide, 2), sn_conv(2 * wide, 4 * wide, 2)])
        self.global_conv = sn_conv(4 * wide, 8 * wide, 1)
        self.global_out = sn_conv(8 * wide, 1, 1, use_bias=False)
        self.dtype = dtype

    def encode(self, x: jax.Array, groups: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(B, H, W, 3) -> ``(z (B, H/4, W/4, 2ch), cam_logit (B, 1), heatmap (B, H/4, W/4, 1))``, compute dtype.

        ``groups`` > 1: x interleaves that many batches and every spectral-normalised layer runs one power
        iteration per batch, in order, as that many consecutive calls would (``SpectralNorm.__call__``).
        """
        if self.dtype is not None:
            x = x.astype(self.dtype)
        for conv in self.encoder:
            x = _leaky_relu(conv(layers.reflect_pad(x, 1), groups))
        return self.cam(x, groups)

    def classify(self, z: jax.Array, groups: int = 1) -> tuple[jax.Array, jax.Array]:
        """z -> ``(out_local, out_global)`` in float32; ``groups`` as in ``encode``."""
        if self.dtype is not None:
            z = z.astype(self.dtype)
        h = z
        for conv in self.shared:
            h = _leaky_relu(conv(layers.reflect_pad(h, 1), groups))
        g = h
        for conv in self.global_down:
            g = _leaky_relu(conv(layers.reflect_pad(g, 1), groups))
        h = _leaky_relu(self.local_conv(layers.reflect_pad(h, 1), groups))
        g = _leaky_relu(self.global_conv(layers.reflect_pad(g, 1), groups))
        out_local = self.local_out(layers.reflect_pad(h, 1), groups)
        out_global = self.global_out(layers.reflect_pad(g, 1), groups)
        return out_local.astype(jnp.float32), out_global.astype(jnp.float32)

    def __call__(self, x: jax.Array, groups: int = 1) -> NiceDiscOutput:
        """``groups`` > 1: x interleaves that many batches (row j * groups + k: sample j of batch k), and the result
        equals ``groups`` consecutive calls, one per batch, each advancing the power iterations once."""
        z, cam_logit, heatmap = self.encode(x, groups)
        out_local, out_global = self.classify(z, groups)
        f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
        return NiceDiscOutput(out_local, out_global, f32(cam_logit), f32(heatmap), f32(z))


class _AdaILNBlock(ResnetAdaILNBlock):
    """U-GAT-IT's AdaILN residual block (same layers and forward) with NICE-GAN's softmax-rho AdaILN."""

    def __init__(self, dim: int, *, dtype=None, rngs: nnx.Rngs):
        super().__init__(dim, dtype=dtype, rngs=rngs)
        self.norm1 = SoftmaxAdaILN(dim)
        self.norm2 = SoftmaxAdaILN(dim)


class SubPixelUpBlock(nnx.Module):
    """pad, conv3 (C -> C/2, no bias), ILN, ReLU, conv1x1 (C/2 -> 2C), PixelShuffle(2), ILN, ReLU: (H, W) -> (2H, 2W).

    The official code notes that sub-pixel and nearest up-sampling (U-GAT-IT's) perform alike; it trains this one.
    """

    def __init__(self, in_ch: int, *, dtype=None, rngs: nnx.Rngs):
        out_ch = in_ch // 2
        self.conv = layers.conv(in_ch, out_ch, 3, use_bias=False, dtype=dtype, rngs=rngs)
        self.norm = SoftmaxILN(out_ch)
        self.expand = layers.conv(out_ch, 4 * out_ch, 1, use_bias=True, dtype=dtype, rngs=rngs)
        self.shuffled_norm = SoftmaxILN(out_ch)

    def __call__(self, x):
        x = jax.nn.relu(self.norm(self.conv(layers.reflect_pad(x, 1))))  # (B, H, W, C/2)
        x = pixel_shuffle(self.expand(x))  # (B, H, W, 2C) -> (B, 2H, 2W, C/2)
        return jax.nn.relu(self.shuffled_norm(x))


class NiceGenerator(AdaILNGenerator):
    """ResnetGenerator of NICE-GAN: from a discriminator's code ``z`` (B, H/4, W/4, 2ch) to an image (B, H, W, 3)
    in [-1, 1] (float32): one conv to 4ch, then the AdaILN decoder with sub-pixel up-sampling (``light`` as there;
    the full model has 276M parameters at 256 px).
    """

    N_RES = 6
    ADAILN_BLOCK = _AdaILNBlock
    UP_BLOCK = SubPixelUpBlock

    def _init_front(self, ch, n_res, *, dtype, rngs):
        dim = ch * 2**N_DOWNSAMPLING
        # The official UpBlock0, created before the decoder (FC, gamma, beta, the AdaILN blocks, UpBlock2).
        self.stem = layers.conv(dim // 2, dim, 3, use_bias=True, dtype=dtype, rngs=rngs)  # 2ch -> 4ch
        self.stem_norm = SoftmaxILN(dim)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = z.astype(self.dtype) if self.dtype is not None else z
        x = jax.nn.relu(self.stem_norm(self.stem(layers.reflect_pad(x, 1))))  # (B, H/4, W/4, 4ch)
        return self.decode(x)


class NICE(nnx.Module):
    """The four networks of NICE-GAN. ``disA`` encodes and judges domain A; ``gen2B`` decodes a code into domain B.

    Constructor arguments follow the official flags (``ch``, ``n_res``, ``n_dis``, ``img_size``, ``light``).
    """

    GENERATORS = ("gen2B", "gen2A")
    DISCRIMINATORS = ("disA", "disB")
    NAMES = GENERATORS + DISCRIMINATORS  # the official checkpoint's order

    def __init__(
        self,
        ch: int = 64,
        n_res: int = 6,
        n_dis: int = 7,
        img_size: int = 256,
        light: bool = False,
        *,
        dtype=None,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        gen = functools.partial(NiceGenerator, ch, n_res, img_size, light, dtype=dtype, remat=remat, rngs=rngs)
        disc = functools.partial(NiceDiscriminator, ch, n_dis, dtype=dtype, rngs=rngs)
        self.gen2B, self.gen2A = gen(), gen()
        self.disA, self.disB = disc(), disc()
