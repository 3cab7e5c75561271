"""In-memory datasets with a deterministic, resumable batch order.

Every dataset lives in host memory as NumPy arrays (CIFAR-10 train is 150 MB of uint8), so a batch is
a fancy-index away and its contents are a pure function of `(seed, step)`:

* Images are `{'image': uint8[N, H, W, C], 'label': int32[N]}` holding integer levels
  `0 .. 2**num_bits - 1` at the dataset's own bit depth (8 for MNIST and CIFAR-10, 4 for the 8x8
  digits). Nothing here scales, centres or dequantizes: each model family does that for itself, so
  one pipeline serves all of them. `DatasetInfo.num_bits` is the ONE bit depth that bits/dim is
  measured at (a discrete model's log-likelihood over `2**num_bits` levels per sub-pixel).
* Audio is `{'audio': int16[N, T], 'label': int32[N]}`, 16-bit PCM (`num_bits=16`) at
  `DatasetInfo.sample_rate` Hz: the generated `notes` (offline, 8 kHz) and SC09 (16 kHz), see
  `gm.audio_datasets`. Each audio family chooses its own quantization (e.g. 8-bit mu-law).
* Text is `{'tokens': int32[N, context], 'label': int32[N]}`, windows of a tokenized corpus
  (`DatasetInfo.vocab_size` symbols; `bytes_per_token` of the test text converts likelihoods to bits
  per byte): the offline `pydoc` and TFDS `tiny_shakespeare`, see `gm.text_datasets`.
* Captioned images add `'captions': int16[N, k, bytes]` (`DatasetInfo.captions_per_image` = k, each
  caption's UTF-8 bytes padded): TFDS `coco_captions` at 32x32, see `gm.caption_datasets`.
* Two unpaired image domains (translation, CycleGAN) are `{'image_a', 'image_b': uint8[N, H, W, C],
  'label_a', 'label_b', 'label': int32[N], 'first_a', 'first_b': bool[N]}`, `DatasetInfo.domains`
  naming A and B: the offline `digit_strokes` (thin and thick digits) and TFDS `cycle_gan/NAME`, see
  `gm.translation_datasets`.
* 2-D toys are `{'x': float32[N, 2], 'label': int32[N]}` (label = index of the mixture mode or square
  the point was drawn from), `num_bits=None`. ring8 and grid25 (std 0.02), pacgan_ring and pacgan_grid
  (PacGAN's: radius 1 and std 0.01, spacing 2 and std 0.05, 100,000 training points) are the sharp
  mixtures of the GAN mode-collapse benchmarks (`TOY_MODES`, `TOY_STDS`); eight_gaussians and
  checkerboard are the smoother densities of the flow papers, with their exact log-density in
  `toy_log_density` (for plots and reverse-KL fitting); cfm_* and dsb_* are the sources and targets of
  Tong et al.'s flow-matching table (`gm.point_sets`).

`train_batch(step=s)` returns what an uninterrupted run saw at step `s`, so resuming needs only the step
and the seed. Examples are visited in a fresh permutation per epoch, batches run straight across epoch
boundaries, and every process takes its contiguous share of the one global batch.
`eval_batches` walks a split in fixed order with a constant batch shape and a validity `mask`.

The sklearn digits and the toys are always available offline; MNIST and CIFAR-10 come through TFDS,
which (and with it TensorFlow) is imported only when one of them is asked for.
"""
import dataclasses
import functools
import math
from typing import Any, Iterator

import numpy as np

from gm import audio_datasets, caption_datasets, point_sets, text_datasets, tfds_prepare, translation_datasets

DATASETS = ('digits', 'mnist', 'cifar10', 'ring8', 'grid25', 'eight_gaussians', 'checkerboard', 'pacgan_ring',
            'pacgan_grid') + tuple(point_sets.SPLITS) + ('notes', 'sc09') + text_datasets.TEXT_DATASETS + \
    caption_datasets.CAPTIONED + translation_datasets.TRANSLATION_DATASETS
AUDIO = ('notes', 'sc09')
TEXT = text_datasets.TEXT_DATASETS


