"""The Gaussian diffusion process: q(x_t | x_0), its posterior, the reverse-process Gaussian and the bound.

Model space is [-1, 1]. A model output `out` is [B, ..., C] (epsilon) or, with learned variances,
[B, ..., 2C]: epsilon, then v, the interpolation between the two fixed variances (Nichol & Dhariwal
2021):

    log Sigma_t = frac log beta_t + (1 - frac) log beta~_t,   frac = (v + 1) / 2,

so v = 1 is 'fixedlarge' and v = -1 'fixedsmall'. All terms of the bound are in nats per example.
"""
import jax
import jax.numpy as jnp

from gm import checks
from gm import distributions as dist

VAR_TYPES = ("fixedlarge", "fixedsmall", "learned_range")


def check_timesteps(sched, t, x):
    """t must be [B] for x [B, ...], and (when known) in [0, T): an index past the end would silently
    read the last constant under jit."""
    checks.shape_is(t, "t", jnp.shape(x)[:1], "one timestep per example of the batch")
    checks.values_in(t, "t", 0, sched.num_timesteps - 1)


def _at(values, t, x):
    """values[t] for int t [B], broadcast against x [B, ...]."""
    return values[t].reshape((-1,) + (1,) * (x.ndim - 1))


def q_sample(sched, x0, t, noise):
    """Draw x_t ~ q(x_t | x_0) given standard normal `noise`; x0 [B, ...], t int [B] in [0, T)."""
    checks.shape_is(noise, "noise", jnp.shape(x0), "the shape of x0")
    check_timesteps(sched, t, x0)
    return _at(sched.sqrt_alphas_cumprod, t, x0) * x0 + _at(sched.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def q_posterior(sched, x0, xt, t):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    mean = _at(sched.posterior_mean_coef1, t, xt) * x0 + _at(sched.posterior_mean_coef2, t, xt) * xt
    return mean, _at(sched.posterior_variance, t, xt), _at(sched.posterior_log_variance_clipped, t, xt)


def predict_x0_from_eps(sched, xt, t, eps):
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (xt - _at(sched.sqrt_one_minus_alphas_cumprod, t, xt) * eps) / _at(sched.sqrt_alphas_cumprod, t, xt)


def check_var_type(var_type):
    if var_type not in VAR_TYPES:
        raise ValueError(f"Unknown config.diffusion.var_type {var_type!r}; use one of {VAR_TYPES}.")


def output_channels(data_channels, var_type):
    """Channels the network must output: C for fixed variances, 2C when it also predicts v."""
    check_var_type(var_type)
    return 2 * data_channels if var_type == "learned_range" else data_channels


def split_output(out, var_type):
    """Model output -> (eps, v); v is None for fixed variances."""
    if var_type == "learned_range":
        eps, v = jnp.split(out, 2, axis=-1)
        return eps, v
    return out, None


def fixed_log_variance(sched, var_type):
    """log sigma_t^2 [T] of the reverse process: 'fixedlarge' (beta_t) or 'fixedsmall' (beta-tilde_t).

    'fixedlarge' uses beta-tilde_1 at t = 0 instead of beta_1, as the reference code does, so the
    decoder's variance is not needlessly large.
    """
    if var_type == "fixedlarge":
        # posterior_log_variance_clipped[0] is log beta-tilde_1 (log beta_1 for a one-step chain).
        return jnp.concatenate([sched.posterior_log_variance_clipped[:1], sched.log_betas[1:]])
    if var_type == "fixedsmall":
        return sched.posterior_log_variance_clipped
    raise ValueError(f"Unknown config.diffusion.var_type {var_type!r}; use 'fixedlarge' or 'fixedsmall'.")


def learned_log_variance(sched, v, t):
    """log Sigma_t = frac log beta_t + (1 - frac) log beta~_t (clipped), frac = (v + 1) / 2; v [B, ...]."""
    frac = (v + 1.0) / 2.0
    max_log = _at(sched.log_betas, t, v)
    min_log = _at(sched.posterior_log_variance_clipped, t, v)
    return frac * max_log + (1.0 - frac) * min_log


def p_mean_log_variance(sched, out, xt, t, var_type, clip_denoised=True):
    """Mean and log-variance of p(x_{t-1} | x_t) from the model output; also returns the predicted x_0.

    out: [B, ..., C] (eps) or [B, ..., 2C] (eps, v) for 'learned_range'; xt [B, ..., C]; t int [B].
    The log-variance is broadcastable against xt.
    """
    eps, v = split_output(out, var_type)
    x0 = predict_x0_from_eps(sched, xt, t, eps)
    if clip_denoised:
        x0 = jnp.clip(x0, -1.0, 1.0)
    mean, _, _ = q_posterior(sched, x0, xt, t)
    if v is None:
        log_var = _at(fixed_log_variance(sched, var_type), t, xt)
    else:
        log_var = learned_log_variance(sched, v, t)
    return mean, log_var, x0


# ---------------------------------------------------------------------------------------------------
# The variational bound.
# ---------------------------------------------------------------------------------------------------

def prior_kl(sched, x0):
    """L_T = KL(q(x_T | x_0) || N(0, I)) in nats per example, [B]."""
    t = jnp.full((x0.shape[0],), sched.num_timesteps - 1, jnp.int32)
    mean = _at(sched.sqrt_alphas_cumprod, t, x0) * x0
    log_var = jnp.log(_at(1.0 - sched.alphas_cumprod, t, x0))
    return dist.sum_per_example(dist.normal_kl(mean, log_var, 0.0, 0.0))


def vlb_terms(sched, out, x0, xt, t, num_bits, var_type="fixedlarge", clip_denoised=True):
    """The bound's term for each example at its own timestep t [B], nats per example [B].

    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0; at t = 0 the discretized-Gaussian
    decoder's negative log-likelihood L_0 at the data's bit depth. `out` is the model output at (xt, t).
    """
    mean, log_var, _ = p_mean_log_variance(sched, out, xt, t, var_type, clip_denoised)
    true_mean, _, true_log_var = q_posterior(sched, x0, xt, t)
    kl = dist.sum_per_example(dist.normal_kl(true_mean, true_log_var, mean, log_var))
    nll = -dist.sum_per_example(dist.discretized_gaussian_log_prob(x0, mean, 0.5 * log_var, num_bits))
    return jnp.where(t == 0, nll, kl)


def vlb_term(sched, eps_fn, key, x0, t, num_bits, var_type="fixedlarge", clip_denoised=True):
    """One term of the bound at a shared timestep t (int scalar), nats per example [B]."""
    tt = jnp.full((x0.shape[0],), t, jnp.int32)
    xt = q_sample(sched, x0, tt, jax.random.normal(key, x0.shape))
    return vlb_terms(sched, eps_fn(xt, tt), x0, xt, tt, num_bits, var_type, clip_denoised)


def vlb(sched, eps_fn, key, x0, num_bits, var_type="fixedlarge", clip_denoised=True):
    """The full bound L_T + sum_t L_{t-1} + L_0 in nats per example [B] (an upper bound on -log P(x)).

    One network evaluation per timestep on the whole batch, as one lax.scan. `eps_fn(x_t, t)` returns
    the model output (with v for 'learned_range').
    """
    def add_term(total, t):
        term = vlb_term(sched, eps_fn, jax.random.fold_in(key, t), x0, t, num_bits, var_type, clip_denoised)
        return total + term, None

    total, _ = jax.lax.scan(add_term, jnp.zeros(x0.shape[0]), jnp.arange(sched.num_timesteps))
    return total + prior_kl(sched, x0)
