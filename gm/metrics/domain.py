"""Small classifiers of one dataset, whose features stand in for Inception's when offline.

`fid_digits` / `is_digits` (and `fid_mnist` / `is_mnist`) are the FID and Inception Score computed with
the penultimate features and the logits of a classifier trained on that dataset's train split. They rank
models on the same data; they are NOT comparable with the Inception FID of the literature.

* digits (8x8, 4-bit, always offline): an MLP 64 -> 256 (ReLU) -> 64 (SiLU, the features) -> 10.
* mnist (28x28, 8-bit, through TFDS): two stride-2 3x3 convolutions (32, 64 channels, ReLU), then
  3136 -> 128 (SiLU, the features) -> 10.
* notes (generated audio, offline) and sc09 (spoken digits, downloaded): the clip's log-mel spectrogram
  (`gm.audio.log_mel_spectrogram`, standardised per clip), then stride-2 3x3 convolutions over (frames,
  mels) and the SiLU feature layer, as WaveGAN's SC09 classifier reads spectrograms (smaller: the
  features only need to rank models on the same data). `fid_sc09` / `is_sc09` are therefore NOT the
  numbers of WaveGAN or DiffWave, whose classifiers differ.

The feature layer is smooth (SiLU) rather than ReLU so that no unit is dead on a whole data set: a dead
unit is a zero row of the covariance, which makes the matrix square root of FID ill-conditioned. 64 and
128 dimensions keep the covariance well estimated from the 360 digits test images or ~1,000 samples.

Training is deterministic: Adam with a cosine-decayed step size on softmax cross-entropy, parameters
initialised from a fixed seed, batches in `gm.data.train_batch` order. It takes a few seconds for the
digits on a 2-core CPU and two to three minutes for MNIST. Parameters are cached in `$GM_CACHE_DIR`
(default ~/.cache/gm) as `domain_classifier_<name>_v1.npz`; the version string changes with the recipe,
so a new recipe never reads old parameters. When that folder is not writable they stay in memory.

Image inputs are uint8 pixels [N, H, W, C] in [0, 255], the input convention of the Inception network;
convert dataset levels with `gm.distributions.levels_to_uint8_pixels(levels, info.num_bits)`. Audio
inputs are int16 PCM [N, T], as `gm.data` holds it and WaveNet samples it.
"""
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from gm import data as gm_data
from gm import distributions as dist