class DataError(ValueError):
    """A data problem the user can fix; the message is one sentence naming the config field or fix."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    shape: tuple[int, ...]  # (H, W, C) for images; (2,) for 2-D toys
    num_bits: int | None  # bits per sub-pixel; None for continuous toys
    num_classes: int
    num_train: int
    num_test: int
    sample_rate: int | None = None  # Hz, for audio; None otherwise
    vocab_size: int | None = None  # token symbols, for text; None otherwise
    bytes_per_token: float | None = None  # UTF-8 bytes per token of the test text, for text
    captions_per_image: int | None = None  # captions of each image ('captions' [N, k, bytes]), or None
    domains: tuple[str, str] | None = None  # names of domains A and B ('image_a', 'image_b'), or None
    # The text's `gm.tokenize` tokenizer (ids <-> text), for text; not part of the dataset's identity.
    tokenizer: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def is_audio(self) -> bool:
        return self.sample_rate is not None

    @property
    def is_text(self) -> bool:
        return self.vocab_size is not None

    @property
    def is_image(self) -> bool:
        return self.num_bits is not None and self.sample_rate is None

    @property
    def modality(self) -> str:
        """'image', 'audio', 'text', 'domains' (two unpaired image domains) or 'points' (the 2-D toys)."""
        if self.domains is not None:
            return 'domains'
        if self.is_audio:
            return 'audio'
        if self.is_text:
            return 'text'
        return 'image' if self.is_image else 'points'

    @property
    def num_dims(self) -> int:
        """Scalars per example, the denominator of bits/dim."""
        return math.prod(self.shape)

    @property
    def num_levels(self) -> int | None:
        """Distinct values per sub-pixel (`2**num_bits`), or None for continuous data."""
        return None if self.num_bits is None else 2**self.num_bits


@dataclasses.dataclass(frozen=True)
class Dataset:
    info: DatasetInfo
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # shared arrays: a stray in-place edit would corrupt every later batch
    return a


def _make(name: str, shape: tuple[int, ...], num_bits: int | None, num_classes: int,
          train: dict[str, np.ndarray], test: dict[str, np.ndarray], **extra) -> Dataset:
    """Freezes the arrays and derives the split sizes; `extra`: DatasetInfo's modality fields."""
    train = {k: _readonly(v) for k, v in train.items()}
    test = {k: _readonly(v) for k, v in test.items()}
    info = DatasetInfo(name, tuple(shape), num_bits, num_classes,
                       len(train['label']), len(test['label']), **extra)
    return Dataset(info, train, test)


# --- sklearn digits: 1,797 real 8x8 images, the offline dataset --------------------------------------

_DIGITS_NUM_TEST = 360


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits  # lazy: sklearn costs a second or two to import
    raw = load_digits()
    # Values are 0..16 (17 levels, pen counts over 4x4 blocks); 16 merges into 15 so the data is exactly
    # 4-bit and every model sees 16 levels.
    images = np.minimum(raw.images, 15).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
    labels = raw.target.astype(np.int32)
    # The split is part of the dataset, never of a run: seed 0, whatever the run's seed.
    perm = np.random.default_rng(0).permutation(len(labels))
    test, train = perm[:_DIGITS_NUM_TEST], perm[_DIGITS_NUM_TEST:]
    return _make('digits', (8, 8, 1), 4, 10,
                 {'image': images[train], 'label': labels[train]},
                 {'image': images[test], 'label': labels[test]})


# --- 2-D Gaussian mixtures (the unrolled-GAN / VEEGAN mode-coverage benchmarks) ---------------------

TOY_STD = 0.02
_ANGLES = 2 * np.pi * np.arange(8) / 8
_GRID = np.array([(x, y) for x in range(-4, 5, 2) for y in range(-4, 5, 2)], np.float32)
TOY_MODES: dict[str, np.ndarray] = {
    'ring8': _readonly(np.stack([2 * np.cos(_ANGLES), 2 * np.sin(_ANGLES)], 1).astype(np.float32)),
    'grid25': _readonly(_GRID),
    # PacGAN's 2D-ring and 2D-grid: radius 1, std 0.01; spacing 2, std 0.05
    # (fjxmlzn/PacGAN, synthetic_data_experiments/2D*_GAN&PacGAN/config.py).
    'pacgan_ring': _readonly(np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], 1).astype(np.float32)),
    'pacgan_grid': _readonly(_GRID),
}
# Each mode's standard deviation (isotropic), by toy.
TOY_STDS: dict[str, float] = {'ring8': TOY_STD, 'grid25': TOY_STD, 'pacgan_ring': 0.01, 'pacgan_grid': 0.05}
_TOY_NUM_TRAIN, _TOY_NUM_TEST = 50_000, 10_000
_TOY_SIZES = {'pacgan_ring': (100_000, 10_000), 'pacgan_grid': (100_000, 10_000),  # PacGAN's num_sample
              **{name: (point_sets.NUM_TRAIN, point_sets.NUM_TEST) for name in point_sets.SPLITS}}


