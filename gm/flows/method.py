"""Normalizing flows as a gm Method: maximum likelihood on dequantized images or 2-D points, and the
planar flow fitted by reverse KL to a 2-D density it can evaluate.

Images: the flow models y = (x + u) / 2^n in [0, 1)^D with u ~ U[0, 1)^D (`distributions.uniform_dequantize`),
so log p(y) is exact and `distributions.discrete_log_prob_from_continuous` turns it into the usual lower
bound on log P(x) (Jensen over the dequantization noise): `log_prob` is labelled a bound. The loss is
that bound's negative in bits/dim. Samples from a base N(0, T^2 I) (temperature T, `config.flow.temperature`)
are mapped back to levels by flooring y * 2^n.

2-D data: the loss is the negative log-density in nats and `log_prob` is exact. The planar flow has no
inverse, so it cannot score data; it is fitted instead by reverse KL, E_q[log q(x) - log p(x)], to the
toy's closed-form density (`gm.data.toy_log_density`), as in Rezende & Mohamed (2015), figure 3.
"""
import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from gm import data as gm_data
from gm import distributions as dist
from gm.config import interval, nonnegative, positive, setting
from gm.flows import models
from gm.method import Method

FLOWS = ("realnvp", "glow", "coupling", "planar")
IMAGE_FLOWS = ("realnvp", "glow")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """config.model: which flow and its sizes.

    name: 'realnvp' | 'glow' for images, 'coupling' | 'planar' for 2-D points.
    hidden, num_blocks: each coupling network's width and residual blocks (RealNVP's CIFAR-10 model: 64
      and 8; Glow's: 512 and 0, conv-ReLU-conv-ReLU-conv).
    num_scales, alpha: RealNVP's scales and its logit margin; num_levels, depth: Glow's L and K;
    num_layers: the 2-D flows' layers.
    scan: trace each repeated block once (`gm.nn.scan`): Glow's steps of a level, a coupling network's
      residual blocks. False is the unrolled layout of checkpoints written before (same numbers, compiles
      in time growing with depth; `gm.flows.steps.glow_params_from_unrolled` converts Glow's).
    remat: recompute each Glow step's activations in the backward pass (memory of one step, not K).
    """
    name: Literal[FLOWS] = "realnvp"
    hidden: int = setting(64, positive)
    num_blocks: int = setting(8, nonnegative)
    num_scales: int = setting(2, positive)
    alpha: float = setting(0.05, interval(0.0, 0.5))
    num_levels: int = setting(3, positive)
    depth: int = setting(32, positive)
    num_layers: int = setting(8, positive)
    scan: bool = True
    remat: bool = False


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """config.flow: temperature T of the base N(0, T^2 I) when sampling (Glow's 0.7 trades diversity for
    quality; training and likelihoods always use T = 1)."""
    temperature: float = setting(1.0, interval(0.0, None, low_open=True))


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flow family's config sections."""
    model: FlowConfig = FlowConfig()
    flow: SamplingConfig = SamplingConfig()


def flow_from_config(model: FlowConfig, info):
    """The flow (a Bijector) `model` describes for `info`'s data; one sentence for a bad combination."""
    name = model.name
    images = info.num_bits is not None
    if images != (name in IMAGE_FLOWS):
        kind = "images" if images else "2-D points"
        fits = IMAGE_FLOWS if images else tuple(f for f in FLOWS if f not in IMAGE_FLOWS)
        raise ValueError(f"config.model.name={name!r} does not fit {info.name!r} ({kind}); use one of {fits}.")
    if name == "realnvp":
        _check_divisible(info.shape, model.num_scales - 1, "config.model.num_scales")
        return models.realnvp(model.num_scales, model.hidden, model.num_blocks, model.alpha, model.scan)
    if name == "glow":
        _check_divisible(info.shape, model.num_levels, "config.model.num_levels")
        return models.glow(model.num_levels, model.depth, model.hidden, model.num_blocks, model.scan, model.remat)
    if name == "coupling":
        return models.coupling_flow_2d(model.num_layers, model.hidden, model.num_blocks)
    return models.planar_flow(model.num_layers)


def _check_divisible(shape, num_squeezes, field):
    h, w = shape[:2]
    if num_squeezes < 0 or h % 2 ** num_squeezes or w % 2 ** num_squeezes:
        raise ValueError(f"{field} squeezes the image {num_squeezes} times, so its height and width must be "
                         f"divisible by {2 ** max(num_squeezes, 0)}, but the data are {h}x{w}; use fewer.")


def make(settings: Settings, info) -> Method:
    """A normalizing flow for `info`'s data (see `FlowConfig`) -> Method."""
    flow = flow_from_config(settings.model, info)
    temperature = settings.flow.temperature
    if info.num_bits is not None:
        return _image_method(flow, info, temperature)
    if settings.model.name == "planar":
        return _reverse_kl_method(flow, info, temperature)
    return _density_method(flow, info, temperature)


def _params(variables):
    return variables.get("params", {})


def _image_method(flow, info, temperature):
    num_bits, num_dims = info.num_bits, info.num_dims

    def dequantize(key, batch):
        return dist.uniform_dequantize(key, batch["image"], num_bits)

    def init(key, batch):
        deq_key, init_key = jax.random.split(key)
        # Inverse direction on data: ActNorm sets itself from the first batch's activations.
        return _params(flow.init({"params": init_key}, dequantize(deq_key, batch), inverse=True))

    def log_prob(params, key, batch):
        log_density = models.log_prob(flow, params, dequantize(key, batch))
        return dist.discrete_log_prob_from_continuous(log_density, num_dims, num_bits)

    def loss(params, key, batch):
        bpd = jnp.mean(dist.bits_per_dim(-log_prob(params, key, batch), num_dims))
        return bpd, {"bpd": bpd}

    def sample(params, key, num):
        z_shape = models.latent_shape(flow, params, info.shape)
        y, _ = models.sample_and_log_prob(flow, params, key, num, z_shape, temperature)
        return dist.dequantized_to_levels(y, num_bits)

    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=True)


def _density_method(flow, info, temperature):
    def init(key, batch):
        return _params(flow.init({"params": key}, batch["x"], inverse=True))

    def log_prob(params, key, batch):
        del key  # exact and deterministic
        return models.log_prob(flow, params, batch["x"])

    def loss(params, key, batch):
        nll = -jnp.mean(log_prob(params, key, batch))
        return nll, {"nll": nll}

    def sample(params, key, num):
        return models.sample_and_log_prob(flow, params, key, num, info.shape, temperature)[0]

    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=False)


def _reverse_kl_method(flow, info, temperature):
    if info.name not in gm_data.EVERYWHERE_POSITIVE_TOYS:
        raise ValueError(f"config.model.name='planar' is fitted by reverse KL, which needs a closed-form density "
                         f"that is positive everywhere; use config.data.name in {gm_data.EVERYWHERE_POSITIVE_TOYS}.")

    def init(key, batch):
        z = jax.random.normal(key, (batch["x"].shape[0],) + tuple(info.shape))
        return _params(flow.init({"params": key}, z))

    def loss(params, key, batch):
        # The batch only sets how many samples estimate the KL: a planar flow never sees data.
        x, log_q = models.sample_and_log_prob(flow, params, key, batch["x"].shape[0], info.shape)
        log_p = gm_data.toy_log_density(info.name, x)
        kl = jnp.mean(log_q - log_p)
        return kl, {"reverse_kl": kl}

    def sample(params, key, num):
        return models.sample_and_log_prob(flow, params, key, num, info.shape, temperature)[0]

    return Method(init=init, loss=loss, sample=sample, log_prob=None)

