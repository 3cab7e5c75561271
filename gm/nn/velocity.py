"""A velocity network for low-dimensional data (e.g. the 2-D toys): an MLP on [x, time features]."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm.nn.convnets import MLP
from gm.nn.layers import timestep_embedding


class VelocityMLP(nn.Module):
    """v(x, t): x float [B, ...] and t float [B] in [0, 1] -> float32 [B, ...] (x's shape).

    The MLP (`hidden` layers with `activation`, then a linear output) sees x flattened, t itself and
    `time_features` sinusoidal features of `time_scale` t (1000 t: the range of DDPM's timesteps, as
    the UNet sees it); time_features = 0: t alone, as Tong et al.'s 2-D networks.
    """
    hidden: Sequence[int]
    time_features: int = 32
    time_scale: float = 1000.0
    activation: str = "swish"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        flat = x.reshape(x.shape[0], -1).astype(jnp.float32)
        t = t.astype(jnp.float32)
        features = [flat, t[:, None]]
        if self.time_features:
            features.append(timestep_embedding(self.time_scale * t, self.time_features))
        return MLP(tuple(self.hidden), flat.shape[-1], self.activation)(jnp.concatenate(features, -1)).reshape(x.shape)
