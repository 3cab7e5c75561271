"""The FID reference Inception network (InceptionV3 of 2015-12-05, as TTUR's fid.py uses it) in Flax.

The network is the TF graph that defines FID and the Inception Score in the literature: InceptionV3 with
three quirks that pytorch-fid's `fid_inception_v3` and torch-fidelity's `FeatureExtractorInceptionV3`
port faithfully, and this module follows too:
  - the average-pool branches of the A, C and first E blocks divide by the number of real pixels in the
    3x3 window (TF's padding is not counted), and the last E block max-pools in that branch;
  - images are resized to 299x299 with TF1's bilinear resize (no half-pixel centres), then mapped from
    [0, 255] to [-1, 1) as (x - 128) / 128;
  - the classifier has 1008 outputs; the Inception Score uses the logits without the bias.

Feature maps are NHWC and float32. Parameter and state-dict names are torchvision's (`Mixed_5b`,
`branch3x3dbl_2`, `conv`, `bn`, `fc`), so the 2015 weights that pytorch-fid distributes load one to one.
`load_variables` reads the file a user names, or downloads it once into a cache as pytorch-fid does,
and reads the .pth without PyTorch.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax import lax

from gm.metrics import pth

FEATURE_DIM = 2048
NUM_LOGITS = 1008
INPUT_SIZE = (299, 299)
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_SHA256_PREFIX = "6726825d"  # the hash in the file's name, as torch.hub checks it
WEIGHTS_ENV = "GM_INCEPTION_WEIGHTS"
CACHE_ENV = "GM_CACHE_DIR"
OFFLINE_ENV = "GM_OFFLINE"  # set: never download (air-gapped machines, the test suite)

# float32 at full precision by default: on GPU (TF32) and TPU (bf16 passes) the DEFAULT precision of
# float32 convolutions and matmuls would move the features, and with them FID, away from the reference.
PrecisionLike = Any
_FULL = lax.Precision.HIGHEST


class InceptionWeightsError(FileNotFoundError):
    """The FID Inception weights are missing and could not be downloaded."""


# ----------------------------------------------------------------------------- preprocessing


def _tf1_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """float32 [out_size, in_size] that applies TF1's 1-D bilinear resize (align_corners=False).

    TF1 samples output pixel i at source coordinate i * (in_size / out_size), all in float32, and blends
    the two neighbours floor(src) and min(floor(src) + 1, in_size - 1) with weight frac(src): no
    half-pixel centres and no antialiasing when downsampling.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(src).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = src - lower.astype(np.float32)
    rows = np.arange(out_size)
    matrix = np.zeros((out_size, in_size), np.float32)
    np.add.at(matrix, (rows, lower), 1.0 - frac)
    np.add.at(matrix, (rows, upper), frac)  # at the edge upper == lower and the weights sum to 1
    return matrix


def resize_like_tf1(x: jax.Array, size: tuple[int, int] = INPUT_SIZE) -> jax.Array:
    """Bilinear resize of images [N, H, W, C] to float32 [N, size[0], size[1], C], as TF1 does it.

    This is `tf.compat.v1.image.resize_bilinear(x, size, align_corners=False)`, the resize inside the FID
    graph (torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x`); values keep their range and
    units. The resize is separable, so it runs as two small matrix products, which accelerators do fast.
    """
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4:
        raise ValueError(f"resize_like_tf1 expects images [N, H, W, C], got shape {x.shape}.")
    (height, width), (out_h, out_w) = x.shape[1:3], tuple(size)
    if (height, width) == (out_h, out_w):
        return x
    rows = jnp.asarray(_tf1_resize_matrix(height, out_h))
    cols = jnp.asarray(_tf1_resize_matrix(width, out_w))
    x = jnp.einsum("oh,nhwc->nowc", rows, x, precision=_FULL)
    return jnp.einsum("pw,nowc->nopc", cols, x, precision=_FULL)


def preprocess(x: jax.Array) -> jax.Array:
    """Images [N, H, W, 3] with values in [0, 255] -> float32 [N, 299, 299, 3] in [-1, 1), as the graph.

    (x - 128) / 128 is exact in float32: the graph multiplies by 0.0078125 = 2^-7.
    """
    return (resize_like_tf1(x, INPUT_SIZE) - 128.0) * (1.0 / 128.0)


