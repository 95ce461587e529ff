"""NICE-GAN parity with the official PyTorch release on every NICE golden fixture folder (``"model": "nice"``).

Every shape and setting comes from the folder's config.json, so fixtures made the same way at other seeds, widths,
batch sizes, depths or light/full pass unchanged. Each folder costs two compilations: one jitted forward of all
four networks in eval and train mode, and one training step.

Tolerances: outputs within 1e-5 of each tensor's scale (``golden.assert_close``; the official networks in float64
differ from the float32 fixtures by up to 2.3e-6 of scale). Step: losses rtol 1e-5; spectral-norm vectors 1e-4
relative; parameters as ``test_parity_step.py``: every element within 1e-4 of its tensor's scale except at most
0.1% of all elements, and those at most a flipped first Adam step (2 * lr) away. Measured on the two fixtures of
this repository: no outlier on the light one, 32 of 961,282 elements on the full one (FC.0 and a few
3x3 conv weights of the generators, each off by ~2 * lr: gradient elements that are zero up to float32 rounding,
whose sign decides Adam's first step lr * g / (|g| + eps)).
"""

import jax
import numpy as np
import pytest
from flax import nnx
from golden import (
    NiceGolden,
    assert_close,
    assert_power_iteration,
    assert_step_spectral_norm,
    nhwc,
    step_parameter_outliers,
)

from ugatit_jax.interop import torch_import
from ugatit_jax.models.nice import NICE
from ugatit_jax.train import losses
from ugatit_jax.train import state as train_state
from ugatit_jax.train.nice_step import make_nice_train_step
from ugatit_jax.train.updates import Optimisers

OUTLIER_FRACTION = 1e-3
MODES = ("eval", "train")


@pytest.fixture(scope="module")
def golden(nice_golden_dir):
    return NiceGolden(nice_golden_dir)


@pytest.fixture(scope="module")
def forward(golden):
    """All four networks from ``init.pt`` in eval and in train mode, in one jitted program, as the fixture ran
    them: each discriminator on its own domain, each generator on the code of the other domain's input.

    Returns (outputs[mode][network] as numpy NHWC, the train-mode model after its forward pass).
    """
    models = {}
    for mode in MODES:
        models[mode] = golden.model()
        getattr(models[mode], mode)()

    @nnx.jit
    def run(models, real_a, real_b):
        outs = {}
        for mode, m in models.items():
            dis_a, dis_b = m.disA(real_a), m.disB(real_b)
            outs[mode] = {"disA": dis_a, "disB": dis_b, "gen2B": m.gen2B(dis_a.z), "gen2A": m.gen2A(dis_b.z)}
        return outs

    outs = jax.device_get(run(models, golden.real["A"], golden.real["B"]))
    return outs, models["train"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NICE.NAMES)
def test_forward(golden, forward, mode, name):
    out = forward[0][mode][name]
    if name in NICE.DISCRIMINATORS:
        for key, value in zip(golden.DIS_OUTPUTS, out):
            assert_close(value, nhwc(golden.io[f"{mode}/{name}/{key}"]), what=f"{mode}/{name}/{key}")
    else:
        assert_close(out, nhwc(golden.io[f"{mode}/{name}/out"]), what=f"{mode}/{name}/out")


@pytest.mark.parametrize("name", NICE.DISCRIMINATORS)
def test_power_iteration_after_train_forward(golden, forward, name):
    """Every spectral-normalised layer's u, v after one train-mode call: torch's update of the same vectors."""
    assert_power_iteration(golden, name, getattr(forward[1], name))


def test_checkpoint_roundtrip(golden, forward):
    """Importing the official init.pt and exporting it again gives it back bit for bit (the eval-mode model of
    ``forward`` is not kept, so a fresh import is checked)."""
    model = golden.model()
    init = golden.read("init.pt")
    exported = torch_import.official_state_dicts(model)
    assert sorted(exported) == sorted(init) == sorted(NICE.NAMES)
    for name in NICE.NAMES:
        assert sorted(exported[name]) == sorted(init[name])
        for key, value in init[name].items():
            np.testing.assert_array_equal(exported[name][key], value, err_msg=f"{name}.{key}")


@pytest.fixture(scope="module")
def stepped(golden):
    """One jitted training step from init.pt on the fixture's batch; (official state dicts after it, metrics)."""
    c = golden.config
    model = golden.model()
    tx = golden.optimizer()
    graphdefs, state = train_state.create_train_state(model, tx, tx)
    step = jax.jit(
        make_nice_train_step(
            graphdefs,
            Optimisers(tx, tx),
            losses.NICEObjective(
                adv_weight=c["adv_weight"], cycle_weight=c["cycle_weight"], recon_weight=c["recon_weight"]
            ),
        )
    )
    state, metrics = step(state, {"A": golden.real["A"], "B": golden.real["B"]})
    train_state.update_model(model, state)
    return torch_import.official_state_dicts(model), jax.device_get(metrics)


def test_step_losses(golden, stepped):
    _, metrics = stepped
    np.testing.assert_allclose(float(metrics["d_loss"]), golden.io["step/d_loss"], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["g_loss"]), golden.io["step/g_loss"], rtol=1e-5)


def test_step_spectral_norm_state(golden, stepped):
    """u, v after the step's four train-mode calls of each discriminator."""
    ours, _ = stepped
    assert_step_spectral_norm(ours, golden.read("after_step.pt"))


def test_step_parameters(golden, stepped):
    ours, _ = stepped
    outliers, total = step_parameter_outliers(ours, golden.read("after_step.pt"), golden.config["lr"])
    assert outliers <= OUTLIER_FRACTION * total, f"{outliers} of {total} elements beyond 1e-4 relative"
