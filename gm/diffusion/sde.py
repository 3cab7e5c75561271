"""Score SDEs (Song et al. 2021; score_sde's `sde_lib.py`, `losses.py`, `sampling.py`, `likelihood.py`).

Three linear SDEs on t in [0, 1], dx = f(t) x dt + g(t) dW, each with Gaussian marginals

    x_t = alpha(t) x_0 + sigma(t) eps,   eps ~ N(0, I):

* VP (variance preserving; DDPM in continuous time): beta(t) = beta_min + t (beta_max - beta_min),
  f = -beta / 2, g = sqrt(beta), log alpha = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2,
  sigma = sqrt(1 - alpha^2); the prior is N(0, I).
* sub-VP: the VP drift with g^2 = beta (1 - exp(-2 int_0^t beta)), so sigma = 1 - alpha^2 (below VP's).
* VE (variance exploding; SMLD): sigma(t) = sigma_min (sigma_max / sigma_min)^t, alpha = 1, f = 0,
  g = sigma sqrt(2 log(sigma_max / sigma_min)); the prior is N(0, sigma_max^2 I).

Reversed in time (Anderson 1982) the SDE is dx = [f x - g^2 score] dt + g dW-bar, and the probability-flow
ODE dx/dt = f x - g^2 score / 2 has the same marginals. A network predicts the noise,
eps_fn(x_t, t) ~ eps, so score = -eps_fn / sigma (score_sde's continuous VP models do the same; its VE
NCSN++ divides its output by sigma, which is the same parameterization up to sign).

Every SDE also has a view in EDM's sigma space (Karras et al. 2022): x_hat = x / alpha has noise level
sigma_hat = sigma / alpha, and `time_of_sigma` inverts it in closed form, so the sigma-space samplers
(`gm.diffusion.edm`, `gm.diffusion.dpm_solver`) run any of these models (`denoiser_from_eps`).
Model space is [-1, 1]; t is a float scalar or [B].
"""
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from gm import distributions as dist
from gm import ode

SDES = ("vp", "subvp", "ve")
PREDICTORS = ("euler_maruyama", "reverse_diffusion", "none")
CORRECTORS = ("langevin", "none")
WEIGHTINGS = ("eps", "likelihood")


def expand(v, x):
    """A scalar or per-example [B] coefficient, broadcastable against x [B, ...]."""
    v = jnp.asarray(v, jnp.float32)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


class SDE(NamedTuple):
    """A linear SDE dx = f(t) x dt + g(t) dW on t in [0, 1] (see the module docstring).

    coefficients: t -> (f(t), g(t)).
    marginal: t -> (alpha(t), sigma(t)), so x_t = alpha x_0 + sigma eps.
    time_of_sigma: sigma_hat = sigma(t) / alpha(t) -> t, the inverse of the noise level in sigma space.
    discretize: (t, dt) -> (a, G): one forward step x_{t+dt} = x_t + a x_t + G z as the reverse-diffusion
      predictor reverses it (score_sde's `SDE.discretize`: DDPM's for VP, SMLD's for VE, Euler otherwise).
    prior_std: x_1 ~ N(0, prior_std^2 I).
    t_min: sampling stops and likelihoods start at t_min (score_sde's sampling eps); training draws
      t ~ U[t_train, 1] (its 1e-5).
    """
    name: str
    coefficients: Callable
    marginal: Callable
    time_of_sigma: Callable
    discretize: Callable
    prior_std: float
    t_min: float
    t_train: float = 1e-5

    def sigma_hat(self, t):
        """The noise level of x / alpha at t: sigma(t) / alpha(t)."""
        alpha, sigma = self.marginal(t)
        return sigma / alpha


def _vp_log_alpha(t, beta_min, beta_max):
    return -0.25 * t ** 2 * (beta_max - beta_min) - 0.5 * t * beta_min