# ----------------------------------------------------------------------------- network


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 0.001, running statistics) and ReLU.

    padding: (rows, columns) of zeros on each side, as torch's Conv2d `padding`.
    """
    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)
    precision: PrecisionLike = _FULL

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel_size, strides=self.strides, padding=((ph, ph), (pw, pw)),
                    use_bias=False, precision=self.precision, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    """3x3 / stride 1 / pad 1 average over the real pixels only (TF 'SAME'; torch count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride):
    """3x3 max pool; stride 2 unpadded (reduction blocks), stride 1 padded by one (last E block)."""
    padding = "VALID" if stride == 2 else ((1, 1), (1, 1))
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
    """Mixed_5b/c/d at 35x35: 64 + 64 + 96 + pool_features channels."""
    pool_features: int
    precision: PrecisionLike = _FULL

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a, 35x35 -> 17x17: 384 + 96 + input channels."""
    precision: PrecisionLike = _FULL

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e at 17x17, factorised 7x7 convolutions: 4 x 192 = 768 channels."""
    channels_7x7: int
    precision: PrecisionLike = _FULL

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        c7 = self.channels_7x7
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a, 17x17 -> 8x8: 320 + 192 + input channels."""
    precision: PrecisionLike = _FULL

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b / 7c at 8x8: 320 + 768 + 768 + 192 = 2048 channels.

    pool: 'avg' (Mixed_7b, padding excluded from the mean) or 'max' (Mixed_7c, a quirk of the graph).
    """
    pool: str = "avg"
    precision: PrecisionLike = _FULL

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, 1)
        bp = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Classifier(nn.Module):
    """The 2048 -> 1008 linear layer `fc`; returns (logits, logits without the bias)."""
    num_classes: int = NUM_LOGITS
    precision: PrecisionLike = _FULL

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.num_classes))
        bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
        unbiased = jnp.dot(x, kernel, precision=self.precision)
        return unbiased + bias, unbiased


class InceptionV3(nn.Module):
    """The FID Inception network.

    __call__(x): x float [N, H, W, 3], pixel values in [0, 255], any H and W. Returns a dict of float32
      'pool' [N, 2048] (the FID / KID features, TF's pool_3), 'logits' [N, 1008] and 'logits_unbiased'
      [N, 1008] (pool @ W without the bias, what the Inception Score code feeds its softmax).
    body(x): the same from x already resized to 299x299 and scaled to [-1, 1] (see `preprocess`);
      run it with `model.apply(variables, x, method=InceptionV3.body)`.
    Variables: {'params', 'batch_stats'}; inference only (BatchNorm uses the running statistics).
    """
    precision: PrecisionLike = _FULL

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"InceptionV3 expects RGB images [N, H, W, 3] in [0, 255], got shape {x.shape}.")
        return self.body(preprocess(x))

    @nn.compact
    def body(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)       # 149x149x32
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)                   # 147x147x32
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)   # 147x147x64
        x = _max_pool_3x3(x, 2)                                         # 73x73x64
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)                   # 73x73x80
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)                  # 71x71x192
        x = _max_pool_3x3(x, 2)                                         # 35x35x192
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, precision=self.precision, name=name)(x)  # 35x35x256/288/288
        x = InceptionB(precision=self.precision, name="Mixed_6a")(x)    # 17x17x768
        for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels_7x7, precision=self.precision, name=name)(x)  # 17x17x768
        x = InceptionD(precision=self.precision, name="Mixed_7a")(x)    # 8x8x1280
        x = InceptionE("avg", precision=self.precision, name="Mixed_7b")(x)  # 8x8x2048
        x = InceptionE("max", precision=self.precision, name="Mixed_7c")(x)  # 8x8x2048
        pool = jnp.mean(x, axis=(1, 2))                                 # 2048
        logits, unbiased = Classifier(NUM_LOGITS, precision=self.precision, name="fc")(pool)
        return {"pool": pool, "logits": logits, "logits_unbiased": unbiased}


@jax.jit
def features(variables, images):
    """(variables, images float or uint8 [N, H, W, 3] in [0, 255]) -> (pool float32 [N, 2048],
    logits_unbiased float32 [N, 1008]); the weights are an argument, so callers may jit around it."""
    out = InceptionV3().apply(variables, jnp.asarray(images, jnp.float32))
    return out["pool"], out["logits_unbiased"]


def features_fn(variables) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """fn(images uint8 [N, H, W, 3] in [0, 255]) -> (pool float32 [N, 2048], logits_unbiased [N, 1008]).

    Pure; compiled once per input shape, with the weights passed to the compiled program as arguments.
    (Wrapping fn in another jit works too, but bakes the 95 MB of weights into that program as constants.)
    """
    variables = jax.tree.map(jnp.asarray, variables)

    def fn(images):
        if len(np.shape(images)) != 4 or np.shape(images)[-1] != 3:
            raise ValueError(f"Inception features expect RGB images [N, H, W, 3] in [0, 255], "
                             f"got shape {np.shape(images)}.")
        return features(variables, images)

    return fn


# ----------------------------------------------------------------------------- weights

