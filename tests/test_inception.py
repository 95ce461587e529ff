"""Parity of the NNX FID Inception with a torch model assembled here from torch.nn layers.

The torch side follows pytorch-fid's FID variant (TF-style avg pools that skip
padding, max pool in Mixed_7c, BN eps 1e-3, bilinear resize then 2x-1) and uses
the same module names, so its state dict has pytorch-fid's key format. Weights
and BN statistics are random but non-trivial, so a wrong transpose, pooling
mode or BN mapping shows up as a large mismatch.
"""

from __future__ import annotations

import pickle

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ugatit_jax.evaluation import inception as inc

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

torch.set_num_threads(2)


# ----------------------------------------------------------------------------
# torch reference, built from torch.nn layers
# ----------------------------------------------------------------------------


class TConv(tnn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__()
        self.conv = tnn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.bn = tnn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def t_avg3(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class TA(tnn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = TConv(cin, 64, 1)
        self.branch5x5_1 = TConv(cin, 48, 1)
        self.branch5x5_2 = TConv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = TConv(cin, 64, 1)
        self.branch3x3dbl_2 = TConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = TConv(96, 96, 3, padding=1)
        self.branch_pool = TConv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(t_avg3(x)),
            ],
            1,
        )


class TB(tnn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = TConv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = TConv(cin, 64, 1)
        self.branch3x3dbl_2 = TConv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = TConv(96, 96, 3, stride=2)

    def forward(self, x):
        d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), d, F.max_pool2d(x, 3, stride=2)], 1)


