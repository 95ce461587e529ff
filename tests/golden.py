"""Reading golden fixtures (made by the official PyTorch release) for the parity tests."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ugatit_jax.interop import torch_import
from ugatit_jax.models.nice import NICE
from ugatit_jax.models.ugatit import UGATIT
from ugatit_jax.nn.spectral_norm import SpectralNorm
from ugatit_jax.train import optim
from ugatit_jax.xla.jit_init import abstract_module

# Parity tolerance. Elementwise |ours - ref| <= RTOL * |ref| + RTOL * max(1, max|ref|): the eval-mode
# discriminators of an *untrained* checkpoint use the never-iterated random u, v, so sigma is tiny and their
# outputs reach 1e7-1e9, where float32 itself only resolves ~1e-7 relative; hence the scale-aware atol.
RTOL = 1e-5

DOMAIN = {"genA2B": "A", "disGA": "A", "disLA": "A", "genB2A": "B", "disGB": "B", "disLB": "B"}


def nhwc(a):
    a = np.asarray(a)
    return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a


def assert_close(actual, expected, rtol=RTOL, what=""):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    err = np.abs(actual - expected) - rtol * np.abs(expected)
    worst = float(np.max(err)) if err.size else 0.0
    assert worst <= rtol * scale, f"{what}: max excess error {worst:.3g} > {rtol * scale:.3g}"


def rel_error(actual, expected) -> float:
    """max |a - b| / max |b|: the relative error of a tensor, used for parameters after a step."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    denom = max(float(np.max(np.abs(expected))), 1e-12)
    return float(np.max(np.abs(actual - expected))) / denom


def _torch_sn_update(kernel_torch, u, v):
    """One train-mode forward of torch.nn.utils.spectral_norm on the given weight and vectors."""
    import torch

    w = torch.from_numpy(kernel_torch)
    layer = (
        torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        if w.ndim == 2
        else torch.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], bias=False)
    )
    layer = torch.nn.utils.spectral_norm(layer)
    with torch.no_grad():
        layer.weight_orig.copy_(w)
        layer.weight_u.copy_(torch.from_numpy(u))
        layer.weight_v.copy_(torch.from_numpy(v))
    layer.train()
    shape = (1, w.shape[1]) if w.ndim == 2 else (1, w.shape[1], w.shape[2] + 1, w.shape[3] + 1)
    layer(torch.zeros(shape))
    return layer.weight_u.detach().numpy(), layer.weight_v.detach().numpy()


def assert_power_iteration(golden, name: str, dis) -> None:
    """Every spectral-normalised layer's u, v in ``dis`` after one train-mode call: torch's update of the same
    starting vectors (the fixture's ``init.pt``); every SpectralNorm of ``dis`` is checked."""
    init = golden.read("init.pt")[name]
    ours = torch_import.state_dict(dis)
    n_sn = 0
    for key in init:
        if key.endswith(".weight_orig"):
            base = key[: -len(".weight_orig")]
            u, v = _torch_sn_update(init[key], init[base + ".weight_u"], init[base + ".weight_v"])
            assert_close(ours[base + ".weight_u"], u, what=f"{name}.{base}.weight_u")
            assert_close(ours[base + ".weight_v"], v, what=f"{name}.{base}.weight_v")
            n_sn += 1
    assert n_sn == sum(isinstance(m, SpectralNorm) for _, m in nnx.iter_modules(dis))


_ABSTRACT = {}  # (folder, build options) -> (graphdef, shapes) of the fixture's model


class _Fixture:
    """What every fixture folder holds: config.json, io.npz (NCHW; inputs exposed NHWC) and official .pt files."""

    def __init__(self, folder):
        self.dir = pathlib.Path(folder)
        self.config = json.loads((self.dir / "config.json").read_text())
        with np.load(self.dir / "io.npz") as z:
            self.io = {k: z[k] for k in z.files}
        self.real = {"A": jnp.asarray(nhwc(self.io["real_A"])), "B": jnp.asarray(nhwc(self.io["real_B"]))}

    def _build(self, rngs, **kw):
        raise NotImplementedError

    def model(self, **kw):
        """The fixture's model, loaded from ``init.pt``. Built from shapes and zeros, since the checkpoint sets
        every array: the random initialisation, run eagerly, compiles one program per weight shape (13 s of the
        golden full U-GAT-IT's 23 s model on a 2-core Xeon)."""
        key = (str(self.dir), tuple(sorted(kw.items())))
        if key not in _ABSTRACT:  # tracing the construction takes seconds too: once per fixture and options
            _ABSTRACT[key] = nnx.split(abstract_module(lambda rngs: self._build(rngs=rngs, **kw)))
        graphdef, abstract = _ABSTRACT[key]
        model = nnx.merge(graphdef, jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype)), abstract))
        torch_import.load_official_checkpoint(model, self.dir / "init.pt")
        return model

    def read(self, name):
        return torch_import.read_official_checkpoint(self.dir / name)

    def optimizer(self):
        """The official Adam of the fixture's config at a constant learning rate (the fixtures take one step)."""
        c = self.config
        b1, b2 = c["adam_betas"]
        return optim.make_optimizer(
            lr=c["lr"], iterations=1000, decay=False, b1=b1, b2=b2, eps=c["adam_eps"], weight_decay=c["weight_decay"]
        )


