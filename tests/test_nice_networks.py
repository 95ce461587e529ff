"""NICE-GAN networks without the golden fixtures: paper-size parameter counts and official keys (abstractly, no
allocation), output shapes, an official-format round trip through a .pt file like the official training file,
and the jitted step: 8 fake devices equal to 1, and the spectral-norm power iterations it runs per step."""

import ast
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from golden import reordered_sum_outliers

from ugatit_jax.interop import torch_import
from ugatit_jax.models.nice import NICE, NiceDiscriminator, pixel_shuffle
from ugatit_jax.nn.norms import SoftmaxAdaILN, SoftmaxILN, clip_rho
from ugatit_jax.nn.spectral_norm import SpectralNorm
from ugatit_jax.train import optim, parallel
from ugatit_jax.train import state as train_state
from ugatit_jax.train.nice_step import make_nice_train_step
from ugatit_jax.train.updates import Optimisers
from ugatit_jax.xla.jit_init import abstract_module

GOLDEN = pathlib.Path(__file__).parent / "golden"

# Paper size (ch 64, n_res 6, n_dis 7, 256 px), as counted from the official networks.
PAPER_PARAMS = {"full_gen": 276_474_560, "light_gen": 8_104_640, "dis": 46_874_433}


def paper_model(light: bool) -> NICE:
    return abstract_module(lambda rngs: NICE(64, 6, 7, 256, light, rngs=rngs))


