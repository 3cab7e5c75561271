"""Continuous-time diffusion as `gm.method.Method`s: score SDEs (Song et al. 2021) and EDM (Karras et al. 2022).

Both train a UNet (`gm.nn.unet`) on images scaled to [-1, 1] and sample with any sampler their math allows:

* `score_sde` (config.model, config.sde): an SDE of `gm.diffusion.sde` (VP, sub-VP, VE); the network
  predicts the noise at time t (fed as 999 t for VP and sub-VP, log sigma(t) for VE: score_sde's
  continuous labels); denoising score matching
  with the eps or likelihood weighting; predictor-corrector or probability-flow ODE sampling, or any
  sigma-space sampler (EDM's Heun, DPM-Solver++) through EDM's VP / VE preconditioning; `log_prob` is the
  ODE likelihood on uniformly dequantized data (a bound on log P(x) at the data's bit depth, the same
  dequantization as flow matching's), with Hutchinson's trace estimator by default.
* `edm` (config.model, config.edm): EDM's preconditioning, log-normal noise levels and loss weighting; its
  Heun sampler over the Karras schedule by default, or Euler / DPM-Solver++. No likelihood.

A class-conditional UNet (config.model.class_conditional) trains on the batch's labels and samples
uniformly random classes.
"""
import dataclasses
from typing import Any, Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gm import checks, ode
from gm import distributions as dist
from gm.config import interval, positive, setting
from gm.diffusion import edm, sde as sde_lib, sigma_sampling
from gm.diffusion.sigma_sampling import SolverConfig
from gm.method import Method
from gm.nn.unet import UNetConfig, unet_from_config

SDE_TIME_SCALE = 999.0  # score_sde feeds its continuous VP networks 999 t
SDE_SAMPLERS = ("pc", "ode") + sigma_sampling.SAMPLERS


class ImageNetwork(NamedTuple):
    """A UNet of (x, noise label [B], class [B]) and how to call it."""
    net: Any
    num_classes: Optional[int]

    def init(self, key, x, labels):
        y = labels if self.num_classes else None
        return self.net.init({"params": key}, x, jnp.zeros((x.shape[0],), jnp.float32), y, train=False)["params"]

    def bind(self, params, labels, train=False, dropout_key=None):
        """(x [B, H, W, C], noise label float [B]) -> [B, H, W, C]."""
        rngs = {"dropout": dropout_key} if train else {}
        y = labels if self.num_classes else None
        return lambda x, c: self.net.apply({"params": params}, x, c, y, train=train, rngs=rngs)


def image_network(model: UNetConfig, info, family: str) -> ImageNetwork:
    if not info.is_image:
        raise ValueError(f"{family} needs image data; config.data.name={info.name!r} is not an image dataset.")
    num_classes = info.num_classes if model.class_conditional else None
    return ImageNetwork(unet_from_config(model, num_classes, image_shape=info.shape), num_classes)


def _labels(key, batch_or_num, info, network):
    """The batch's labels, or uniformly random classes for `num` samples (None when unconditional)."""
    if not network.num_classes:
        return None
    if isinstance(batch_or_num, int):
        return jax.random.randint(key, (batch_or_num,), 0, info.num_classes)
    return batch_or_num["label"]


