import numpy as np
import pytest

from gm.metrics.fid import StreamingMoments, frechet_distance, kernel_inception_distance, load_stats, save_stats
from gm.metrics.inception_score import inception_score


def _random_cov(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _sqrt_psd(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_of_identical_statistics_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=6), _random_cov(rng, 6)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_the_eigendecomposition_formula():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = _random_cov(rng, 5), _random_cov(rng, 5)
    r1 = _sqrt_psd(s1)
    brute = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * _sqrt_psd(r1 @ s2 @ r1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(brute, rel=1e-8)
    # Two 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1.0 + 1.0)


def test_frechet_distance_survives_singular_covariances():
    sigma = np.diag([1.0, 0.0, 2.0])
    assert frechet_distance(np.zeros(3), sigma, np.ones(3), sigma) == pytest.approx(3.0, abs=1e-9)


def test_frechet_distance_of_a_collapsed_sample_set_is_the_closed_form():
    # One sample repeated: sigma1 = 0, so d^2 = |mu1 - mu2|^2 + Tr(sigma2) exactly. scipy warns that
    # sigma1 sigma2 is singular but returns a finite root; as pytorch-fid, no eps is added then (with it
    # the distance was 1e-3 relative low here).
    rng = np.random.default_rng(6)
    features = rng.normal(size=(500, 64))
    collapsed = np.repeat(features[:1], 300, axis=0)
    mu1, s1 = collapsed.mean(0), np.cov(collapsed, rowvar=False)
    mu2, s2 = features.mean(0), np.cov(features, rowvar=False)
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-9)


def test_streaming_moments_equal_one_shot_moments():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(103, 7)).astype(np.float32) * 3 + 1
    m = StreamingMoments(7)
    for start in range(0, 103, 16):
        batch = x[start:start + 16]
        pad = np.concatenate([batch, np.zeros((16 - len(batch), 7), np.float32)])
        m.update(pad, mask=np.arange(16) < len(batch))
    assert m.n == 103
    np.testing.assert_allclose(m.mean(), x.astype(np.float64).mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(m.cov(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)


def test_stats_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = rng.normal(size=4), _random_cov(rng, 4)
    save_stats(tmp_path / "ref.npz", mu, sigma)
    got_mu, got_sigma = load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)


def test_inception_score_limits():
    k = 10
    perfect = np.where(np.eye(k, dtype=bool)[np.arange(1000) % k], 50.0, -50.0)  # confident, spread
    mean, std = inception_score(perfect, num_splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    constant = np.tile(np.random.default_rng(4).normal(size=k), (1000, 1))
    assert inception_score(constant)[0] == pytest.approx(1.0, abs=1e-9)


def _reference_inception_score(logits, splits):
    """The improved-GAN code's loop: split i is rows [i N // splits, (i + 1) N // splits)."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(splits):
        part = p[i * len(p) // splits:(i + 1) * len(p) // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return np.mean(scores), np.std(scores)


def test_inception_score_splits_at_floor_boundaries_and_shuffles_as_torch_fidelity():
    # N = 503 does not divide into 10 splits: array_split's boundaries moved the mean by 5e-4 relative.
    logits = np.random.default_rng(7).normal(size=(503, 12)) * 3
    mean, std = inception_score(logits, num_splits=10)
    expected = _reference_inception_score(logits, 10)
    assert mean == pytest.approx(expected[0], rel=1e-12) and std == pytest.approx(expected[1], rel=1e-10)
    shuffled = logits[np.random.RandomState(2020).permutation(503)]
    assert inception_score(logits, 10, shuffle=True) == pytest.approx(_reference_inception_score(shuffled, 10),
                                                                      rel=1e-10)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 1.0, num_subsets=20, subset_size=200)
    assert abs(same) < 0.05 and shifted > 10 * abs(same)


def test_reconstruction_error_psnr_and_code_statistics_over_a_padded_split():
    import jax
    import jax.numpy as jnp

    from gm import data as gm_data
    from gm.metrics.reconstruction import evaluate_reconstruction

    digits = gm_data.load("digits")

    def off_by_one(params, key, batch):
        """Every level one too high (clipped at the top), codes 0..3 by example parity and label."""
        levels = batch["image"].astype(jnp.int32)
        return {"data": batch["image"], "reconstruction": jnp.minimum(levels + 1, 15).astype(jnp.uint8),
                "codes": (batch["label"] % 4)[:, None]}

    # 100 examples in batches of 40: the last batch is padded, and its padding must not count.
    batches = gm_data.eval_batches(digits, batch_size=40, split="test", limit=100)
    result = evaluate_reconstruction(off_by_one, {}, jax.random.key(0), batches, num_bits=4)
    images, labels = digits.test["image"][:100].astype(np.float64), digits.test["label"][:100]
    error = (np.minimum(images + 1, 15) - images) * (2 / 15)  # one level is 2/15 in [-1, 1] units
    mse = np.mean(error.reshape(100, -1) ** 2, axis=1)
    assert result["num_examples"] == 100
    np.testing.assert_allclose(result["recon_mse"], mse.mean(), rtol=1e-6)
    np.testing.assert_allclose(result["psnr_db"], 10 * np.log10(15 ** 2 / (mse.mean() * 7.5 ** 2)), rtol=1e-6)
    p = np.bincount(labels % 4) / 100
    assert result["codes_used"] == 4
    np.testing.assert_allclose(result["code_perplexity"], np.exp(-np.sum(p * np.log(p))), rtol=1e-6)


def test_wasserstein2_is_the_optimal_matching_distance():
    from gm.metrics.wasserstein import wasserstein2
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 2))
    assert wasserstein2(x, x[::-1]) == pytest.approx(0.0, abs=1e-9)
    assert wasserstein2(x, x + np.array([3.0, 4.0])) == pytest.approx(5.0, rel=1e-9)  # a translation
    a, b = rng.normal(size=(300, 1)), 2.0 * rng.normal(size=(300, 1)) + 1.0
    sorted_match = np.sqrt(np.mean((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2))  # 1-D: sorted pairs
    assert wasserstein2(a, b) == pytest.approx(sorted_match, rel=1e-9)
    with pytest.raises(ValueError, match="as many points"):
        wasserstein2(x, x[:10])
