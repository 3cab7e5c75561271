"""Log-probabilities, scalings and the ONE bits-per-dimension convention of gm.

Data arrive as integers x in {0, ..., 2^n - 1} per sub-pixel, n = `num_bits` of the dataset (8 for
CIFAR-10 and MNIST, 4 for digits). Every likelihood family reports the negative log-likelihood of those
DISCRETE values, in nats per example, and converts it with `bits_per_dim`:

    bits/dim = NLL_nats / (D * ln 2),   D = H * W * C.

Discrete models (PixelCNN, the DDPM decoder) give log P(x) directly. Continuous densities (flows, flow
matching) are evaluated on uniformly dequantized data y = (x + u) / 2^n in [0, 1)^D (`uniform_dequantize`)
and mapped back to a lower bound on log P(x) by `discrete_log_prob_from_continuous`, which accounts for
the bin volume and for any affine rescaling of y the model works in (for example to [-1, 1]).
Following that one path makes numbers on the same data comparable across families.
"""
import math

import jax
import jax.numpy as jnp

LN2 = math.log(2.0)


def bits_per_dim(nll_nats, num_dims):
    """Negative log-likelihood in nats per example -> bits per dimension (same shape)."""
    return nll_nats / (num_dims * LN2)


def num_levels(num_bits):
    """Number of discrete values per sub-pixel, 2^num_bits."""
    return 2 ** num_bits


# ---------------------------------------------------------------------------------------------------
# Scalings between integer levels and model space.
# ---------------------------------------------------------------------------------------------------

def levels_to_symmetric(x, num_bits):
    """Integer levels {0..2^n-1} -> float32 in [-1, 1], level k at -1 + 2k / (2^n - 1)."""
    return x.astype(jnp.float32) * (2.0 / (num_levels(num_bits) - 1)) - 1.0


def symmetric_to_levels(x, num_bits):
    """Float in [-1, 1] -> nearest integer level as uint8 in {0..2^n-1} (values outside are clipped)."""
    top = num_levels(num_bits) - 1
    return jnp.clip(jnp.round((x + 1.0) * (top / 2.0)), 0, top).astype(jnp.uint8)


def levels_to_uint8_pixels(x, num_bits):
    """Integer levels at `num_bits` -> uint8 [0, 255] for display (a 4-bit level 15 becomes 255)."""
    top = num_levels(num_bits) - 1
    return jnp.round(x.astype(jnp.float32) * (255.0 / top)).astype(jnp.uint8)


def uniform_dequantize(key, x, num_bits):
    """Integer levels -> y = (x + u) / 2^n with u ~ U[0, 1)^D: float32 in [0, 1), same shape as x."""
    u = jax.random.uniform(key, x.shape, jnp.float32)
    return (x.astype(jnp.float32) + u) / num_levels(num_bits)


def discrete_log_prob_from_continuous(log_density, num_dims, num_bits, scale=1.0):
    """Lower bound on log P(x) in nats from a density evaluated at dequantized data.

    Args:
      log_density: log p(z) in nats per example, where z = offset + scale * y and y = (x + u) / 2^n is
        the uniformly dequantized datum in [0, 1)^D (so scale=2 for a model working in [-1, 1)).
      num_dims: D, the number of sub-pixels per example.
      num_bits: the data's bit depth n.
      scale: the affine scale from [0, 1) to the model's space.

    Returns:
      E_u[log p_y(y)] - D n ln 2 <= log P(x) (Jensen over the bin of volume 2^(-nD)), in nats.
    """
    return log_density + num_dims * (math.log(scale) - num_bits * LN2)


# ---------------------------------------------------------------------------------------------------
# Gaussians.
# ---------------------------------------------------------------------------------------------------

def gaussian_log_prob(x, mean, log_var):
    """Elementwise log N(x; mean, exp(log_var)) in nats."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * jnp.exp(-log_var))


def normal_kl(mean1, log_var1, mean2, log_var2):
    """Elementwise KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) in nats."""
    return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * jnp.exp(-log_var2))


def _approx_standard_normal_cdf(x):
    # The tanh approximation used by the DDPM reference code; kept so bits/dim match its numbers.
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_prob(x, mean, log_scale, num_bits):
    """Elementwise log P(x) of a Gaussian discretized onto the 2^n levels of [-1, 1] (Ho et al. 2020).

    Args:
      x: data at integer levels mapped to [-1, 1] by `levels_to_symmetric`.
      mean, log_scale: the Gaussian's mean and log standard deviation, broadcastable to x.
      num_bits: bit depth n; the bins have half-width 1 / (2^n - 1) and the lowest and highest bin
        extend to -inf and +inf, so the probabilities of the 2^n levels sum to one.

    Returns:
      log-probabilities in nats, shape of x.
    """
    half_width = 1.0 / (num_levels(num_bits) - 1)
    centered = x - mean
    inv_std = jnp.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + half_width))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - half_width))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    # Edges are decided by the level itself (half a bin from the end), not a hard-coded 0.999.
    return jnp.where(
        x < -1.0 + half_width, log_cdf_plus,
        jnp.where(x > 1.0 - half_width, log_one_minus_cdf_min, log_cdf_delta))
