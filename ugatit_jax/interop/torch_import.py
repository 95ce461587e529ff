"""Import (and export) checkpoints of the official PyTorch releases of U-GAT-IT and NICE-GAN.

The official U-GAT-IT file is ``torch.save({'genA2B': sd, 'genB2A': sd, 'disGA': sd, 'disGB': sd, 'disLA': sd,
'disLB': sd})``; NICE-GAN's holds ``gen2B, gen2A, disA, disB`` (plus optimiser states and ``start_iter``, which are
not read). The networks to read are the model's ``NAMES``. Each network's keys are mapped onto our module tree by
a table built from the network itself (so every depth/width works), with the layout changes:

* conv weight (O, I, kh, kw) <-> kernel (kh, kw, I, O); linear (out, in) <-> kernel (in, out);
* spectral norm ``weight_orig``/``weight_u``/``weight_v`` <-> raw kernel / ``u`` / ``v`` (v permuted from torch's
  (I, kh, kw) order to our (kh, kw, I) order);
* ``rho``/``gamma``/``beta`` (1, C, 1, 1) <-> (C,); NICE-GAN's softmax ``rho`` (1, C, 2) <-> (C, 2);
* the full generator's first MLP layer ``FC.0`` sees a channel-major (C, H, W) flatten in torch and a
  (H, W, C) flatten here, so its input rows are permuted.

Reading, checking and writing are ``state_dict.py``'s, shared with the Inception network: this module only lists
each network's entries. torch is an optional dependency, imported only to read or write ``.pt`` files, always with
``weights_only=True`` (no arbitrary unpickling).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from flax import nnx

from ugatit_jax.interop import state_dict as sd_lib
from ugatit_jax.interop.state_dict import (
    CheckpointMismatchError,
    Entry,
    attribute,
    conv_to_ours,
    conv_to_torch,
    identity,
)
from ugatit_jax.models.nice import NICE, NiceDiscriminator, NiceGenerator
from ugatit_jax.models.ugatit import N_DOWNSAMPLING, UGATIT, Discriminator, Generator
from ugatit_jax.nn.spectral_norm import SpectralNorm

# What a network that does not fit an official file most likely means.
HINT = "; was it made with another model family, or other ch, n_res, light, img_size or discriminator depths?"


def _chan_to_ours(w):
    return w.reshape(-1)  # (1, C, 1, 1) -> (C,)


def _chan_to_torch(c):
    return c.reshape(1, -1, 1, 1)


def _rho_pair_to_ours(w):
    return w.reshape(-1, 2)  # (1, C, 2) -> (C, 2)


def _rho_pair_to_torch(r):
    return r.reshape(1, -1, 2)


def _v_converters(kernel_shape):
    """torch orders spectral-norm v as (I, kh, kw); we use (kh, kw, I)."""
    if len(kernel_shape) == 2:
        return identity, identity
    kh, kw, cin, _ = kernel_shape

    def to_ours(v):
        return v.reshape(cin, kh, kw).transpose(1, 2, 0).reshape(-1)

    def to_torch(v):
        return v.reshape(kh, kw, cin).transpose(2, 0, 1).reshape(-1)

    return to_ours, to_torch


def _plain(key: str, layer) -> Iterator[Entry]:
    conv = isinstance(layer, nnx.Conv)
    to_ours, to_torch = (conv_to_ours, conv_to_torch) if conv else (sd_lib.transpose, sd_lib.transpose)
    yield key + ".weight", attribute(layer, "kernel"), to_ours, to_torch
    if layer.bias is not None:
        yield key + ".bias", attribute(layer, "bias"), identity, identity


def _spectral(key: str, sn: SpectralNorm) -> Iterator[Entry]:
    layer = sn.layer
    conv = isinstance(layer, nnx.Conv)
    to_ours, to_torch = (conv_to_ours, conv_to_torch) if conv else (sd_lib.transpose, sd_lib.transpose)
    v_ours, v_torch = _v_converters(layer.kernel.shape)
    if layer.bias is not None:
        yield key + ".bias", attribute(layer, "bias"), identity, identity
    yield key + ".weight_orig", attribute(layer, "kernel"), to_ours, to_torch
    yield key + ".weight_u", attribute(sn, "u"), identity, identity
    yield key + ".weight_v", attribute(sn, "v"), v_ours, v_torch


ILN_KEYS = ("rho", "gamma", "beta")  # an ILN's parameters; an AdaILN has rho only


def _channels(key: str, module, names=("rho",)) -> Iterator[Entry]:
    for name in names:
        if name == "rho" and getattr(module, "softmax_rho", False):
            yield f"{key}.rho", attribute(module, "rho"), _rho_pair_to_ours, _rho_pair_to_torch
        else:
            yield f"{key}.{name}", attribute(module, name), _chan_to_ours, _chan_to_torch


def _full_fc0(key: str, fc1: nnx.Linear, img_size: int) -> Iterator[Entry]:
    """FC.0 of a full generator (either family): torch input index c*h*w + i*w + j, ours (i*w + j)*C + c."""
    feat = img_size // 2**N_DOWNSAMPLING
    dim = fc1.kernel.shape[1]
    chans = fc1.kernel.shape[0] // (feat * feat)

    def to_ours(w):  # (dim, C*h*w) -> (h*w*C, dim)
        return w.reshape(dim, chans, feat, feat).transpose(2, 3, 1, 0).reshape(-1, dim)

    def to_torch(k):  # (h*w*C, dim) -> (dim, C*h*w)
        return k.reshape(feat, feat, chans, dim).transpose(3, 2, 0, 1).reshape(dim, -1)

    yield key + ".weight", attribute(fc1, "kernel"), to_ours, to_torch


def _gen_mlp(gen) -> Iterator[Entry]:
    """The gamma/beta MLP, the same keys in both families."""
    if gen.light:
        yield from _plain("FC.0", gen.fc1)
    else:
        yield from _full_fc0("FC.0", gen.fc1, gen.img_size)
    yield from _plain("FC.2", gen.fc2)
    yield from _plain("gamma", gen.gamma)
    yield from _plain("beta", gen.beta)


def _adailn_blocks(gen) -> Iterator[Entry]:
    for i, block in enumerate(gen.adailn_blocks):
        yield from _plain(f"UpBlock1_{i + 1}.conv1", block.conv1)
        yield from _channels(f"UpBlock1_{i + 1}.norm1", block.norm1)
        yield from _plain(f"UpBlock1_{i + 1}.conv2", block.conv2)
        yield from _channels(f"UpBlock1_{i + 1}.norm2", block.norm2)


class _UpStep(NamedTuple):
    """One up-sampling step of the official ``UpBlock2`` nn.Sequential: how many modules it spans, and the index
    within the step of each module with weights (our attribute name -> index). The (pad, conv) to RGB follow the
    last step."""

    modules: int
    weighted: dict[str, int]


# U-GAT-IT: Upsample, pad, conv, ILN, ReLU. NICE-GAN: pad, conv, ILN, ReLU, conv1x1, PixelShuffle, ILN, ReLU.
_UGATIT_UP_STEP = _UpStep(5, {"conv": 2, "norm": 3})
_NICE_UP_STEP = _UpStep(8, {"conv": 1, "norm": 2, "expand": 4, "shuffled_norm": 6})


def _decoder(gen, step: _UpStep) -> Iterator[Entry]:
    """Both families' generators end alike: the gamma/beta MLP, the AdaILN blocks, ``UpBlock2`` (convs and ILNs)."""
    yield from _gen_mlp(gen)
    yield from _adailn_blocks(gen)
    for i, up in enumerate(gen.up):
        for name, index in step.weighted.items():
            layer, key = getattr(up, name), f"UpBlock2.{index + step.modules * i}"
            yield from _plain(key, layer) if isinstance(layer, nnx.Conv) else _channels(key, layer, ILN_KEYS)
    yield from _plain(f"UpBlock2.{1 + step.modules * len(gen.up)}", gen.to_rgb)


