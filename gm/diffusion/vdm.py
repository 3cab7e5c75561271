"""Variational diffusion models (Kingma et al. 2021; google-research/vdm `model_vdm.py`) as a Method.

The forward process is z_t = alpha_t x + sigma_t eps with alpha_t^2 = sigmoid(-gamma(t)) and sigma_t^2 =
sigmoid(gamma(t)), where gamma = -log SNR is monotone in t in [0, 1]. x is the data's level k encoded at
its bin centre 2 (k + 1/2) / 2^n - 1. The negative ELBO, in nats per example, has three terms:

    reconstruction  -log p(x | z_0): a per-sub-pixel softmax over the 2^n levels, logits
                    -(z_0 / alpha_0 - level)^2 / (2 exp(gamma_0)) (exact when dimensions are independent);
    prior           KL(q(z_1 | x) || N(0, I));
    diffusion       continuous time: (1/2) E_t[gamma'(t) ||eps - eps_hat(z_t; gamma_t)||^2];
                    T steps: (T/2) E_i[expm1(gamma(t_i) - gamma(t_{i-1})) ||eps - eps_hat||^2],

the last being the sum of the discrete-time bound's KL terms (with the posterior variance), so the
discrete loss tends to the continuous one as T grows. t is drawn antithetically (one uniform offset
for the batch, then evenly spaced), which lowers the estimator's variance.

The schedule gamma(t) = b + |w| s(t): 'fixed' (s = t, b = gamma_min, |w| = gamma_max - gamma_min, not
trained), 'scalar' (s = t, b and w learned: the repository's CIFAR-10 setting) or 'nnet' (s a monotone
network, VDM's NoiseSchedule_NNet normalised to s(0) = 0, s(1) = 1). The continuous-time diffusion loss
depends on the schedule only through its endpoints, so b and w take the ELBO's gradient while the shape
s, which leaves the ELBO unchanged, is trained to minimise the loss estimator's variance (the paper's
section 5.2): its parameters receive the gradient of the loss's batch variance instead (`variance_minimizing`).

The network is gm's UNet fed [z_t, Fourier features of z_t] (VDM's 2^6 and 2^7 frequencies for 8-bit
data, `fourier_exponents` for other bit depths) and the noise
label 1000 (gamma_t - gamma_min) / (gamma_max - gamma_min); like VDM's ScoreUNet it predicts eps - z_t
(its "base measure" adds z_t back).
"""
import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from gm import distributions as dist
from gm.config import nonnegative, positive, setting
from gm.diffusion import sigma_sampling
from gm.diffusion.sde import expand
from gm.diffusion.sigma_sampling import SolverConfig
from gm.method import Method
from gm.nn.unet import UNetConfig, unet_from_config

GAMMA_TYPES = ("fixed", "scalar", "nnet")
SAMPLERS = ("ancestral",) + sigma_sampling.SAMPLERS


# ---------------------------------------------------------------------------------------------------
# The ELBO's terms, for any gamma and noise prediction.
# ---------------------------------------------------------------------------------------------------

def encode(levels, num_bits):
    """Integer levels -> the bin centres 2 (k + 1/2) / 2^n - 1 in (-1, 1), float32."""
    return 2.0 * (levels.astype(jnp.float32) + 0.5) / dist.num_levels(num_bits) - 1.0


def decoder_log_probs(z_rescaled, gamma_0, num_bits):
    """log p(level | z_0) for every level: [..., 2^n]; z_rescaled = z_0 / alpha_0."""
    centres = encode(jnp.arange(dist.num_levels(num_bits)), num_bits)
    logits = -0.5 * jnp.square(z_rescaled[..., None] - centres) * jnp.exp(-gamma_0)
    return jax.nn.log_softmax(logits, axis=-1)


