"""Reading golden fixtures (made by the official PyTorch release) for the parity tests."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ugatit_jax.interop import torch_import
from ugatit_jax.models.ugatit import UGATIT

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


class Golden:
    def __init__(self, folder):
        self.dir = pathlib.Path(folder)
        self.config = json.loads((self.dir / "config.json").read_text())
        with np.load(self.dir / "io.npz") as z:
            self.io = {k: z[k] for k in z.files}
        self.real = {"A": jnp.asarray(nhwc(self.io["real_A"])), "B": jnp.asarray(nhwc(self.io["real_B"]))}

    def model(self, **kw) -> UGATIT:
        c = self.config
        model = UGATIT(
            c["ch"],
            c["n_res"],
            c["img_size"],
            c["light"],
            c["disc_global_layers"],
            c["disc_local_layers"],
            rngs=nnx.Rngs(0),
            **kw,
        )
        torch_import.load_official_checkpoint(model, self.dir / "init.pt")
        return model

    def read(self, name):
        return torch_import.read_official_checkpoint(self.dir / name)
