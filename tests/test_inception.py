"""The FID Inception network: structure, weight conversion, TF1 resize, and parity with the torch ports.

Torch-free tests trace the network abstractly (`jax.eval_shape`) and compile one small forward. The
parity tests run when torch, torchvision, pytorch_fid and torch_fidelity are importable, on random
weights built without downloading anything; the end-to-end test needs the real weights file in
$GM_INCEPTION_WEIGHTS.
"""
import hashlib
import importlib
import io
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm.metrics import inception as inc
from test_pth import FakeStorage, FakeTensor, fake_torch, save_zip  # noqa: F401  (fake_torch: a fixture)

_PIP_NAMES = {"torch": "torch", "torchvision": "torchvision", "pytorch_fid": "pytorch-fid",
              "torch_fidelity": "torch-fidelity"}


def _require(*modules):
    """Import `modules` or skip the calling test, naming what is missing; imported lazily, so runs without
    torch pay nothing for these tests."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # not installed, or broken (e.g. a torchvision built for another torch)
            pytest.skip(f"the parity tests need {name} (pip install {_PIP_NAMES[name]}); "
                        f"importing it failed with {type(e).__name__}: {e}")


# torchvision's inception_v3 counts 27,161,264 parameters with the aux head (3,326,696) and a 1000-way
# fc; without the head and with the 1008-way fc: 27,161,264 - 3,326,696 + 8 * (2048 + 1) = 23,850,960.
NUM_PARAMS = 23_850_960


# ----------------------------------------------------------------------------- the expected torch names

def _torch_convs():
    """(module name, in, out, kh, kw) of every conv + BN pair, as torchvision's inception.py has them."""
    convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
             ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    cin = 192

    def add(block, specs):
        convs.extend((f"{block}.{name}", i, o, kh, kw) for name, i, o, kh, kw in specs)

    for block, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        add(block, [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1), ("branch5x5_2", 48, 64, 5, 5),
                    ("branch3x3dbl_1", cin, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3),
                    ("branch3x3dbl_3", 96, 96, 3, 3), ("branch_pool", cin, pool, 1, 1)])
        cin = 64 + 64 + 96 + pool
    add("Mixed_6a", [("branch3x3", cin, 384, 3, 3), ("branch3x3dbl_1", cin, 64, 1, 1),
                     ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3)])
    cin = 384 + 96 + cin
    for block, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        add(block, [("branch1x1", cin, 192, 1, 1), ("branch7x7_1", cin, c7, 1, 1), ("branch7x7_2", c7, c7, 1, 7),
                    ("branch7x7_3", c7, 192, 7, 1), ("branch7x7dbl_1", cin, c7, 1, 1),
                    ("branch7x7dbl_2", c7, c7, 7, 1), ("branch7x7dbl_3", c7, c7, 1, 7),
                    ("branch7x7dbl_4", c7, c7, 7, 1), ("branch7x7dbl_5", c7, 192, 1, 7),
                    ("branch_pool", cin, 192, 1, 1)])
        cin = 4 * 192
    add("Mixed_7a", [("branch3x3_1", cin, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
                     ("branch7x7x3_1", cin, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
                     ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)])
    cin = 320 + 192 + cin
    for block in ("Mixed_7b", "Mixed_7c"):
        add(block, [("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1),
                    ("branch3x3_2a", 384, 384, 1, 3), ("branch3x3_2b", 384, 384, 3, 1),
                    ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
                    ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1),
                    ("branch_pool", cin, 192, 1, 1)])
        cin = 320 + 2 * 384 + 2 * 384 + 192
    assert cin == inc.FEATURE_DIM
    return convs


def _torch_state_dict_shapes():
    """{torch state-dict name: shape} of pytorch-fid's FID Inception (no aux head, fc 2048 -> 1008)."""
    shapes = {}
    for name, i, o, kh, kw in _torch_convs():
        shapes[f"{name}.conv.weight"] = (o, i, kh, kw)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{leaf}"] = (o,)
        shapes[f"{name}.bn.num_batches_tracked"] = ()
    shapes["fc.weight"] = (inc.NUM_LOGITS, inc.FEATURE_DIM)
    shapes["fc.bias"] = (inc.NUM_LOGITS,)
    return shapes


def _random_state_dict(seed=0):
    """Random numpy state dict with the torch names and layouts (positive variances)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in _torch_state_dict_shapes().items():
        if name.endswith("num_batches_tracked"):
            out[name] = np.array(0, np.int64)
        elif name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def random_state_dict():
    return _random_state_dict()


def _abstract_variables():
    x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
    return jax.eval_shape(lambda x: inc.InceptionV3().init(jax.random.key(0), x), x)


# ----------------------------------------------------------------------------- structure (no compile)

def test_output_shapes_and_parameter_count():
    model = inc.InceptionV3()
    for size in (299, 32):  # the input is resized to 299x299 whatever its size
        x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
        out, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)
        assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
            "pool": ((2, 2048), jnp.float32), "logits": ((2, 1008), jnp.float32),
            "logits_unbiased": ((2, 1008), jnp.float32)}
    count = lambda tree: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
    assert count(variables["params"]) == NUM_PARAMS  # conv kernels + BN scale/bias + fc
    # The same number from the torch shapes: conv kernels, BN scale and bias, fc weight and bias.
    convs = _torch_convs()
    assert sum(o * i * kh * kw + 2 * o for _, i, o, kh, kw in convs) + 2048 * 1008 + 1008 == NUM_PARAMS
    assert count(variables["batch_stats"]) == 2 * sum(o for _, _, o, _, _ in convs)
    assert len(convs) == 94


def test_variables_map_one_to_one_onto_torch_names(random_state_dict):
    variables = inc.variables_from_torch_state_dict(random_state_dict)
    expected = _abstract_variables()
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, expected)
    # Each value lands at its own place, in the Flax layout.
    sd, params, stats = random_state_dict, variables["params"], variables["batch_stats"]
    for name, *_ in _torch_convs():
        p, s = params, stats
        for part in name.split("."):
            p, s = p[part], s[part]
        np.testing.assert_array_equal(p["conv"]["kernel"], sd[f"{name}.conv.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(p["bn"]["scale"], sd[f"{name}.bn.weight"])
        np.testing.assert_array_equal(p["bn"]["bias"], sd[f"{name}.bn.bias"])
        np.testing.assert_array_equal(s["bn"]["mean"], sd[f"{name}.bn.running_mean"])
        np.testing.assert_array_equal(s["bn"]["var"], sd[f"{name}.bn.running_var"])
    np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(params["fc"]["bias"], sd["fc.bias"])
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))


@pytest.mark.parametrize("change", ["missing", "unused", "misshapen"])
def test_conversion_rejects_other_state_dicts(random_state_dict, change):
    sd = dict(random_state_dict)
    if change == "missing":
        del sd["Mixed_6b.branch7x7_2.conv.weight"]
    elif change == "unused":
        sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    else:
        sd["fc.weight"] = np.zeros((1000, 2048), np.float32)
    with pytest.raises(ValueError, match=f"1 {change}"):
        inc.variables_from_torch_state_dict(sd)


# ----------------------------------------------------------------------------- TF1 resize

def _tf1_resize_reference(x, out_h, out_w):
    """TF1 resize_bilinear (align_corners=False) written out as in resize_bilinear_op.cc, in float64."""
    def interpolation(in_size, out_size):
        scale = np.float32(in_size) / np.float32(out_size)  # CalculateResizeScale, float
        lower, upper, lerp = [], [], []
        for i in range(out_size):
            src = np.float32(i) * scale  # LegacyScaler: no half-pixel centres
            lower.append(max(int(math.floor(src)), 0))
            upper.append(min(int(math.ceil(src)), in_size - 1))
            lerp.append(float(src) - math.floor(src))
        return np.array(lower), np.array(upper), np.array(lerp)

    x = np.asarray(x, np.float64)
    y0, y1, dy = interpolation(x.shape[1], out_h)
    x0, x1, dx = interpolation(x.shape[2], out_w)
    dx, dy = dx[None, None, :, None], dy[None, :, None, None]
    top_left, top_right = x[:, y0][:, :, x0], x[:, y0][:, :, x1]
    bottom_left, bottom_right = x[:, y1][:, :, x0], x[:, y1][:, :, x1]
    top = top_left + (top_right - top_left) * dx
    bottom = bottom_left + (bottom_right - bottom_left) * dx
    return top + (bottom - top) * dy


# Values in [0, 255]: float32 spacing there is 1.5e-5, and the matrix form rounds differently from TF's
# nested lerps by a few of those.
RESIZE_ATOL = 2e-4


@pytest.mark.parametrize("in_hw,out_hw", [((32, 32), (299, 299)),   # CIFAR-10 up to the network's size
                                          ((512, 400), (299, 299)),  # downsampling, no antialiasing
                                          ((7, 5), (3, 11))])         # mixed, non-square
def test_resize_matches_the_tf1_formula(in_hw, out_hw):
    x = np.random.default_rng(0).uniform(0, 255, (2, *in_hw, 3)).astype(np.float32)
    got = np.asarray(inc.resize_like_tf1(x, out_hw))
    assert got.shape == (2, *out_hw, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _tf1_resize_reference(x, *out_hw), rtol=0, atol=RESIZE_ATOL)


def test_resize_is_the_identity_at_the_same_size():
    x = np.random.default_rng(1).integers(0, 256, (2, 299, 299, 3)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(inc.resize_like_tf1(x)), x.astype(np.float32))


# ----------------------------------------------------------------------------- weights files (no torch)

def test_missing_weights_file_says_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    for path in (None, str(tmp_path / inc.WEIGHTS_FILENAME)):
        with pytest.raises(inc.InceptionWeightsError) as info:
            inc.load_variables(path)
        message = str(info.value)
        assert inc.WEIGHTS_URL in message and "--config.eval.inception_weights=PATH" in message
        assert inc.WEIGHTS_ENV in message and message.count(". ") == 0  # one sentence
    assert issubclass(inc.InceptionWeightsError, FileNotFoundError)


def test_load_variables_reads_a_pth_without_torch(fake_torch, monkeypatch, tmp_path, random_state_dict):  # noqa: F811
    # The .pth is written here as torch.save writes it; reading it imports no torch.
    storages, obj = [], {}
    for i, (name, value) in enumerate(random_state_dict.items()):
        storages.append(FakeStorage(str(i), value.reshape(-1)))
        strides = tuple(s // value.itemsize for s in value.strides)
        obj[name] = FakeTensor(storages[-1], 0, value.shape, strides)
    path = tmp_path / inc.WEIGHTS_FILENAME
    save_zip(fake_torch, obj, storages, path)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    variables = inc.load_variables(str(path))
    jax.tree.map(np.testing.assert_array_equal, variables, inc.variables_from_torch_state_dict(random_state_dict))


def _serve(monkeypatch, payload):
    """urllib.request.urlopen answers every URL with `payload`."""
    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    monkeypatch.setattr(inc.urllib.request, "urlopen", lambda url, timeout: Response(payload))


def test_weights_are_downloaded_once_into_the_cache_and_checked(monkeypatch, tmp_path, random_state_dict):
    npz = io.BytesIO()
    np.savez(npz, **random_state_dict)
    payload = npz.getvalue()
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(inc.OFFLINE_ENV, raising=False)
    monkeypatch.setenv(inc.CACHE_ENV, str(tmp_path))
    _serve(monkeypatch, payload)
    with pytest.raises(inc.InceptionWeightsError, match="^The FID Inception weights downloaded to .* do not match"):
        inc.download_weights()
    assert os.listdir(tmp_path) == []  # nothing half-written stays
    monkeypatch.setattr(inc, "WEIGHTS_SHA256_PREFIX", hashlib.sha256(payload).hexdigest()[:8])
    path = inc.download_weights()
    assert path == str(tmp_path / inc.WEIGHTS_FILENAME) and os.listdir(tmp_path) == [inc.WEIGHTS_FILENAME]
    _serve(monkeypatch, b"")  # a second call reads the cache
    assert inc.download_weights() == path


def test_without_network_the_download_fails_at_once_with_the_sentence(monkeypatch, tmp_path, no_network):
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(inc.OFFLINE_ENV, raising=False)
    monkeypatch.setenv(inc.CACHE_ENV, str(tmp_path))
    with pytest.raises(inc.InceptionWeightsError) as info:
        inc.load_variables()
    message = str(info.value)
    assert "could not be downloaded" in message and "network disabled in tests" in message
    assert inc.WEIGHTS_URL in message and "--config.eval.inception_weights=PATH" in message
    assert message.count(". ") == 0 and os.listdir(tmp_path) == []


def test_load_variables_from_a_converted_npz(monkeypatch, tmp_path, random_state_dict):
    npz = tmp_path / "inception.npz"
    np.savez(npz, **random_state_dict)
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(npz))
    variables = inc.load_variables()
    want = inc.variables_from_torch_state_dict(random_state_dict)
    jax.tree.map(np.testing.assert_array_equal, variables, want)


def test_features_fn_takes_uint8_images(random_state_dict):
    # N(0, 1) kernels would grow the activations ~sqrt(fan_in) times per layer; He-scaled they do not.
    sd = {k: v * np.float32(math.sqrt(2.0 / v[0].size)) if k.endswith("conv.weight") else v
          for k, v in random_state_dict.items()}
    fn = inc.features_fn(inc.variables_from_torch_state_dict(sd))
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    pool, logits = fn(images)
    assert pool.shape == (2, inc.FEATURE_DIM) and logits.shape == (2, inc.NUM_LOGITS)
    assert pool.dtype == jnp.float32 and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(pool)).all() and np.isfinite(np.asarray(logits)).all()
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        fn(images[..., :1])


# ----------------------------------------------------------------------------- parity with the torch ports

# Parity tolerance on features and logits: max |jax - torch| <= PARITY_RTOL * max |torch|. Both run in
# float32 with different summation orders. On the random network below each is ~7e-5 (of the feature
# scale) from a float64 torch run and the two differ by ~1.1e-4 on 299x299 noise (~4e-7 on uint8 32x32
# images through torch-fidelity). A structural slip moves them by far more: counting the padding in
# one block's average pool by 0.11 to 0.44, an average pool in Mixed_7c by 1.65, one spatially flipped
# kernel by 0.64, a half-pixel resize (32x32 uint8 inputs) by 0.04.
PARITY_RTOL = 5e-4


def _assert_close(got, want, rtol=PARITY_RTOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= rtol * scale, (np.abs(got - want).max(), scale)


@pytest.fixture(scope="module")
def torch_fid_network():
    """pytorch-fid's FID Inception with random weights, built as its fid_inception_v3 builds it (that
    function downloads the weights, so its steps are repeated here), then made well conditioned:
    He-normal conv kernels and BatchNorm running statistics measured on a batch, as trained ones are."""
    _require("torch", "torchvision", "pytorch_fid")
    import torch
    import torchvision
    from pytorch_fid import inception as pf

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: after one batch, that batch's statistics
        net.train()
        net(torch.rand(2, 3, 299, 299, generator=generator) * 2 - 1)
    net.eval()
    return net


def _torch_body(net, x_nhwc):
    """pytorch-fid's forward from a resized, scaled input to (pool [N, 2048], logits [N, 1008])."""
    import torch

    h = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    with torch.no_grad():
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                     "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                     "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"):
            h = getattr(net, name)(h)
        pool = torch.flatten(h, 1)
        return pool.numpy(), net.fc(pool).numpy(), (pool @ net.fc.weight.T).numpy()


