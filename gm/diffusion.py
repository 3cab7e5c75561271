"""Denoising diffusion probabilistic models (Ho et al. 2020), as pure functions.

Forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) over t = 0..T-1 (0-based, so the
paper's t = 1 is index 0 here), the L_simple epsilon-prediction loss, the posterior q(x_{t-1} | x_t, x_0),
ancestral and DDIM samplers as single on-device loops, and the variational bound in nats (reported in
bits/dim through `gm.distributions.bits_per_dim`).

Everything takes a `Schedule` (a NamedTuple of float32 arrays of length T) and an `eps_fn(x_t, t) ->
epsilon` closure, so the math composes with any network in a notebook; `make` wires it to the UNet and
returns a `gm.method.Method`. Model space is [-1, 1] (`gm.distributions.levels_to_symmetric`).
"""
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gm import distributions as dist
from gm.method import Method

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


# ---------------------------------------------------------------------------------------------------
# Noise schedules.
# ---------------------------------------------------------------------------------------------------

def linear_betas(num_timesteps, beta_start=1e-4, beta_end=0.02):
    """Ho et al.'s linear schedule, float64 [T].

    The endpoints are scaled by 1000 / T (as in Nichol & Dhariwal's code), so T = 1000 gives exactly
    the paper's 1e-4 .. 0.02 and shorter chains still end near abar_T = 0.
    """
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), float64 [T]."""
    f = lambda u: np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    return np.minimum(1.0 - f(u[1:]) / f(u[:-1]), max_beta)


class Schedule(NamedTuple):
    """Per-timestep constants, each float32 [T]; built in float64 and cast, as the reference code does."""
    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array

    @property
    def num_timesteps(self):
        return self.betas.shape[0]


def make_schedule(betas):
    """float64 betas [T] in (0, 1) -> Schedule."""
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
        raise ValueError("Diffusion betas must lie in (0, 1); the linear schedule needs "
                         "config.diffusion.num_timesteps >= 21 (or use schedule='cosine').")
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    consts = dict(
        betas=betas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        posterior_variance=posterior_variance,
        # The posterior variance is 0 at t = 0; the log is clipped to the next value, as in the paper.
        posterior_log_variance_clipped=np.log(np.append(posterior_variance[1], posterior_variance[1:])),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
    )
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in consts.items()})


def schedule_from_name(name, num_timesteps, beta_start=1e-4, beta_end=0.02):
    """'linear' or 'cosine' -> Schedule of length num_timesteps."""
    if name == "linear":
        return make_schedule(linear_betas(num_timesteps, beta_start, beta_end))
    if name == "cosine":
        return make_schedule(cosine_betas(num_timesteps))
    raise ValueError(f"Unknown config.diffusion.schedule {name!r}; use 'linear' or 'cosine'.")


def _at(values, t, x):
    """values[t] for int t [B], broadcast against x [B, ...]."""
    return values[t].reshape((-1,) + (1,) * (x.ndim - 1))


# ---------------------------------------------------------------------------------------------------
# Forward process, posterior and the reverse-process Gaussian.
# ---------------------------------------------------------------------------------------------------

def q_sample(sched, x0, t, noise):
    """Draw x_t ~ q(x_t | x_0) given standard normal `noise`; x0 [B, ...], t int [B]."""
    return _at(sched.sqrt_alphas_cumprod, t, x0) * x0 + _at(sched.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def q_posterior(sched, x0, xt, t):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    mean = _at(sched.posterior_mean_coef1, t, xt) * x0 + _at(sched.posterior_mean_coef2, t, xt) * xt
    return mean, _at(sched.posterior_variance, t, xt), _at(sched.posterior_log_variance_clipped, t, xt)


def predict_x0_from_eps(sched, xt, t, eps):
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (xt - _at(sched.sqrt_one_minus_alphas_cumprod, t, xt) * eps) / _at(sched.sqrt_alphas_cumprod, t, xt)


def fixed_log_variance(sched, var_type):
    """log sigma_t^2 [T] of the reverse process: 'fixedlarge' (beta_t) or 'fixedsmall' (beta-tilde_t).

    'fixedlarge' uses beta-tilde_1 at t = 0 instead of beta_1, as the reference code does, so the
    decoder's variance is not needlessly large.
    """
    if var_type == "fixedlarge":
        return jnp.log(jnp.append(sched.posterior_variance[1], sched.betas[1:]))
    if var_type == "fixedsmall":
        return sched.posterior_log_variance_clipped
    raise ValueError(f"Unknown config.diffusion.var_type {var_type!r}; use 'fixedlarge' or 'fixedsmall'.")


def p_mean_log_variance(sched, eps, xt, t, var_type, clip_denoised=True):
    """Mean and log-variance of p(x_{t-1} | x_t) from predicted eps; also returns the predicted x_0."""
    x0 = predict_x0_from_eps(sched, xt, t, eps)
    if clip_denoised:
        x0 = jnp.clip(x0, -1.0, 1.0)
    mean, _, _ = q_posterior(sched, x0, xt, t)
    log_var = _at(fixed_log_variance(sched, var_type), t, xt)
    return mean, log_var, x0


# ---------------------------------------------------------------------------------------------------
# Loss.
# ---------------------------------------------------------------------------------------------------

def simple_loss(sched, eps_fn, key, x0):
    """L_simple: E_{t, eps} |eps - eps_theta(x_t, t)|^2, mean over dimensions and batch (a scalar)."""
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, sched.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    eps = eps_fn(q_sample(sched, x0, t, noise), t)
    return jnp.mean((eps.astype(jnp.float32) - noise) ** 2)


# ---------------------------------------------------------------------------------------------------
# Samplers: one lax.scan each, so a whole chain is one compiled loop.
# ---------------------------------------------------------------------------------------------------

def ancestral_sample(sched, eps_fn, key, shape, var_type="fixedlarge", clip_denoised=True):
    """Ho et al.'s Algorithm 2 from x_T ~ N(0, I): float32 samples of `shape` in [-1, 1] (when clipped)."""
    init_key, loop_key = jax.random.split(key)
    log_vars = fixed_log_variance(sched, var_type)

    def step(x, t):
        tt = jnp.full((shape[0],), t, jnp.int32)
        mean, _, _ = p_mean_log_variance(sched, eps_fn(x, tt), x, tt, var_type, clip_denoised)
        z = jax.random.normal(jax.random.fold_in(loop_key, t), shape)
        # No noise is added at the last step (t = 0): the sample is the decoder's mean.
        return mean + (t > 0) * jnp.exp(0.5 * log_vars[t]) * z, None

    x, _ = jax.lax.scan(step, jax.random.normal(init_key, shape), jnp.arange(sched.num_timesteps)[::-1])
    return x


