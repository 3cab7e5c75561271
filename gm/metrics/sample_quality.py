"""Sample quality of a model: FID, Inception Score and KID of its samples against a data split.

One path serves every feature network:

* 'inception': the FID reference InceptionV3 (`gm.metrics.inception`, the standard 2015-12-05 weights):
  the FID, IS and KID of the literature, named `fid`, `is` and `kid`.
* 'digits' / 'mnist': a small classifier trained on that dataset (`gm.metrics.domain`), always
  available offline for the digits. Its statistics are named `fid_digits`, `is_digits`, ... and are NOT
  comparable with Inception FID: they only rank models on the same data.
* 'notes' / 'sc09': the same for audio, a classifier of log-mel spectrograms (`fid_sc09`, `is_sc09`:
  the classifier-based scores of WaveGAN and DiffWave, with gm's classifier, so not their numbers).

Images enter every extractor as uint8 pixels [N, H, W, C] in [0, 255]; samples and datasets arrive as
integer levels at the data's bit depth and are converted with `levels_to_uint8_pixels`. Audio enters as
int16 PCM [N, T], as it is. Features are
computed in jit-compiled batches split over every device; statistics accumulate in float64
(`StreamingMoments`). Reference statistics are a pytorch-fid style .npz (`mu`, `sigma`), here also
holding the reference `features` so KID can be computed.
"""
import os
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np
from tqdm import tqdm

from gm import data as gm_data
from gm import distributions as dist
from gm import parallel
from gm.metrics.fid import StreamingMoments, frechet_distance, kernel_inception_distance
from gm.metrics.inception_score import inception_score

FEATURES = ("auto", "inception", "digits", "mnist", "notes", "sc09")
AUDIO_FEATURES = ("notes", "sc09")
# The feature network 'auto' picks for each dataset: a domain classifier where one exists.
AUTO_FEATURES = {"digits": "digits", "mnist": "mnist", "cifar10": "inception", "coco_captions": "inception",
                 "notes": "notes", "sc09": "sc09", "digit_strokes": "digits"}


class FeatureExtractor(NamedTuple):
    """A feature network for FID / IS.

    name: one of FEATURES but 'auto'.
    fn: (params, uint8 pixels [N, H, W, C] in [0, 255], or int16 PCM [N, T] for audio) -> (features
      float32 [N, feature_dim], logits float32 [N, K]); pure. The weights go in as an argument, not as
      constants of the compiled program (Inception's are 95 MB).
    params: the network's weights (a pytree), or None.
    feature_dim: D of the features.
    channels: image channels the network takes (grey images are repeated to 3 for Inception).
    fid_name, is_name, kid_name: the metric names its statistics are reported under.
    audio: whether it takes PCM clips rather than images.
    """
    name: str
    fn: Callable[[Any, Any], Any]
    params: Any
    feature_dim: int
    channels: int
    fid_name: str
    is_name: str
    kid_name: str
    audio: bool = False


def inception_extractor(weights=None, variables=None):
    """The FID Inception network with the standard weights (`weights`: path, else $GM_INCEPTION_WEIGHTS);
    raises `InceptionWeightsError` with the download instructions when the file is missing. `variables`
    (a Flax variable dict of the network) replaces the file, e.g. random weights for a speed benchmark."""
    from gm.metrics import inception

    if variables is None:
        variables = inception.load_variables(weights or None)
    variables = jax.tree.map(jax.numpy.asarray, variables)
    return FeatureExtractor("inception", inception.features, variables, inception.FEATURE_DIM, 3,
                            "fid", "is", "kid")


def domain_extractor(name, dataset=None):
    """The small classifier trained on dataset `name` (a domain dataset), trained on first use."""
    from gm.metrics import domain

    clf = domain.load_classifier(name, dataset=dataset)
    fid_name, is_name = domain.metric_names(name)
    return FeatureExtractor(name, lambda params, pixels: clf.features_and_logits(pixels), None,
                            clf.feature_dim, None, fid_name, is_name, fid_name.replace("fid", "kid", 1),
                            audio=name in AUDIO_FEATURES)


def resolve_features(features, data_name):
    """config.eval.features ('auto' or a name in FEATURES) for dataset `data_name` -> a concrete name."""
    if features not in FEATURES:
        raise ValueError(f"Unknown config.eval.features {features!r}; use one of {FEATURES}.")
    if features != "auto":
        return features
    if data_name and data_name.startswith("cycle_gan/"):
        return "inception"
    if data_name not in AUTO_FEATURES:
        raise ValueError(f"No feature network for sample quality on config.data.name={data_name!r}; "
                         "FID needs image data or a dataset with a domain classifier (notes, sc09).")
    return AUTO_FEATURES[data_name]