def reconstruction_loss(levels, z_rescaled, gamma_0, num_bits):
    """-log p(x | z_0) in nats per example [B]."""
    log_probs = decoder_log_probs(z_rescaled, gamma_0, num_bits)
    picked = jnp.take_along_axis(log_probs, levels.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    return -dist.sum_per_example(picked)


def prior_loss(x, gamma_1):
    """KL(q(z_1 | x) || N(0, I)) in nats per example [B]: q(z_1 | x) = N(alpha_1 x, sigma_1^2)."""
    var_1 = jax.nn.sigmoid(gamma_1)
    return 0.5 * dist.sum_per_example((1.0 - var_1) * jnp.square(x) + var_1 - jnp.log(var_1) - 1.0)


def diffusion_loss_continuous(dgamma_t, eps, eps_hat):
    """(1/2) gamma'(t) ||eps - eps_hat||^2 per example [B] (one draw of t per example)."""
    return 0.5 * dgamma_t * dist.sum_per_example(jnp.square(eps - eps_hat))


def diffusion_loss_discrete(gamma_t, gamma_s, eps, eps_hat, num_timesteps):
    """(T/2) expm1(gamma_t - gamma_s) ||eps - eps_hat||^2 per example [B], s = t - 1/T."""
    return 0.5 * num_timesteps * jnp.expm1(gamma_t - gamma_s) * dist.sum_per_example(jnp.square(eps - eps_hat))


def antithetic_times(key, num):
    """t_i = (u + i / num) mod 1 for one u ~ U[0, 1): float32 [num], evenly spread over [0, 1)."""
    return jnp.mod(jax.random.uniform(key) + jnp.arange(num, dtype=jnp.float32) / num, 1.0)


def fourier_exponents(num_bits):
    """(n - 2, n - 1): the highest frequency's period, 2^-(n-1), is the spacing of the 2^n levels in [-1, 1]
    (VDM's 2^6 and 2^7 for 8-bit data); lower ones would be blind to which level z is near."""
    return (num_bits - 2, num_bits - 1)


def fourier_features(z, num_bits=8):
    """sin and cos of 2^k 2 pi z for k in fourier_exponents(num_bits): [..., C] -> [..., 4 C]."""
    w = jnp.asarray([2.0 ** k * 2.0 * math.pi for k in fourier_exponents(num_bits)], jnp.float32)
    h = (z[..., None] * w).reshape(z.shape[:-1] + (-1,))
    return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


# ---------------------------------------------------------------------------------------------------
# The schedule gamma(t) = b + |w| s(t).
# ---------------------------------------------------------------------------------------------------

def init_schedule(key, gamma_type, gamma_min, gamma_max, num_features=1024):
    """{'endpoints': {'b', 'w'}, 'shape': the monotone network's params} (empty where not learned)."""
    endpoints = {"b": jnp.float32(gamma_min), "w": jnp.float32(gamma_max - gamma_min)}
    if gamma_type == "fixed":
        return {}
    if gamma_type == "scalar":
        return {"endpoints": endpoints}
    k2, k3 = jax.random.split(key)
    shape = {"k1": jnp.ones((), jnp.float32),  # the linear part's slope; VDM's l1
             "k2": jax.random.normal(k2, (num_features,)), "b2": jnp.zeros((num_features,)),
             "k3": jax.random.normal(k3, (num_features,))}
    return {"endpoints": endpoints, "shape": shape}


def _monotone(shape, t):
    """VDM's NoiseSchedule_NNet without its bias: |k1| t + |k3| . (2 sigmoid(|k2| (2t - 1) + b2) - 1) / n."""
    h = 2.0 * jax.nn.sigmoid(jnp.abs(shape["k2"]) * (2.0 * t[..., None] - 1.0) + shape["b2"]) - 1.0
    return jnp.abs(shape["k1"]) * t + h @ jnp.abs(shape["k3"]) / shape["k3"].shape[0]


def shape_at(shape, t):
    """s(t) in [0, 1], monotone, s(0) = 0 and s(1) = 1 (s = t without shape parameters)."""
    t = jnp.asarray(t, jnp.float32)
    if not shape:
        return t
    u0, u1 = _monotone(shape, jnp.zeros((1,)))[0], _monotone(shape, jnp.ones((1,)))[0]
    return (_monotone(shape, t) - u0) / (u1 - u0)


def endpoints_of(schedule, gamma_min, gamma_max):
    """(b, |w|): gamma(0) and gamma(1) - gamma(0)."""
    if "endpoints" not in schedule:
        return jnp.float32(gamma_min), jnp.float32(gamma_max - gamma_min)
    return schedule["endpoints"]["b"], jnp.abs(schedule["endpoints"]["w"])


def gamma_at(schedule, t, gamma_min, gamma_max):
    """gamma(t) for t a scalar or [B]."""
    b, w = endpoints_of(schedule, gamma_min, gamma_max)
    return b + w * shape_at(schedule.get("shape"), t)


def variance_minimizing(loss_fn, shape_fn):
    """loss(theta, eta, aux) = loss_fn(theta, shape_fn(eta, aux), aux) per example [B], where theta gets
    the loss's gradient and eta that of the batch variance of the loss, 2 (L_i - mean L) dL_i/deta per
    example: Kingma et al.'s schedule training, in one backward pass. They descend E[L^2]; since E[L]
    does not depend on the schedule's shape, both have the same expected gradient, and the centred one
    is exactly the gradient of the batch's variance. aux: the data the two share (no gradient).
    """
    @jax.custom_vjp
    def loss(theta, eta, aux):
        return loss_fn(theta, shape_fn(eta, aux), aux)

    def forward(theta, eta, aux):
        shape_out, shape_vjp = jax.vjp(lambda e: shape_fn(e, aux), eta)
        value, loss_vjp = jax.vjp(lambda th, s: loss_fn(th, s, aux), theta, shape_out)
        return value, (value, shape_vjp, loss_vjp, aux)

    def backward(residuals, cotangent):
        value, shape_vjp, loss_vjp, aux = residuals
        d_theta, d_shape = loss_vjp(cotangent)
        centred = value - jnp.mean(value)
        d_shape = jax.tree.map(lambda g: 2.0 * centred * g, d_shape)  # each example's s(t_i) feeds only L_i
        zero_aux = jax.tree.map(lambda a: np.zeros(a.shape, jax.dtypes.float0) if not jnp.issubdtype(
            a.dtype, jnp.inexact) else jnp.zeros_like(a), aux)
        return d_theta, shape_vjp(d_shape)[0], zero_aux

    loss.defvjp(forward, backward)
    return loss


# ---------------------------------------------------------------------------------------------------
# The Method.
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VDMConfig:
    """config.vdm: the VDM repository's CIFAR-10 setting by default.

    gamma_type: 'fixed' | 'scalar' | 'nnet' (num_features hidden units) between gamma_min and gamma_max
      (-log SNR at t = 0 and 1, the learned endpoints' initial values); num_timesteps: 0 for continuous
      time, else the discrete-time loss over T steps; antithetic: antithetic sampling of t;
      fourier_features: the network also sees VDM's Fourier features of z_t (at the data's bit depth).
    sampler: 'ancestral' (VDM's sampler over sample_steps steps, then the decoder's most likely level)
      | 'heun' | 'euler' | 'dpm_solver++' (sigma space over config.vdm.solver, clamped to
      exp(gamma_min / 2) ... exp(gamma_max / 2)).
    """
    gamma_type: Literal[GAMMA_TYPES] = "scalar"
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    num_features: int = setting(1024, positive)
    num_timesteps: int = setting(0, nonnegative)
    antithetic: bool = True
    fourier_features: bool = True
    sampler: Literal[SAMPLERS] = "ancestral"
    sample_steps: int = setting(1000, positive)
    solver: SolverConfig = SolverConfig()

    def check(self, name):
        if not self.gamma_min < self.gamma_max:
            raise ValueError(f"{name}.gamma_min={self.gamma_min} must be below {name}.gamma_max={self.gamma_max}.")
        if self.solver.schedule == "timesteps":
            raise ValueError(f"{name}.solver.schedule='timesteps' is for DDPM models; use 'karras' or 'loglinear'.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The VDM family's config sections; the network is VDM's: 32 residual blocks of 128 channels at full
    resolution (no downsampling), attention only in the middle, dropout 0.1."""
    model: UNetConfig = UNetConfig(ch=128, ch_mult=(1,), num_res_blocks=32, attn_resolutions=(), dropout=0.1)
    vdm: VDMConfig = VDMConfig()


class Model:
    """A configured VDM: the UNet, its noise labels and Fourier features, the schedule's constants."""

    def __init__(self, settings: Settings, info):
        if not info.is_image:
            raise ValueError(f"VDM needs image data; config.data.name={info.name!r} is not an image dataset.")
        self.c, self.info = settings.vdm, info
        self.num_classes = info.num_classes if settings.model.class_conditional else None
        self.net = unet_from_config(settings.model, self.num_classes, info.shape[-1], info.shape)

    def inputs(self, z):
        return jnp.concatenate([z, fourier_features(z, self.info.num_bits)], axis=-1) if self.c.fourier_features else z

    def eps_fn(self, params, labels=None, train=False, dropout_key=None):
        """(z_t [B, H, W, C], gamma_t [B]) -> eps_hat."""
        c, rngs = self.c, ({"dropout": dropout_key} if train else {})
        y = labels if self.num_classes else None

        def eps(z, gamma):
            label = 1000.0 * (jnp.broadcast_to(gamma, (z.shape[0],)) - c.gamma_min) / (c.gamma_max - c.gamma_min)
            return z + self.net.apply({"params": params}, self.inputs(z), label, y, train=train, rngs=rngs)
        return eps

    def init(self, key, batch):
        net_key, schedule_key = jax.random.split(key)
        x = encode(batch["image"], self.info.num_bits)
        y = batch["label"] if self.num_classes else None
        net = self.net.init({"params": net_key}, self.inputs(x), jnp.zeros((x.shape[0],)), y, train=False)["params"]
        c = self.c
        return {"net": net, "gamma": init_schedule(schedule_key, c.gamma_type, c.gamma_min, c.gamma_max,
                                                   c.num_features)}

    def endpoints(self, params):
        return endpoints_of(params["gamma"], self.c.gamma_min, self.c.gamma_max)

    def terms(self, params, key, batch, train=False, dropout_key=None):
        """The negative ELBO's terms in nats per example [B]: {'recon', 'prior', 'diffusion'}."""
        c, num_bits = self.c, self.info.num_bits
        levels = batch["image"]
        x = encode(levels, num_bits)
        recon_key, t_key, eps_key = jax.random.split(key, 3)
        g0, width = self.endpoints(params)
        recon = reconstruction_loss(levels, x + jnp.exp(0.5 * g0) * jax.random.normal(recon_key, x.shape), g0,
                                    num_bits)
        prior = prior_loss(x, g0 + width)
        num = x.shape[0]
        t = antithetic_times(t_key, num) if c.antithetic else jax.random.uniform(t_key, (num,))
        if c.num_timesteps:
            t = jnp.maximum(jnp.ceil(t * c.num_timesteps), 1.0) / c.num_timesteps
        labels = batch["label"] if self.num_classes else jnp.zeros((num,), jnp.int32)
        dropout = jax.random.key_data(dropout_key) if train else jnp.zeros((2,), jnp.uint32)
        aux = (x, jax.random.normal(eps_key, x.shape), t, labels, dropout)

        def shape_fn(shape, aux):
            t = aux[2]
            if c.num_timesteps:
                return shape_at(shape, t), shape_at(shape, t - 1.0 / c.num_timesteps)
            return jax.jvp(lambda u: shape_at(shape, u), (t,), (jnp.ones_like(t),))

        def loss_fn(theta, shape_out, aux):
            net_params, endpoints = theta
            x, eps, _, labels, dropout = aux
            b, w = endpoints_of({"endpoints": endpoints} if endpoints else {}, c.gamma_min, c.gamma_max)
            gamma_t = b + w * shape_out[0]
            key = jax.random.wrap_key_data(dropout) if train else None
            var_t = expand(jax.nn.sigmoid(gamma_t), x)
            z_t = jnp.sqrt(1.0 - var_t) * x + jnp.sqrt(var_t) * eps
            eps_hat = self.eps_fn(net_params, labels, train, key)(z_t, gamma_t)
            if c.num_timesteps:
                return diffusion_loss_discrete(gamma_t, b + w * shape_out[1], eps, eps_hat, c.num_timesteps)
            return diffusion_loss_continuous(w * shape_out[1], eps, eps_hat)

        theta = (params["net"], params["gamma"].get("endpoints", {}))
        shape = params["gamma"].get("shape")
        if shape is None:
            diffusion = loss_fn(theta, shape_fn(None, aux), aux)
        else:
            diffusion = variance_minimizing(loss_fn, shape_fn)(theta, shape, aux)
        return {"recon": recon, "prior": prior, "diffusion": diffusion}

    def denoiser(self, params, labels):
        """D(x_hat, sigma_hat) in sigma space: gamma = 2 log sigma_hat, the network sees alpha x_hat."""
        eps_fn = self.eps_fn(params["net"], labels)

        def denoise(x_hat, sigma):
            sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x_hat.shape[0],))
            gamma = 2.0 * jnp.log(sigma)
            alpha = jnp.sqrt(jax.nn.sigmoid(-gamma))
            return x_hat - expand(sigma, x_hat) * eps_fn(expand(alpha, x_hat) * x_hat, gamma)
        return denoise

    def sample(self, params, key, num):
        c, num_bits = self.c, self.info.num_bits
        label_key, key = jax.random.split(key)
        labels = jax.random.randint(label_key, (num,), 0, self.info.num_classes) if self.num_classes else None
        shape = (num,) + tuple(self.info.shape)
        if c.sampler != "ancestral":
            model_range = (math.exp(c.gamma_min / 2), math.exp(c.gamma_max / 2))
            sigmas = sigma_sampling.sigma_grid(c.solver, model_range, field="config.vdm.solver")
            x = sigma_sampling.sample(self.denoiser(params, labels), c.sampler, c.solver, key, shape, sigmas)
            return dist.dequantized_to_levels((x + 1.0) / 2.0, num_bits)  # the nearest bin centre
        gamma = lambda t: gamma_at(params["gamma"], t, c.gamma_min, c.gamma_max)  # noqa: E731
        z = ancestral_sample(self.eps_fn(params["net"], labels), gamma, key, shape, c.sample_steps)
        g0 = gamma(0.0)
        return jnp.argmax(decoder_log_probs(z / jnp.sqrt(jax.nn.sigmoid(-g0)), g0, num_bits), axis=-1).astype(
            jnp.uint8)