def _vp_time_of_log_alpha(log_alpha, beta_min, beta_max):
    """The root t >= 0 of (beta_max - beta_min) t^2 / 4 + beta_min t / 2 + log alpha = 0."""
    beta_d = beta_max - beta_min
    return (jnp.sqrt(beta_min ** 2 - 4.0 * beta_d * log_alpha) - beta_min) / beta_d


def _euler_discretize(coefficients):
    def discretize(t, dt):
        f, g = coefficients(t)
        return f * dt, g * jnp.sqrt(dt)
    return discretize


def vp_sde(beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> SDE:
    """The VP SDE (score_sde's defaults: beta from 0.1 to 20, sampling down to t = 1e-3)."""
    def beta(t):
        return beta_min + t * (beta_max - beta_min)

    def coefficients(t):
        return -0.5 * beta(t), jnp.sqrt(beta(t))

    def marginal(t):
        log_alpha = _vp_log_alpha(jnp.asarray(t, jnp.float32), beta_min, beta_max)
        return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))

    def time_of_sigma(sigma_hat):
        # alpha = 1 / sqrt(1 + sigma_hat^2) (EDM's VP sigma_inv).
        return _vp_time_of_log_alpha(-0.5 * jnp.log1p(jnp.square(sigma_hat)), beta_min, beta_max)

    def discretize(t, dt):
        # DDPM's step with beta_i = beta(t) dt: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z.
        b = beta(t) * dt
        return jnp.sqrt(1.0 - b) - 1.0, jnp.sqrt(b)

    return SDE("vp", coefficients, marginal, time_of_sigma, discretize, 1.0, t_min)


def subvp_sde(beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3) -> SDE:
    """The sub-VP SDE: VP's drift and mean, sigma = 1 - alpha^2."""
    def coefficients(t):
        b = beta_min + t * (beta_max - beta_min)
        discount = -jnp.expm1(4.0 * _vp_log_alpha(t, beta_min, beta_max))  # 1 - exp(-2 int_0^t beta)
        return -0.5 * b, jnp.sqrt(b * discount)

    def marginal(t):
        log_alpha = _vp_log_alpha(jnp.asarray(t, jnp.float32), beta_min, beta_max)
        return jnp.exp(log_alpha), -jnp.expm1(2.0 * log_alpha)

    def time_of_sigma(sigma_hat):
        # sigma_hat = (1 - alpha^2) / alpha, so alpha is the positive root of alpha^2 + sigma_hat alpha - 1.
        alpha = 2.0 / (sigma_hat + jnp.sqrt(jnp.square(sigma_hat) + 4.0))
        return _vp_time_of_log_alpha(jnp.log(alpha), beta_min, beta_max)

    return SDE("subvp", coefficients, marginal, time_of_sigma, _euler_discretize(coefficients), 1.0, t_min)


def ve_sde(sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-5) -> SDE:
    """The VE SDE (score_sde's CIFAR-10 defaults: sigma from 0.01 to 50, sampling down to t = 1e-5)."""
    log_ratio = math.log(sigma_max / sigma_min)

    def sigma(t):
        return sigma_min * jnp.exp(jnp.asarray(t, jnp.float32) * log_ratio)

    def coefficients(t):
        return jnp.zeros_like(sigma(t)), sigma(t) * math.sqrt(2.0 * log_ratio)

    def marginal(t):
        s = sigma(t)
        return jnp.ones_like(s), s

    def time_of_sigma(sigma_hat):
        return jnp.log(sigma_hat / sigma_min) / log_ratio

    def discretize(t, dt):
        # SMLD's step between adjacent noise levels; the first level's neighbour is 0 (score_sde).
        s, prev = sigma(t), jnp.where(t - dt > 0, sigma(t - dt), 0.0)
        return jnp.zeros_like(s), jnp.sqrt(jnp.square(s) - jnp.square(prev))

    return SDE("ve", coefficients, marginal, time_of_sigma, discretize, sigma_max, t_min)