def ddim_timesteps(num_timesteps, num_steps):
    """The evenly spaced subsequence 0, k, 2k, ... (k = T // num_steps) of Song et al.'s DDIM, int32."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"config.diffusion.ddim_steps must be in [1, {num_timesteps}], got {num_steps}.")
    return np.arange(0, num_timesteps, num_timesteps // num_steps, dtype=np.int32)[:num_steps]


def ddim_sample(sched, eps_fn, key, shape, num_steps=50, eta=0.0, clip_denoised=True):
    """DDIM (Song et al. 2021) over `num_steps` steps; eta = 0 is deterministic, eta = 1 is DDPM-like."""
    ts = ddim_timesteps(sched.num_timesteps, num_steps)
    prev_ts = np.append(-1, ts[:-1]).astype(np.int32)
    init_key, loop_key = jax.random.split(key)
    abar = sched.alphas_cumprod

    def step(x, i_t_prev):
        i, t, t_prev = i_t_prev
        tt = jnp.full((shape[0],), t, jnp.int32)
        eps = eps_fn(x, tt)
        x0 = predict_x0_from_eps(sched, x, tt, eps)
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
            # Re-derive eps from the clipped x_0 so the update stays consistent with it.
            eps = (x - jnp.sqrt(abar[t]) * x0) / jnp.sqrt(1.0 - abar[t])
        abar_prev = jnp.where(t_prev >= 0, abar[jnp.maximum(t_prev, 0)], 1.0)
        sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar[t]) * (1.0 - abar[t] / abar_prev))
        z = jax.random.normal(jax.random.fold_in(loop_key, i), shape)
        x = jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev - sigma ** 2) * eps + sigma * z
        return x, None

    xs = (jnp.arange(len(ts)), jnp.asarray(ts[::-1]), jnp.asarray(prev_ts[::-1]))
    x, _ = jax.lax.scan(step, jax.random.normal(init_key, shape), xs)
    return x


# ---------------------------------------------------------------------------------------------------
# The variational bound.
# ---------------------------------------------------------------------------------------------------

def prior_kl(sched, x0):
    """L_T = KL(q(x_T | x_0) || N(0, I)) in nats per example, [B]."""
    t = jnp.full((x0.shape[0],), sched.num_timesteps - 1, jnp.int32)
    mean = _at(sched.sqrt_alphas_cumprod, t, x0) * x0
    log_var = jnp.log(_at(1.0 - sched.alphas_cumprod, t, x0))
    return dist.sum_per_example(dist.normal_kl(mean, log_var, 0.0, 0.0))


def vlb_term(sched, eps_fn, key, x0, t, num_bits, var_type="fixedlarge", clip_denoised=True):
    """One term of the bound at a shared timestep t (int scalar), nats per example [B].

    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0; at t = 0 the discretized-Gaussian
    decoder's negative log-likelihood L_0 at the data's bit depth.
    """
    tt = jnp.full((x0.shape[0],), t, jnp.int32)
    xt = q_sample(sched, x0, tt, jax.random.normal(key, x0.shape))
    mean, log_var, _ = p_mean_log_variance(sched, eps_fn(xt, tt), xt, tt, var_type, clip_denoised)
    true_mean, _, true_log_var = q_posterior(sched, x0, xt, tt)
    kl = dist.sum_per_example(dist.normal_kl(true_mean, true_log_var, mean, log_var))
    nll = -dist.sum_per_example(dist.discretized_gaussian_log_prob(x0, mean, 0.5 * log_var, num_bits))
    return jnp.where(t == 0, nll, kl)


def vlb(sched, eps_fn, key, x0, num_bits, var_type="fixedlarge", clip_denoised=True):
    """The full bound L_T + sum_t L_{t-1} + L_0 in nats per example [B] (an upper bound on -log P(x)).

    One network evaluation per timestep on the whole batch, as one lax.scan.
    """
    def add_term(total, t):
        term = vlb_term(sched, eps_fn, jax.random.fold_in(key, t), x0, t, num_bits, var_type, clip_denoised)
        return total + term, None

    total, _ = jax.lax.scan(add_term, jnp.zeros(x0.shape[0]), jnp.arange(sched.num_timesteps))
    return total + prior_kl(sched, x0)


# ---------------------------------------------------------------------------------------------------
# The Method.
# ---------------------------------------------------------------------------------------------------

def unet_from_config(model, num_classes=None):
    """config.model (ch, ch_mult, num_res_blocks, attn_resolutions, dropout, dtype) -> the DDPM UNet."""
    from gm.nn.unet import UNet  # imported here so the schedule math loads without Flax modules

    return UNet(ch=model.ch, ch_mult=tuple(model.ch_mult), num_res_blocks=model.num_res_blocks,
                attn_resolutions=tuple(model.attn_resolutions), dropout=model.dropout,
                num_classes=num_classes, dtype=jnp.dtype(model.get("dtype", "float32")))


def make(config, info):
    """DDPM on images of `info.shape` at `info.num_bits` -> Method.

    Reads config.model (UNet fields), config.diffusion (schedule, num_timesteps, beta_start, beta_end,
    var_type, sampler, ddim_steps, ddim_eta, clip_denoised). `log_prob` is the variational bound
    (a lower bound on log P(x), nats per example).
    """
    if info.num_bits is None:
        raise ValueError(f"DDPM needs image data; config.data.name={info.name!r} is not an image dataset.")
    d = config.diffusion
    m = config.model
    sched = schedule_from_name(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)
    num_classes = info.num_classes if m.class_conditional else None
    net = unet_from_config(m, num_classes)
    fixed_log_variance(sched, d.var_type)  # validates var_type before any training
    num_bits = info.num_bits

    def eps_fn_for(params, batch_labels, train=False, dropout_key=None):
        y = batch_labels if num_classes else None
        rngs = {"dropout": dropout_key} if train else {}
        return lambda x, t: net.apply({"params": params}, x, t, y, train=train, rngs=rngs)

    def init(key, batch):
        x = dist.levels_to_symmetric(batch["image"], num_bits)
        y = batch["label"] if num_classes else None
        return net.init({"params": key}, x, jnp.zeros(x.shape[0], jnp.int32), y, train=False)["params"]

    def loss(params, key, batch):
        x0 = dist.levels_to_symmetric(batch["image"], num_bits)
        loss_key, dropout_key = jax.random.split(key)
        value = simple_loss(sched, eps_fn_for(params, batch["label"], True, dropout_key), loss_key, x0)
        return value, {"loss": value}

    def sample(params, key, num):
        label_key, sample_key = jax.random.split(key)
        labels = jax.random.randint(label_key, (num,), 0, info.num_classes)
        eps_fn = eps_fn_for(params, labels)
        shape = (num,) + tuple(info.shape)
        if d.sampler == "ddim":
            x = ddim_sample(sched, eps_fn, sample_key, shape, d.ddim_steps, d.ddim_eta, d.clip_denoised)
        else:
            x = ancestral_sample(sched, eps_fn, sample_key, shape, d.var_type, d.clip_denoised)
        return dist.symmetric_to_levels(x, num_bits)

    def log_prob(params, key, batch):
        x0 = dist.levels_to_symmetric(batch["image"], num_bits)
        return -vlb(sched, eps_fn_for(params, batch["label"]), key, x0, num_bits, d.var_type, d.clip_denoised)

    if d.sampler not in ("ancestral", "ddim"):
        raise ValueError(f"Unknown config.diffusion.sampler {d.sampler!r}; use 'ancestral' or 'ddim'.")
    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=True)