def count(module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("light", [False, True], ids=["full", "light"])
def test_paper_size_parameter_counts(light):
    model = paper_model(light)
    gen = PAPER_PARAMS["light_gen" if light else "full_gen"]
    assert [count(getattr(model, n)) for n in NICE.NAMES] == [gen, gen, PAPER_PARAMS["dis"], PAPER_PARAMS["dis"]]


def official_keys() -> dict[str, tuple[int, ...]]:
    """STATE_DICT_KEYS_NICE.txt: 'net.key<TAB>(shape)' for gen2B and disA at paper size, full."""
    out = {}
    for line in (GOLDEN / "STATE_DICT_KEYS_NICE.txt").read_text().splitlines():
        if "\t" in line and not line.startswith("#"):
            key, shape = line.split("\t")
            out[key] = tuple(ast.literal_eval(shape))
    return out


@pytest.mark.parametrize("light", [False, True], ids=["full", "light"])
def test_key_names_and_torch_shapes_at_paper_size(light):
    model = paper_model(light)
    expected = official_keys()
    if light:
        expected["gen2B.FC.0.weight"] = (256, 256)
    found = {}
    for name in ("gen2B", "disA"):
        for key, get_var, _, to_torch in torch_import.network_entries(getattr(model, name)):
            ours = jax.ShapeDtypeStruct(get_var().get_value().shape, jnp.float32)
            found[f"{name}.{key}"] = tuple(jax.eval_shape(to_torch, ours).shape)
    assert found == expected
    for a, b in (("gen2B", "gen2A"), ("disA", "disB")):
        ka = [k for k, *_ in torch_import.network_entries(getattr(model, a))]
        assert ka == [k for k, *_ in torch_import.network_entries(getattr(model, b))]


@pytest.mark.parametrize(
    "ch, n_dis, img, light",
    [(2, 7, 128, False), (3, 6, 64, True), (2, 8, 256, True)],
    ids=["n_dis7-128", "n_dis6-64", "n_dis8-256"],
)
def test_output_shapes(ch, n_dis, img, light):
    """Local head: n_dis - 4 stride-2 convs in all, then two stride-1 4x4 convs (-1 each); global head: two more
    stride-2 convs. The generator maps the code back to the image size."""
    batch = 2

    def run(x):
        model = NICE(ch, 1, n_dis, img, light, rngs=nnx.Rngs(0))
        return model.disA(x), model.gen2B(model.disA.encode(x)[0])

    out, image = jax.eval_shape(run, jax.ShapeDtypeStruct((batch, img, img, 3), jnp.float32))
    local = img // 2 ** (n_dis - 4) - 2
    glob = img // 2 ** (n_dis - 2) - 2
    assert out.out_local.shape == (batch, local, local, 1)
    assert out.out_global.shape == (batch, glob, glob, 1)
    assert out.cam_logit.shape == (batch, 1)
    assert out.heatmap.shape == (batch, img // 4, img // 4, 1)
    assert out.z.shape == (batch, img // 4, img // 4, 2 * ch)
    assert image.shape == (batch, img, img, 3) and image.dtype == jnp.float32


def test_n_dis_below_six_is_an_error():
    with pytest.raises(ValueError, match="n_dis"):
        NiceDiscriminator(2, 5, rngs=nnx.Rngs(0))


def _iln_reference(x, rho):
    """float64: softmax(rho)[:, 0] * IN(x) + softmax(rho)[:, 1] * LN(x), unbiased variances, eps 1e-5."""
    x = np.asarray(x, np.float64)
    w = np.exp(rho) / np.exp(rho).sum(-1, keepdims=True)  # (C, 2)
    out_in = (x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), ddof=1, keepdims=True) + 1e-5)
    out_ln = (x - x.mean((1, 2, 3), keepdims=True)) / np.sqrt(x.var((1, 2, 3), ddof=1, keepdims=True) + 1e-5)
    return w[:, 0] * out_in + w[:, 1] * out_ln


def test_softmax_iln_and_adailn():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6, 4)).astype(np.float32) * 3 + 1
    rho = rng.standard_normal((4, 2)).astype(np.float32)
    iln, ada = SoftmaxILN(4), SoftmaxAdaILN(4)
    np.testing.assert_array_equal(iln.rho[...], np.tile(np.float32([1.0, 3.2]), (4, 1)))  # the official inits
    np.testing.assert_array_equal(ada.rho[...], np.tile(np.float32([3.2, 1.0]), (4, 1)))
    iln.rho.set_value(jnp.asarray(rho))
    iln.gamma.set_value(jnp.asarray(rng.standard_normal(4), jnp.float32))
    iln.beta.set_value(jnp.asarray(rng.standard_normal(4), jnp.float32))
    ref = _iln_reference(x, rho)
    np.testing.assert_allclose(iln(x), ref * np.asarray(iln.gamma[...]) + np.asarray(iln.beta[...]), atol=2e-5)
    ada.rho.set_value(jnp.asarray(rho))
    gamma, beta = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    expected = ref * gamma[:, None, None] + beta[:, None, None]
    np.testing.assert_allclose(ada(x, jnp.asarray(gamma), jnp.asarray(beta)), expected, atol=2e-5)


def test_pixel_shuffle_matches_torch():
    x = np.arange(2 * 8 * 3 * 4, dtype=np.float32).reshape(2, 8, 3, 4)  # NCHW, 8 = 2 * 2 * 2 channels
    expected = torch.nn.functional.pixel_shuffle(torch.from_numpy(x), 2).numpy()
    ours = pixel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), 2)
    np.testing.assert_array_equal(np.asarray(ours).transpose(0, 3, 1, 2), expected)


# ---------------------------------------------------------------- a tiny model, filled from NumPy

TINY = dict(ch=2, n_res=1, n_dis=6, img_size=48, light=True)  # n_dis 6 at 48 px: global head 1x1, local 10x10


def tiny_model(seed=0, scale=0.3, **overrides) -> NICE:
    """Random weights drawn by NumPy (an eager random init compiles one XLA program per weight shape)."""
    c = {**TINY, **overrides}
    graphdef, abstract = nnx.split(abstract_module(lambda rngs: NICE(**c, rngs=rngs)))
    rng = np.random.default_rng(seed)
    return nnx.merge(
        graphdef, jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), abstract)
    )