def test_torch_state_dict_has_the_expected_names_and_parameter_count(torch_fid_network):
    torch_shapes = {k: tuple(v.shape) for k, v in torch_fid_network.state_dict().items()}
    assert torch_shapes == _torch_state_dict_shapes()
    assert sum(p.numel() for p in torch_fid_network.parameters()) == NUM_PARAMS


def test_network_matches_pytorch_fid_on_random_weights(torch_fid_network):
    state = {k: v.numpy() for k, v in torch_fid_network.state_dict().items()}
    variables = inc.variables_from_torch_state_dict(state)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)  # resized and scaled
    body = jax.jit(lambda v, x: inc.InceptionV3().apply(v, x, method=inc.InceptionV3.body))
    out = body(variables, x)
    pool, logits, unbiased = _torch_body(torch_fid_network, x)
    assert np.abs(pool[0] - pool[1]).max() > 0.1 * np.abs(pool).max()  # the features depend on the input
    _assert_close(out["pool"], pool)
    _assert_close(out["logits"], logits)
    _assert_close(out["logits_unbiased"], unbiased)


@pytest.mark.parametrize("in_hw", [(32, 32), (512, 400)])
def test_resize_matches_torch_fidelity(in_hw):
    _require("torch", "torch_fidelity")
    import torch
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = np.random.default_rng(4).uniform(0, 255, (2, *in_hw, 3)).astype(np.float32)
    want = interpolate_bilinear_2d_like_tensorflow1x(
        torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), align_corners=False)
    got = inc.resize_like_tf1(x)
    np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), rtol=0, atol=RESIZE_ATOL)


