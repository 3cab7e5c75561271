"""Building blocks of the DDPM UNet (Ho et al. 2020), in Flax linen.

All feature maps are NHWC. Every module takes a ``dtype`` that sets the
compute precision; parameters are always created in float32. The layers
follow ``diffusion_tf/models/unet.py`` and ``diffusion_tf/nn.py`` of the
reference implementation, including its initialisation, so that parameter
counts and the behaviour at initialisation match the paper's models.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm.nn.scan import conv_module

Dtype = Any


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal timestep embedding of the tensor2tensor / DDPM code.

    Args:
      t: timesteps, shape [B], int or float (fractional times are fine).
      dim: embedding width; an odd ``dim`` gets one trailing zero column.
      max_period: the longest wavelength, in units of ``t``.

    Returns:
      float32 [B, dim]: ``[sin(t * f), cos(t * f)]`` with
      ``f_i = exp(-log(max_period) * i / (half - 1))``, ``half = dim // 2``.
    """
    t = jnp.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"timesteps must have shape [B], got {t.shape}")
    half = dim // 2
    if half < 2:
        # The reference divides by (half - 1); smaller widths are undefined there.
        raise ValueError(f"dim must be at least 4, got {dim}")
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
    """Variance scaling (fan_avg, uniform), the reference code's initialiser.

    A scale of 0 becomes 1e-10 rather than exact zeros: the layers that close
    a residual branch start near zero (so each block is ~identity and the
    network's output is ~0), yet their gradients w.r.t. earlier layers are
    not identically zero.
    """
    return nn.initializers.variance_scaling(
        1e-10 if scale == 0 else scale, mode="fan_avg", distribution="uniform"
    )


def num_groups(channels: int, max_groups: int = 32) -> int:
    """The largest group count <= min(max_groups, channels // 2) dividing ``channels``.

    For 64 channels and up this is the usual 32 (the reference's setting for
    all the paper's models). Narrower layers keep at least two channels per
    group: with one channel per group the norm removes every per-channel
    constant, including the timestep/class bias a ResnetBlock adds just
    before ``norm2``, and the network would ignore its conditioning.
    """
    if channels < 1:
        raise ValueError(f"channels must be positive, got {channels}")
    for g in range(max(1, min(max_groups, channels // 2)), 0, -1):
        if channels % g == 0:
            return g
    return 1


def GroupNorm(channels: int, *, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.GroupNorm:
    """A ``flax.linen.GroupNorm`` with ``num_groups(channels)`` groups.

    Call inside a compact method; epsilon 1e-6 as in TF's ``group_norm``.
    Statistics are reduced in float32 whatever ``dtype`` is.
    """
    return nn.GroupNorm(num_groups=num_groups(channels), epsilon=1e-6, dtype=dtype, name=name)


def _conv3x3(features: int, *, dtype: Dtype, init_scale: float = 1.0, strides: int = 1,
             name: str | None = None, in_loop: bool = False) -> nn.Conv:
    # "SAME" pads a stride-2 conv on even inputs by (0, 1), exactly as TF does.
    return conv_module(in_loop)(features, (3, 3), strides=(strides, strides), padding="SAME",
                                kernel_init=default_init(init_scale), dtype=dtype, name=name)


def _nin(features: int, *, dtype: Dtype, init_scale: float = 1.0, name: str | None = None) -> nn.Dense:
    # A 1x1 convolution ("network in network") is a Dense over the channel axis.
    return nn.Dense(features, kernel_init=default_init(init_scale), dtype=dtype, name=name)


class ResnetBlock(nn.Module):
    """Pre-activation residual block conditioned on an embedding.

    ``x`` [B, H, W, C] and ``temb`` [B, E] -> [B, H, W, out_ch]. The embedding
    is passed through swish and projected to a per-channel bias, added after
    the first convolution (Ho et al.); with ``scale_shift_norm`` it is
    projected to a scale and a shift that modulate the second GroupNorm,
    ``norm2(h) * (1 + scale) + shift`` (Nichol & Dhariwal 2021).
    """

    out_ch: int | None = None  # None keeps the input width
    dropout: float = 0.0
    scale_shift_norm: bool = False
    dtype: Dtype = jnp.float32
    in_loop: bool = False  # inside a scan: convolutions through gm.nn.scan.Conv

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array, *, train: bool) -> jax.Array:
        c = x.shape[-1]
        out_ch = c if self.out_ch is None else self.out_ch
        h = nn.swish(GroupNorm(c, dtype=self.dtype, name="norm1")(x))
        h = _conv3x3(out_ch, dtype=self.dtype, name="conv1", in_loop=self.in_loop)(h)
        emb_width = 2 * out_ch if self.scale_shift_norm else out_ch
        emb = _nin(emb_width, dtype=self.dtype, name="temb_proj")(nn.swish(temb))[:, None, None, :]
        if self.scale_shift_norm:
            scale, shift = jnp.split(emb, 2, axis=-1)
            h = GroupNorm(out_ch, dtype=self.dtype, name="norm2")(h) * (1 + scale) + shift
        else:
            h = GroupNorm(out_ch, dtype=self.dtype, name="norm2")(h + emb)
        h = nn.Dropout(self.dropout)(nn.swish(h), deterministic=not train)
        # Near-zero init makes the block start as the identity map.
        h = _conv3x3(out_ch, dtype=self.dtype, init_scale=0.0, name="conv2", in_loop=self.in_loop)(h)
        if c != out_ch:
            x = _nin(out_ch, dtype=self.dtype, name="nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over all H*W positions, with a residual.

    ``x`` [B, H, W, C] -> [B, H, W, C]; each position attends to every
    position of the same example. The C channels are split into
    ``num_heads`` heads of C / num_heads channels, logits scaled by
    1/sqrt(C / num_heads). One head is Ho et al.'s block; Nichol & Dhariwal
    use four.
    """

    num_heads: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the {c} channels of the attention block.")
        head_dim = c // self.num_heads
        h = GroupNorm(c, dtype=self.dtype, name="norm")(x)
        split = lambda a: a.reshape(b, height * width, self.num_heads, head_dim)  # noqa: E731
        q = split(_nin(c, dtype=self.dtype, name="q")(h))
        k = split(_nin(c, dtype=self.dtype, name="k")(h))
        v = split(_nin(c, dtype=self.dtype, name="v")(h))
        w = jnp.einsum("bqhc,bkhc->bhqk", q, k) * (head_dim ** -0.5)
        # Softmax in float32: low-precision logits saturate the exponent quickly.
        w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(v.dtype)
        h = jnp.einsum("bhqk,bkhc->bqhc", w, v).reshape(b, height, width, c)
        h = _nin(c, dtype=self.dtype, init_scale=0.0, name="proj_out")(h)
        return x + h


class Downsample(nn.Module):
    """Halve H and W: [B, H, W, C] -> [B, H/2, W/2, C] (H, W even).

    A learned stride-2 3x3 conv when ``with_conv``, else 2x2 average pooling.
    """

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.with_conv:
            return _conv3x3(x.shape[-1], dtype=self.dtype, strides=2, name="conv")(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class Upsample(nn.Module):
    """Double H and W: [B, H, W, C] -> [B, 2H, 2W, C].

    Nearest-neighbour repeat, then a 3x3 conv when ``with_conv``.
    """

    with_conv: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        if self.with_conv:
            x = _conv3x3(x.shape[-1], dtype=self.dtype, name="conv")(x)
        return x