class Golden(_Fixture):
    """A U-GAT-IT fixture folder."""

    def _build(self, rngs, **kw) -> UGATIT:
        c = self.config
        return UGATIT(
            c["ch"],
            c["n_res"],
            c["img_size"],
            c["light"],
            c["disc_global_layers"],
            c["disc_local_layers"],
            rngs=rngs,
            **kw,
        )


class NiceGolden(_Fixture):
    """A NICE-GAN fixture folder (``config.json`` with ``"model": "nice"``)."""

    # io.npz keys per discriminator, in the order of NiceDiscOutput; each network's input domain.
    DIS_OUTPUTS = ("out_local", "out_global", "cam_logit", "heatmap", "z")
    DOMAIN = {"disA": "A", "disB": "B", "gen2B": "A", "gen2A": "B"}  # gen2B decodes disA's code of real A
    ENCODER = {"gen2B": "disA", "gen2A": "disB"}

    def _build(self, rngs, **kw) -> NICE:
        c = self.config
        return NICE(c["ch"], c["n_res"], c["n_dis"], c["img_size"], c["light"], rngs=rngs, **kw)


def reordered_sum_outliers(pairs, lr: float, steps: int) -> tuple[int, int, float]:
    """Parameters of two runs of the same step whose all-reduces sum in another order (8 devices vs 1, 2 processes
    x 2 devices vs 1 x 4): ``pairs`` of (name, got, expected).

    For gradient elements that are zero up to rounding, the order decides the sign of Adam's step, so no element
    may be further apart than Adam can move it in ``steps`` steps (2 * lr each: asserted here), and the caller
    bounds how many lie beyond 1e-4 of their tensor's scale (plus 0.1% of lr * steps). Returns (those outliers,
    all elements, the largest absolute difference)."""
    outliers = total = 0
    worst = 0.0
    for name, got, expected in pairs:
        diff = np.abs(np.asarray(got, np.float64) - expected)
        assert float(diff.max()) <= 2 * lr * steps, (name, float(diff.max()))
        outliers += int(np.sum(diff > 1e-4 * float(np.max(np.abs(expected))) + 1e-3 * lr * steps))
        total += diff.size
        worst = max(worst, float(diff.max()))
    return outliers, total, worst


def assert_step_spectral_norm(ours: dict, ref: dict) -> None:
    """Every spectral-norm vector (``weight_u``, ``weight_v``) of ``after_step.pt`` (``ref``) within 1e-4 relative
    of ours after the step's train-mode calls."""
    errors = {
        f"{n}.{k}": rel_error(ours[n][k], v)
        for n in ref
        for k, v in ref[n].items()
        if k.endswith((".weight_u", ".weight_v"))
    }
    assert errors, "fixture has no spectral-norm vectors"
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"{worst}: relative error {errors[worst]:.3g}"


def step_parameter_outliers(ours: dict, ref: dict, lr: float) -> tuple[int, int]:
    """Compare every parameter of ``after_step.pt`` (``ref``, official state dicts) with ``ours``.

    Returns (elements beyond 1e-4 of their tensor's max-abs scale, all elements compared); spectral-norm vectors
    are left out (they have their own check). Asserts the key sets match and that no element is off by more than a
    flipped first Adam step (2 * lr), the most two float32 implementations can disagree on a gradient element
    that is zero up to rounding.
    """
    total = outliers = 0
    for name in ref:
        assert sorted(ours[name]) == sorted(ref[name]), name
        for key, expected in ref[name].items():
            if key.endswith((".weight_u", ".weight_v")):
                continue
            diff = np.abs(ours[name][key].astype(np.float64) - expected)
            total += diff.size
            outliers += int(np.sum(diff > 1e-4 * max(float(np.max(np.abs(expected))), 1e-12)))
            assert float(diff.max()) <= 2.0 * lr * 1.01, f"{name}.{key}: off by {diff.max():.3g}, more than 2 * lr"
    return outliers, total