def make_extractor(features, dataset=None, inception_weights=None):
    """A FeatureExtractor by name (one of FEATURES; 'auto' needs `dataset`)."""
    name = resolve_features(features, dataset.info.name if dataset is not None else None)
    if dataset is not None and (name in AUDIO_FEATURES) != dataset.info.is_audio:
        raise ValueError(f"config.eval.features={features!r} cannot score {dataset.info.name!r} data; use 'auto'.")
    if name == "inception":
        return inception_extractor(inception_weights)
    same_data = dataset if dataset is not None and dataset.info.name == name else None
    return domain_extractor(name, same_data)


def _as_extractor_input(pixels, channels):
    """uint8 pixels -> the channel count the network takes (grey repeated to RGB for Inception)."""
    if channels is not None and pixels.shape[-1] != channels:
        if pixels.shape[-1] != 1:
            raise ValueError(f"The feature network takes {channels}-channel images, got {pixels.shape[-1]}.")
        pixels = jax.numpy.repeat(pixels, channels, axis=-1)
    return pixels


def features_of_levels(extractor, params, levels, num_bits):
    """(features, logits) of integer levels at `num_bits` [B, H, W, C] (or PCM clips [B, T]) through
    `extractor.fn` with its `params`; traceable, for use inside a compiled function."""
    if extractor.audio:
        return extractor.fn(params, levels)
    pixels = dist.levels_to_uint8_pixels(levels, num_bits)
    return extractor.fn(params, _as_extractor_input(pixels, extractor.channels))


def compiled_features(extractor, num_bits):
    """jit: integer levels at `num_bits` [B, H, W, C] or PCM clips [B, T] (split over devices) ->
    (features, logits)."""
    compiled = parallel.jit_batched(lambda params, levels: features_of_levels(extractor, params, levels, num_bits))
    return lambda levels: compiled(extractor.params, levels)


# ---------------------------------------------------------------------------------------------------
# Features of a data split and of a model's samples.
# ---------------------------------------------------------------------------------------------------