def _sn_conv_sequential(key: str, convs) -> Iterator[Entry]:
    """An official nn.Sequential of (pad, spectral-norm conv, LeakyReLU) triples: the convs sit at 1, 4, 7, ..."""
    for i, conv in enumerate(convs):
        yield from _spectral(f"{key}.{1 + 3 * i}", conv)


def generator_entries(gen: Generator) -> Iterator[Entry]:
    """Official ResnetGenerator keys: DownBlock is an nn.Sequential whose indices skip pads/norms/ReLUs."""
    yield from _plain("DownBlock.1", gen.stem)
    for i, conv in enumerate(gen.down):
        yield from _plain(f"DownBlock.{5 + 4 * i}", conv)
    first_res = 4 + 4 * len(gen.down)
    for i, block in enumerate(gen.res_blocks):
        yield from _plain(f"DownBlock.{first_res + i}.conv_block.1", block.conv1)
        yield from _plain(f"DownBlock.{first_res + i}.conv_block.5", block.conv2)
    yield from _plain("gap_fc", gen.cam.gap_fc)
    yield from _plain("gmp_fc", gen.cam.gmp_fc)
    yield from _plain("conv1x1", gen.cam.conv1x1)
    yield from _decoder(gen, _UGATIT_UP_STEP)


def discriminator_entries(dis: Discriminator) -> Iterator[Entry]:
    yield from _sn_conv_sequential("model", dis.convs)
    yield from _spectral("gap_fc", dis.cam.gap_fc)
    yield from _spectral("gmp_fc", dis.cam.gmp_fc)
    yield from _plain("conv1x1", dis.cam.conv1x1)
    yield from _spectral("conv", dis.classifier)


