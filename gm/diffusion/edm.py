"""EDM (Karras et al. 2022, "Elucidating the design space of diffusion-based generative models"; NVlabs/edm
`training/networks.py` EDMPrecond, `training/loss.py` EDMLoss, `generate.py` edm_sampler).

Everything here lives in sigma space: x = x_0 + sigma n, n ~ N(0, I), and a *denoiser* D(x, sigma) -> x_0
estimate (x float [B, ...], sigma a scalar or [B]). A network F is preconditioned as

    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
    c_skip = s_d^2 / (sigma^2 + s_d^2), c_out = sigma s_d / sqrt(sigma^2 + s_d^2),
    c_in = 1 / sqrt(sigma^2 + s_d^2), c_noise = log(sigma) / 4          (s_d = sigma_data = 0.5),

trained at ln sigma ~ N(P_mean, P_std^2) with weight lambda = (sigma^2 + s_d^2) / (sigma s_d)^2, which makes
the effective target of F unit-variance at every sigma. Models trained on a score SDE enter sigma space
through `gm.diffusion.sde.denoiser_from_eps` (EDM's VP and VE preconditionings), DDPM models through
`gm.diffusion.dpm_solver.denoiser_from_schedule`.

The sampler integrates the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma over Karras et al.'s
schedule sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then
sigma_N = 0, with Heun's 2nd-order correction on every step but the last (N steps: 2N - 1 evaluations;
N = 18 is the paper's 35 for CIFAR-10), optionally churning noise in (S_churn, S_tmin, S_tmax, S_noise).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from gm.diffusion.sde import expand

SAMPLERS = ("heun", "euler")


def preconditioning(sigma, sigma_data: float = 0.5):
    """EDM's (c_skip, c_out, c_in, c_noise) at sigma (any shape)."""
    sigma = jnp.asarray(sigma, jnp.float32)
    total = jnp.square(sigma) + sigma_data ** 2
    return (sigma_data ** 2 / total, sigma * sigma_data / jnp.sqrt(total), jax.lax.rsqrt(total),
            jnp.log(sigma) / 4.0)


def preconditioned_denoiser(net_fn, sigma_data: float = 0.5):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) for a network net_fn(x, c_noise [B]) -> [B, ...]."""
    def denoise(x, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],))
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
        return expand(c_skip, x) * x + expand(c_out, x) * net_fn(expand(c_in, x) * x, c_noise)
    return denoise


def loss_weight(sigma, sigma_data: float = 0.5):
    """lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2 = 1 / c_out^2."""
    return (jnp.square(sigma) + sigma_data ** 2) / jnp.square(sigma * sigma_data)


def denoising_loss(denoise, key, x0, p_mean: float = -1.2, p_std: float = 1.2, sigma_data: float = 0.5):
    """EDM's loss per example [B]: lambda(sigma) ||D(x_0 + sigma n, sigma) - x_0||^2 averaged over
    dimensions (EDM sums them: a constant factor), ln sigma ~ N(p_mean, p_std^2). x0 float [B, ...] in [-1, 1]."""
    sigma_key, noise_key = jax.random.split(key)
    sigma = jnp.exp(p_mean + p_std * jax.random.normal(sigma_key, (x0.shape[0],), jnp.float32))
    noisy = x0 + expand(sigma, x0) * jax.random.normal(noise_key, x0.shape, jnp.float32)
    error = jnp.square(denoise(noisy, sigma) - x0).reshape(x0.shape[0], -1)
    return loss_weight(sigma, sigma_data) * jnp.mean(error, axis=-1)


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
    """Karras et al.'s noise levels, float64 [num_steps + 1]: num_steps from sigma_max down to sigma_min
    (rho-th root spacing), then 0."""
    if num_steps < 1:
        raise ValueError(f"The sampler needs at least 1 step, got {num_steps}.")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"Noise levels need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}.")
    i = np.arange(num_steps, dtype=np.float64)
    ramp = i / max(num_steps - 1, 1)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(sigmas, 0.0)


def loglinear_sigmas(num_steps: int, sigma_min: float, sigma_max: float):
    """num_steps noise levels uniform in log sigma (uniform in log-SNR, DPM-Solver's 'logSNR'), then 0."""
    if num_steps < 1:
        raise ValueError(f"The sampler needs at least 1 step, got {num_steps}.")
    return np.append(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_steps)), 0.0)


def sampler_nfe(sampler: str, num_steps: int) -> int:
    """Network evaluations of `sample` over num_steps levels (+ the final 0): Heun 2N - 1, Euler N."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


def sample(denoise, key, shape, sigmas, sampler: str = "heun", s_churn: float = 0.0, s_tmin: float = 0.0,
           s_tmax: float = math.inf, s_noise: float = 1.0, x_init=None):
    """EDM's Algorithm 2 (stochastic; with s_churn = 0 it is Algorithm 1, deterministic) -> float32 x_0.

    denoise: D(x, sigma). sigmas: descending noise levels ending in 0 (`karras_sigmas`), N + 1 of them.
    sampler 'heun' (2nd order, 2N - 1 evaluations) or 'euler' (1st order, N). Churn: at sigma_i in
    [s_tmin, s_tmax] noise is added to reach sigma_hat = (1 + gamma) sigma_i, gamma = min(s_churn / N,
    sqrt 2 - 1), with n ~ N(0, s_noise^2 I). x_init: the state at sigmas[0] (default sigmas[0] n, n ~ N(0, I)).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown EDM sampler {sampler!r}; use one of {SAMPLERS}.")
    sigmas = np.asarray(sigmas, np.float64)
    num_steps = len(sigmas) - 1
    gamma = np.where((sigmas[:-1] >= s_tmin) & (sigmas[:-1] <= s_tmax), min(s_churn / num_steps, math.sqrt(2) - 1), 0.0)
    init_key, loop_key = jax.random.split(key)

    def churn(x, i, sigma, g):
        sigma_hat = sigma * (1.0 + g)
        noise = s_noise * jax.random.normal(jax.random.fold_in(loop_key, i), shape)
        return x + jnp.sqrt(jnp.maximum(jnp.square(sigma_hat) - jnp.square(sigma), 0.0)) * noise, sigma_hat

    def step(x, inputs):
        i, sigma, sigma_next, g = inputs
        x_hat, sigma_hat = churn(x, i, sigma, g)
        d = (x_hat - denoise(x_hat, sigma_hat)) / sigma_hat
        x_next = x_hat + (sigma_next - sigma_hat) * d
        if sampler == "heun":
            d_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        return x_next, None

    x = jnp.float32(sigmas[0]) * jax.random.normal(init_key, shape, jnp.float32) if x_init is None else x_init
    inputs = (jnp.arange(num_steps), jnp.asarray(sigmas[:-1], jnp.float32), jnp.asarray(sigmas[1:], jnp.float32),
              jnp.asarray(gamma, jnp.float32))
    if sigmas[-1] > 0:
        return jax.lax.scan(step, x, inputs)[0]
    # The step into sigma = 0 is Euler's, x_hat + (0 - sigma_hat) (x_hat - D) / sigma_hat = D: Heun's
    # correction is undefined there, so N steps cost 2N - 1 evaluations.
    x, _ = jax.lax.scan(step, x, jax.tree.map(lambda a: a[:-1], inputs))
    i, sigma, _, g = jax.tree.map(lambda a: a[-1], inputs)
    return denoise(*churn(x, i, sigma, g))