# torch leaf name -> (collection, Flax leaf name), by the module that owns it.
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    """{(collection, module, ..., leaf): shape} of the network's variables, by abstract evaluation."""
    x = jax.ShapeDtypeStruct((1, *INPUT_SIZE, 3), jnp.float32)
    tree = jax.eval_shape(lambda x: InceptionV3().init(jax.random.key(0), x, method=InceptionV3.body), x)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _flax_leaf(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
    """A torch state-dict entry -> ((collection, module, ..., leaf), value in Flax layout), None to skip."""
    *modules, leaf = key.split(".")
    if leaf == "num_batches_tracked":
        return None
    owner = modules[-1] if modules else ""
    if owner == "conv" and leaf == "weight":
        return ("params", *modules, "kernel"), value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if owner == "bn" and leaf in _BN_LEAVES:
        collection, name = _BN_LEAVES[leaf]
        return (collection, *modules, name), value
    if modules == ["fc"] and leaf == "weight":
        return ("params", "fc", "kernel"), value.T  # [out, in] -> [in, out]
    if modules == ["fc"] and leaf == "bias":
        return ("params", "fc", "bias"), value
    return ("unknown", key), value


def variables_from_torch_state_dict(state_dict: Mapping[str, Any]) -> dict:
    """pytorch-fid / torch-fidelity state dict -> Flax variables {'params': ..., 'batch_stats': ...}.

    state_dict: name -> array (numpy, or anything np.asarray takes, e.g. CPU torch tensors), torch layout:
      conv kernels [out, in, kh, kw], `fc.weight` [1008, 2048]. `num_batches_tracked` is ignored; any
      other name that is unused, missing or of the wrong shape is an error. Returns float32 numpy arrays.
    """
    flat, unknown = {}, []
    for key, value in state_dict.items():
        entry = _flax_leaf(key, np.asarray(value, np.float32))
        if entry is None:
            continue
        path, value = entry
        if path[0] == "unknown":
            unknown.append(key)
        else:
            flat[path] = np.ascontiguousarray(value)
    expected = _expected_shapes()
    missing = sorted(".".join(p) for p in expected.keys() - flat.keys())
    unknown += sorted(".".join(p) for p in flat.keys() - expected.keys())
    wrong = sorted(f"{'.'.join(p)} {flat[p].shape} (expected {expected[p]})"
                   for p in expected.keys() & flat.keys() if flat[p].shape != expected[p])
    if missing or unknown or wrong:
        raise ValueError(f"Not the FID Inception state dict ({len(missing)} missing, {len(unknown)} unused, "
                         f"{len(wrong)} misshapen, e.g. {(missing + unknown + wrong)[:3]}): "
                         f"use {WEIGHTS_URL}.")
    variables: dict = {}
    for path, value in sorted(flat.items()):
        node = variables
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return variables


def cache_dir() -> str:
    """Where downloaded weights live: $GM_CACHE_DIR, else ~/.cache/gm."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "gm")


def _read_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _not_found(detail: str) -> InceptionWeightsError:
    return InceptionWeightsError(
        f"The FID Inception weights {detail}: download {WEIGHTS_URL} and give its path with "
        f"--config.eval.inception_weights=PATH or the {WEIGHTS_ENV} environment variable.")


def download_weights(folder: str | None = None, timeout: float = 20.0) -> str:
    """pytorch-fid's weights file in `folder` (default `cache_dir()`), downloaded once: its path.

    The download goes to a temporary file, is checked against the SHA-256 prefix in its name (as
    torch.hub checks it), then renamed, so an interrupted or corrupted download never stays in the
    cache. Offline (or with $GM_OFFLINE set) this fails at once with InceptionWeightsError, one sentence.
    """
    folder = folder or cache_dir()
    path = os.path.join(folder, WEIGHTS_FILENAME)
    if os.path.isfile(path):
        return path
    if os.environ.get(OFFLINE_ENV):
        raise _not_found(f"are not in {folder} and {OFFLINE_ENV} forbids downloading them")
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(WEIGHTS_URL, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm.tqdm(total=total, unit="B", unit_scale=True, desc=WEIGHTS_FILENAME) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
        if not _sha256(tmp).startswith(WEIGHTS_SHA256_PREFIX):
            raise _not_found(f"downloaded to {folder} do not match their checksum ({WEIGHTS_SHA256_PREFIX}...)")
        os.replace(tmp, path)
    except InceptionWeightsError:
        raise
    except (OSError, urllib.error.URLError) as e:  # no network, DNS, timeout, HTTP error, full disk
        reason = str(getattr(e, "reason", e)).replace(". ", "; ").rstrip(".")
        raise _not_found(f"are not in {folder} and could not be downloaded ({reason})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_variables(path: str | None = None) -> dict:
    """Flax variables of the FID Inception network from the 2015 weights file.

    path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (read without torch, `gm.metrics.pth`) or
      a .npz of the same state dict; None reads $GM_INCEPTION_WEIGHTS, else the copy in `cache_dir()`,
      downloading it there the first time as pytorch-fid does (see `download_weights`).
    A missing file, or no weights and no network, raises InceptionWeightsError saying where to get them.
    """
    path = os.fspath(path) if path else os.environ.get(WEIGHTS_ENV)
    if not path:
        path = download_weights()
    if not os.path.isfile(path):
        raise _not_found(f"were not found at {path}")
    state = _read_npz(path) if path.endswith(".npz") else pth.read_state_dict(path)
    return variables_from_torch_state_dict(state)