DOMAIN_DATASETS = ("digits", "mnist", "notes", "sc09")
VERSION = "v1"  # in the cache file name: bump it whenever a recipe below changes


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Network and training of one dataset's classifier; audio recipes set sample_rate and the log-mel
    settings their network computes first."""
    shape: tuple[int, ...]  # (H, W, C) of the images it takes, or (T,) of the clips
    conv_channels: tuple[int, ...]  # stride-2 3x3 convolutions first; () for an MLP
    hidden: tuple[int, ...]  # ReLU Dense widths before the feature layer
    feature_dim: int
    num_steps: int
    batch_size: int = 128
    learning_rate: float = 1e-3  # peak; cosine-decayed to 0 over num_steps
    seed: int = 0
    num_classes: int = 10
    sample_rate: int = 0  # Hz; 0 for images
    n_fft: int = 0
    hop: int = 0
    num_mels: int = 0

    @property
    def is_audio(self) -> bool:
        return self.sample_rate > 0

    @property
    def data_key(self) -> str:
        """The batch field the classifier reads (`gm.data`): 'audio' or 'image'."""
        return "audio" if self.is_audio else "image"

    @property
    def input_dtype(self):
        return jnp.int16 if self.is_audio else jnp.uint8


RECIPES = {
    # 1,500 steps = 134 epochs of the 1,437 images; shifts by one pixel as augmentation did not help
    # (0.96-0.98 test accuracy against 0.98-0.99 without), so there is none.
    "digits": Recipe(shape=(8, 8, 1), conv_channels=(), hidden=(256,), feature_dim=64, num_steps=1500),
    # 2,000 steps of 128 = 4.3 epochs of the 60,000 images.
    "mnist": Recipe(shape=(28, 28, 1), conv_channels=(32, 64), hidden=(), feature_dim=128, num_steps=2000),
    # 600 steps of 64 = 9.6 epochs of the 4,000 clips; 32 frames x 32 mels.
    "notes": Recipe(shape=(2000,), conv_channels=(16, 32), hidden=(), feature_dim=64, num_steps=600, batch_size=64,
                    sample_rate=8000, n_fft=256, hop=64, num_mels=32),
    # 4,000 steps of 64 = 14 epochs of WaveGAN's 18,620 training clips; 63 frames x 64 mels.
    "sc09": Recipe(shape=(16000,), conv_channels=(32, 64, 128), hidden=(), feature_dim=128, num_steps=4000,
                   batch_size=64, sample_rate=16000, n_fft=1024, hop=256, num_mels=64),
}


class DomainNet(nn.Module):
    """uint8 pixels [N, H, W, C] in [0, 255] (or, with `spectrogram` = (sample_rate, n_fft, hop, num_mels),
    int16 PCM [N, T]) -> (features float32 [N, feature_dim], logits [N, classes])."""
    conv_channels: Sequence[int]
    hidden: Sequence[int]
    feature_dim: int
    num_classes: int
    spectrogram: Optional[tuple] = None

    @nn.compact
    def __call__(self, inputs):
        if self.spectrogram:
            from gm import audio

            rate, n_fft, hop, num_mels = self.spectrogram
            mel = audio.log_mel_spectrogram(audio.pcm_to_float(inputs), rate, n_fft, hop, num_mels)
            mean = mel.mean(axis=(1, 2), keepdims=True)
            x = ((mel - mean) / (mel.std(axis=(1, 2), keepdims=True) + 1e-3))[..., None]  # [N, frames, mels, 1]
        else:
            x = inputs.astype(jnp.float32) / 255.0
        for channels in self.conv_channels:
            # Strided convolutions rather than pooling: XLA's CPU backend runs pooling gradients slowly.
            x = nn.relu(nn.Conv(channels, (3, 3), strides=2)(x))
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        features = nn.silu(nn.Dense(self.feature_dim)(x))
        return features, nn.Dense(self.num_classes)(features)


def _check_name(name):
    if name not in RECIPES:
        raise ValueError(f"No domain classifier for {name!r}: use one of {', '.join(DOMAIN_DATASETS)} "
                         "(the Inception network serves other image data).")


def _network(name):
    r = RECIPES[name]
    spectrogram = (r.sample_rate, r.n_fft, r.hop, r.num_mels) if r.is_audio else None
    return DomainNet(r.conv_channels, r.hidden, r.feature_dim, r.num_classes, spectrogram)


def _as_inputs(name, data, num_bits):
    """A batch's data field -> what classifier `name` takes: PCM as it is, image levels as pixels."""
    return data if RECIPES[name].is_audio else dist.levels_to_uint8_pixels(data, num_bits)


def metric_names(name):
    """The names the classifier's statistics are reported under: ('fid_<name>', 'is_<name>')."""
    _check_name(name)
    return f"fid_{name}", f"is_{name}"


@functools.partial(jax.jit, static_argnames="name")
def apply_classifier(name, params, images):
    """Classifier `name` on uint8 pixels [N, H, W, C] in [0, 255] (audio classifiers: int16 PCM [N, T]) ->
    (features float32 [N, feature_dim], logits float32 [N, num_classes]). Pure; the parameters are an
    argument, so `jax.jit(functools.partial(apply_classifier, name))` compiles them as inputs, not constants."""
    _check_name(name)
    recipe = RECIPES[name]
    shape = ", ".join(map(str, recipe.shape))
    if tuple(images.shape[1:]) != recipe.shape or images.dtype != recipe.input_dtype:
        takes = (f"int16 PCM [N, {shape}]" if recipe.is_audio else
                 f"uint8 pixels [N, {shape}] in [0, 255]")
        how = "" if recipe.is_audio else ("; convert levels with gm.distributions.levels_to_uint8_pixels(levels, "
                                          "info.num_bits)")
        raise ValueError(f"The {name} classifier takes {takes}, got {images.dtype}{list(images.shape)}{how}.")
    return _network(name).apply(params, images)


