"""Flows built from the bijectors, and the two things a flow computes: log p(x) and samples.

All builders return one `Bijector` from the data side to a base side z with a standard normal base.
Image flows model y in [0, 1)^D (dequantized data), so their first layer maps y to the space the
couplings like: RealNVP's logit (which counts in the log-determinant), Glow's shift to [-0.5, 0.5).
"""
import math

import jax
import jax.numpy as jnp

from gm import distributions as dist
from gm.flows.bijectors import Chain, FactorOut, Logit, Shift, Squeeze, Unsqueeze
from gm.flows.layers import ActNorm, AffineCoupling, Invertible1x1Conv, Planar
from gm.flows.steps import GlowSteps


def log_prob(flow, params, x):
    """log p(x) in nats, [B]: log N(f^-1(x); 0, I) + log|det df^-1/dx|."""
    z, log_det = flow.apply({"params": params}, x, inverse=True)
    return dist.standard_normal_log_prob(z) + log_det


def latent_shape(flow, params, data_shape):
    """The base side's shape for one example of `data_shape` (multi-scale flows squeeze)."""
    x = jax.ShapeDtypeStruct((1,) + tuple(data_shape), jnp.float32)
    z, _ = jax.eval_shape(lambda p, v: flow.apply({"params": p}, v, inverse=True), params, x)
    return z.shape[1:]


def sample_and_log_prob(flow, params, key, num, z_shape, temperature=1.0):
    """Draw num points from the flow with base N(0, T^2 I): (x [num, ...], log q(x) [num] in nats).

    log q is the density of the tempered model (T = 1: the model itself). Works for flows without an
    inverse (planar), since it only runs forward.
    """
    z = temperature * jax.random.normal(key, (num,) + tuple(z_shape))
    x, log_det = flow.apply({"params": params}, z)
    d = math.prod(z_shape)
    return x, dist.standard_normal_log_prob(z / temperature) - d * math.log(temperature) - log_det


# --- Architectures ------------------------------------------------------------------------------------

def _coupling_pair(mask, hidden, num_blocks, scale, count, scan=True):
    return [AffineCoupling(mask, i % 2, hidden, num_blocks, scale, scan) for i in range(count)]


def realnvp(num_scales=2, hidden=64, num_blocks=4, alpha=0.05, scan=True):
    """RealNVP's multi-scale image flow (Dinh et al. 2017, section 3.6), from the data side:
    logit; per scale 3 checkerboard couplings, squeeze, 3 channel couplings, then half the channels
    factored out; at the last scale 4 checkerboard couplings. ActNorm follows each coupling in place of
    the paper's batch normalisation (same role, no running statistics in a pure function). scan: each
    coupling network's residual blocks are traced once (False: unrolled, the earlier layout)."""
    def with_norm(couplings):
        return [layer for c in couplings for layer in (c, ActNorm())]

    def scale(level):
        if level == num_scales - 1:
            return Chain(with_norm(_coupling_pair("checkerboard", hidden, num_blocks, "tanh", 4, scan)))
        layers = with_norm(_coupling_pair("checkerboard", hidden, num_blocks, "tanh", 3, scan))
        layers.append(Squeeze())
        layers += with_norm(_coupling_pair("channel", hidden, num_blocks, "tanh", 3, scan))
        layers.append(FactorOut(scale(level + 1)))
        if level > 0:
            layers.append(Unsqueeze())  # a factored-out scale hands back the shape it was given
        return Chain(layers)

    return Chain([Logit(alpha), scale(0)])


def glow(num_levels=3, depth=32, hidden=512, num_blocks=0, scan=True, remat=False):
    """Glow (Kingma & Dhariwal 2018), from the data side: shift to [-0.5, 0.5); per level squeeze, then
    `depth` steps of (ActNorm, invertible 1x1 conv, affine coupling on half the channels), then half
    the channels factored out (to the standard normal base; the paper's learned split prior is not used).

    scan: each level's steps are one `GlowSteps` (traced once, parameters stacked; remat recomputes a
    step's activations in the backward pass); scan=False unrolls them as layers of the level's chain,
    the layout of checkpoints written before (`steps.glow_params_from_unrolled` converts)."""
    def steps(i):
        if scan:
            return [GlowSteps(depth, hidden, num_blocks, first_seed=i * depth, remat=remat)]
        return [layer for j in range(depth)
                for layer in (ActNorm(), Invertible1x1Conv(seed=i * depth + j),
                              AffineCoupling("channel", 0, hidden, num_blocks, "sigmoid", scan=False))]

    def level(i):
        layers = [Squeeze()] + steps(i)
        if i < num_levels - 1:
            layers.append(FactorOut(level(i + 1)))
        if i > 0:
            layers.append(Unsqueeze())  # a factored-out level hands back the shape it was given
        return Chain(layers)

    return Chain([Shift(0.5), level(0)])  # data y = z + 0.5: y in [0, 1) is z in [-0.5, 0.5)


def coupling_flow_2d(num_layers=8, hidden=128, num_blocks=1):
    """RealNVP for vectors [B, D]: couplings with alternating masks, each followed by ActNorm."""
    layers = []
    for i in range(num_layers):
        layers += [AffineCoupling("checkerboard", i % 2, hidden, num_blocks, "tanh"), ActNorm()]
    return Chain(layers)


def planar_flow(num_layers=16):
    """A stack of planar layers for vectors [B, D] (Rezende & Mohamed 2015); forward only."""
    return Chain([Planar() for _ in range(num_layers)])
