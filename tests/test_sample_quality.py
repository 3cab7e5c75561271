"""The sample-quality pipeline (features of data and samples, references, scores) and the evaluators
that run it during training and in --mode=eval."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm import config as config_lib
from gm import data as gm_data
from gm.config import EvalConfig
from gm.method import Method
from gm.metrics import fid as fid_lib
from gm.metrics import inception_score, sample_quality
from gm.train import evaluators, loop
from experiments import ddpm_cifar


@pytest.fixture(scope="module")
def digits():
    return gm_data.load("digits")


def _pixel_extractor():
    """A stand-in feature network: 4 pixel values as features, 3 'class' logits from pixel sums."""
    def fn(params, pixels):
        x = pixels.reshape(pixels.shape[0], -1).astype(jnp.float32) / 255.0
        logits = jnp.stack([x[:, :20].sum(1), x[:, 20:40].sum(1), x[:, 40:].sum(1)], axis=1)
        return x[:, 26:30], logits

    return sample_quality.FeatureExtractor("pixels", fn, None, 4, None, "fid_pixels", "is_pixels", "kid_pixels")


def _numpy_features(levels, num_bits):
    pixels = np.round(levels.astype(np.float32) * (255.0 / (2 ** num_bits - 1))).astype(np.uint8)
    return pixels.reshape(len(pixels), -1).astype(np.float64)[:, 26:30] / 255.0


def test_dataset_features_cover_every_image_once_across_devices(digits):
    # 1,437 training images in batches of 120 over 8 devices: the last batch is padded and masked.
    features, logits = sample_quality.dataset_features(_pixel_extractor(), digits, "train", batch_size=120)
    expected = _numpy_features(digits.train["image"], 4)
    assert features.shape == (1437, 4) and logits.shape == (1437, 3)
    np.testing.assert_allclose(features, expected, rtol=1e-6)


def test_sample_features_draw_exactly_num_samples_with_fresh_keys(digits):
    def sample(params, key, n):
        return jax.random.randint(key, (n, 8, 8, 1), 0, 16).astype(jnp.uint8)

    features, logits = sample_quality.sample_features(_pixel_extractor(), sample, {}, jax.random.key(0), 50, 12, 4)
    assert features.shape == (50, 4) and logits.shape == (50, 3)
    # Chunks of 16 (12 rounded up to the 8 devices) with keys fold_in(key, i): chunk 1 differs from chunk 0.
    assert not np.allclose(features[:16], features[16:32])
    first = sample({}, jax.random.fold_in(jax.random.key(0), 0), 16)
    np.testing.assert_allclose(features[:16], _numpy_features(np.asarray(first), 4), rtol=1e-6)


def test_score_of_the_reference_itself(digits):
    ext = _pixel_extractor()
    ref = sample_quality.dataset_reference(ext, digits, "test", batch_size=120)
    features, logits = sample_quality.dataset_features(ext, digits, "test", batch_size=120)
    out = sample_quality.score(ext, features, logits, ref, kid=True)
    assert abs(out["fid_pixels"]) < 1e-6 and out["num_samples"] == 360
    assert out["is_pixels"] == pytest.approx(inception_score(logits, 10)[0])
    assert abs(out["kid_pixels"]) < 0.05  # unbiased MMD^2 of a set with itself: zero up to subset noise
    assert "360 images" in ref.source and "test" in ref.source
    shifted = sample_quality.score(ext, features + 0.5, logits, ref)
    assert shifted["fid_pixels"] == pytest.approx(4 * 0.25, rel=1e-6)  # |mu1 - mu2|^2, same covariance


def test_reference_files_round_trip_and_read_pytorch_fid_files(tmp_path, digits):
    ext = _pixel_extractor()
    ref = sample_quality.dataset_reference(ext, digits, "train", batch_size=120)
    sample_quality.save_reference(tmp_path / "ref.npz", ref)
    back = sample_quality.reference_for(ext, digits, str(tmp_path / "ref.npz"))
    np.testing.assert_array_equal(back.mu, ref.mu)
    np.testing.assert_array_equal(back.sigma, ref.sigma)
    assert back.source == ref.source and back.features.shape == (1437, 4)
    # pytorch-fid's own format: mu and sigma only. FID works; KID says what is missing.
    fid_lib.save_stats(tmp_path / "torch.npz", ref.mu, ref.sigma)
    plain = sample_quality.load_reference(str(tmp_path / "torch.npz"))
    assert plain.features is None
    features, logits = sample_quality.dataset_features(ext, digits, "test", batch_size=120)
    assert sample_quality.score(ext, features, logits, plain)["fid_pixels"] > 0
    with pytest.raises(ValueError, match="config.eval.kid=False"):
        sample_quality.score(ext, features, logits, plain, kid=True)
    fid_lib.save_stats(tmp_path / "wide.npz", np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match="config.eval.reference=.*5-d"):
        sample_quality.reference_for(ext, digits, str(tmp_path / "wide.npz"))
    with pytest.raises(FileNotFoundError, match="gm.metrics.reference_stats"):
        sample_quality.reference_for(ext, digits, str(tmp_path / "missing.npz"))


def _config(**eval_fields):
    """The typed base sections of the smoke DDPM config with `eval_fields`."""
    config = ddpm_cifar.get_config("smoke")
    config.eval.update(eval_fields)
    return config_lib.parse_run(config)


def _perfect_method(digits):
    """Samples are the digits test images themselves, in order."""
    test = jnp.asarray(digits.test["image"])
    return Method(init=lambda k, b: {"w": jnp.zeros(())},
                  loss=lambda p, k, b: (jnp.sum(p["w"] ** 2), {}),
                  sample=lambda p, k, n: jnp.resize(test, (n,) + test.shape[1:]))


@pytest.mark.parametrize("fields, message", [
    (dict(metrics=("bpd", "precision")), "config.eval.metrics"),
    (dict(metrics=("fid",), features="resnet"), "config.eval.features"),
    (dict(metrics=("bpd",)),
     r"supports none of config.eval.metrics=\('bpd',\); set --config.eval.metrics to some of \('fid',\)"),
    (dict(metrics=("fid",), batch_size=100), "config.eval.batch_size"),
])
def test_bad_eval_config_is_one_sentence(digits, fields, message):
    with pytest.raises(ValueError, match=message):
        evaluators.make_evaluators(_config(**fields).eval, _perfect_method(digits), digits)


def test_fid_on_points_is_refused():
    ring = gm_data.load("ring8")
    with pytest.raises(ValueError, match="not an image dataset"):
        evaluators.make_evaluators(_config(metrics=("fid",)).eval, _perfect_method(gm_data.load("digits")), ring)


def test_in_training_fid_digits_of_a_perfect_model_is_zero(tmp_path, digits):
    config = ddpm_cifar.get_config("smoke")
    config.eval.update(metrics=("fid",), every=2, reference="test", num_samples=360, sample_batch_size=360)
    config.train.update(num_steps=4, log_every=2, checkpoint_every=4, sample_every=4, num_samples=8)
    loop.train_and_evaluate(config_lib.parse_run(config), str(tmp_path), _perfect_method(digits), digits)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evals = [r for r in records if "eval/fid_digits" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert abs(evals[0]["eval/fid_digits"]) < 1e-3
    assert evals[0]["eval/is_digits"] > 8.0  # the classifier is confident and the classes are balanced


def test_eval_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="config.eval has no field 'num_sampels'"):
        config_lib.parse(EvalConfig, {"num_sampels": 10}, "config.eval")


def test_metrics_a_model_cannot_provide_are_skipped(digits):
    """The perfect sampler has neither log_prob nor reconstruct: of ('bpd', 'fid', 'recon') only FID runs."""
    made = evaluators.make_evaluators(_config(metrics=("bpd", "fid", "recon")).eval, _perfect_method(digits), digits)
    assert [e.name for e in made] == ["fid"]