def test_official_file_roundtrip_ignores_optimizer_states(tmp_path):
    """A file laid out as the official training file (four networks, D_optimizer, G_optimizer, start_iter): the
    networks import, the rest is ignored, and exporting again gives the same state dicts bit for bit."""
    source = tiny_model(seed=1, light=False)
    dicts = torch_import.official_state_dicts(source)
    param = torch.nn.Parameter(torch.zeros(3))
    adam = torch.optim.Adam([param], lr=1e-4, betas=(0.5, 0.999), weight_decay=1e-4)
    param.grad = torch.ones(3)
    adam.step()
    payload = {n: {k: torch.from_numpy(v) for k, v in sd.items()} for n, sd in dicts.items()}
    payload.update(D_optimizer=adam.state_dict(), G_optimizer=adam.state_dict(), start_iter=7)
    path = tmp_path / "NICE_params_latest.pt"
    torch.save(payload, path)

    assert sorted(torch_import.read_official_checkpoint(path)) == sorted(NICE.NAMES)
    target = tiny_model(seed=2, light=False)
    torch_import.load_official_checkpoint(target, path)
    again = torch_import.official_state_dicts(target)
    for name in NICE.NAMES:
        assert sorted(again[name]) == sorted(dicts[name])
        for key, value in dicts[name].items():
            np.testing.assert_array_equal(again[name][key], value, err_msg=f"{name}.{key}")
    # Our own writer gives the official network layout back.
    torch_import.save_official_checkpoint(target, tmp_path / "ours.pt")
    reread = torch_import.read_official_checkpoint(tmp_path / "ours.pt")
    np.testing.assert_array_equal(reread["gen2B"]["FC.0.weight"], dicts["gen2B"]["FC.0.weight"])


def test_clip_rho_leaves_softmax_rho_alone():
    """NICE-GAN has no rho clipper: its rho are logits, and U-GAT-IT's clip_rho must not touch them."""
    model = tiny_model()
    rhos = lambda: {p: np.asarray(v) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if p[-1] == "rho"}
    before = rhos()
    assert len(before) == 2 * (1 + 2 * TINY["n_res"] + 4)  # every ILN and AdaILN of both generators
    assert any(v.min() < 0 or v.max() > 1 for v in before.values())  # something clip_rho would change
    clip_rho(model)
    after = rhos()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=str(path))


def test_ugatit_checkpoint_into_nice_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(torch_import.CheckpointMismatchError, match="missing network 'gen2B'"):
        torch_import.load_official_checkpoint(model, GOLDEN / "ugatit_light_ch4_img128" / "init.pt")


# ---------------------------------------------------------------- the jitted step

STEPS = 3
LR = 2e-4


def _run(devices, batches, steps=STEPS):
    """``steps`` steps of the tiny model's jitted NICE step on a mesh over ``devices``; (host states before each
    step and after the last, losses per step)."""
    chex.clear_trace_counter()
    mesh = parallel.make_mesh(devices)
    tx = optim.make_optimizer(lr=LR, iterations=2 * steps, decay=True)  # decays from the half: lr changes too
    graphdefs, state = train_state.create_train_state(tiny_model(), tx, tx)
    step = make_nice_train_step(graphdefs, Optimisers(tx, tx, optim.learning_rate_schedule(LR, 2 * steps)))
    step = parallel.jit_train_step(step, mesh)
    state = parallel.replicate(state, mesh)
    states, losses = [jax.device_get(state)], []
    for batch in batches[:steps]:
        state, metrics = step(state, jax.device_put(batch, parallel.batch_sharding(mesh)))
        states.append(jax.device_get(state))
        losses.append((float(metrics["d_loss"]), float(metrics["g_loss"])))
    return states, np.array(losses), jax.device_get(metrics)


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    shape = (8, TINY["img_size"], TINY["img_size"], 3)
    batches = [
        {"A": rng.integers(0, 256, shape, np.uint8), "B": rng.integers(0, 256, shape, np.uint8)} for _ in range(STEPS)
    ]
    return _run(jax.devices()[:1], batches), _run(jax.devices(), batches)