def ancestral_sample(eps_fn, gamma_fn, key, shape, num_steps):
    """VDM's sampler: z_1 ~ N(0, I), then p(z_s | z_t) for t = i / num_steps down to 0 -> z_0 [shape]."""
    init_key, loop_key = jax.random.split(key)

    def step(z, i):
        t, s = i / num_steps, (i - 1) / num_steps
        g_t, g_s = gamma_fn(t), gamma_fn(s)
        eps_hat = eps_fn(z, jnp.full((shape[0],), g_t))
        c = -jnp.expm1(g_s - g_t)
        a_s, a_t = jax.nn.sigmoid(-g_s), jax.nn.sigmoid(-g_t)
        noise = jax.random.normal(jax.random.fold_in(loop_key, i), shape)
        z = jnp.sqrt(a_s / a_t) * (z - jnp.sqrt(jax.nn.sigmoid(g_t)) * c * eps_hat) + jnp.sqrt((1.0 - a_s) * c) * noise
        return z, None

    steps = jnp.arange(num_steps, 0, -1, dtype=jnp.float32)
    z, _ = jax.lax.scan(step, jax.random.normal(init_key, shape), steps)
    return z


def make(settings: Settings, info) -> Method:
    """VDM on images of `info` -> Method; the loss is the negative ELBO in bits/dim, `log_prob` its
    (stochastic, one t per example) estimate in nats, a bound."""
    model = Model(settings, info)
    to_bits = 1.0 / (info.num_dims * math.log(2.0))

    def loss(params, key, batch):
        loss_key, dropout_key = jax.random.split(key)
        terms = model.terms(params, loss_key, batch, train=True, dropout_key=dropout_key)
        bpd = {k: jnp.mean(v) * to_bits for k, v in terms.items()}
        value = bpd["recon"] + bpd["prior"] + bpd["diffusion"]
        g0, width = model.endpoints(params)
        metrics = {"loss": value, "bpd_recon": bpd["recon"], "bpd_prior": bpd["prior"],
                   "bpd_diffusion": bpd["diffusion"], "gamma_0": g0, "gamma_1": g0 + width}
        return value, metrics

    def log_prob(params, key, batch):
        terms = model.terms(params, key, batch)
        return -(terms["recon"] + terms["prior"] + terms["diffusion"])

    return Method(init=model.init, loss=loss, sample=model.sample, log_prob=log_prob, log_prob_is_bound=True)