def sde_from_name(name: str, beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=50.0, t_min=None) -> SDE:
    """'vp' | 'subvp' | 've' -> SDE; t_min None: score_sde's (1e-3 for VP and sub-VP, 1e-5 for VE)."""
    if name in ("vp", "subvp"):
        make = vp_sde if name == "vp" else subvp_sde
        return make(beta_min, beta_max, 1e-3 if t_min is None else t_min)
    if name == "ve":
        return ve_sde(sigma_min, sigma_max, 1e-5 if t_min is None else t_min)
    raise ValueError(f"Unknown config.sde.name {name!r}; use one of {SDES}.")


# ---------------------------------------------------------------------------------------------------
# Scores, the reverse SDE, the probability-flow ODE.
# ---------------------------------------------------------------------------------------------------

def score_from_eps(sde: SDE, eps_fn):
    """(x, t) -> grad_x log p_t(x) = -eps_fn(x, t) / sigma(t)."""
    def score(x, t):
        return -eps_fn(x, t) / expand(sde.marginal(t)[1], x)
    return score


def eps_from_score(sde: SDE, score_fn):
    """(x, t) -> -sigma(t) score_fn(x, t): the noise prediction of a score (e.g. a closed-form one)."""
    def eps(x, t):
        return -expand(sde.marginal(t)[1], x) * score_fn(x, t)
    return eps


def reverse_drift(sde: SDE, score_fn, x, t, probability_flow=False):
    """f(t) x - g(t)^2 score (the reverse SDE's drift), or f x - g^2 score / 2 (the ODE's velocity)."""
    f, g = sde.coefficients(t)
    scale = 0.5 if probability_flow else 1.0
    return expand(f, x) * x - scale * expand(jnp.square(g), x) * score_fn(x, t)


def probability_flow_velocity(sde: SDE, eps_fn):
    """dx/dt of the probability-flow ODE as a `gm.ode` field (x, t scalar) -> [B, ...]."""
    score = score_from_eps(sde, eps_fn)

    def velocity(x, t):
        return reverse_drift(sde, score, x, jnp.full((x.shape[0],), t, jnp.float32), probability_flow=True)

    return velocity


def denoiser_from_eps(sde: SDE, eps_fn):
    """D(x_hat, sigma_hat) -> the predicted x_0, in EDM's sigma space, for a network trained on `sde`.

    x_hat = x_t / alpha(t) has noise level sigma_hat = sigma / alpha; the network sees
    x_t = alpha x_hat at t = time_of_sigma(sigma_hat), and D = x_hat - sigma_hat eps. For VP this is
    EDM's VPPrecond (c_skip 1, c_out -sigma, c_in 1 / sqrt(1 + sigma^2)), for VE its VEPrecond
    (c_in 1), with gm's time label in place of EDM's c_noise. sigma_hat is a scalar or [B].
    """
    def denoise(x_hat, sigma_hat):
        sigma_hat = jnp.broadcast_to(jnp.asarray(sigma_hat, jnp.float32), (x_hat.shape[0],))
        t = sde.time_of_sigma(sigma_hat)
        alpha = sde.marginal(t)[0]
        return x_hat - expand(sigma_hat, x_hat) * eps_fn(expand(alpha, x_hat) * x_hat, t)
    return denoise


def sigma_range(sde: SDE):
    """(sigma_hat at t_min, sigma_hat at 1): the noise levels a model trained on `sde` has seen, floats."""
    with jax.ensure_compile_time_eval():  # constants, also when called inside jit
        return float(sde.sigma_hat(sde.t_min)), float(sde.sigma_hat(1.0))


# ---------------------------------------------------------------------------------------------------
# Denoising score matching.
# ---------------------------------------------------------------------------------------------------