class TC(tnn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = TConv(cin, 192, 1)
        self.branch7x7_1 = TConv(cin, c7, 1)
        self.branch7x7_2 = TConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = TConv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = TConv(cin, c7, 1)
        self.branch7x7dbl_2 = TConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = TConv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = TConv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = TConv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = TConv(cin, 192, 1)

    def forward(self, x):
        a = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b = x
        for m in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            b = m(b)
        return torch.cat([self.branch1x1(x), a, b, self.branch_pool(t_avg3(x))], 1)


class TD(tnn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = TConv(cin, 192, 1)
        self.branch3x3_2 = TConv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = TConv(cin, 192, 1)
        self.branch7x7x3_2 = TConv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = TConv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = TConv(192, 192, 3, stride=2)

    def forward(self, x):
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class TE(tnn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.pool = pool
        self.branch1x1 = TConv(cin, 320, 1)
        self.branch3x3_1 = TConv(cin, 384, 1)
        self.branch3x3_2a = TConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = TConv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = TConv(cin, 448, 1)
        self.branch3x3dbl_2 = TConv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = TConv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = TConv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = TConv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        a = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b = torch.cat([self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b)], 1)
        p = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else t_avg3(x)
        return torch.cat([self.branch1x1(x), a, b, self.branch_pool(p)], 1)


class TNet(tnn.Module):
    """pytorch-fid's InceptionV3(resize_input=True, normalize_input=True), pool3 output."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = TConv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = TConv(32, 32, 3)
        self.Conv2d_2b_3x3 = TConv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = TConv(64, 80, 1)
        self.Conv2d_4a_3x3 = TConv(80, 192, 3)
        self.Mixed_5b = TA(192, 32)
        self.Mixed_5c = TA(256, 64)
        self.Mixed_5d = TA(288, 64)
        self.Mixed_6a = TB(288)
        self.Mixed_6b = TC(768, 128)
        self.Mixed_6c = TC(768, 160)
        self.Mixed_6d = TC(768, 160)
        self.Mixed_6e = TC(768, 192)
        self.Mixed_7a = TD(768)
        self.Mixed_7b = TE(1280, "avg")
        self.Mixed_7c = TE(2048, "max")
        self.fc = tnn.Linear(2048, 1008)

    def forward(self, x01):
        x = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, "Mixed_" + name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def randomize(module: tnn.Module, seed: int) -> tnn.Module:
    """He-scaled convs and non-trivial BN affine/statistics so every mapping is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, tnn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            elif isinstance(m, tnn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return module.eval()


def to_numpy_sd(module: tnn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in module.state_dict().items()}


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def assert_close(got, want, rel=2e-5):
    """Elementwise, with atol relative to the output scale (float32 over many layers)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = np.abs(want).max()
    assert scale > 1e-3, "reference output is degenerate; the comparison would be vacuous"
    np.testing.assert_allclose(got, want, rtol=rel, atol=rel * scale)


# ----------------------------------------------------------------------------
# Block parity
# ----------------------------------------------------------------------------

BLOCKS = {
    # name: (torch ctor, nnx ctor, in channels, spatial size)
    "A": (lambda: TA(192, 32), lambda r: inc.InceptionA(192, 32, rngs=r), 192, 9),
    "B": (lambda: TB(288), lambda r: inc.InceptionB(288, rngs=r), 288, 10),
    "C": (lambda: TC(768, 128), lambda r: inc.InceptionC(768, 128, rngs=r), 768, 9),
    "D": (lambda: TD(768), lambda r: inc.InceptionD(768, rngs=r), 768, 10),
    "E_1": (lambda: TE(1280, "avg"), lambda r: inc.InceptionE(1280, pool="avg", rngs=r), 1280, 8),
    "E_2": (lambda: TE(2048, "max"), lambda r: inc.InceptionE(2048, pool="max", rngs=r), 2048, 8),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_matches_torch(name):
    t_ctor, j_ctor, cin, size = BLOCKS[name]
    tblock = randomize(t_ctor(), seed=len(name))
    jblock = j_ctor(nnx.Rngs(0))
    inc.assign_state_dict(jblock, to_numpy_sd(tblock))
    # Signed inputs (post-ReLU maps are >= 0 but a signed input makes max pools
    # and padding handling matter more).
    x = np.random.default_rng(1).standard_normal((2, size, size + 1, cin)).astype(np.float32)
    with torch.no_grad():
        want = tblock(nchw(x)).numpy().transpose(0, 2, 3, 1)
    got = jblock(jnp.asarray(x))
    assert_close(got, want)


def test_e2_max_pool_is_not_avg_pool():
    """Guard that the E_2 comparison above can tell the two pooling modes apart."""
    tblock = randomize(TE(2048, "max"), seed=3)
    jblock = inc.InceptionE(2048, pool="avg", rngs=nnx.Rngs(0))
    inc.assign_state_dict(jblock, to_numpy_sd(tblock))
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 2048)).astype(np.float32)
    with torch.no_grad():
        want = tblock(nchw(x)).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(jblock(jnp.asarray(x)))
    assert np.abs(got - want).max() > 1e-2 * np.abs(want).max()


# ----------------------------------------------------------------------------
# Resize and the full network
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(48, 40), (320, 305), (299, 299), (1, 7)])
def test_resize_matches_torch_interpolate(hw):
    x = np.random.default_rng(0).standard_normal((2, *hw, 3)).astype(np.float32)
    want = F.interpolate(nchw(x), size=(299, 299), mode="bilinear", align_corners=False)
    got = inc.resize_bilinear(jnp.asarray(x), (299, 299))
    np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=2e-6)


@pytest.fixture(scope="module")
def fid_pair(tmp_path_factory):
    """A random torch FID net, its .pth file in pytorch-fid format, and the NNX model loaded from it."""
    tnet = randomize(TNet(), seed=0)
    path = tmp_path_factory.mktemp("weights") / inc.FID_WEIGHTS_FILENAME
    torch.save(tnet.state_dict(), path)  # modern torch also stores bn.num_batches_tracked
    model = inc.load_pytorch_fid_weights(path)
    return tnet, path, model, inc.make_feature_fn(model)


def test_full_network_matches_pytorch_fid_pipeline(fid_pair):
    tnet, _, model, feature_fn = fid_pair
    # Non-square input catches H/W mix-ups in the resize and layout conversion.
    x = np.random.default_rng(2).uniform(-1, 1, (2, 48, 40, 3)).astype(np.float32)
    with torch.no_grad():
        want = tnet(nchw((x + 1) / 2))  # pytorch-fid is fed [0, 1] images
        want_logits = tnet.fc(want)
    got = feature_fn(jnp.asarray(x))
    assert got.shape == (2, 2048) and got.dtype == jnp.float32
    # 2e-5 relative to the feature scale: ~95 float32 conv layers whose
    # summation order differs between XLA and oneDNN; observed error is ~3e-7.
    assert_close(got, want.numpy())
    assert_close(model.logits(got), want_logits.numpy())
    # the two images must give different features (batch elements are not mixed up)
    assert np.abs(np.asarray(got[0]) - np.asarray(got[1])).max() > 1e-3


def test_uint8_input_equals_scaled_float(fid_pair):
    *_, feature_fn = fid_pair
    u8 = np.random.default_rng(3).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    as_float = u8.astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(
        np.asarray(feature_fn(jnp.asarray(u8))),
        np.asarray(feature_fn(jnp.asarray(as_float))),
        rtol=1e-5,
        atol=1e-5,
    )


def test_extract_features_batches_and_pads(fid_pair):
    *_, feature_fn = fid_pair
    x = np.random.default_rng(4).uniform(-1, 1, (3, 48, 40, 3)).astype(np.float32)
    got = inc.extract_features(feature_fn, x, batch_size=2)
    assert got.shape == (3, 2048)
    np.testing.assert_allclose(got[:2], np.asarray(feature_fn(jnp.asarray(x[:2]))), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2], np.asarray(feature_fn(jnp.asarray(x[1:3])))[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        inc.extract_features(feature_fn, x * 255.0, batch_size=2)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        inc.extract_features(feature_fn, x[..., :1], batch_size=2)


def test_model_rejects_non_rgb_input():
    model = inc.InceptionV3(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        model(jnp.zeros((1, 3, 32, 32)))


# ----------------------------------------------------------------------------
# Weight files
# ----------------------------------------------------------------------------


def test_save_load_roundtrip_in_pytorch_fid_format(tmp_path):
    model = inc.InceptionV3(rngs=nnx.Rngs(7))
    path = tmp_path / "roundtrip.pth"
    inc.save_pytorch_fid_format(model, path)
    reloaded = inc.load_pytorch_fid_weights(path)
    a, b = inc.module_state_dict(model), inc.module_state_dict(reloaded)
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The file loads strictly into the pytorch-fid-shaped torch net: same keys, same shapes.
    sd = torch.load(path, map_location="cpu", weights_only=True)
    TNet().load_state_dict(sd, strict=True)
    assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
    np.testing.assert_array_equal(
        sd["Conv2d_1a_3x3.conv.weight"].numpy(),
        np.asarray(model.Conv2d_1a_3x3.conv.kernel[...]).transpose(3, 2, 0, 1),
    )


def _good_sd(fid_pair):
    tnet = fid_pair[0]
    return dict(tnet.state_dict())


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        inc.load_pytorch_fid_weights(tmp_path / "nope.pth")
    msg = str(e.value)
    assert "nope.pth" in msg and inc.FID_WEIGHTS_FILENAME in msg and "github.com/mseitzer/pytorch-fid" in msg


def test_wrong_shape_names_key_and_shapes(tmp_path, fid_pair):
    sd = _good_sd(fid_pair)
    sd["Mixed_6b.branch7x7_2.conv.weight"] = torch.zeros(128, 128, 7, 1)
    path = tmp_path / "bad_shape.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        inc.load_pytorch_fid_weights(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "'Mixed_6b.branch7x7_2.conv.weight'" in msg
    assert "the model expects (128, 128, 1, 7), the file has (128, 128, 7, 1)" in msg


def test_missing_key_is_named(tmp_path, fid_pair):
    sd = _good_sd(fid_pair)
    del sd["Mixed_7c.branch_pool.bn.running_var"]
    path = tmp_path / "missing.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing key 'Mixed_7c\.branch_pool\.bn\.running_var'"):
        inc.load_pytorch_fid_weights(path)


def test_unexpected_key_is_named(tmp_path, fid_pair):
    sd = _good_sd(fid_pair)
    sd["AuxLogits.fc.weight"] = torch.zeros(1008, 768)  # torchvision's classifier checkpoint has these
    path = tmp_path / "extra.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"unexpected key 'AuxLogits\.fc\.weight'"):
        inc.load_pytorch_fid_weights(path)


def test_non_state_dict_and_unsafe_pickles_are_rejected(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="flat state dict"):
        inc.load_pytorch_fid_weights(path)

    path = tmp_path / "code.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": np.random.default_rng}, f, protocol=2)  # a callable: weights_only must refuse it
    with pytest.raises(ValueError, match="never unpickles code") as e:
        inc.load_pytorch_fid_weights(path)
    assert str(path) in str(e.value) and "weights_only" not in str(e.value)


def test_missing_torch_gives_install_hint(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not read")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'ugatit-jax\[torch\]'"):
        inc.load_pytorch_fid_weights(path)


def test_rejected_file_leaves_module_untouched(fid_pair):
    model = inc.InceptionV3(rngs=nnx.Rngs(3))
    before = inc.module_state_dict(model)
    sd = {k: v.numpy() for k, v in _good_sd(fid_pair).items()}
    sd["fc.bias"] = np.zeros(1000, np.float32)  # torchvision's 1000-class head
    with pytest.raises(ValueError, match=r"'fc\.bias'.*expects \(1008,\), the file has \(1000,\)"):
        inc.assign_state_dict(model, sd)
    after = inc.module_state_dict(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_batch_norm_counter_is_ignored_only_beside_its_batch_norm():
    model = inc.InceptionV3(rngs=nnx.Rngs(4))
    sd = inc.module_state_dict(model)
    inc.assign_state_dict(model, {**sd, "Conv2d_1a_3x3.bn.num_batches_tracked": np.zeros((), np.int64)})
    with pytest.raises(ValueError, match=r"unexpected key 'fc\.num_batches_tracked'"):
        inc.assign_state_dict(model, {**sd, "fc.num_batches_tracked": np.zeros((), np.int64)})