def dataset_features(extractor, dataset, split="train", batch_size=500, limit=None, field=None):
    """(features float64 [N, D], logits [N, K]) of a split's images (or clips), N = its size (or `limit`);
    `field` names the array (default 'image', or 'audio'; 'image_a' / 'image_b' for two domains)."""
    parallel.check_batch_size(batch_size, "config.eval.batch_size")
    compiled = compiled_features(extractor, dataset.info.num_bits)
    n = len(getattr(dataset, split)["label"]) if limit is None else min(limit, len(getattr(dataset, split)["label"]))
    batches = gm_data.eval_batches(
        dataset, batch_size=batch_size, split=split, limit=limit, process_index=parallel.process_index(),
        process_count=parallel.process_count())
    features, logits = [], []
    for batch in tqdm(batches, total=-(-n // batch_size), desc=f"{extractor.name} features ({split})",
                      mininterval=2.0, disable=parallel.process_index() != 0):
        key = field or ("audio" if dataset.info.is_audio else "image")
        sharded = parallel.shard_batch({key: batch[key], "mask": batch["mask"]})
        f, l, mask = parallel.to_host((*compiled(sharded[key]), sharded["mask"]))
        features.append(np.asarray(f, np.float64)[mask])
        logits.append(np.asarray(l, np.float64)[mask])
    return np.concatenate(features), np.concatenate(logits)


def sample_chunk(num: int, batch_size: int) -> int:
    """The samples `sample_features` draws per call for `num` samples `batch_size` at a time: every chunk
    has one shape (a single compile) that splits evenly over the devices; extra samples of the last
    chunk are dropped."""
    return parallel.round_up_to_devices(min(batch_size, num))


def class_accuracy(logits, labels) -> float:
    """Share of samples whose classifier logits [N, K] pick the class int [N] they were drawn for."""
    return float(np.mean(np.argmax(np.asarray(logits), axis=1) == np.asarray(labels)))


def sample_features(extractor, sample_fn, params, key, num, batch_size, num_bits):
    """(features [num, D], logits [num, K]) of `num` samples of `sample_fn(params, key, n)` (uint8 levels).

    Samples are drawn `batch_size` at a time with keys fold_in(key, i) and go straight from the sampler
    to the feature network on the devices; only features come back to the host.
    """
    if num <= 0 or batch_size <= 0:
        raise ValueError("config.eval.num_samples and config.eval.sample_batch_size must be positive.")
    chunk = sample_chunk(num, batch_size)
    sampler = parallel.jit_sampler(sample_fn, chunk)
    compiled = compiled_features(extractor, num_bits)
    features, logits = [], []
    for i in tqdm(range(-(-num // chunk)), desc=f"{extractor.name} features (samples)", mininterval=2.0,
                  disable=parallel.process_index() != 0):
        f, l = parallel.to_host(compiled(sampler(params, jax.random.fold_in(key, i))))
        features.append(np.asarray(f, np.float64))
        logits.append(np.asarray(l, np.float64))
    return np.concatenate(features)[:num], np.concatenate(logits)[:num]


def moments(features):
    """(mu [D], sigma [D, D]) in float64 through `StreamingMoments`."""
    acc = StreamingMoments(features.shape[1])
    acc.update(features)
    return acc.mean(), acc.cov()


# ---------------------------------------------------------------------------------------------------
# Reference statistics and scores.
# ---------------------------------------------------------------------------------------------------

class Reference(NamedTuple):
    """Statistics of the real images: mu [D], sigma [D, D], features [N, D] (None when read from a
    file that has only mu and sigma, as pytorch-fid's), and where they came from (for the report)."""
    mu: np.ndarray
    sigma: np.ndarray
    features: Optional[np.ndarray]
    source: str


def save_reference(path, ref):
    """Write a Reference as .npz: mu and sigma (pytorch-fid reads these), features, source."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    extra = {} if ref.features is None else {"features": ref.features.astype(np.float32)}
    np.savez(path, mu=ref.mu, sigma=ref.sigma, source=np.asarray(ref.source), **extra)


def load_reference(path):
    """Read a reference .npz written by `save_reference` or by pytorch-fid (mu and sigma only)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Reference statistics {path} not found; compute them with "
                                "`python -m gm.metrics.reference_stats --out=PATH` or fix config.eval.reference.")
    with np.load(path) as f:
        features = f["features"].astype(np.float64) if "features" in f else None
        source = str(f["source"]) if "source" in f else os.path.basename(path)
        return Reference(f["mu"], f["sigma"], features, source)


def dataset_reference(extractor, dataset, split="train", batch_size=500, limit=None):
    """Reference statistics of a data split through `extractor`."""
    features, _ = dataset_features(extractor, dataset, split, batch_size, limit)
    mu, sigma = moments(features)
    size = f"first {len(features)} of " if limit else ""
    things = "clips" if dataset.info.is_audio else "images"
    return Reference(mu, sigma, features, f"{extractor.name} features of {size}{dataset.info.name} {split} "
                                          f"({len(features)} {things})")


def reference_for(extractor, dataset, spec, batch_size=500):
    """config.eval.reference: 'train' or 'test' (statistics of that split, computed now: cheap for the
    domain classifiers) or the path of a .npz from `gm.metrics.reference_stats` (for Inception on
    CIFAR-10, compute it once)."""
    if spec in ("train", "test"):
        return dataset_reference(extractor, dataset, spec, batch_size)
    ref = load_reference(spec)
    if ref.mu.shape != (extractor.feature_dim,):
        raise ValueError(f"config.eval.reference={spec} holds {ref.mu.shape[0]}-d statistics, but the "
                         f"{extractor.name} features are {extractor.feature_dim}-d; use statistics of "
                         "the same feature network.")
    return ref


def score(extractor, features, logits, reference, num_splits=10, kid=False):
    """FID (and IS, optionally KID) of sample features against `reference` -> dict of floats.

    Keys: extractor.fid_name, extractor.is_name and its '_std' over `num_splits` splits, kid_name and
    its '_std' when `kid` (needs reference features), and 'num_samples'.
    """
    mu, sigma = moments(features)
    out = {extractor.fid_name: frechet_distance(mu, sigma, reference.mu, reference.sigma)}
    out[extractor.is_name], out[extractor.is_name + "_std"] = inception_score(logits, min(num_splits, len(logits)))
    if kid:
        if reference.features is None:
            raise ValueError("KID needs the reference features; this reference file has only mu and sigma "
                             "(set config.eval.kid=False or recompute it with gm.metrics.reference_stats).")
        out[extractor.kid_name], out[extractor.kid_name + "_std"] = kernel_inception_distance(
            features, reference.features, subset_size=min(1000, len(features), len(reference.features)))
    out["num_samples"] = len(features)
    return out