def dsm_loss(sde: SDE, eps_fn, key, x0, weighting: str = "eps"):
    """Denoising score matching at t ~ U[t_train, 1], per example [B].

    weighting 'eps': lambda(t) = sigma^2, i.e. ||eps_fn(x_t, t) - eps||^2 (score_sde's default, DDPM's
    L_simple in continuous time); 'likelihood': lambda = g^2 (Song et al. 2021b), the score matching term
    of the likelihood bound, ||eps_fn - eps||^2 g^2 / sigma^2. Both are averaged over dimensions.
    """
    t_key, noise_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (x0.shape[0],), jnp.float32, sde.t_train, 1.0)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    alpha, sigma = sde.marginal(t)
    xt = expand(alpha, x0) * x0 + expand(sigma, x0) * noise
    mse = jnp.mean(jnp.square(eps_fn(xt, t) - noise).reshape(x0.shape[0], -1), axis=-1)
    if weighting == "eps":
        return mse
    if weighting == "likelihood":
        return mse * jnp.square(sde.coefficients(t)[1] / sigma)
    raise ValueError(f"Unknown config.sde.weighting {weighting!r}; use one of {WEIGHTINGS}.")


# ---------------------------------------------------------------------------------------------------
# Samplers.
# ---------------------------------------------------------------------------------------------------

def prior_sample(sde: SDE, key, shape):
    """x_1 ~ N(0, prior_std^2 I) of `shape`."""
    return sde.prior_std * jax.random.normal(key, shape, jnp.float32)


def euler_maruyama_step(sde, score_fn, key, x, t, dt):
    """One reverse-time Euler-Maruyama step from t to t - dt -> (x, its mean)."""
    _, g = sde.coefficients(t)
    mean = x - reverse_drift(sde, score_fn, x, t) * dt
    return mean + expand(g, x) * math.sqrt(dt) * jax.random.normal(key, x.shape), mean


def reverse_diffusion_step(sde, score_fn, key, x, t, dt):
    """One step of the reverse of `sde.discretize` (the ancestral-like predictor) -> (x, its mean)."""
    a, g = sde.discretize(t, dt)
    mean = x - (expand(a, x) * x - expand(jnp.square(g), x) * score_fn(x, t))
    return mean + expand(g, x) * jax.random.normal(key, x.shape), mean


def langevin_step(sde, score_fn, key, x, t, dt, snr):
    """One Langevin corrector step at t with score_sde's step size 2 alpha_i (snr |z| / |score|)^2.

    The norms are averaged over the batch, as in score_sde; alpha_i = 1 - beta(t) dt for the VP family
    (its discretization's alpha), 1 for VE.
    """
    grad = score_fn(x, t)
    noise = jax.random.normal(key, x.shape)
    norm = lambda v: jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))  # noqa: E731
    alpha = 1.0 if sde.name == "ve" else 1.0 + 2.0 * sde.coefficients(t)[0] * dt  # f = -beta / 2
    step = 2.0 * expand(alpha, x) * jnp.square(snr * norm(noise) / norm(grad))
    mean = x + step * grad
    return mean + jnp.sqrt(2.0 * step) * noise, mean


PREDICTOR_STEPS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step}


def pc_nfe(num_steps: int, predictor: str, corrector: str, corrector_steps: int = 1) -> int:
    """Network evaluations of `pc_sample`: each step's predictor (unless 'none') and corrector steps."""
    return num_steps * ((predictor != "none") + (corrector != "none") * corrector_steps)