class DomainClassifier(NamedTuple):
    """A trained classifier of dataset `name` and its accuracy on that dataset's test split in [0, 1]."""
    name: str  # one of DOMAIN_DATASETS
    params: Any
    feature_dim: int
    num_classes: int
    test_accuracy: float

    def features_and_logits(self, images):
        """uint8 pixels [N, H, W, C] in [0, 255] (audio: int16 PCM [N, T]) -> (features float32
        [N, feature_dim], logits float32 [N, num_classes]). Pure and jit-able (it closes over the
        parameter arrays only); memory grows with N, so feed batches (e.g. of `gm.data.eval_batches`)."""
        return apply_classifier(self.name, self.params, images)


# --- training -----------------------------------------------------------------------------------------

def _optimizer(recipe, num_steps):
    return optax.adam(optax.cosine_decay_schedule(recipe.learning_rate, max(num_steps, 1)))


@functools.partial(jax.jit, static_argnames=("name", "num_bits", "num_steps"))
def _train_step(params, opt_state, levels, labels, *, name, num_bits, num_steps):
    """One Adam step on the mean softmax cross-entropy of a batch of levels [B, H, W, C] (or PCM [B, T]),
    labels [B]."""
    pixels = _as_inputs(name, levels, num_bits)

    def loss_fn(p):
        _, logits = _network(name).apply(p, pixels)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = _optimizer(RECIPES[name], num_steps).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def train(name, dataset, num_steps=None):
    """Trains classifier `name` on `dataset.train` -> params, a pure function of the recipe and the data.

    A Python loop over one compiled step rather than a `lax.scan`: XLA's CPU backend runs convolutions
    inside a loop about ten times slower than as a program of their own.
    """
    recipe = RECIPES[name]
    num_steps = recipe.num_steps if num_steps is None else num_steps
    # Compiled: Flax's eager init dispatches op by op, seconds on a CPU.
    dummy = jnp.zeros((1, *recipe.shape), recipe.input_dtype)
    params = jax.jit(_network(name).init)(jax.random.key(recipe.seed), dummy)
    opt_state = _optimizer(recipe, num_steps).init(params)
    for step in range(num_steps):
        batch = gm_data.train_batch(dataset, step=step, batch_size=recipe.batch_size, seed=recipe.seed)
        params, opt_state = _train_step(params, opt_state, batch[recipe.data_key], batch["label"], name=name,
                                        num_bits=dataset.info.num_bits, num_steps=num_steps)
    return params


def accuracy(name, params, dataset, split="test", batch_size=500):
    """Share of a split of `dataset` that classifier `name` labels correctly, in [0, 1]."""
    correct = 0
    for batch in gm_data.eval_batches(dataset, batch_size=batch_size, split=split):
        _, logits = apply_classifier(name, params, _as_inputs(name, batch[RECIPES[name].data_key],
                                                              dataset.info.num_bits))
        correct += int(np.sum((np.argmax(logits, -1) == batch["label"]) & batch["mask"]))
    return correct / len(getattr(dataset, split)["label"])


# --- cache --------------------------------------------------------------------------------------------