def _toy_split(modes: np.ndarray, n: int, rng: np.random.Generator, std: float = TOY_STD) -> dict[str, np.ndarray]:
    """n points from the equal-weight mixture: {'x': float32[n, 2], 'label': int32[n] mode index}."""
    label = rng.integers(len(modes), size=n).astype(np.int32)
    x = modes[label] + std * rng.standard_normal((n, 2))
    return {'x': x.astype(np.float32), 'label': label}


# --- 2-D densities with a closed form (the flow papers' toys) -----------------------------------------

EIGHT_GAUSSIANS_STD = 0.2
# Toys whose log-density is finite everywhere, so a model can be fitted to it by reverse KL.
EVERYWHERE_POSITIVE_TOYS = ('eight_gaussians',)
# The checkerboard: density 1/8 on the 8 unit squares of [-2, 2]^2 whose corner indices (i + j) are even.
_CHECKER_SQUARES = np.array([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0],
                            np.float32)


def _eight_gaussians_split(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    label = rng.integers(8, size=n).astype(np.int32)
    x = TOY_MODES['ring8'][label] + EIGHT_GAUSSIANS_STD * rng.standard_normal((n, 2))
    return {'x': x.astype(np.float32), 'label': label}


def _checkerboard_split(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    label = rng.integers(len(_CHECKER_SQUARES), size=n).astype(np.int32)
    x = _CHECKER_SQUARES[label] + rng.uniform(size=(n, 2))
    return {'x': x.astype(np.float32), 'label': label}


def toy_log_density(name: str, x):
    """Exact log-density in nats of 2-D toy `name` at points x [N, 2] -> [N] (jax or numpy arrays).

    Defined for the smooth toys (eight_gaussians: an equal mixture of N(mode, 0.2^2 I) on the radius-2
    ring; checkerboard: log(1/8) on its squares, -inf elsewhere).
    """
    import jax.numpy as jnp  # jax only when a density is asked for; data loading stays NumPy
    from jax.scipy.special import logsumexp

    x = jnp.asarray(x, jnp.float32)
    if name == 'eight_gaussians':
        d2 = jnp.sum((x[:, None, :] - TOY_MODES['ring8'][None]) ** 2, -1)
        s2 = EIGHT_GAUSSIANS_STD ** 2
        log_n = -0.5 * d2 / s2 - jnp.log(2 * jnp.pi * s2)
        return logsumexp(log_n, axis=1) - jnp.log(8.0)
    if name == 'checkerboard':
        cell = jnp.floor(x)
        inside = jnp.all((cell >= -2) & (cell <= 1), axis=1) & (jnp.sum(cell, axis=1) % 2 == 0)
        return jnp.where(inside, -jnp.log(8.0), -jnp.inf)
    raise DataError(f'config.data.name={name!r} has no closed-form density; use eight_gaussians or checkerboard.')


_TOY_SPLITS = {
    **{name: functools.partial(lambda name, n, rng: _toy_split(TOY_MODES[name], n, rng, TOY_STDS[name]), name)
       for name in TOY_STDS},
    'eight_gaussians': _eight_gaussians_split,
    'checkerboard': _checkerboard_split,
    **point_sets.SPLITS,
}
TOYS = tuple(_TOY_SPLITS)  # the 2-D point sets
_TOY_CLASSES = {'ring8': 8, 'grid25': 25, 'eight_gaussians': 8, 'checkerboard': len(_CHECKER_SQUARES),
                'pacgan_ring': 8, 'pacgan_grid': 25, **point_sets.CLASSES}


def _load_toy(name: str) -> Dataset:
    rng = np.random.default_rng([DATASETS.index(name), 2024])  # fixed: the data never depends on a run
    num_train, num_test = _TOY_SIZES.get(name, (_TOY_NUM_TRAIN, _TOY_NUM_TEST))
    train = _TOY_SPLITS[name](num_train, rng)
    test = _TOY_SPLITS[name](num_test, rng)
    return _make(name, (2,), None, _TOY_CLASSES[name], train, test)


# --- MNIST / CIFAR-10 through TFDS ------------------------------------------------------------------

# name -> (title, shape, download host, the files a manual dir must hold)
_TFDS = {
    'mnist': ('MNIST', (28, 28, 1), 'storage.googleapis.com',
              'the four *-ubyte.gz files of https://storage.googleapis.com/cvdf-datasets/mnist/'),
    'cifar10': ('CIFAR-10', (32, 32, 3), 'www.cs.toronto.edu',
                'cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html'),
}


def _reachable(host: str, timeout: float = 5.0) -> bool:
    """Whether `host`:443 answers; TFDS itself would retry an unreachable host for minutes."""
    import socket
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_tfds(name: str, data_dir: str | None, manual_dir: str | None) -> Dataset:
    import tensorflow_datasets as tfds  # lazy: importing TensorFlow costs seconds
    title, shape, host, files = _TFDS[name]
    how = (f'put {files} in a folder and pass --config.data.manual_dir=FOLDER (the TFDS manual-dir '
           f'build, like `tfds build {name} --manual_dir=FOLDER`), or use --config.data.name=digits '
           'to run offline.')
    builder = tfds_prepare.prepared_builder(name, data_dir, title=title, host=host, how=how, error=DataError,
                                            reachable=_reachable, manual_dir=manual_dir)
    # batch_size=-1: each split as one batch of NumPy arrays (TFDS sizes it from the prepared metadata).
    train, test = tfds.as_numpy(builder.as_dataset(split=['train', 'test'], batch_size=-1))

    def arrays(split):  # keep only image and label (CIFAR-10 also carries string ids)
        return {'image': np.asarray(split['image'], np.uint8),
                'label': np.asarray(split['label'], np.int32)}

    return _make(name, shape, 8, 10, arrays(train), arrays(test))


# --- audio ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)  # the notes take a couple of seconds to generate; the arrays are read-only
def _load_notes() -> Dataset:
    return _load_audio('notes', None, None)


def _load_audio(name: str, data_dir: str | None, manual_dir: str | None) -> Dataset:
    if name == 'notes':
        rng = np.random.default_rng([DATASETS.index(name), 2024])  # fixed: the data never depends on a run
        num_train, num_test = audio_datasets.NOTES_SIZES
        train, test = audio_datasets.notes_split(num_train, rng), audio_datasets.notes_split(num_test, rng)
        rate, length, classes = audio_datasets.NOTES_RATE, audio_datasets.NOTES_LENGTH, len(audio_datasets.NOTES_MIDI)
    else:
        train, test = audio_datasets.load_sc09(data_dir, manual_dir, DataError)
        rate, length, classes = audio_datasets.SC09_RATE, audio_datasets.SC09_LENGTH, len(audio_datasets.SC09_WORDS)
    return _make(name, (length,), 16, classes, train, test, sample_rate=rate)


# --- text ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=2)
def _load_text(name: str, data_dir: str | None, context: int, tokenizer: str) -> Dataset:
    if context < 1:
        raise DataError(f'config.data.context={context} must be a positive number of tokens.')
    if name == 'pydoc':
        train_text, test_text = text_datasets.pydoc_texts()
    else:
        train_text, test_text = text_datasets.tiny_shakespeare_texts(data_dir, DataError, _reachable)
    tok = text_datasets.make_tokenizer(tokenizer, train_text, DataError)
    try:
        train, test, bytes_per_token = text_datasets.text_splits(train_text, test_text, tok, context)
    except ValueError as e:
        raise DataError(f'{e} Lower it.') from None
    return _make(name, (context,), None, 1, train, test, vocab_size=tok.vocab_size,
                 bytes_per_token=bytes_per_token, tokenizer=tok)


@functools.lru_cache(maxsize=1)
def _load_captioned(name: str, data_dir: str | None) -> Dataset:
    train, test = caption_datasets.load_coco_captions(data_dir, DataError, _reachable)
    size = caption_datasets.COCO_SIZE
    return _make(name, (size, size, 3), 8, 1, train, test, captions_per_image=caption_datasets.CAPTIONS)


@functools.lru_cache(maxsize=2)
def _load_domains(name: str, data_dir: str | None) -> Dataset:
    if name == 'digit_strokes':
        digits = _load_digits()
        train, test = translation_datasets.digit_strokes(digits.train, digits.test)
        return _make(name, digits.info.shape, 4, 10, train, test, domains=translation_datasets.DOMAIN_NAMES[name])
    config = name.split('/', 1)[1]
    train, test = translation_datasets.load_cycle_gan(config, data_dir, DataError, _reachable)
    return _make(name, train['image_a'].shape[1:], 8, 1, train, test,
                 domains=translation_datasets.domain_names(config))


def load(name: str, *, data_dir: str | None = None, manual_dir: str | None = None, context: int = 256,
         tokenizer: str = 'bytes') -> Dataset:
    """Loads dataset `name` (one of DATASETS) whole into memory.

    `data_dir` is the TFDS data dir; `manual_dir` a folder holding the raw download files, for
    machines without network. Text datasets only: `context`, the tokens per example, and `tokenizer`,
    'bytes' or 'bpeN' (`gm.text_datasets`).
    """
    if name == 'digits':
        return _load_digits()
    if name in _TOY_SPLITS:
        return _load_toy(name)
    if name in _TFDS:
        return _load_tfds(name, data_dir, manual_dir)
    if name == 'notes':
        return _load_notes()
    if name in AUDIO:
        return _load_audio(name, data_dir, manual_dir)
    if name in TEXT:
        return _load_text(name, data_dir, int(context), tokenizer)
    if name in caption_datasets.CAPTIONED:
        return _load_captioned(name, data_dir)
    if name in translation_datasets.TRANSLATION_DATASETS:
        return _load_domains(name, data_dir)
    raise DataError(f'Unknown dataset {name!r} in config.data.name: use one of {", ".join(DATASETS)}.')


# --- batching -----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)  # a batch touches at most two epochs; a couple spare for train+eval use
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Epoch `epoch`'s order: int64[n], a permutation of 0..n-1, a pure function of its arguments."""
    return _readonly(np.random.default_rng([seed, epoch]).permutation(n))


def _process_rows(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[lo, hi): this process's contiguous rows of the global batch."""
    if batch_size <= 0 or batch_size % process_count:
        raise DataError(f'config.train.batch_size={batch_size} must be a positive multiple of the '
                        f'{process_count} processes, so that every process gets an equal share.')
    if not 0 <= process_index < process_count:
        raise DataError(f'process_index={process_index} is outside 0..{process_count - 1}.')
    per_process = batch_size // process_count
    return process_index * per_process, (process_index + 1) * per_process


_FLIP_STREAM = 0x666C6970  # 'flip': keeps the flip coins independent of the epoch permutations


def _flip_mask(seed: int, step: int, batch_size: int) -> np.ndarray:
    """bool[batch_size] over the GLOBAL batch: which examples of step `step` get mirrored."""
    return np.random.default_rng([seed, step, _FLIP_STREAM]).random(batch_size) < 0.5


def train_batch(ds: Dataset, *, step: int, batch_size: int, seed: int, process_index: int = 0,
                process_count: int = 1, random_flip: bool = False) -> dict[str, np.ndarray]:
    """This process's share of global training batch `step`: arrays with leading dim batch_size/P.

    Global example g = step*batch_size + row lives in epoch g // N at offset g % N of that epoch's
    permutation, so the batch depends only on (seed, step) and a resumed run sees exactly what an
    uninterrupted one would. `random_flip` mirrors images horizontally with probability 1/2, decided
    over the global batch so it does not depend on the number of processes.
    """
    if not isinstance(step, (int, np.integer)) or step < 0:
        raise DataError(f'step={step!r} must be an integer >= 0 (the index of the batch).')
    lo, hi = _process_rows(batch_size, process_index, process_count)
    n = len(ds.train['label'])
    g = step * batch_size + np.arange(lo, hi, dtype=np.int64)
    epoch, offset = np.divmod(g, n)
    index = np.empty_like(g)
    for e in np.unique(epoch):  # one or two epochs, unless the batch is bigger than the dataset
        rows = epoch == e
        index[rows] = _permutation(n, seed, int(e))[offset[rows]]
    batch = {k: v[index] for k, v in ds.train.items()}
    if random_flip:
        images = [k for k in ('image', 'image_a', 'image_b') if k in batch]
        if not images:
            raise DataError(f'random_flip needs images but {ds.info.name!r} has none: set '
                            'config.data.random_flip=False.')
        flip = _flip_mask(seed, step, batch_size)[lo:hi]
        for k in images:
            batch[k] = np.where(flip[:, None, None, None], batch[k][:, :, ::-1], batch[k])
    return batch


def eval_batches(ds: Dataset, *, batch_size: int, split: str = 'test', process_index: int = 0,
                 process_count: int = 1, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """This process's shares of the global batches of `split`, in fixed order, each of one shape.

    The last global batch is padded to batch_size by repeating the split's first rows; every batch
    carries 'mask': bool[batch_size/P], True for real examples, so each example counts exactly once.
    `limit` evaluates only the first `limit` examples.
    """
    if split not in ('train', 'test'):
        raise DataError(f"split={split!r} must be 'train' or 'test'.")
    data = getattr(ds, split)
    lo, hi = _process_rows(batch_size, process_index, process_count)
    n = len(data['label']) if limit is None else min(limit, len(data['label']))
    for start in range(0, n, batch_size):
        g = start + np.arange(lo, hi, dtype=np.int64)
        mask = g < n
        index = np.where(mask, g, (g - n) % n)  # padding rows: 0, 1, 2, ... of the split
        yield {**{k: v[index] for k, v in data.items()}, 'mask': mask}