def pc_sample(sde: SDE, eps_fn, key, shape, num_steps: int = 1000, predictor: str = "euler_maruyama",
              corrector: str = "none", snr: float = 0.16, corrector_steps: int = 1, denoise: bool = True):
    """Predictor-corrector sampling (score_sde's `get_pc_sampler`) -> (float32 samples of `shape`, nfe).

    num_steps predictor steps at t_i = linspace(1, t_min, num_steps), each of size dt = 1 / num_steps, each
    preceded by `corrector_steps` corrector steps at t_i. denoise: return the last step's mean
    (score_sde's noise removal). nfe counts network evaluations: num_steps (1 + corrector_steps), the
    predictor's or the corrector's part 0 when it is 'none'.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"Unknown config.sde.predictor {predictor!r}; use one of {PREDICTORS}.")
    if corrector not in CORRECTORS:
        raise ValueError(f"Unknown config.sde.corrector {corrector!r}; use one of {CORRECTORS}.")
    score = score_from_eps(sde, eps_fn)
    dt = 1.0 / num_steps
    init_key, loop_key = jax.random.split(key)
    x = prior_sample(sde, init_key, shape)

    def step(carry, i_t):
        x, _ = carry
        i, t = i_t
        tt = jnp.full((shape[0],), t, jnp.float32)
        keys = jax.random.split(jax.random.fold_in(loop_key, i), corrector_steps + 1)
        mean = x
        if corrector == "langevin":
            for j in range(corrector_steps):
                x, mean = langevin_step(sde, score, keys[j], x, tt, dt, snr)
        if predictor != "none":
            x, mean = PREDICTOR_STEPS[predictor](sde, score, keys[-1], x, tt, dt)
        return (x, mean), None

    ts = jnp.linspace(1.0, sde.t_min, num_steps, dtype=jnp.float32)
    (x, mean), _ = jax.lax.scan(step, (x, x), (jnp.arange(num_steps), ts))
    return (mean if denoise else x), pc_nfe(num_steps, predictor, corrector, corrector_steps)


def tweedie_denoise(sde: SDE, eps_fn, x, t):
    """E[x_0 | x_t] = (x_t - sigma eps_fn(x_t, t)) / alpha at t (a float), [B, ...]."""
    tt = jnp.full((x.shape[0],), t, jnp.float32)
    alpha, sigma = sde.marginal(tt)
    return (x - expand(sigma, x) * eps_fn(x, tt)) / expand(alpha, x)


def ode_sample(sde: SDE, eps_fn, key, shape, method="rk4", num_steps=100, rtol=1e-5, atol=1e-5, denoise=True):
    """The probability-flow ODE from x_1 ~ prior at t = 1 to t_min through `gm.ode.solve`, then (denoise)
    the Tweedie estimate of x_0 there -> (float32 samples, nfe with the denoising evaluation).

    score_sde denoises with one reverse-diffusion predictor step; E[x_0 | x_t] is the same estimate that
    `gm.diffusion.ode_sample` and EDM's last step use, so every ODE sampler in gm ends alike.
    """
    velocity = probability_flow_velocity(sde, eps_fn)
    x, nfe = ode.solve(velocity, prior_sample(sde, key, shape), 1.0, sde.t_min, method=method,
                       num_steps=num_steps, rtol=rtol, atol=atol)
    if not denoise:
        return x, nfe
    return tweedie_denoise(sde, eps_fn, x, sde.t_min), nfe + 1


def prior_log_prob(sde: SDE, z):
    """log N(z; 0, prior_std^2 I) in nats per example [B]."""
    return dist.sum_per_example(dist.gaussian_log_prob(z, 0.0, 2.0 * math.log(sde.prior_std)))


def log_likelihood(sde: SDE, eps_fn, x, key=None, *, divergence="hutchinson", probe="rademacher",
                   method="dopri5", num_steps=100, rtol=1e-5, atol=1e-5):
    """log p_{t_min}(x) in nats [B] of the probability-flow ODE (score_sde's `likelihood.py`).

    x: float [B, ...] in model space, taken as the state at t_min. The ODE carries it to t = 1 with the
    instantaneous change of variables (`gm.ode.change_of_variables`), and log p = log N(z; 0, prior_std^2)
    + int_{t_min}^1 div v dt. Returns (log-density [B], nfe).
    """
    z, delta_logp, nfe = ode.change_of_variables(probability_flow_velocity(sde, eps_fn), x, sde.t_min, 1.0,
                                                 divergence=divergence, key=key, probe=probe, method=method,
                                                 num_steps=num_steps, rtol=rtol, atol=atol)
    return prior_log_prob(sde, z) + delta_logp, nfe