def test_eight_devices_match_one(runs):
    """Global batch 8 over 8 fake CPU devices gives the losses and parameters of 1 device.

    Parameters, as in ``test_parity_nice.py``: every element within 1e-4 of its tensor's scale except at most 0.1%
    of all elements, and those never further apart than Adam can move an element in STEPS steps (lr each, both
    ways). The all-reduced means sum in another order; for gradient elements that are zero up to rounding, that
    decides the sign of Adam's step. Measured: 1 of 29,634 elements beyond 1e-4 on a 2-core Xeon; on the
    CI machine one generator conv kernel was off by 1.7e-4 of its scale.
    """
    assert jax.device_count() == 8, "conftest.py should have created 8 fake CPU devices"
    (one, losses_one, _), (eight, losses_eight, _) = runs
    np.testing.assert_allclose(losses_eight, losses_one, rtol=1e-5)
    pairs = zip(jax.tree_util.tree_leaves_with_path(eight[-1].params), jax.tree.leaves(one[-1].params))
    outliers, total, _ = reordered_sum_outliers(((jax.tree_util.keystr(p), a, b) for (p, a), b in pairs), LR, STEPS)
    assert outliers <= 1e-3 * total, f"{outliers} of {total} elements beyond 1e-4 relative"
    for a, b in zip(jax.tree.leaves(eight[-1].sn), jax.tree.leaves(one[-1].sn)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert int(eight[-1].step) == STEPS


def test_step_metrics(runs):
    (_, losses, metrics), _ = runs
    assert np.all(np.isfinite(losses))
    for key in ("d_loss", "g_loss", "d_loss_A", "g_cycle_B", "g_recon_A", "d_cam_B", "g_cam_adv_A", "lr"):
        assert np.isfinite(metrics[key]), key
    np.testing.assert_allclose(metrics["d_loss"], metrics["d_loss_A"] + metrics["d_loss_B"], rtol=1e-6)
    np.testing.assert_allclose(metrics["lr"], float(optim.learning_rate_schedule(LR, 2 * STEPS)(STEPS - 1)))


def _power_iterations(w_mats, u, v, eps=1e-12):
    """float64 reference: one power iteration per weight matrix (fan_in, out) in ``w_mats``, as ours runs them."""
    for w in w_mats:
        v = w @ u
        v = v / max(np.linalg.norm(v), eps)
        u = v @ w
        u = u / max(np.linalg.norm(u), eps)
    return u, v


def test_step_runs_four_power_iterations_per_discriminator(runs):
    """From random (unconverged) u, v: after one step, each spectral-normalised layer's u, v are those of two
    iterations on the weights before the step (D update) and two on the updated weights (G update)."""
    (states, _, _), _ = runs
    before, after = states[0], states[1]
    n_sn = 0
    for name in NICE.DISCRIMINATORS:
        params = {p: np.asarray(v, np.float64) for p, v in nnx.to_flat_state(before.params[name])}
        updated = {p: np.asarray(v, np.float64) for p, v in nnx.to_flat_state(after.params[name])}
        sn_before = dict(nnx.to_flat_state(before.sn[name]))
        sn_after = dict(nnx.to_flat_state(after.sn[name]))
        for path in sn_before:
            if path[-1] != "u":
                continue
            layer = path[:-1]
            kernel_path = (*layer, "layer", "kernel")
            w0 = params[kernel_path].reshape(-1, params[kernel_path].shape[-1])
            w1 = updated[kernel_path].reshape(w0.shape)
            u, v = np.asarray(sn_before[path], np.float64), np.asarray(sn_before[(*layer, "v")], np.float64)
            u, v = _power_iterations([w0, w0, w1, w1], u, v)
            np.testing.assert_allclose(sn_after[path], u, rtol=1e-4, atol=1e-6, err_msg=f"{name}{layer}.u")
            np.testing.assert_allclose(sn_after[(*layer, "v")], v, rtol=1e-4, atol=1e-6, err_msg=f"{name}{layer}.v")
            n_sn += 1
    dis = tiny_model().disA
    assert n_sn == 2 * sum(isinstance(m, SpectralNorm) for _, m in nnx.iter_modules(dis))
