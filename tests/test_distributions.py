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
