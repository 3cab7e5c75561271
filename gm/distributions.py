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

from gm import checks

LN2 = math.log(2.0)


def bits_per_dim(nll_nats, num_dims):
    """Negative log-likelihood in nats per example -> bits per dimension (same shape); num_dims is D,
    a positive integer (sub-pixels per example)."""
    checks.positive_int(num_dims, "num_dims")
    return nll_nats / (num_dims * LN2)


def bits_per_unit(nll_nats, num_units):
    """`bits_per_dim` over a positive real count: the UTF-8 bytes a window of text tokens stands for
    (`gm.tokenize`: bits per byte whatever the tokenizer), or any integer count of dimensions."""
    checks.require(isinstance(num_units, (int, float)) and not isinstance(num_units, bool) and num_units > 0,
                   "num_units", num_units, "a positive number")
    return nll_nats / (num_units * LN2)


def sum_per_example(x):
    """[B, ...] -> [B]: the sum over every axis but the first (per-example log-probs from per-element ones)."""
    if jnp.ndim(x) < 1:
        raise ValueError(f"sum_per_example needs a batch axis, got a scalar of shape {jnp.shape(x)}.")
    return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def num_levels(num_bits):
    """Number of discrete values per sub-pixel, 2^num_bits; num_bits is an integer in [1, 16]."""
    checks.require(checks.is_int(num_bits) and 1 <= num_bits <= 16, "num_bits", num_bits, "an integer in [1, 16]")
    return 2 ** num_bits


# ---------------------------------------------------------------------------------------------------
# Scalings between integer levels and model space.
# ---------------------------------------------------------------------------------------------------

def levels_to_symmetric(x, num_bits):
    """Integer levels {0..2^n-1} -> float32 in [-1, 1], level k at -1 + 2k / (2^n - 1)."""
    checks.values_in(x, "levels", 0, num_levels(num_bits) - 1)
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
    checks.values_in(x, "levels", 0, num_levels(num_bits) - 1)
    u = jax.random.uniform(key, x.shape, jnp.float32)
    return (x.astype(jnp.float32) + u) / num_levels(num_bits)


def symmetric_dequantize(key, x, num_bits):
    """Integer levels -> 2 y - 1 in [-1, 1), y = `uniform_dequantize(key, x, num_bits)`: the dequantized data
    of a density in [-1, 1) (flow matching, the score SDEs); its bound on log P(x) is
    `discrete_log_prob_from_continuous(..., scale=2.0)`."""
    return 2.0 * uniform_dequantize(key, x, num_bits) - 1.0


def dequantized_to_levels(y, num_bits):
    """The inverse of `uniform_dequantize` on its bins: y in [0, 1) -> uint8 level floor(y 2^n), clipped
    to {0..2^n-1}. (`symmetric_to_levels` rounds to level centres instead, whose cells are not these bins.)"""
    top = num_levels(num_bits) - 1
    return jnp.clip(jnp.floor(y * num_levels(num_bits)), 0, top).astype(jnp.uint8)


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


def standard_normal_log_prob(z):
    """log N(z; 0, I) in nats per example: float [B, ...] -> [B] (the base of flows and flow matching)."""
    return sum_per_example(gaussian_log_prob(z, 0.0, 0.0))


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
    checks.values_in(x, "x", -1.0 - 1e-5, 1.0 + 1e-5)  # float32 rounding of the end levels
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


# ---------------------------------------------------------------------------------------------------
# Discrete distributions over levels.
# ---------------------------------------------------------------------------------------------------

BINARIZE = ("stochastic", "threshold")


def binarize(key, levels, num_bits, mode="stochastic"):
    """Integer levels at `num_bits` -> int32 {0, 1}, same shape.

    'stochastic': x ~ Bernoulli(level / (2^n - 1)), a fresh draw per key (the binarized-MNIST protocol
    of Salakhutdinov & Murray 2008); 'threshold': level >= 2^(n-1) (no key needed).
    """
    top = num_levels(num_bits) - 1
    checks.values_in(levels, "levels", 0, top)
    if mode == "stochastic":
        return jax.random.bernoulli(key, levels.astype(jnp.float32) / top).astype(jnp.int32)
    if mode == "threshold":
        return (levels >= (top + 1) // 2).astype(jnp.int32)
    raise ValueError(f"The binarize mode must be one of {BINARIZE}, got {mode!r}.")


def bernoulli_log_prob(logits, x):
    """Elementwise log Bernoulli(x; sigmoid(logits)) in nats, x in {0, 1} (any dtype), stable for any logit."""
    checks.shape_is(x, "x", jnp.shape(logits), "the logits' shape")
    checks.values_in(x, "x", 0, 1)
    x = x.astype(logits.dtype)
    return x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)


def categorical_log_prob(logits, x):
    """log softmax(logits)[..., x] in nats: logits [..., K], integer x [...] in {0..K-1} -> [...]."""
    if jnp.ndim(logits) < 1:
        raise ValueError("logits must have a last axis of K classes, got a scalar.")
    checks.shape_is(x, "x", jnp.shape(logits)[:-1], "the logits' shape without the class axis")
    checks.values_in(x, "x", 0, jnp.shape(logits)[-1] - 1)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_p, x[..., None].astype(jnp.int32), axis=-1)[..., 0]


