"""Noise schedules: betas, the per-timestep constants, respacing and continuous-time log alpha-bar.

Timesteps are 0-based: index 0 is the paper's t = 1. Betas are built in float64 and the constants cast
to float32 at the end, as the reference code does; respacing works on the float64 betas so that a
respaced chain keeps alpha-bar at its kept steps to float32 precision.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")


def linear_betas(num_timesteps, beta_start=1e-4, beta_end=0.02):
    """Ho et al.'s linear schedule, float64 [T].

    The endpoints are scaled by 1000 / T (as in Nichol & Dhariwal's code), so T = 1000 gives exactly
    the paper's 1e-4 .. 0.02 and shorter chains still end near abar_T = 0.
    """
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps, s=0.008, max_beta=0.999):
    """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), float64 [T]."""
    f = lambda u: np.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    return np.minimum(1.0 - f(u[1:]) / f(u[:-1]), max_beta)


def betas_from_name(name, num_timesteps, beta_start=1e-4, beta_end=0.02):
    """'linear' or 'cosine' -> float64 betas [num_timesteps]."""
    if name == "linear":
        return linear_betas(num_timesteps, beta_start, beta_end)
    if name == "cosine":
        return cosine_betas(num_timesteps)
    raise ValueError(f"Unknown config.diffusion.schedule {name!r}; use one of {SCHEDULES}.")


class Schedule(NamedTuple):
    """Per-timestep constants, each float32 [T]; built in float64 and cast, as the reference code does."""
    betas: jax.Array
    log_betas: jax.Array  # the log taken in float64: beta near 1 (the cosine clip) keeps its precision
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


MIN_BETA = 1e-10  # below it 1 - beta rounds towards 1 and the posterior's 0 / 0 turns into NaN


def make_schedule(betas):
    """float64 betas [T] in [MIN_BETA, 1) -> Schedule."""
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.size == 0 or not np.all((betas >= MIN_BETA) & (betas < 1)):
        seen = f"[{betas.min():.3g}, {betas.max():.3g}]" if betas.size else "none"
        raise ValueError(f"Diffusion betas must lie in [{MIN_BETA:g}, 1), got values in {seen}; the linear "
                         f"schedule scales its ends by 1000 / config.diffusion.num_timesteps, so it needs "
                         f"num_timesteps >= 21 with the paper's beta_end (or use schedule='cosine').")
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # The posterior variance is 0 at t = 0; the log is clipped to the next value, as in the paper. A
    # one-step chain has no next value: its decoder variance is beta_1.
    clip_to = posterior_variance[1] if len(betas) > 1 else betas[0]
    consts = dict(
        betas=betas,
        log_betas=np.log(betas),
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(np.append(clip_to, posterior_variance[1:])),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
    )
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in consts.items()})


def schedule_from_name(name, num_timesteps, beta_start=1e-4, beta_end=0.02):
    """'linear' or 'cosine' -> Schedule of length num_timesteps."""
    return make_schedule(betas_from_name(name, num_timesteps, beta_start, beta_end))


# ---------------------------------------------------------------------------------------------------
# Respacing: a shorter chain over a subset of the trained timesteps (Nichol & Dhariwal 2021, sec. 4).
# ---------------------------------------------------------------------------------------------------

SPACINGS = ("trailing", "leading", "linspace")


def spaced_timesteps(num_timesteps: int, count: int, spacing: str = "trailing") -> np.ndarray:
    """`count` of the trained timesteps 0..T-1 for a K-step sampler, sorted ascending, int32 [K].

    The names and formulas are diffusers' `timestep_spacing`:
    - 'trailing': round(T (K - i) / K) - 1, so the chain starts at t = T-1 for every K (Lin et al.
      2023, "Common diffusion noise schedules and sampling steps are flawed", table 2): x_T ~ N(0, I)
      is then the distribution the model was trained on at the first step.
    - 'leading': 0, s, 2s, ... with s = T // K, as in the DDIM paper's code; when K does not divide T
      it starts below T-1 (K = 30 of 1000: t = 957) while still drawing x_T as pure noise.
    - 'linspace': round(linspace(0, T-1, K)), both ends kept.
    """
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"The sampling step count must be between 1 and config.diffusion.num_timesteps="
                         f"{num_timesteps}, got {count}.")
    if spacing == "trailing":
        ts = np.round(np.arange(count, 0, -1) * (num_timesteps / count)) - 1
    elif spacing == "leading":
        ts = np.arange(count) * (num_timesteps // count)
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, num_timesteps - 1, count))
    else:
        raise ValueError(f"config.diffusion.timestep_spacing must be one of {SPACINGS}, got {spacing!r}.")
    return np.sort(ts.astype(np.int32))


def space_timesteps(num_timesteps, section_counts, spacing="trailing"):
    """The kept timesteps of a respaced chain: sorted int32 indices into 0..T-1.

    section_counts: an int K (K evenly spaced steps, always keeping the first and the last), a string
    of comma-separated counts "10,15,20" (T is cut into that many equal sections and each is strided
    evenly, as in the improved-diffusion code), or "ddimK" (K steps with DDIM's `spacing`, see
    `spaced_timesteps`; 'leading' is the improved-diffusion code's stride T // K from 0).
    """
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        return spaced_timesteps(num_timesteps, int(section_counts[len("ddim"):]), spacing)
    if isinstance(section_counts, str):
        counts = [int(c) for c in section_counts.split(",")]
    else:
        counts = [int(section_counts)]
    size, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        section = size + (1 if i < extra else 0)
        if not 1 <= count <= section:
            raise ValueError(f"Cannot take {count} steps from a section of {section} timesteps; the sampling "
                             f"step count must be between 1 and config.diffusion.num_timesteps={num_timesteps}.")
        stride = (section - 1) / (count - 1) if count > 1 else 1.0
        kept += [start + round(j * stride) for j in range(count)]
        start += section
    return np.asarray(sorted(set(kept)), np.int32)


class Respaced(NamedTuple):
    """A respaced chain: its Schedule (length K) and the trained timestep of each of its steps."""
    schedule: Schedule
    timesteps: np.ndarray  # int32 [K]: step i of the short chain is timestep timesteps[i] of the model


def respaced_betas(betas, timesteps):
    """float64 betas [K] of the chain that visits only `timesteps`: 1 - abar[s_i] / abar[s_{i-1}].

    Its alpha-bar at step i equals the original alpha-bar at timestep s_i exactly (in float64).
    """
    abar = np.cumprod(1.0 - np.asarray(betas, np.float64))
    kept = abar[np.asarray(timesteps)]
    return 1.0 - kept / np.append(1.0, kept[:-1])


def respace(betas, section_counts, spacing="trailing"):
    """float64 betas [T] and a step spec (see `space_timesteps`) -> Respaced."""
    timesteps = space_timesteps(len(betas), section_counts, spacing)
    return Respaced(make_schedule(respaced_betas(betas, timesteps)), timesteps)


# ---------------------------------------------------------------------------------------------------
# Continuous time, for the probability-flow ODE.
# ---------------------------------------------------------------------------------------------------

def _log_alphas_cumprod_knots(sched):
    """log abar at the integer timesteps [T] and the monotone slopes there [T] (Fritsch-Carlson)."""
    y = jnp.log(sched.alphas_cumprod)
    secants = jnp.diff(y)  # all negative: abar decreases
    # The harmonic mean of the neighbouring secants keeps the cubic monotone, so beta(tau) stays > 0.
    inner = 2.0 / (1.0 / secants[:-1] + 1.0 / secants[1:])
    return y, jnp.concatenate([secants[:1], inner, secants[-1:]])


def _hermite(sched, tau):
    """(log abar(tau), d log abar / d tau) of the cubic Hermite interpolant through the trained levels."""
    y, slopes = _log_alphas_cumprod_knots(sched)
    k = jnp.clip(jnp.floor(tau).astype(jnp.int32), 0, sched.num_timesteps - 2)
    u = tau - k
    y0, y1, d0, d1 = y[k], y[k + 1], slopes[k], slopes[k + 1]
    value = ((2 * u ** 3 - 3 * u ** 2 + 1) * y0 + (u ** 3 - 2 * u ** 2 + u) * d0
             + (-2 * u ** 3 + 3 * u ** 2) * y1 + (u ** 3 - u ** 2) * d1)
    slope = ((6 * u ** 2 - 6 * u) * y0 + (3 * u ** 2 - 4 * u + 1) * d0
             + (-6 * u ** 2 + 6 * u) * y1 + (3 * u ** 2 - 2 * u) * d1)
    return value, slope


def log_alphas_cumprod_at(sched, tau):
    """log abar at a fractional timestep tau in [0, T-1] (a float scalar or array).

    A monotone cubic (Hermite, Fritsch-Carlson slopes) through log abar at every integer timestep: the
    continuous chain passes through every trained noise level, and its beta(tau) is continuous, so a
    fixed-step ODE solver keeps its order whatever its step size. Needs T >= 2.
    """
    return _hermite(sched, jnp.asarray(tau, jnp.float32))[0]


def beta_at(sched, tau):
    """beta(tau) = -d log abar / d tau at fractional timestep tau (see `log_alphas_cumprod_at`), > 0."""
    return -_hermite(sched, jnp.asarray(tau, jnp.float32))[1]
