import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gm import distributions as dist


@pytest.mark.parametrize("num_bits", [4, 8])
def test_discretized_gaussian_sums_to_one_over_levels(num_bits):
    levels = jnp.arange(2 ** num_bits)
    x = dist.levels_to_symmetric(levels, num_bits)[:, None]
    mean = jnp.array([-1.2, -0.3, 0.0, 0.5, 0.99])[None]
    log_scale = jnp.log(jnp.array([0.01, 0.1, 0.5, 1.0, 3.0]))[None]
    probs = jnp.exp(dist.discretized_gaussian_log_prob(x, mean, log_scale, num_bits))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=2e-4)  # tanh-approximated cdf


def test_discretized_gaussian_matches_exact_cdf_in_the_interior():
    x = dist.levels_to_symmetric(jnp.array([7]), 4)
    got = dist.discretized_gaussian_log_prob(x, 0.1, jnp.log(0.2), 4)
    half = 1 / 15
    exact = stats.norm.cdf((x + half - 0.1) / 0.2) - stats.norm.cdf((x - half - 0.1) / 0.2)
    np.testing.assert_allclose(np.exp(got), exact, rtol=2e-3)


def test_level_scalings_round_trip():
    for bits in (4, 8):
        levels = jnp.arange(2 ** bits, dtype=jnp.uint8)
        x = dist.levels_to_symmetric(levels, bits)
        assert float(x.min()) == -1.0 and float(x.max()) == 1.0
        np.testing.assert_array_equal(dist.symmetric_to_levels(x, bits), levels)
        np.testing.assert_array_equal(dist.symmetric_to_levels(x + 0.4 / 2 ** bits, bits), levels)
    assert int(dist.levels_to_uint8_pixels(jnp.array([15]), 4)[0]) == 255


def test_normal_kl_closed_form_and_monte_carlo():
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(2.0)
    z = 0.3 + math.sqrt(0.5) * jax.random.normal(jax.random.key(0), (400_000,))
    mc = jnp.mean(dist.gaussian_log_prob(z, m1, lv1) - dist.gaussian_log_prob(z, m2, lv2))
    np.testing.assert_allclose(dist.normal_kl(m1, lv1, m2, lv2), mc, atol=5e-3)
    assert float(dist.normal_kl(1.0, 0.3, 1.0, 0.3)) == 0.0


def test_bits_per_dim_convention():
    # A uniform model over 16 levels in 64 dimensions costs exactly 4 bits/dim.
    nll = 64 * math.log(16)
    np.testing.assert_allclose(dist.bits_per_dim(nll, 64), 4.0)
    # A uniform density on [0, 1)^D of dequantized 4-bit data gives the same 4 bits/dim bound.
    np.testing.assert_allclose(dist.bits_per_dim(-dist.discrete_log_prob_from_continuous(0.0, 64, 4), 64), 4.0)
    # ... and the uniform density 2^-D on [-1, 1)^D, with the scale accounted for, too.
    log_density = -64 * math.log(2.0)
    np.testing.assert_allclose(
        dist.bits_per_dim(-dist.discrete_log_prob_from_continuous(log_density, 64, 4, scale=2.0), 64), 4.0)


def test_uniform_dequantize_stays_in_bin():
    x = jnp.arange(16, dtype=jnp.uint8).repeat(50)
    y = dist.uniform_dequantize(jax.random.key(1), x, 4)
    np.testing.assert_array_equal(jnp.floor(y * 16).astype(jnp.uint8), x)


# ---------------------------------------------------------------------------------------------------
# Discretized logistic mixture.
# ---------------------------------------------------------------------------------------------------

# Compiled once per shape, with LLVM's optimisations off: eagerly every primitive compiles on its own,
# and XLA's CPU compiler, not the arithmetic, dominates these tests. Random parameters come from numpy
# for the same reason.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}
_dlm_log_prob = jax.jit(dist.discretized_logistic_mixture_log_prob, static_argnums=2,
                        compiler_options=_FAST_COMPILE)
