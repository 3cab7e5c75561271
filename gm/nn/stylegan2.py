"""StyleGAN2's networks (Karras et al. 2020), as in NVlabs/stylegan2-ada-pytorch, channels last.

* `MappingNetwork`: z [B, z_dim] -> w [B, w_dim]: z normalised to unit second moment, then `num_layers`
  dense layers with leaky ReLU at a learning rate 0.01 times the rest's.
* `SynthesisNetwork`: ws [B, num_ws, w_dim] -> images [B, R, R, C]: a learned 4x4 constant, then per
  resolution 4, 8, ..., R modulated 3x3 convolutions (two per block, the first upsampling 2x; one at 4x4)
  with per-pixel noise of a learned strength, and a "skip" output: each block's modulated 1x1 toRGB is
  added to the upsampled image so far. Layer i reads ws[:, i]; a block's toRGB shares its index with the
  next block's first convolution, so num_ws = 2 log2(R) - 2 (8 at 32x32).
* `Discriminator`: the "resnet" architecture (or "orig", without the skips): fromRGB at R, then per
  block two 3x3 convolutions (the second downsampling) plus a downsampling 1x1 skip, summed with gain
  sqrt(1/2); at 4x4 minibatch standard deviation, a 3x3 convolution, a dense layer and the logit [B].

Every weight is stored N(0, 1) and scaled by 1/sqrt(fan_in) when used (equalized learning rate); leaky
ReLU (slope 0.2) is followed by a gain of sqrt(2). A modulated convolution scales its input channels by
the style s = affine(w) (bias initialised to 1), convolves with the shared weight and, when
demodulating, divides each output channel by sqrt(sum_{in, kh, kw} (weight s)^2 + 1e-8): the reference's
non-fused path, which computes the same numbers as its per-sample weights. Resampling uses the
reference's [1, 3, 3, 1] filter. Departure: upsampling 3x3 convolutions upsample first (zero insertion
and the filter) and then convolve, where the reference runs a stride-2 transposed convolution and then
the filter; the two are the same linear map up to the flip of a learned kernel and the borders.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SQRT2 = math.sqrt(2.0)
FIR = np.array([1.0, 3.0, 3.0, 1.0])


def lrelu(x: jax.Array, gain: float = SQRT2) -> jax.Array:
    return nn.leaky_relu(x, 0.2) * gain


def normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) over the last axis."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def _fir_kernel(channels: int, gain: float) -> jax.Array:
    k = np.outer(FIR, FIR)
    k = k / k.sum() * gain
    return jnp.asarray(np.tile(k[:, :, None, None], (1, 1, 1, channels)), jnp.float32)  # HWIO, depthwise


def _depthwise(x, kernel, strides, padding, lhs_dilation=(1, 1)):
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding, lhs_dilation=lhs_dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])


def upsample2x(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, C]: zeros inserted, then the [1, 3, 3, 1] filter (gain 4, so a constant
    image stays constant away from the border)."""
    # lhs_dilation leaves out the zero after the last sample that the reference's upfirdn2d inserts, hence
    # its padding (2, 1) becomes (2, 2) here.
    return _depthwise(x, _fir_kernel(x.shape[-1], 4.0), (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2))


def blur(x: jax.Array, pad: int, stride: int = 1) -> jax.Array:
    """The [1, 3, 3, 1] filter with `pad` zeros on every side, at `stride`."""
    return _depthwise(x, _fir_kernel(x.shape[-1], 1.0), (stride, stride), ((pad, pad), (pad, pad)))


