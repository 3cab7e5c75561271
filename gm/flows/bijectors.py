"""The bijector contract, composition, and the structural bijectors of multi-scale image flows.

A bijector is a Flax module f whose one compact method runs in either direction:

    bijector.apply(params, z)               -> (x, log|det df/dz|)       forward: base -> data
    bijector.apply(params, x, inverse=True) -> (z, log|det df^-1/dx|)    inverse: data -> base

as distrax's `forward_and_log_det` / `inverse_and_log_det` (both are also methods, for readability).
Log-determinants are per example, float32 [B], in nats. The density of the data is then

    log p(x) = log p_base(z) + log|det df^-1/dx|,   z = f^-1(x)

(`gm.flows.flow.log_prob`). Both directions share one set of parameters because they run the same
compact method, which creates the same sub-modules in the same order either way.

Initialising in the inverse direction, `bijector.init(key, x, inverse=True)` on a batch of data, lets a
layer set itself from the activations it sees: ActNorm's data-dependent initialisation (Glow).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm.distributions import sum_per_example


def _zeros_log_det(x):
    return jnp.zeros((x.shape[0],), jnp.float32)


class Bijector(nn.Module):
    """Base class: subclasses implement `__call__(x, inverse=False) -> (y, log_det [B])`."""

    def forward_and_log_det(self, z):
        """Base side -> data side: (f(z), log|det J_f(z)|)."""
        return self(z)

    def inverse_and_log_det(self, x):
        """Data side -> base side: (f^-1(x), log|det J_f^-1(x)|)."""
        return self(x, inverse=True)


class Chain(Bijector):
    """The composition layers[0] o layers[1] o ... o layers[-1] (distrax's order): forward applies the
    LAST layer first, so read `layers` from the data side (layers[0]) to the base side (layers[-1])."""
    layers: Sequence[nn.Module]

    def __call__(self, x, inverse=False):
        log_det = _zeros_log_det(x)
        for layer in (self.layers if inverse else reversed(self.layers)):
            x, ld = layer(x, inverse=inverse)
            log_det = log_det + ld
        return x, log_det


class Shift(Bijector):
    """x = z + shift (volume preserving); e.g. data in [0, 1) to Glow's [-0.5, 0.5)."""
    shift: float

    def __call__(self, x, inverse=False):
        return (x - self.shift if inverse else x + self.shift), _zeros_log_det(x)


class Logit(Bijector):
    """RealNVP's preprocessing: data y in (0, 1) <-> z = logit(alpha + (1 - 2 alpha) y) in R.

    alpha keeps the logit away from infinity at the edges of the dequantized range [0, 1).
    """
    alpha: float = 0.05

    def __call__(self, x, inverse=False):
        a = self.alpha
        if inverse:  # data y -> logit space
            p = a + (1.0 - 2.0 * a) * x
            z = jnp.log(p) - jnp.log1p(-p)
            # dz/dy = (1 - 2a) / (p (1 - p))
            return z, sum_per_example(jnp.log(1.0 - 2.0 * a) - jnp.log(p) - jnp.log1p(-p))
        p = jax.nn.sigmoid(x)
        y = (p - a) / (1.0 - 2.0 * a)
        # dy/dz = p (1 - p) / (1 - 2a), with log p(1-p) = -softplus(-z) - softplus(z)
        return y, sum_per_example(-jax.nn.softplus(-x) - jax.nn.softplus(x) - jnp.log(1.0 - 2.0 * a))


def squeeze2x2(x):
    """[B, H, W, C] -> [B, H/2, W/2, 4C]: each 2x2 spatial block becomes channels (space to depth)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze2x2(x):
    """The inverse of `squeeze2x2`: [B, H, W, 4C] -> [B, 2H, 2W, C]."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, 2, 2, c // 4)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c // 4)


class Squeeze(Bijector):
    """Trades space for channels, the data side being the larger image: inverse = `squeeze2x2`."""

    def __call__(self, x, inverse=False):
        return (squeeze2x2(x) if inverse else unsqueeze2x2(x)), _zeros_log_det(x)


class Unsqueeze(Bijector):
    """The mirror of `Squeeze` (inverse = `unsqueeze2x2`): closes a squeezed block inside `FactorOut`, so
    the inner flow returns its input's shape."""

    def __call__(self, x, inverse=False):
        return (unsqueeze2x2(x) if inverse else squeeze2x2(x)), _zeros_log_det(x)


class FactorOut(Bijector):
    """Multi-scale factoring-out (RealNVP section 3.6): `inner` transforms the first half of the channels
    only; the second half is already a latent and passes through unchanged.

    Keeping the factored-out half in place makes the whole multi-scale flow one bijector from x to a z of
    the same size, with a standard normal base over all of z. `inner` must keep its input's shape (end a
    squeezing inner flow with `Unsqueeze`).
    """
    inner: nn.Module

    def __call__(self, x, inverse=False):
        c = x.shape[-1]
        if c % 2:
            raise ValueError(f"FactorOut needs an even number of channels, got {c}.")
        kept, out = x[..., : c // 2], x[..., c // 2:]
        kept, log_det = self.inner(kept, inverse=inverse)
        return jnp.concatenate([kept, out], axis=-1), log_det
