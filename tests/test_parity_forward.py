"""Forward parity with the official PyTorch release on every golden fixture folder."""

import jax
import numpy as np
import pytest
from flax import nnx
from golden import DOMAIN, Golden, assert_close, assert_power_iteration, nhwc

from ugatit_jax.interop import torch_import
from ugatit_jax.models.ugatit import UGATIT


@pytest.fixture(scope="module")
def golden(golden_dir):
    return Golden(golden_dir)


TRAIN_MODE = ("disGA", "disGB", "disLA", "disLB")  # the networks whose train-mode call differs (power iteration)


@pytest.fixture(scope="module")
def forward(golden):
    """Every network from ``init.pt`` in eval mode and each discriminator in train mode, in one jitted program
    (called eagerly, each op compiled a program of its own), each on its own domain's input.

    Returns (outputs[mode][network] as numpy NHWC, the train-mode model after its forward pass).
    """
    models = {"eval": golden.model(), "train": golden.model()}
    models["eval"].eval()
    models["train"].train()

    @nnx.jit
    def run(models, real):
        nets = {"eval": UGATIT.NAMES, "train": TRAIN_MODE}
        return {mode: {n: getattr(models[mode], n)(real[DOMAIN[n]]) for n in nets[mode]} for mode in models}

    return jax.device_get(run(models, golden.real)), models["train"]


@pytest.mark.parametrize("name", UGATIT.NAMES)
def test_eval_forward(golden, forward, name):
    outs = forward[0]["eval"][name]
    for key, out in zip(("out", "cam_logit", "heatmap"), outs):
        assert_close(out, nhwc(golden.io[f"eval/{name}/{key}"]), what=f"{name}/{key}")


@pytest.mark.parametrize("name", TRAIN_MODE)
def test_train_forward_and_power_iteration(golden, forward, name):
    dis = getattr(forward[1], name)
    outs = forward[0]["train"][name]
    for key, out in zip(("out", "cam_logit", "heatmap"), outs):
        assert_close(out, nhwc(golden.io[f"train/{name}/{key}"]), what=f"{name}/{key}")
    # The state after the forward: torch's updated weight_u / weight_v for the same starting vectors.
    assert_power_iteration(golden, name, dis)


def test_checkpoint_roundtrip(golden, tmp_path):
    """Import then export gives back the official state dicts bit for bit, and the file loads again."""
    model = golden.model()
    init = golden.read("init.pt")
    exported = torch_import.official_state_dicts(model)
    for name in UGATIT.NAMES:
        assert sorted(exported[name]) == sorted(init[name])
        for key, value in init[name].items():
            np.testing.assert_array_equal(exported[name][key], value, err_msg=f"{name}.{key}")
    path = tmp_path / "again.pt"
    torch_import.save_official_checkpoint(model, path)
    again = torch_import.read_official_checkpoint(path)
    np.testing.assert_array_equal(again["genA2B"]["FC.0.weight"], init["genA2B"]["FC.0.weight"])