def cache_path(name, cache_dir=None, num_steps=None):
    """Where classifier `name`'s parameters are cached: `cache_dir`, else $GM_CACHE_DIR, else ~/.cache/gm.
    A step count other than the recipe's (for tests) gets a file of its own."""
    folder = (cache_dir or os.environ.get("GM_CACHE_DIR")
              or os.path.join(os.path.expanduser("~"), ".cache", "gm"))
    steps = "" if num_steps in (None, RECIPES[name].num_steps) else f"_{num_steps}steps"
    return os.path.join(folder, f"domain_classifier_{name}_{VERSION}{steps}.npz")


def _description(name, dataset, num_steps):
    """What the parameters are a function of, as a string kept in the cache file: the recipe, the step
    count and a SHA-256 of the training data, so a file trained on other data (a test's mock MNIST)
    is retrained rather than used."""
    digest = hashlib.sha256()
    for key in (RECIPES[name].data_key, "label"):
        a = np.ascontiguousarray(dataset.train[key])
        digest.update(f"{key}{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    return json.dumps({"version": VERSION, "recipe": dataclasses.asdict(RECIPES[name]),
                       "num_steps": num_steps, "num_bits": dataset.info.num_bits,
                       "train_sha256": digest.hexdigest()}, sort_keys=True)


_META = "__description__"


def _save(path, params, description):
    """Writes params atomically (a parallel reader sees the old file or the whole new one)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat, **{_META: np.asarray(description)})
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _load(path, name, description):
    """The cached params at `path`, or None when the file is missing, unreadable, from another recipe or
    data, or of other shapes."""
    try:
        with np.load(path) as f:
            if _META not in f.files or str(f[_META]) != description:
                return None
            flat = {tuple(k.split("/")): jnp.asarray(f[k]) for k in f.files if k != _META}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    params = traverse_util.unflatten_dict(flat)
    shapes = jax.eval_shape(_network(name).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, *RECIPES[name].shape), RECIPES[name].input_dtype))
    same = lambda a, b: a.shape == b.shape and a.dtype == b.dtype  # noqa: E731
    try:
        if jax.tree.all(jax.tree.map(same, params, shapes)):
            return params
    except ValueError:  # another tree structure
        pass
    return None


_IN_MEMORY: dict = {}  # (path, description) -> params, for cache folders that cannot be written


def load_classifier(name, *, dataset=None, cache_dir=None, num_steps=None):
    """The classifier of dataset `name` (one of DOMAIN_DATASETS): read from the cache, else trained now.

    Args:
      name: one of DOMAIN_DATASETS.
      dataset: that dataset, already loaded by `gm.data.load` (else it is loaded here).
      cache_dir: folder of the cached parameters (default $GM_CACHE_DIR, else ~/.cache/gm).
      num_steps: training steps, default the recipe's; tests shrink it (cached in a file of its own).

    Returns:
      A DomainClassifier whose test_accuracy is measured now on `dataset.test`.
    """
    _check_name(name)
    if dataset is None:
        dataset = gm_data.load(name)
    elif dataset.info.name != name or tuple(dataset.info.shape) != RECIPES[name].shape:
        raise ValueError(f"dataset is {dataset.info.name!r} {dataset.info.shape} but the {name} classifier "
                         f"takes {name} {RECIPES[name].shape}; pass gm.data.load({name!r}) or dataset=None.")
    recipe = RECIPES[name]
    num_steps = recipe.num_steps if num_steps is None else num_steps
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be a positive number of training steps.")
    path = cache_path(name, cache_dir, num_steps)
    description = _description(name, dataset, num_steps)
    params = _load(path, name, description)
    if params is None:
        params = _IN_MEMORY.get((path, description))
    if params is None:
        params = train(name, dataset, num_steps)
        try:
            _save(path, params, description)
        except OSError as e:
            warnings.warn(f"Cannot cache the {name} classifier in {os.path.dirname(path)} ({e.strerror}); it "
                          "is kept in memory for this process: set GM_CACHE_DIR to a writable folder.")
            _IN_MEMORY[(path, description)] = params
    return DomainClassifier(name, params, recipe.feature_dim, recipe.num_classes,
                            accuracy(name, params, dataset))