_dlm_sample = jax.jit(dist.sample_discretized_logistic_mixture, static_argnums=(2, 3),
                      compiler_options=_FAST_COMPILE)


def _normal(seed, shape, std=1.0):
    return jnp.asarray(std * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _dlm_params(logits, means, log_scales, coupling_pre):
    """Pack per-component arrays (logits [M], means / log-scales [C, M], coupling [C(C-1)/2, M])."""
    parts = [np.ravel(logits), np.ravel(means), np.ravel(log_scales), np.ravel(coupling_pre)]
    return jnp.asarray(np.concatenate(parts), jnp.float32)


def _logistic_bin(x, mean, scale, num_bits):
    """Probability of level x under a logistic discretized onto the levels, in float64."""
    half = 1.0 / (2 ** num_bits - 1)
    upper = 1.0 if x > 1 - half else stats.logistic.cdf((x + half - mean) / scale)
    lower = 0.0 if x < -1 + half else stats.logistic.cdf((x - half - mean) / scale)
    return upper - lower


def test_dlm_num_params():
    assert dist.dlm_num_params(3, 10) == 100  # the paper's 10 per component for RGB
    assert dist.dlm_num_params(1, 5) == 15
    assert dist.dlm_num_params(2, 1) == 6


@pytest.mark.parametrize("num_bits", [4, 8])
def test_dlm_grey_sums_to_one_over_levels(num_bits):
    # Five random mixtures of 4 components, with scales from sharp (clamped at e^-7) to broad.
    params = _normal(0, (5, dist.dlm_num_params(1, 4)), std=2.0)
    params = params.at[0, 8:12].set(-9.0)
    levels = dist.levels_to_symmetric(jnp.arange(2 ** num_bits), num_bits)
    x = jnp.broadcast_to(levels[:, None, None], (2 ** num_bits, 5, 1))
    probs = jnp.exp(_dlm_log_prob(x, jnp.broadcast_to(params, (2 ** num_bits,) + params.shape), num_bits))
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_dlm_rgb_sums_to_one_over_all_joint_values():
    # One pixel, 3 components with strong channel coupling, all 16^3 joint values of a 4-bit pixel.
    params = _normal(1, (dist.dlm_num_params(3, 3),), std=1.5)
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(16)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    x = dist.levels_to_symmetric(grid, 4)
    log_p = _dlm_log_prob(x, jnp.broadcast_to(params, (16 ** 3,) + params.shape), 4)
    assert log_p.shape == (16 ** 3,)
    np.testing.assert_allclose(float(jnp.exp(log_p).sum()), 1.0, atol=1e-4)


def test_dlm_single_component_matches_logistic_cdf_differences():
    mean, scale = 0.1, 0.2
    params = _dlm_params([0.0], [mean], [math.log(scale)], [])
    levels = jnp.array([0, 1, 7, 14, 15])  # both edges, their neighbours and the middle
    x = dist.levels_to_symmetric(levels, 4)[:, None]
    got = np.exp(_dlm_log_prob(x, jnp.broadcast_to(params, (5, 3)), 4))
    want = [_logistic_bin(float(v), mean, scale, 4) for v in x[:, 0]]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Edges by hand: everything below the first bin's upper edge, everything above the last's lower edge.
    np.testing.assert_allclose(got[0], stats.logistic.cdf((-1 + 1 / 15 - mean) / scale), rtol=1e-5)
    np.testing.assert_allclose(got[-1], 1 - stats.logistic.cdf((1 - 1 / 15 - mean) / scale), rtol=1e-5)


def test_dlm_rgb_two_components_with_coupling_by_hand():
    # Component k: P(r) P(g | r) P(b | r, g) with mean_g += tanh(a0) r, mean_b += tanh(a1) r + tanh(a2) g.
    logits = np.array([0.3, -0.4])
    means = np.array([[0.1, -0.5], [-0.2, 0.3], [0.4, 0.0]])  # [C, M]
    log_scales = np.log(np.array([[0.2, 0.5], [0.3, 0.1], [0.25, 0.4]]))
    coupling_pre = np.array([[0.5, -1.0], [-0.3, 0.2], [0.8, 0.1]])  # pairs (g|r), (b|r), (b|g)
    params = _dlm_params(logits, means, log_scales, coupling_pre)
    levels = np.array([[3, 0, 15], [8, 9, 7], [15, 15, 1]])
    x = np.asarray(dist.levels_to_symmetric(jnp.asarray(levels), 4), np.float64)
    got = _dlm_log_prob(jnp.asarray(x), jnp.broadcast_to(params, (3, 20)), 4)
    weights = np.exp(logits) / np.exp(logits).sum()
    c = np.tanh(coupling_pre)
    for n, (r, g, b) in enumerate(x):
        total = 0.0
        for k in range(2):
            mu = [means[0, k], means[1, k] + c[0, k] * r, means[2, k] + c[1, k] * r + c[2, k] * g]
            s = np.exp(log_scales[:, k])
            total += weights[k] * np.prod([_logistic_bin(v, mu[i], s[i], 4) for i, v in enumerate((r, g, b))])
        np.testing.assert_allclose(float(got[n]), math.log(total), rtol=1e-5)


def test_dlm_far_tail_falls_back_to_density_and_stays_differentiable():
    # Level 0.2 lies ~1000 scales from the mean: the bin's mass underflows, so the log-density at the
    # bin centre times the bin width stands in for it, as in the reference code.
    params = _dlm_params([0.0], [0.9], [-7.0], [])
    x = jnp.array([[0.2]])
    f = lambda p: dist.discretized_logistic_mixture_log_prob(x, p[None], 8)[0]
    value, grad = jax.jit(jax.value_and_grad(f), compiler_options=_FAST_COMPILE)(params)
    z = (0.2 - 0.9) / math.exp(-7.0)
    want = z - (-7.0) - 2.0 * np.logaddexp(0.0, z) + math.log(2.0 / 255.0)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    assert np.all(np.isfinite(grad))


def test_dlm_samples_are_levels_in_range():
    num_bits = 8  # 4 and 2 bits are covered exactly by the two tests below
    params = _normal(2, (2, 8, 8, dist.dlm_num_params(3, 5)), std=2.0)
    x = _dlm_sample(jax.random.key(3), params, num_bits, 3)
    assert x.shape == (2, 8, 8, 3) and x.dtype == jnp.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    top = 2 ** num_bits - 1
    k = np.round((np.asarray(x, np.float64) + 1) * top / 2)
    np.testing.assert_allclose(x, (2 * k - top) / top, atol=1e-6, rtol=0)
    assert len(np.unique(k)) > 50  # the random mixtures reach many levels, not only the two ends


def test_dlm_sharp_component_samples_the_nearest_level_of_its_coupled_mean():
    # Two components, one with all the weight and the smallest scale; its coupled means are targets
    # well inside a bin, so the sample must be exactly the level of each target.
    rng = np.random.default_rng(0)
    half = 1.0 / 15
    target_levels = rng.integers(0, 16, size=(64, 3))
    targets = -1 + 2 * half * target_levels + rng.uniform(-0.6, 0.6, size=(64, 3)) * half
    coupling_pre = rng.normal(size=(64, 3))
    c = np.tanh(coupling_pre)
    snapped = -1 + 2 * half * target_levels
    raw = targets.copy()  # raw means that the coupling moves onto the targets
    raw[:, 1] -= c[:, 0] * snapped[:, 0]
    raw[:, 2] -= c[:, 1] * snapped[:, 0] + c[:, 2] * snapped[:, 1]
    params = jnp.stack([
        _dlm_params([30.0, 0.0], np.stack([raw[n], np.zeros(3)], axis=-1), np.full((3, 2), -10.0),
                    np.stack([coupling_pre[n], np.zeros(3)], axis=-1))
        for n in range(64)])
    x = _dlm_sample(jax.random.key(4), params, 4, 3)
    np.testing.assert_array_equal(dist.symmetric_to_levels(x, 4), target_levels)
    # Temperature 0 removes the noise whatever the scale (here the broad e^0 = 1).
    broad = jnp.asarray(params).at[:, 8:14].set(0.0)  # the log-scales block of M=2, C=3
    x = _dlm_sample(jax.random.key(4), broad, 4, 3, 0.0)
    np.testing.assert_array_equal(dist.symmetric_to_levels(x, 4), target_levels)


def test_dlm_sample_frequencies_match_the_log_prob():
    # 2-bit RGB: 64 joint values, so the sampler's histogram can be compared with every probability.
    params = _normal(5, (dist.dlm_num_params(3, 2),))
    n = 100_000
    x = _dlm_sample(jax.random.key(6), jnp.broadcast_to(params, (n, 20)), 2, 3)
    levels = np.asarray(dist.symmetric_to_levels(x, 2)).astype(np.int64)
    counts = np.bincount(levels[:, 0] * 16 + levels[:, 1] * 4 + levels[:, 2], minlength=64)
    grid = jnp.stack(jnp.meshgrid(*[jnp.arange(4)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    probs = np.exp(_dlm_log_prob(
        dist.levels_to_symmetric(grid, 2), jnp.broadcast_to(params, (64, 20)), 2))
    np.testing.assert_allclose(counts / n, probs, atol=5e-3)


def test_dequantized_values_map_back_to_their_levels():
    levels = jnp.arange(16, dtype=jnp.uint8)
    for u in (0.0, 0.01, 0.5, 0.99):
        y = (levels + u) / 16
        np.testing.assert_array_equal(dist.dequantized_to_levels(y, 4), levels)
    np.testing.assert_array_equal(dist.dequantized_to_levels(jnp.array([-0.1, 1.0, 1.3]), 4), [0, 15, 15])
    draws = dist.uniform_dequantize(jax.random.key(1), jnp.tile(levels, 100), 4)
    np.testing.assert_array_equal(dist.dequantized_to_levels(draws, 4), jnp.tile(levels, 100))


def test_filter_logits_keeps_the_top_k_and_the_nucleus_and_draws_only_from_them():
    from gm.distributions import filter_logits, sample_categorical

    p = jnp.array([0.5, 0.2, 0.15, 0.1, 0.05])
    logits = jnp.log(p)
    kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw))).astype(int).tolist()
    assert kept(top_k=2) == [1, 1, 0, 0, 0] and kept(top_k=9) == [1, 1, 1, 1, 1]
    # The nucleus: the fewest most likely classes whose mass reaches top_p.
    assert kept(top_p=0.3) == [1, 0, 0, 0, 0] and kept(top_p=0.6) == [1, 1, 0, 0, 0]
    assert kept(top_p=0.86) == [1, 1, 1, 1, 0] and kept(top_p=1.0) == [1] * 5
    assert kept(top_k=3, top_p=0.99) == [1, 1, 1, 0, 0]
    np.testing.assert_allclose(filter_logits(logits, temperature=2.0), logits / 2.0, rtol=1e-6)
    # Random logits, many draws: never a class outside the top k or the nucleus.
    rng = np.random.default_rng(0)
    many = jnp.asarray(rng.normal(size=(2000, 7)) * 2.0, jnp.float32)
    for kw in (dict(top_k=3), dict(top_p=0.7), dict(top_k=4, top_p=0.5)):
        draws = sample_categorical(jax.random.key(1), many, **kw)
        allowed = np.isfinite(np.asarray(filter_logits(many, **kw)))
        assert allowed[np.arange(2000), np.asarray(draws)].all(), kw
        assert allowed.sum(-1).min() >= 1