def _torch_fidelity_features(weights_path, images_nhwc_uint8):
    """torch-fidelity's FeatureExtractorInceptionV3: ('2048' [N, 2048], 'logits_unbiased' [N, 1008])."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=weights_path)
    with torch.no_grad():
        pool, logits = net(torch.from_numpy(images_nhwc_uint8).permute(0, 3, 1, 2).contiguous())
    return pool.numpy(), logits.numpy()


def test_features_fn_matches_torch_fidelity_and_caches_the_conversion(torch_fid_network, tmp_path,
                                                                      monkeypatch):
    _require("torch_fidelity")
    import torch

    pth = tmp_path / "weights" / inc.WEIGHTS_FILENAME
    pth.parent.mkdir()
    torch.save(torch_fid_network.state_dict(), pth)
    monkeypatch.setenv(inc.CACHE_ENV, str(tmp_path / "cache"))
    variables = inc.load_variables(str(pth))
    cached = pth.with_suffix(".npz")
    assert cached.is_file()  # converted once, next to the .pth
    monkeypatch.setitem(sys.modules, "torch", None)  # a second load needs no torch
    jax.tree.map(np.testing.assert_array_equal, inc.load_variables(str(pth)), variables)
    monkeypatch.undo()

    images = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    pool, logits = inc.features_fn(variables)(images)
    want_pool, want_logits = _torch_fidelity_features(str(pth), images)
    assert np.abs(want_pool[0] - want_pool[1]).max() > 0.01 * np.abs(want_pool).max()  # depends on the input
    _assert_close(pool, want_pool)
    _assert_close(logits, want_logits)


def test_conversion_cache_falls_back_to_the_cache_folder(torch_fid_network, tmp_path, monkeypatch):
    import torch

    pth = tmp_path / "read_only" / inc.WEIGHTS_FILENAME
    pth.parent.mkdir()
    torch.save(torch_fid_network.state_dict(), pth)
    write = inc._write_npz_atomically

    def refuse_next_to_pth(path, arrays):  # a read-only folder (chmod does not stop root)
        if os.path.dirname(path) == str(pth.parent):
            raise PermissionError(path)
        write(path, arrays)

    monkeypatch.setattr(inc, "_write_npz_atomically", refuse_next_to_pth)
    monkeypatch.setenv(inc.CACHE_ENV, str(tmp_path / "cache"))
    inc.load_variables(str(pth))
    assert not pth.with_suffix(".npz").exists()
    assert (tmp_path / "cache" / pth.with_suffix(".npz").name).is_file()


@pytest.mark.skipif(not os.path.isfile(os.environ.get(inc.WEIGHTS_ENV, "")),
                    reason=f"needs the real weights: ${inc.WEIGHTS_ENV} pointing at {inc.WEIGHTS_FILENAME}")
def test_end_to_end_parity_with_torch_fidelity_on_the_real_weights(tmp_path):
    _require("torch", "torch_fidelity")
    import torch

    path = os.environ[inc.WEIGHTS_ENV]
    if path.endswith(".npz"):  # torch-fidelity reads a .pth: write one from the converted arrays
        with np.load(path) as f:
            state = {k: torch.from_numpy(f[k]) for k in f.files}
        path = str(tmp_path / inc.WEIGHTS_FILENAME)
        torch.save(state, path)
    images = np.random.default_rng(6).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)  # compiled above
    pool, logits = inc.features_fn(inc.load_variables())(images)
    want_pool, want_logits = _torch_fidelity_features(path, images)
    _assert_close(pool, want_pool)
    _assert_close(logits, want_logits)