# ---------------------------------------------------------------------------------------------------
# Score SDEs.
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SDEConfig:
    """config.sde: score_sde's VP setting by default.

    name: 'vp' | 'subvp' (beta_min, beta_max) | 've' (sigma_min, sigma_max); weighting: 'eps' (lambda =
      sigma^2) | 'likelihood' (lambda = g^2).
    sampler: 'pc' (num_steps predictor steps with `predictor`, each after corrector_steps of `corrector`
      with signal-to-noise ratio snr; score_sde's VP uses Euler-Maruyama alone, its VE reverse diffusion
      + Langevin) | 'ode' (the probability-flow ODE with ode_solver: ode_steps fixed steps, or dopri5 at
      rtol / atol) | 'heun' | 'euler' | 'dpm_solver++' (sigma space, config.sde.solver).
    divergence, probe: the likelihood's trace ('hutchinson' or 'exact'); it integrates with ode_solver.
    """
    name: Literal[sde_lib.SDES] = "vp"
    beta_min: float = setting(0.1, interval(0.0, None, low_open=True))
    beta_max: float = setting(20.0, interval(0.0, None, low_open=True))
    sigma_min: float = setting(0.01, interval(0.0, None, low_open=True))
    sigma_max: float = setting(50.0, interval(0.0, None, low_open=True))
    weighting: Literal[sde_lib.WEIGHTINGS] = "eps"
    sampler: Literal[SDE_SAMPLERS] = "pc"
    num_steps: int = setting(1000, positive)
    predictor: Literal[sde_lib.PREDICTORS] = "euler_maruyama"
    corrector: Literal[sde_lib.CORRECTORS] = "none"
    snr: float = setting(0.16, interval(0.0, None, low_open=True))
    corrector_steps: int = setting(1, positive)
    ode_solver: Literal[ode.METHODS] = "dopri5"
    ode_steps: int = setting(100, positive)
    rtol: float = setting(1e-5, interval(0.0, None, low_open=True))
    atol: float = setting(1e-5, interval(0.0, None, low_open=True))
    divergence: Literal[ode.DIVERGENCES] = "hutchinson"
    probe: Literal[ode.PROBES] = "rademacher"
    solver: SolverConfig = SolverConfig()

    def check(self, name):
        checks.require(self.beta_min < self.beta_max, f"{name}.beta_min", self.beta_min,
                       f"below {name}.beta_max={self.beta_max}")
        checks.require(self.sigma_min < self.sigma_max, f"{name}.sigma_min", self.sigma_min,
                       f"below {name}.sigma_max={self.sigma_max}")
        if self.sampler == "pc" and self.predictor == "none" and self.corrector == "none":
            raise ValueError(f"{name}.predictor and {name}.corrector are both 'none'; the PC sampler needs one.")
        if self.solver.schedule == "timesteps":
            raise ValueError(f"{name}.solver.schedule='timesteps' is for DDPM models; use 'karras' or 'loglinear'.")

    def build(self) -> sde_lib.SDE:
        return sde_lib.sde_from_name(self.name, self.beta_min, self.beta_max, self.sigma_min, self.sigma_max)

    def ode_options(self) -> dict:
        return dict(method=self.ode_solver, num_steps=self.ode_steps, rtol=self.rtol, atol=self.atol)


@dataclasses.dataclass(frozen=True)
class SDESettings:
    """The score_sde family's config sections."""
    model: UNetConfig = UNetConfig()
    sde: SDEConfig = SDEConfig()


def noise_label(sde, t):
    """What the network sees of t [B]: 999 t (VP, sub-VP) or log sigma(t) (VE), as in score_sde."""
    if sde.name == "ve":
        return jnp.log(sde.marginal(t)[1])
    return SDE_TIME_SCALE * t


def sde_eps_fn(sde, network: ImageNetwork, params, labels, train=False, dropout_key=None):
    """The noise prediction (x_t, t [B] in [0, 1]) -> eps of a score-SDE UNet."""
    net = network.bind(params, labels, train, dropout_key)
    return lambda x, t: net(x, noise_label(sde, jnp.broadcast_to(t, (x.shape[0],))))


def sample_sde(sde, s: SDEConfig, eps_fn, key, shape):
    """float32 samples in model space with config.sde's sampler."""
    if s.sampler == "pc":
        return sde_lib.pc_sample(sde, eps_fn, key, shape, s.num_steps, s.predictor, s.corrector, s.snr,
                                 s.corrector_steps)[0]
    if s.sampler == "ode":
        return sde_lib.ode_sample(sde, eps_fn, key, shape, **s.ode_options())[0]
    sigmas = sigma_sampling.sigma_grid(s.solver, sde_lib.sigma_range(sde), field="config.sde.solver")
    return sigma_sampling.sample(sde_lib.denoiser_from_eps(sde, eps_fn), s.sampler, s.solver, key, shape, sigmas)


def dequantized_log_prob(log_likelihood_fn, key, batch, info):
    """The dequantization bound on log P(x) in nats [B] of a density in [-1, 1): x uniformly dequantized
    with `key` (as flow matching's), then log_likelihood_fn(y [B, ...]) -> log-density [B]."""
    y = dist.symmetric_dequantize(key, batch["image"], info.num_bits)
    return dist.discrete_log_prob_from_continuous(log_likelihood_fn(y), info.num_dims, info.num_bits, scale=2.0)