def downsample2x(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, C] through the filter (the reference's `downsample2d`)."""
    return blur(x, 1, 2)


class EqualDense(nn.Module):
    """Dense with weights N(0, 1/lr^2) scaled by lr/sqrt(fan_in) when used, bias (init `bias_init`)
    scaled by lr; optional leaky ReLU with gain sqrt(2)."""
    features: int
    bias_init: float = 0.0
    lr_multiplier: float = 1.0
    activation: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = 1.0 / self.lr_multiplier
        w = self.param("kernel", lambda k, s: jax.random.normal(k, s) * scale, (x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
        y = x @ (w * (self.lr_multiplier / math.sqrt(x.shape[-1]))) + b * self.lr_multiplier
        return lrelu(y) if self.activation else y


class EqualConv(nn.Module):
    """A kxk convolution with N(0, 1) weights scaled by 1/sqrt(k k C_in), optional bias, activation and
    output gain; down=True filters then strides by 2 (the reference's `Conv2dLayer(down=2)`)."""
    features: int
    kernel: int = 3
    bias: bool = True
    activation: bool = True
    down: bool = False
    gain: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel, x.shape[-1]
        w = self.param("kernel", nn.initializers.normal(1.0), (k, k, c, self.features)) / math.sqrt(k * k * c)
        if self.down and k == 1:
            x, strides, pad = downsample2x(x), (1, 1), "VALID"
        elif self.down:  # filter with 2 zeros aside (H + 1), then a valid 3x3 at stride 2: H / 2
            x, strides, pad = blur(x, 2), (2, 2), "VALID"
        else:
            strides, pad = (1, 1), "SAME"
        y = jax.lax.conv_general_dilated(x, w.astype(x.dtype), strides, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return (lrelu(y) if self.activation else y) * self.gain


def modulated_conv(x: jax.Array, weight: jax.Array, styles: jax.Array, demodulate: bool = True) -> jax.Array:
    """StyleGAN2's modulated convolution: x [B, H, W, I], weight [k, k, I, O], styles [B, I] -> [B, H, W, O].

    Equal to convolving each example with its own weight weight * s (over I), divided per output channel by
    sqrt(sum_{k, k, I} (weight s)^2 + 1e-8) when `demodulate`: so a unit-variance input gives (about)
    unit-variance outputs whatever the style."""
    y = jax.lax.conv_general_dilated(x * styles[:, None, None, :].astype(x.dtype), weight.astype(x.dtype), (1, 1),
                                     "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if not demodulate:
        return y
    # sum over (k, k, I) of (w[k, k, i, o] s[b, i])^2 = sum_i s[b, i]^2 sum_{k, k} w[k, k, i, o]^2
    d = jax.lax.rsqrt(jnp.square(styles) @ jnp.sum(jnp.square(weight), axis=(0, 1)) + 1e-8)  # [B, O]
    return y * d[:, None, None, :].astype(y.dtype)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (after a 2x upsampling when `up`), noise, bias, leaky ReLU."""
    features: int
    up: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array, noise_key: jax.Array | None) -> jax.Array:
        styles = EqualDense(x.shape[-1], bias_init=1.0, name="affine")(w)
        weight = self.param("kernel", nn.initializers.normal(1.0), (3, 3, x.shape[-1], self.features))
        if self.up:
            x = upsample2x(x)
        y = modulated_conv(x, weight, styles)
        strength = self.param("noise_strength", nn.initializers.zeros, ())
        if noise_key is not None:
            # Drawn in float32 whatever the compute precision: the same key gives the same noise.
            y = y + (jax.random.normal(noise_key, y.shape[:3] + (1,), jnp.float32) * strength).astype(y.dtype)
        return lrelu(y + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to the image's channels, without demodulation, plus bias."""
    channels: int

    @nn.compact
    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        styles = EqualDense(x.shape[-1], bias_init=1.0, name="affine")(w) / math.sqrt(x.shape[-1])
        weight = self.param("kernel", nn.initializers.normal(1.0), (1, 1, x.shape[-1], self.channels))
        return modulated_conv(x, weight, styles, demodulate=False) + self.param(
            "bias", nn.initializers.zeros, (self.channels,))


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """The reference's width at a resolution: min(channel_base / resolution, channel_max)."""
    return min(channel_base // resolution, channel_max)


def num_ws(resolution: int) -> int:
    """How many w's the synthesis network reads at `resolution` (one per convolution, plus the last toRGB)."""
    return 2 * int(round(math.log2(resolution))) - 2


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> w [B, w_dim]."""
    w_dim: int = 512
    num_layers: int = 8
    lr_multiplier: float = 0.01

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = normalize_2nd_moment(z)
        for _ in range(self.num_layers):
            x = EqualDense(self.w_dim, lr_multiplier=self.lr_multiplier, activation=True)(x)
        return x


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> images [B, R, R, channels] (unbounded; the data are in [-1, 1])."""
    resolution: int
    channels: int
    channel_base: int = 16384
    channel_max: int = 512

    @nn.compact
    def __call__(self, ws: jax.Array, noise_key: jax.Array | None = None) -> jax.Array:
        width = lambda r: channels_at(r, self.channel_base, self.channel_max)  # noqa: E731
        resolutions = [2 ** i for i in range(2, int(round(math.log2(self.resolution))) + 1)]
        keys = iter(jax.random.split(noise_key, 2 * len(resolutions)) if noise_key is not None
                    else [None] * (2 * len(resolutions)))
        const = self.param("const", nn.initializers.normal(1.0), (4, 4, width(4)))
        x = jnp.broadcast_to(const, (ws.shape[0],) + const.shape)
        x = SynthesisLayer(width(4), name="b4_conv1")(x, ws[:, 0], next(keys))
        image = ToRGB(self.channels, name="b4_torgb")(x, ws[:, 1])
        index = 1
        for r in resolutions[1:]:
            x = SynthesisLayer(width(r), up=True, name=f"b{r}_conv0")(x, ws[:, index], next(keys))
            x = SynthesisLayer(width(r), name=f"b{r}_conv1")(x, ws[:, index + 1], next(keys))
            image = upsample2x(image) + ToRGB(self.channels, name=f"b{r}_torgb")(x, ws[:, index + 2])
            index += 2
        return image


def minibatch_stddev(x: jax.Array, group_size: int) -> jax.Array:
    """Append one channel: the standard deviation over groups of `group_size` examples (min with the
    batch), averaged over channels and pixels, the same for every member of a group (the reference's
    layer with num_channels = 1). Group g holds examples g, g + B/G, ... as the reference reshapes."""
    b, h, w, c = x.shape
    g = min(group_size, b)
    if b % g:
        raise ValueError(f"config.model.mbstd_group_size={group_size} must divide the discriminator's batch of {b} "
                         f"(each device's share under pmap); change it or config.train.batch_size.")
    y = x.reshape(g, b // g, h, w, c)
    std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)  # [B / G, H, W, C]
    stat = jnp.mean(std, axis=(1, 2, 3))  # [B / G]
    stat = jnp.broadcast_to(jnp.tile(stat, g)[:, None, None, None], (b, h, w, 1))
    return jnp.concatenate([x, stat.astype(x.dtype)], axis=-1)


D_ARCHITECTURES = ("resnet", "orig")


class Discriminator(nn.Module):
    """Images [B, R, R, C] in [-1, 1] -> logits [B]: the "resnet" discriminator, or "orig" (the same
    without the 1x1 skips and their sqrt(1/2) gains)."""
    resolution: int
    channel_base: int = 16384
    channel_max: int = 512
    mbstd_group_size: int = 4
    architecture: str = "resnet"

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        width = lambda r: channels_at(r, self.channel_base, self.channel_max)  # noqa: E731
        r = self.resolution
        x = EqualConv(width(r), kernel=1, name=f"b{r}_fromrgb")(images)
        resnet = self.architecture == "resnet"
        gain = math.sqrt(0.5) if resnet else 1.0
        while r > 4:
            skip = EqualConv(width(r // 2), kernel=1, bias=False, activation=False, down=True, gain=gain,
                             name=f"b{r}_skip")(x) if resnet else 0.0
            x = EqualConv(width(r), name=f"b{r}_conv0")(x)
            x = EqualConv(width(r // 2), down=True, gain=gain, name=f"b{r}_conv1")(x)
            x = skip + x
            r //= 2
        x = minibatch_stddev(x, self.mbstd_group_size)
        x = EqualConv(width(4), name="b4_conv")(x)
        x = EqualDense(width(4), activation=True, name="b4_fc")(x.reshape(x.shape[0], -1))
        return EqualDense(1, name="b4_out")(x)[:, 0]