def filter_logits(logits, temperature=1.0, top_k: int = 0, top_p: float = 1.0):
    """The logits a sampler draws from: divided by `temperature` (> 0), then every class outside the
    `top_k` most likely (0: no limit) and outside the nucleus (Holtzman et al. 2020: the fewest most
    likely classes whose probability reaches `top_p`; 1: no limit) set to -inf. logits [..., K] ->
    float32 [..., K]. The most likely class always survives; ties at the k-th logit all survive."""
    logits = jnp.asarray(logits, jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, min(int(top_k), logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        # A class is kept when the classes strictly more likely than it hold less than top_p.
        before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.where(before < top_p, ordered, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def sample_categorical(key, logits, temperature=1.0, top_k: int = 0, top_p: float = 1.0):
    """Draw int32 classes [...] from logits [..., K] through `filter_logits` (Gumbel-max)."""
    return jax.random.categorical(key, filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------------
# Discretized logistic mixture (PixelCNN++, Salimans et al. 2017).
#
# Each pixel's C sub-pixels, at the levels of [-1, 1], get a mixture of M components; component k is a
# product over channels of logistics discretized onto the 2^n levels, and channel c's mean moves
# linearly with the values of the channels before it (R -> G -> B), so one mixture captures the
# dependence between colours. Parameters along the last axis, each block channel-major:
#
#     [ M logits | C*M means | C*M log-scales | C(C-1)/2 * M coupling pre-activations ]
#
# Coupling pairs (c, d), d < c, are ordered (1,0), (2,0), (2,1), ...: for RGB g|r, b|r, b|g as in the
# paper; the coefficients are tanh-squashed into (-1, 1).
# ---------------------------------------------------------------------------------------------------

DLM_MIN_LOG_SCALE = -7.0  # scales below e^-7 ~ 1e-3 are far narrower than an 8-bit bin anyway


def _num_channel_pairs(num_channels):
    return num_channels * (num_channels - 1) // 2


def dlm_num_params(num_channels, num_mix):
    """Output channels a network needs for a `num_mix`-component mixture over `num_channels` channels.

    Per component: one logit, a mean and a log-scale per channel, and one coupling coefficient per pair
    of channels: 3 * num_mix for grey images, 10 * num_mix for RGB (the paper's count).
    """
    return num_mix * (1 + 2 * num_channels + _num_channel_pairs(num_channels))


def _split_dlm_params(params, num_channels):
    """[..., dlm_num_params(C, M)] -> logits [..., M], means and log-scales [..., C, M] (log-scales
    clamped below), coupling [..., C, C, M] with entry (c, d) the coefficient of channel d in channel
    c's mean (zero unless d < c). All float32."""
    per_component = dlm_num_params(num_channels, 1)
    if params.shape[-1] % per_component:
        raise ValueError(
            f"params has {params.shape[-1]} channels, which is not a multiple of "
            f"dlm_num_params({num_channels}, 1) = {per_component}; size the network's output with "
            f"dlm_num_params(num_channels, num_mix).")
    m = params.shape[-1] // per_component
    c, p = num_channels, _num_channel_pairs(num_channels)
    params = params.astype(jnp.float32)
    batch = params.shape[:-1]
    logits = params[..., :m]
    means = params[..., m:(1 + c) * m].reshape(batch + (c, m))
    log_scales = params[..., (1 + c) * m:(1 + 2 * c) * m].reshape(batch + (c, m))
    pair_coeffs = jnp.tanh(params[..., (1 + 2 * c) * m:].reshape(batch + (p, m)))
    # Gather the pair coefficients into a strictly lower-triangular [C, C] matrix; index 0 is a zero row.
    pairs = [(i, j) for i in range(c) for j in range(i)]
    pair_index = jnp.array([[pairs.index((i, j)) + 1 if j < i else 0 for j in range(c)] for i in range(c)])
    padded = jnp.concatenate([jnp.zeros(batch + (1, m), jnp.float32), pair_coeffs], axis=-2)
    coupling = padded[..., pair_index, :]
    return logits, means, jnp.maximum(log_scales, DLM_MIN_LOG_SCALE), coupling


def discretized_logistic_mixture_log_prob(x, params, num_bits):
    """log P(pixel) in nats under PixelCNN++'s discretized logistic mixture, jointly over its channels.

    Args:
      x: float [B, H, W, C] (any leading shape) at level centres in [-1, 1], from `levels_to_symmetric`.
      params: [..., dlm_num_params(C, M)], for example a network's raw output (layout above).
      num_bits: bit depth n; bins have half-width 1 / (2^n - 1), and the lowest and highest bins extend
        to -inf and +inf, so the probabilities of all (2^n)^C values of a pixel sum to one.

    Returns:
      float32 [B, H, W]: log sum_k pi_k prod_c P_k(x_c | x_<c), in nats.
    """
    checks.same_shape(jnp.shape(params)[:-1], jnp.shape(x)[:-1], "params' leading axes must be", "those of x")
    checks.values_in(x, "x", -1.0 - 1e-5, 1.0 + 1e-5)  # float32 rounding of the end levels
    x = x.astype(jnp.float32)
    logits, means, log_scales, coupling = _split_dlm_params(params, x.shape[-1])
    # The data are observed, so every channel's mean can use the true earlier channels at once.
    means = means + jnp.einsum("...cdm,...d->...cm", coupling, x)
    half_width = 1.0 / (num_levels(num_bits) - 1)
    x = x[..., None]
    inv_scale = jnp.exp(-log_scales)
    mid_in = inv_scale * (x - means)
    plus_in = mid_in + inv_scale * half_width
    min_in = mid_in - inv_scale * half_width
    # Subtract the two CDFs in the tail where they are small (sigma(a) - sigma(b) above the mean equals
    # sigma(-b) - sigma(-a)): float32 sigmoids near 1 would cancel catastrophically.
    upper = mid_in > 0
    cdf_delta = jnp.where(upper, jax.nn.sigmoid(-min_in) - jax.nn.sigmoid(-plus_in),
                          jax.nn.sigmoid(plus_in) - jax.nn.sigmoid(min_in))
    # When the bin's mass underflows, treat the density as constant over the bin (the reference code's
    # fallback); the 1e-12 only keeps the unused branch of `where` free of NaN gradients.
    log_pdf_mid = mid_in - log_scales - 2.0 * jax.nn.softplus(mid_in)
    log_mid_bin = jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)),
                            log_pdf_mid + math.log(2.0 * half_width))
    # Edges are decided by the level itself (half a bin from the end), so any bit depth is exact.
    log_probs = jnp.where(
        x < -1.0 + half_width, jax.nn.log_sigmoid(plus_in),
        jnp.where(x > 1.0 - half_width, jax.nn.log_sigmoid(-min_in), log_mid_bin))
    log_probs = log_probs.sum(axis=-2) + jax.nn.log_softmax(logits, axis=-1)
    return jax.nn.logsumexp(log_probs, axis=-1)


def sample_discretized_logistic_mixture(key, params, num_bits, num_channels, temperature=1.0):
    """Draw pixels from PixelCNN++'s discretized logistic mixture.

    Args:
      key: PRNG key.
      params: [B, H, W, dlm_num_params(num_channels, M)] (any leading shape).
      num_bits: bit depth n of the levels to snap to.
      num_channels: C; it cannot be read off the parameter count (30 fits C=1, 2 and 3).
      temperature: multiplies every logistic's scale; 1 samples the model, 0 gives the chosen
        component's (coupled) mean snapped to a level. The choice of component is not tempered.

    Returns:
      float32 [B, H, W, C] at level centres in [-1, 1].
    """
    checks.positive_int(num_channels, "num_channels")
    if not checks.is_traced(temperature):
        checks.number_in(float(temperature), "temperature", 0.0, None)
    logits, means, log_scales, coupling = _split_dlm_params(params, num_channels)
    key_mix, key_noise = jax.random.split(key)
    # jax.random.categorical is the Gumbel-max trick: argmax of logits + Gumbel noise.
    component = jax.nn.one_hot(jax.random.categorical(key_mix, logits, axis=-1), logits.shape[-1])
    means = (means * component[..., None, :]).sum(axis=-1)
    scales = jnp.exp((log_scales * component[..., None, :]).sum(axis=-1))
    coupling = (coupling * component[..., None, None, :]).sum(axis=-1)
    # Logistic noise by inverting the CDF; u stays off 0 and 1 (as in the reference) so the noise is
    # finite and temperature 0 is exact.
    u = jax.random.uniform(key_noise, means.shape, jnp.float32, minval=1e-5, maxval=1.0 - 1e-5)
    noise = jnp.log(u) - jnp.log1p(-u)
    channels = []
    for c in range(num_channels):
        # Later channels couple to the SNAPPED earlier values, as the likelihood conditions on them.
        mean = means[..., c] + sum(coupling[..., c, d] * channels[d] for d in range(c))
        value = mean + temperature * scales[..., c] * noise[..., c]
        # Clipping then rounding to the nearest level puts everything beyond the outer bins' inner
        # edges into the outer levels, matching the likelihood's open-ended edge bins.
        channels.append(_snap_to_levels(value, num_bits))
    return jnp.stack(channels, axis=-1)


def _snap_to_levels(x, num_bits):
    """Float -> the nearest level centre in [-1, 1], as float32 (x outside [-1, 1] goes to an end)."""
    top = num_levels(num_bits) - 1
    k = jnp.clip(jnp.round((x + 1.0) * (top / 2.0)), 0, top)
    # (2k - top) / top is a single rounding of an exact integer ratio: the ends are exactly -1 and 1,
    # which k * (2 / top) - 1 is not once the compiler fuses it into a multiply-add.
    return (2.0 * k - top) / top
