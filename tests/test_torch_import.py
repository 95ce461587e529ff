"""Official checkpoint import/export: clear errors for checkpoints that do not fit the config, a bit-exact
export/import round trip, official key names and torch layouts, and torch.load only with weights_only=True."""

import ast
import pathlib
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from ugatit_jax.interop import torch_import
from ugatit_jax.interop.torch_import import CheckpointMismatchError
from ugatit_jax.models.ugatit import UGATIT
from ugatit_jax.nn import layers
from ugatit_jax.xla.jit_init import abstract_module

GOLDEN = pathlib.Path(__file__).parent / "golden"
PACKAGE = pathlib.Path(torch_import.__file__).parent.parent  # the whole ugatit_jax package


def tiny_model(seed=0, *, ch=2, n_res=4, img_size=16, light=False, disc=(7, 5)) -> UGATIT:
    """A UGATIT filled from NumPy (eager random init would compile one XLA program per shape: seconds).

    n_res 4 and discriminator depths 7 / 5 give exactly the official key names; only the widths are tiny.
    """
    abstract = abstract_module(lambda rngs: UGATIT(ch, n_res, img_size, light, *disc, rngs=rngs))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    fill = lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype)
    return nnx.merge(graphdef, jax.tree.map(fill, state))


def flat(module):
    return {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(module))}