def make_score_sde(settings: SDESettings, info) -> Method:
    """A score SDE on images of `info` -> Method (see the module docstring)."""
    s = settings.sde
    sde = s.build()
    network = image_network(settings.model, info, "A score SDE")

    def init(key, batch):
        return network.init(key, dist.levels_to_symmetric(batch["image"], info.num_bits), batch.get("label"))

    def loss(params, key, batch):
        loss_key, dropout_key = jax.random.split(key)
        eps_fn = sde_eps_fn(sde, network, params, _labels(None, batch, info, network), True, dropout_key)
        value = jnp.mean(sde_lib.dsm_loss(sde, eps_fn, loss_key, dist.levels_to_symmetric(batch["image"],
                                                                                          info.num_bits), s.weighting))
        return value, {"loss": value}

    def sample(params, key, num):
        label_key, sample_key = jax.random.split(key)
        eps_fn = sde_eps_fn(sde, network, params, _labels(label_key, num, info, network))
        return dist.symmetric_to_levels(sample_sde(sde, s, eps_fn, sample_key, (num,) + tuple(info.shape)),
                                        info.num_bits)

    def log_prob(params, key, batch):
        data_key, probe_key = jax.random.split(key)
        eps_fn = sde_eps_fn(sde, network, params, _labels(None, batch, info, network))
        density = lambda y: sde_lib.log_likelihood(sde, eps_fn, y, probe_key, divergence=s.divergence,  # noqa: E731
                                                   probe=s.probe, **s.ode_options())[0]
        return dequantized_log_prob(density, data_key, batch, info)

    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=True)


# ---------------------------------------------------------------------------------------------------
# EDM.
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EDMConfig:
    """config.edm: the paper's CIFAR-10 settings (sigma_data 0.5, ln sigma ~ N(-1.2, 1.2^2); Heun over 18
    Karras levels, 35 evaluations). sampler: 'heun' | 'euler' | 'dpm_solver++', over config.edm.solver."""
    sigma_data: float = setting(0.5, interval(0.0, None, low_open=True))
    p_mean: float = -1.2
    p_std: float = setting(1.2, interval(0.0, None, low_open=True))
    sampler: Literal[sigma_sampling.SAMPLERS] = "heun"
    solver: SolverConfig = SolverConfig()

    def check(self, name):
        if self.solver.schedule == "timesteps":
            raise ValueError(f"{name}.solver.schedule='timesteps' is for DDPM models; use 'karras' or 'loglinear'.")


@dataclasses.dataclass(frozen=True)
class EDMSettings:
    """The EDM family's config sections."""
    model: UNetConfig = UNetConfig()
    edm: EDMConfig = EDMConfig()


def edm_denoiser(network: ImageNetwork, params, labels, sigma_data, train=False, dropout_key=None):
    """D(x, sigma) of a preconditioned UNet (which sees c_noise = log(sigma) / 4 as its noise label)."""
    return edm.preconditioned_denoiser(network.bind(params, labels, train, dropout_key), sigma_data)


def make_edm(settings: EDMSettings, info) -> Method:
    """EDM on images of `info` -> Method (see the module docstring)."""
    e = settings.edm
    network = image_network(settings.model, info, "EDM")

    def init(key, batch):
        return network.init(key, dist.levels_to_symmetric(batch["image"], info.num_bits), batch.get("label"))

    def loss(params, key, batch):
        loss_key, dropout_key = jax.random.split(key)
        denoise = edm_denoiser(network, params, _labels(None, batch, info, network), e.sigma_data, True, dropout_key)
        x0 = dist.levels_to_symmetric(batch["image"], info.num_bits)
        value = jnp.mean(edm.denoising_loss(denoise, loss_key, x0, e.p_mean, e.p_std, e.sigma_data))
        return value, {"loss": value}

    def sample(params, key, num):
        label_key, sample_key = jax.random.split(key)
        denoise = edm_denoiser(network, params, _labels(label_key, num, info, network), e.sigma_data)
        sigmas = sigma_sampling.sigma_grid(e.solver, (0.0, float("inf")), field="config.edm.solver")
        x = sigma_sampling.sample(denoise, e.sampler, e.solver, sample_key, (num,) + tuple(info.shape), sigmas)
        return dist.symmetric_to_levels(x, info.num_bits)

    return Method(init=init, loss=loss, sample=sample)
