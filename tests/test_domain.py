"""The offline domain classifiers behind fid_digits / is_digits (and fid_mnist / is_mnist)."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import write_tfds_metadata
from scipy import ndimage

from gm import data as gm_data
from gm import distributions as dist
from gm.metrics import domain
from gm.metrics.fid import StreamingMoments, frechet_distance
from gm.metrics.inception_score import inception_score


@pytest.fixture(scope="module")
def digits():
    return gm_data.load("digits")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gm_cache"))


@pytest.fixture(scope="module")
def classifier(digits, cache):
    """The digits classifier with the full recipe, trained into a fresh cache folder (seconds)."""
    return domain.load_classifier("digits", dataset=digits, cache_dir=cache)


def _pixels(split, num_bits=4):
    return np.asarray(dist.levels_to_uint8_pixels(split["image"], num_bits))


def _forbid_training(monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("the classifier should have come from the cache, not from training")
    monkeypatch.setattr(domain, "train", train)


# --- the digits classifier ------------------------------------------------------------------------

def test_digits_classifier_accuracy_shapes_and_dtypes(classifier, digits):
    assert classifier.name == "digits" and (classifier.feature_dim, classifier.num_classes) == (64, 10)
    assert classifier.test_accuracy >= 0.95  # 0.981 (353 of the 360 test images) with the v1 recipe
    pixels = _pixels(digits.test)
    features, logits = classifier.features_and_logits(pixels)
    assert features.shape == (360, 64) and features.dtype == np.float32
    assert logits.shape == (360, 10) and logits.dtype == np.float32
    assert np.all(np.isfinite(features)) and np.all(np.isfinite(logits))
    accuracy = np.mean(np.argmax(logits, -1) == digits.test["label"])
    assert accuracy == pytest.approx(classifier.test_accuracy)
    # Jit-able as a bound method, and the same through the module function with params as an input.
    jitted = jax.jit(classifier.features_and_logits)(pixels)
    explicit = jax.jit(functools.partial(domain.apply_classifier, "digits"))(classifier.params, pixels)
    for a, b in ((features, jitted[0]), (logits, jitted[1]), (features, explicit[0])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_inputs_must_be_uint8_pixels_of_the_right_shape(classifier):
    with pytest.raises(ValueError, match="levels_to_uint8_pixels"):
        classifier.features_and_logits(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\]"):
        classifier.features_and_logits(np.zeros((2, 28, 28, 1), np.uint8))


def test_training_is_deterministic_and_the_cache_gives_the_same_classifier(
        classifier, digits, cache, tmp_path, monkeypatch):
    assert os.listdir(cache) == ["domain_classifier_digits_v1.npz"]
    # A second training, into another folder named by $GM_CACHE_DIR, gives bit-identical parameters.
    monkeypatch.setenv("GM_CACHE_DIR", str(tmp_path))
    again = domain.load_classifier("digits", dataset=digits)
    assert (tmp_path / "domain_classifier_digits_v1.npz").exists()
    jax.tree.map(np.testing.assert_array_equal, again.params, classifier.params)
    # Read back from the file: identical parameters, outputs and accuracy, and no training.
    _forbid_training(monkeypatch)
    loaded = domain.load_classifier("digits", dataset=digits, cache_dir=cache)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, classifier.params)
    pixels = _pixels(digits.test)
    for a, b in zip(loaded.features_and_logits(pixels), classifier.features_and_logits(pixels)):
        np.testing.assert_array_equal(a, b)
    assert loaded.test_accuracy == classifier.test_accuracy


def test_a_corrupt_cache_file_is_retrained(digits, tmp_path):
    path = domain.cache_path("digits", str(tmp_path), num_steps=20)
    assert os.path.basename(path) == "domain_classifier_digits_v1_20steps.npz"  # not the recipe's file
    with open(path, "wb") as f:
        f.write(b"not an npz file")
    clf = domain.load_classifier("digits", dataset=digits, cache_dir=str(tmp_path), num_steps=20)
    expected = domain.train("digits", digits, num_steps=20)
    jax.tree.map(np.testing.assert_array_equal, clf.params, expected)
    with np.load(path) as f:  # overwritten with the good parameters
        assert "params/Dense_0/kernel" in f.files


def test_an_unwritable_cache_keeps_the_classifier_in_memory(digits, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    unwritable = str(tmp_path / "a_file" / "cache")  # below a regular file: no folder can be made
    with pytest.warns(UserWarning, match="GM_CACHE_DIR"):
        first = domain.load_classifier("digits", dataset=digits, cache_dir=unwritable, num_steps=20)
    _forbid_training(monkeypatch)
    second = domain.load_classifier("digits", dataset=digits, cache_dir=unwritable, num_steps=20)
    jax.tree.map(np.testing.assert_array_equal, first.params, second.params)


# --- the features behave as FID features should ---------------------------------------------------

def _moments(classifier, pixels):
    features, logits = classifier.features_and_logits(pixels)
    acc = StreamingMoments(classifier.feature_dim)
    acc.update(features)
    return (acc.mean(), acc.cov()), np.asarray(logits)


def test_fid_ranks_held_out_digits_far_above_corrupted_ones(classifier, digits):
    rng = np.random.default_rng(0)
    train = _pixels(digits.train)
    images = {
        "test": _pixels(digits.test),
        # 3x3 box blur: the right strokes, soft edges.
        "blurred": np.round(ndimage.uniform_filter(train.astype(np.float64), (1, 3, 3, 1))).astype(np.uint8),
        # Each image's own pixels in a random order: the right grey levels, no strokes.
        "shuffled": np.stack([im.reshape(-1)[rng.permutation(64)].reshape(im.shape) for im in train]),
        "noise": rng.integers(0, 256, train.shape).astype(np.uint8),
    }
    reference, _ = _moments(classifier, train)
    stats = {k: _moments(classifier, v) for k, v in images.items()}
    fid = {k: frechet_distance(*s, *reference) for k, (s, _) in stats.items()}
    # Measured with the v1 recipe: test 1.6, blurred 66, shuffled 156, noise 199.
    assert 10 * fid["test"] < fid["blurred"] < fid["shuffled"] < fid["noise"], fid
    # One split: ten splits of 36 images estimate the class marginal from too few examples (8.55 here).
    real, _ = inception_score(stats["test"][1], num_splits=1)
    noise, _ = inception_score(stats["noise"][1], num_splits=1)
    assert 9.0 < real < 10.0 and noise < 0.5 * real, (real, noise)  # measured: 9.35 and 2.13


# --- MNIST through TFDS (mocked; nothing downloads) -----------------------------------------------

def test_mnist_classifier_on_mock_data(tmp_path, no_network, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    metadata = str(tmp_path / "metadata")
    write_tfds_metadata(tfds, "mnist", metadata, num_train=16, num_test=16)
    with tfds.testing.mock_data(num_examples=16, data_dir=metadata):
        mnist = gm_data.load("mnist", data_dir=str(tmp_path / "unused"))
    cache = str(tmp_path / "cache")
    # Random images: only the code path and the shapes can be checked, not the accuracy.
    clf = domain.load_classifier("mnist", dataset=mnist, cache_dir=cache, num_steps=3)
    assert (clf.name, clf.feature_dim, clf.num_classes) == ("mnist", 128, 10)
    assert 0.0 <= clf.test_accuracy <= 1.0
    assert os.listdir(cache) == ["domain_classifier_mnist_v1_3steps.npz"]
    pixels = _pixels(mnist.test, num_bits=8)
    features, logits = clf.features_and_logits(pixels)
    assert features.shape == (16, 128) and features.dtype == np.float32
    assert logits.shape == (16, 10) and logits.dtype == np.float32
    _forbid_training(monkeypatch)
    loaded = domain.load_classifier("mnist", dataset=mnist, cache_dir=cache, num_steps=3)
    for a, b in zip(loaded.features_and_logits(pixels), (features, logits)):
        np.testing.assert_array_equal(a, b)
    assert domain.metric_names("mnist") == ("fid_mnist", "is_mnist")


# --- audio: a classifier of log-mel spectrograms -------------------------------------------------------

def test_notes_classifier_hears_the_pitch_and_its_fid_ranks_real_clips_above_corrupted_ones(cache):
    notes = gm_data.load("notes")
    clf = domain.load_classifier("notes", dataset=notes, cache_dir=cache)
    assert clf.test_accuracy >= 0.95 and (clf.feature_dim, clf.num_classes) == (64, 10)  # measured: 1.0
    with pytest.raises(ValueError, match=r"takes int16 PCM \[N, 2000\]"):
        clf.features_and_logits(np.zeros((2, 2000), np.float32))
    train = notes.train["audio"][:2000]
    rng = np.random.default_rng(0)
    clips = {"test": notes.test["audio"],
             # Each clip's samples in a random order: the right amplitudes, no pitch.
             "shuffled": np.stack([c[rng.permutation(2000)] for c in notes.test["audio"]]),
             "noise": rng.integers(-3000, 3000, notes.test["audio"].shape).astype(np.int16)}
    reference, _ = _moments(clf, train)
    stats = {k: _moments(clf, v) for k, v in clips.items()}
    fid = {k: frechet_distance(*s, *reference) for k, (s, _) in stats.items()}
    assert 10 * fid["test"] < fid["shuffled"] and 10 * fid["test"] < fid["noise"], fid
    real, _ = inception_score(stats["test"][1], num_splits=1)
    assert real > 8.0, real  # ten equally likely pitches, each recognised


def test_sc09_classifier_takes_one_second_clips_at_16_khz():
    shapes = jax.eval_shape(domain._network("sc09").init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 16000), jnp.int16))
    out = jax.eval_shape(functools.partial(domain.apply_classifier, "sc09"), shapes,
                         jax.ShapeDtypeStruct((3, 16000), jnp.int16))
    assert out[0].shape == (3, 128) and out[1].shape == (3, 10)


# --- names and errors -----------------------------------------------------------------------------

def test_metric_names_and_unknown_names():
    assert domain.DOMAIN_DATASETS == ("digits", "mnist", "notes", "sc09")
    assert domain.metric_names("digits") == ("fid_digits", "is_digits")
    assert domain.metric_names("sc09") == ("fid_sc09", "is_sc09")
    for bad in (lambda: domain.load_classifier("cifar10"), lambda: domain.metric_names("cifar10")):
        with pytest.raises(ValueError, match="use one of digits, mnist, notes, sc09") as e:
            bad()
        assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_a_dataset_of_another_name_is_refused(digits):
    with pytest.raises(ValueError, match=r"dataset=None"):
        domain.load_classifier("mnist", dataset=digits)