def official_keys() -> dict[str, tuple[int, ...]]:
    """STATE_DICT_KEYS.txt: 'net.key<TAB>(shape)' for genA2B, disGA, disLA at ch 64, img 256, full."""
    out = {}
    for line in (GOLDEN / "STATE_DICT_KEYS.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            out[key] = tuple(ast.literal_eval(shape))
    return out


# ---------------------------------------------------------------- checkpoints that do not fit the model


def test_width_mismatch_names_key_and_both_shapes():
    """The light ch-4 golden checkpoint into a ch-8 model."""
    model = tiny_model(ch=8, img_size=128, light=True)
    with pytest.raises(CheckpointMismatchError) as err:
        torch_import.load_official_checkpoint(model, GOLDEN / "ugatit_light_ch4_img128" / "init.pt")
    msg = str(err.value)
    assert "genA2B.DownBlock.1.weight" in msg
    assert "expects (8, 3, 7, 7)" in msg and "has (4, 3, 7, 7)" in msg


@pytest.mark.parametrize(
    ("checkpoint", "light", "expected", "found"), [("full", True, 16, 16384), ("light", False, 16384, 16)]
)
def test_full_and_light_generators_do_not_mix(checkpoint, light, expected, found):
    """Only FC.0 differs: (dim, dim) in the light generator, (dim, dim * (img / 4)^2) in the full one."""
    model = tiny_model(ch=4, img_size=128, light=light)
    path = GOLDEN / f"ugatit_{checkpoint}_ch4_img128" / "init.pt"
    with pytest.raises(CheckpointMismatchError, match=rf"genA2B\.FC\.0\.weight.*\(16, {expected}\).*\(16, {found}\)"):
        torch_import.load_official_checkpoint(model, path, networks=("genA2B",))


@pytest.fixture(scope="module")
def exported():
    """The official state dicts of a random tiny model (exporting compiles per shape, so only once)."""
    return torch_import.official_state_dicts(tiny_model())


def _copy(dicts):
    return {name: dict(sd) for name, sd in dicts.items()}


def test_missing_network(exported):
    dicts = _copy(exported)
    del dicts["genB2A"]
    with pytest.raises(CheckpointMismatchError, match=r"missing network 'genB2A'"):
        torch_import.load_official_checkpoint(tiny_model(1), dicts)
    torch_import.load_official_checkpoint(tiny_model(1), dicts, networks=("genA2B",))  # not asked for: fine


def test_missing_key(exported):
    dicts = _copy(exported)
    del dicts["genA2B"]["FC.2.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing key 'genA2B\.FC\.2\.weight' \(1 missing"):
        torch_import.load_official_checkpoint(tiny_model(1), dicts)


def test_unexpected_key(exported):
    dicts = _copy(exported)
    dicts["disGA"]["model.99.weight_orig"] = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key 'disGA\.model\.99\.weight_orig'"):
        torch_import.load_official_checkpoint(tiny_model(1), dicts, networks=("disGA",))


def test_fewer_residual_blocks_is_an_unexpected_key():
    """A 4-block checkpoint into a 2-block model: names the first surplus block."""
    model = tiny_model(ch=4, n_res=2, img_size=128, light=True)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected key 'genA2B\.DownBlock\.14\.conv_block\.1\.weight'"):
        torch_import.load_official_checkpoint(model, GOLDEN / "ugatit_light_ch4_img128" / "init.pt")


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        torch_import.read_official_checkpoint(tmp_path / "nope.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointMismatchError, match="expected a dict"):
        torch_import.read_official_checkpoint(tmp_path / "tensor.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="not a readable PyTorch file") as error:
        torch_import.read_official_checkpoint(tmp_path / "garbage.pt")
    assert "neither torch.save's zip archive nor its legacy format" in str(error.value)
    with zipfile.ZipFile(tmp_path / "other.pt", "w") as archive:  # a zip, but not torch's
        archive.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointMismatchError, match="zip archive but not one written by torch.save"):
        torch_import.read_official_checkpoint(tmp_path / "other.pt")


class _NotATensor:
    """Any class: weights_only=True refuses to unpickle it (a plain pickle would run its code)."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"genA2B": {"x": _NotATensor()}}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointMismatchError, match="not a readable PyTorch file") as error:
        torch_import.read_official_checkpoint(tmp_path / "unsafe.pt")
    message = str(error.value)
    assert "never unpickles code" in message and "\n" not in message
    assert "weights_only" not in message, "torch's advice to disable weights_only must not reach the user"


# ---------------------------------------------------------------- export / import


@pytest.mark.parametrize("light", [False, True])
def test_export_then_import_is_bit_exact(tmp_path, light):
    """Every Param and u, v of a random model survives save_official_checkpoint -> load_official_checkpoint."""
    source, target = tiny_model(0, light=light), tiny_model(1, light=light)
    expected = flat(source)
    assert any(not np.array_equal(v, flat(target)[k]) for k, v in expected.items())
    path = tmp_path / "model.pt"
    torch_import.save_official_checkpoint(source, path)
    torch_import.load_official_checkpoint(target, path)
    got = flat(target)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k].dtype == v.dtype, k
        np.testing.assert_array_equal(got[k], v, err_msg=str(k))


def test_exported_file_has_official_keys_and_loads_into_torch_layers(tmp_path):
    """The .pt holds torch tensors under the official names, in layouts real torch layers accept and use alike."""
    model = tiny_model(light=False)
    path = tmp_path / "model.pt"
    torch_import.save_official_checkpoint(model, path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert sorted(raw) == sorted(UGATIT.NAMES)
    keys = official_keys()
    same_keys_as = {"genA2B": "genA2B", "genB2A": "genA2B", "disGA": "disGA", "disGB": "disGA"}
    for name in UGATIT.NAMES:
        ref = same_keys_as.get(name, "disLA")  # the file lists genA2B, disGA, disLA; B networks share their keys
        assert sorted(raw[name]) == sorted(k.split(".", 1)[1] for k in keys if k.startswith(ref + ".")), name
        for key, t in raw[name].items():
            assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.is_contiguous(), key
    gen, dis, sd_gen, sd_dis = model.genA2B, model.disGA, raw["genA2B"], raw["disGA"]
    rng = np.random.default_rng(0)

    # A plain conv (OIHW): the generator's stem.
    x = jnp.asarray(layers.reflect_pad(rng.standard_normal((2, 10, 10, 3)).astype(np.float32), 3))
    conv = torch.nn.Conv2d(3, 2, 7, bias=False)
    conv.load_state_dict({"weight": sd_gen["DownBlock.1.weight"]})
    _assert_torch_matches(conv, x, gen.stem(x))

    # A spectral-normalised conv in eval mode: sigma from weight_orig, weight_u, weight_v (v in torch's order).
    sn = torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 2, 4, stride=2))
    sn.load_state_dict({k.split(".", 2)[2]: v for k, v in sd_dis.items() if k.startswith("model.1.")})
    sn.eval()
    ours = dis.convs[0]
    ours.eval()
    _assert_torch_matches(sn, x, ours(x))

    # The full generator's FC.0: torch flattens the feature map channel-major (C, H, W), we flatten (H, W, C).
    feat = jnp.asarray(rng.standard_normal((2, 4, 4, 8)).astype(np.float32))
    fc0 = torch.nn.Linear(4 * 4 * 8, 8, bias=False)
    fc0.load_state_dict({"weight": sd_gen["FC.0.weight"]})
    with torch.no_grad():
        want = fc0(torch.from_numpy(np.transpose(np.asarray(feat), (0, 3, 1, 2)).reshape(2, -1).copy())).numpy()
    np.testing.assert_allclose(gen.fc1(feat.reshape(2, -1)), want, rtol=1e-5, atol=1e-5)


def _assert_torch_matches(torch_layer, x_nhwc, ours_nhwc):
    with torch.no_grad():
        want = torch_layer(torch.from_numpy(np.transpose(np.asarray(x_nhwc), (0, 3, 1, 2)).copy())).numpy()
    got = np.transpose(np.asarray(ours_nhwc), (0, 3, 1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("light", [False, True])
def test_key_names_and_torch_shapes_at_paper_size(light):
    """ch 64, img 256: every official key and torch shape, derived abstractly (the full FC.0 is 268M floats)."""
    model = abstract_module(lambda rngs: UGATIT(64, 4, 256, light, 7, 5, rngs=rngs))
    expected = official_keys()
    if light:
        expected["genA2B.FC.0.weight"] = (256, 256)
    found = {}
    for name in ("genA2B", "disGA", "disLA"):
        for key, get_var, _, to_torch in torch_import.network_entries(getattr(model, name)):
            ours = jax.ShapeDtypeStruct(get_var().get_value().shape, jnp.float32)
            found[f"{name}.{key}"] = tuple(jax.eval_shape(to_torch, ours).shape)
    assert found == expected
    # The other domain's networks map to the same keys.
    for a, b in (("genA2B", "genB2A"), ("disGA", "disGB"), ("disLA", "disLB")):
        ka = [k for k, *_ in torch_import.network_entries(getattr(model, a))]
        assert ka == [k for k, *_ in torch_import.network_entries(getattr(model, b))]


# ---------------------------------------------------------------- safety


def test_torch_load_only_with_weights_only_true():
    """A guard over the whole package source: torch.load without weights_only=True can run arbitrary code."""
    calls = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert all(a.name != "load" for a in node.names), f"{path}: 'from torch import load'"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id == "torch":
                    calls += 1
                    kw = {k.arg: k.value for k in node.keywords}
                    ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    assert ok, f"{path}:{node.lineno}: torch.load without weights_only=True"
    assert calls == 1  # interop/state_dict.torch_load: the official checkpoints and the FID weights are read there