def nice_generator_entries(gen: NiceGenerator) -> Iterator[Entry]:
    """NICE-GAN's ResnetGenerator: UpBlock0 (pad, conv, ILN, ReLU), FC, gamma/beta, UpBlock1_*, and UpBlock2, an
    nn.Sequential of 8 modules per up-sampling (pad, conv, ILN, ReLU, conv1x1, PixelShuffle, ILN, ReLU)."""
    yield from _plain("UpBlock0.1", gen.stem)
    yield from _channels("UpBlock0.2", gen.stem_norm, ILN_KEYS)
    yield from _decoder(gen, _NICE_UP_STEP)


def nice_discriminator_entries(dis: NiceDiscriminator) -> Iterator[Entry]:
    """NICE-GAN's Discriminator: nn.Sequentials of (pad, SN conv, LeakyReLU), so convs sit at indices 1, 4, ..."""
    yield from _sn_conv_sequential("model", dis.encoder)
    yield from _spectral("fc", dis.cam.fc)
    yield from _plain("conv1x1", dis.cam.conv1x1)
    yield "lamda", attribute(dis.cam, "lamda"), identity, identity
    yield from _sn_conv_sequential("Dis0_0", dis.shared)
    yield from _spectral("Dis0_1.1", dis.local_conv)
    yield from _spectral("conv0", dis.local_out)
    yield from _sn_conv_sequential("Dis1_0", dis.global_down)
    yield from _spectral("Dis1_1.1", dis.global_conv)
    yield from _spectral("conv1", dis.global_out)


_ENTRIES = {
    Generator: generator_entries,
    Discriminator: discriminator_entries,
    NiceGenerator: nice_generator_entries,
    NiceDiscriminator: nice_discriminator_entries,
}


def network_entries(net) -> list[Entry]:
    """The key mapping of one network, chosen by its type (U-GAT-IT or NICE-GAN generator / discriminator)."""
    entries = _ENTRIES.get(type(net))
    if entries is None:
        raise TypeError(f"no official key mapping for {type(net).__name__}")
    return list(entries(net))


def load_state_dict(net, state_dict: dict, *, prefix: str = "") -> None:
    """Copy an official state dict (numpy or torch tensors) into ``net`` in place; strict about keys and shapes."""
    sd_lib.load_state_dict(network_entries(net), state_dict, prefix=prefix, hint=HINT)


def state_dict(net) -> dict[str, np.ndarray]:
    """The official state dict of ``net`` as float32 numpy arrays, torch layouts."""
    return sd_lib.state_dict(network_entries(net))


def read_official_checkpoint(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Read an official checkpoint into {network: {key: float32 numpy}} without unpickling code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    raw = sd_lib.torch_load(path)
    if not isinstance(raw, dict):
        raise CheckpointMismatchError(f"{path}: expected a dict of state dicts, found {type(raw).__name__}")
    out = {}
    for name, sd in raw.items():
        # Only state dicts of tensors: NICE-GAN's file also holds optimiser states (nested dicts and lists, no
        # tensor at the top level) and the int ``start_iter``, which are skipped.
        tensors = {k: sd_lib.to_numpy(v) for k, v in sd.items() if hasattr(v, "shape")} if isinstance(sd, dict) else {}
        if tensors:
            out[name] = tensors
    return out


def load_official_checkpoint(model: UGATIT | NICE, path_or_dicts, networks=None) -> None:
    """Load every network of ``model`` (its ``NAMES``), or the subset ``networks``, from an official checkpoint
    into ``model`` in place."""
    networks = type(model).NAMES if networks is None else networks
    dicts = path_or_dicts
    if not isinstance(dicts, dict):
        dicts = read_official_checkpoint(path_or_dicts)
    for name in networks:
        if name not in dicts:
            raise CheckpointMismatchError(f"missing network {name!r} in the checkpoint (found: {sorted(dicts)})")
        load_state_dict(getattr(model, name), dicts[name], prefix=f"{name}.")


def official_state_dicts(model: UGATIT | NICE) -> dict[str, dict[str, np.ndarray]]:
    return {name: state_dict(getattr(model, name)) for name in type(model).NAMES}


def save_official_checkpoint(model: UGATIT | NICE, path: str | os.PathLike) -> None:
    """Write ``model`` in the official format of its family, loadable by that release's ``load`` (the network
    state dicts only: a NICE-GAN file written here has no optimiser states or ``start_iter``)."""
    sd_lib.torch_save(official_state_dicts(model), path)
