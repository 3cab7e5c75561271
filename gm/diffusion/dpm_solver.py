"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: fast solver for guided sampling of diffusion probabilistic
models"; LuChengTHU/dpm-solver's multistep updates), and DDPM networks in sigma space.

In EDM's sigma space (x = x_0 + sigma n, see `gm.diffusion.edm`) with lambda = -log sigma (the half
log-SNR), the probability-flow ODE's exact solution from sigma_s to sigma_t is

    x_t = (sigma_t / sigma_s) x_s + int_{lambda_s}^{lambda_t} e^{-(lambda_t - lambda)} D(x_lambda, lambda) d lambda,

and DPM-Solver++ expands the data prediction D in lambda. With h = lambda_t - lambda_s and previous
denoised values D_0 (now), D_1, D_2 (one and two steps back) the multistep updates are

    order 1 (= DDIM):  x_t = (sigma_t / sigma_s) x_s - phi_1 D_0,                       phi_1 = expm1(-h)
    order 2 (2M):      ... - phi_1 D_0 - phi_1 / 2 (D_0 - D_1) / r_0,                   r_0 = h_0 / h
    order 3 (3M):      ... - phi_1 D_0 + phi_2 D1 - phi_3 D2,  phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2,

with D1 and D2 the 1st and 2nd divided differences of the D's in lambda (the reference code's). The order
ramps up over the first steps (no history yet) and down over the last (Lu et al.'s lower_order_final),
so step i of N uses min(order, i + 1, N - i); the last step, into sigma = 0, is then x = D_0. One network
evaluation per step.

The update is the same in the DDPM variables x = alpha x_hat (it is invariant to the scaling), so
`denoiser_from_schedule` puts any discrete-time DDPM network into sigma space, where this solver, EDM's
Heun sampler and the Karras schedule apply unchanged.
"""
import jax
import jax.numpy as jnp
import numpy as np

from gm.diffusion import schedule as schedule_lib
from gm.diffusion.sde import expand

ORDERS = (1, 2, 3)


def step_coefficients(sigmas, order: int):
    """Per-step constants of the multistep updates over descending `sigmas` (float64 [N + 1], the last
    may be 0): a dict of float32 [N] arrays (ratio, phi_1, phi_2, phi_3, r0, r1) and int32 [N] orders."""
    if order not in ORDERS:
        raise ValueError(f"The DPM-Solver++ order must be one of {ORDERS}, got {order!r}.")
    sigmas = np.asarray(sigmas, np.float64)
    if np.any(np.diff(sigmas) >= 0) or sigmas[-1] < 0:
        raise ValueError("DPM-Solver++ needs strictly decreasing noise levels ending at or above 0.")
    num_steps = len(sigmas) - 1
    with np.errstate(divide="ignore"):
        lam = -np.log(sigmas)  # +inf at sigma = 0
    i = np.arange(num_steps)
    orders = np.minimum(np.minimum(order, i + 1), num_steps - i)
    h = lam[1:] - lam[:-1]
    finite = np.isfinite(h)
    h_safe = np.where(finite, h, 1.0)
    phi_1 = np.where(finite, np.expm1(-h_safe), -1.0)
    phi_2 = np.where(finite, phi_1 / h_safe + 1.0, 0.0)
    phi_3 = np.where(finite, phi_2 / h_safe - 0.5, 0.0)
    h_prev = np.append(1.0, h[:-1])     # h_0: the previous step's
    h_prev2 = np.append([1.0, 1.0], h[:-2])[:num_steps]  # h_1: the one before
    r0 = np.where(orders >= 2, h_prev / h_safe, 1.0)
    r1 = np.where(orders >= 3, h_prev2 / h_safe, 1.0)
    coefficients = dict(ratio=sigmas[1:] / sigmas[:-1], phi_1=phi_1, phi_2=phi_2, phi_3=phi_3, r0=r0, r1=r1)
    out = {k: jnp.asarray(v, jnp.float32) for k, v in coefficients.items()}
    out["order"] = jnp.asarray(orders, jnp.int32)
    return out


def sample(denoise, key, shape, sigmas, order: int = 2, x_init=None):
    """DPM-Solver++(order)M from x = sigmas[0] n -> float32 x at sigmas[-1] (x_0 when that is 0).

    denoise: D(x, sigma) in sigma space; sigmas: descending float [N + 1] (e.g. `edm.karras_sigmas`,
    `edm.loglinear_sigmas`, or a DDPM model's timesteps through `schedule_sigmas`). x_init: the state at
    sigmas[0] (then `key` is unused); default sigmas[0] n with n ~ N(0, I) from `key`. N evaluations.
    """
    coefficients = step_coefficients(sigmas, order)
    sigmas_in = jnp.asarray(np.asarray(sigmas)[:-1], jnp.float32)

    def step(carry, inputs):
        x, d1, d2 = carry
        sigma, c = inputs
        d0 = denoise(x, sigma)
        base = c["ratio"] * x - c["phi_1"] * d0
        d1_0 = (d0 - d1) / c["r0"]
        second = base - 0.5 * c["phi_1"] * d1_0
        d1_1 = (d1 - d2) / c["r1"]
        diff1 = d1_0 + c["r0"] / (c["r0"] + c["r1"]) * (d1_0 - d1_1)
        diff2 = (d1_0 - d1_1) / (c["r0"] + c["r1"])
        third = base + c["phi_2"] * diff1 - c["phi_3"] * diff2
        x = jnp.where(c["order"] == 1, base, jnp.where(c["order"] == 2, second, third))
        return (x, d0, d1), None

    x = jnp.float32(np.asarray(sigmas)[0]) * jax.random.normal(key, shape, jnp.float32) if x_init is None else x_init
    zeros = jnp.zeros(shape, jnp.float32)
    (x, _, _), _ = jax.lax.scan(step, (x, zeros, zeros), (sigmas_in, coefficients))
    return x


# ---------------------------------------------------------------------------------------------------
# Discrete-time DDPM networks in sigma space.
# ---------------------------------------------------------------------------------------------------

def sigma_at(sched, tau):
    """sigma = sqrt((1 - abar) / abar) at fractional timesteps tau (`schedule.log_alphas_cumprod_at`)."""
    return jnp.sqrt(jnp.expm1(-schedule_lib.log_alphas_cumprod_at(sched, tau)))


def timestep_of_sigma(sched, sigma, newton_steps: int = 4):
    """The fractional timestep tau in [0, T-1] whose sigma is `sigma` (clipped to the chain's range).

    Linear interpolation between the integer timesteps, then Newton steps on the monotone cubic that
    `schedule.log_alphas_cumprod_at` interpolates, so sigma_at(tau) returns sigma to float32 precision.
    """
    target = -jnp.log1p(jnp.square(jnp.asarray(sigma, jnp.float32)))  # log abar
    knots = jnp.log(sched.alphas_cumprod)  # decreasing in tau
    steps = jnp.arange(sched.num_timesteps, dtype=jnp.float32)
    last = float(sched.num_timesteps - 1)
    tau = jnp.interp(target, knots[::-1], steps[::-1])
    for _ in range(newton_steps):
        value = schedule_lib.log_alphas_cumprod_at(sched, tau)
        tau = jnp.clip(tau + (value - target) / schedule_lib.beta_at(sched, tau), 0.0, last)
    return tau


def schedule_sigmas(sched, timesteps):
    """The noise levels of int `timesteps` (any order), float64 [K + 1] descending with a final 0: the
    sigma-space grid that visits exactly a DDPM chain's (e.g. DDIM's) timesteps."""
    abar = np.asarray(sched.alphas_cumprod, np.float64)[np.sort(np.asarray(timesteps))[::-1]]
    return np.append(np.sqrt((1.0 - abar) / abar), 0.0)


def denoiser_from_schedule(sched, model_fn, num_channels: int, clip_denoised: bool = False):
    """D(x_hat, sigma) for a DDPM network model_fn(x_t, tau [B]) -> eps (its first num_channels channels).

    x_hat = x_t / sqrt(abar): the network sees x_t = x_hat / sqrt(1 + sigma^2) at tau = timestep_of_sigma,
    and D = x_hat - sigma eps, clipped to [-1, 1] with clip_denoised (as DDIM's clipping of x_0).
    """
    def denoise(x_hat, sigma):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x_hat.shape[0],))
        tau = timestep_of_sigma(sched, sigma)
        eps = model_fn(x_hat * expand(jax.lax.rsqrt(1.0 + jnp.square(sigma)), x_hat), tau)[..., :num_channels]
        x0 = x_hat - expand(sigma, x_hat) * eps
        return jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0
    return denoise
