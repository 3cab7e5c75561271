"""CycleGAN's networks (Zhu et al. 2017), as in the authors' code (junyanz/pytorch-CycleGAN-and-pix2pix).

* `ResnetGenerator`: c7s1-F, then `num_down` stride-2 3x3 convolutions doubling the width, `num_blocks`
  residual blocks (reflection-padded 3x3 convolutions), `num_down` stride-2 transposed convolutions back,
  c7s1-C and tanh. Every convolution but the last is followed by instance norm (no affine parameters,
  eps 1e-5) and ReLU; 7x7 and residual convolutions pad by reflection. The paper's 6 blocks at 128x128
  and 9 at 256x256; images in [-1, 1] to images in [-1, 1] of the same shape.
* `PatchDiscriminator`: the 70x70 PatchGAN, 4x4 convolutions, stride 2 for the first `num_layers` (widths
  F, 2F, 4F, capped at 8F), then one of stride 1 and one to a single channel, LeakyReLU 0.2 and instance
  norm after every convolution but the first and the last: one real/fake logit per overlapping patch.

Weights are drawn from N(0, 0.02^2) as in the reference (`init_type='normal'`), biases zero. A
convolution followed by instance norm has no bias: the norm subtracts it, so its gradient is zero up to
round-off, which Adam would turn into steps of the learning rate's size (the reference keeps these
biases; without them the networks compute the same functions with 5,248 and 896 fewer parameters). The
residual blocks are scanned (`gm.nn.scan.repeat`): traced once, whatever their number.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm.nn.convnets import UpConv2x
from gm.nn.scan import Conv, repeat

INIT = nn.initializers.normal(0.02)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """[B, H, W, C] -> [B, H + 2 pad, W + 2 pad, C], mirrored at the border without repeating it."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def instance_norm(name: str | None = None) -> nn.InstanceNorm:
    """Per example and channel over H and W, without learned scale or shift (PyTorch's InstanceNorm2d)."""
    return nn.InstanceNorm(epsilon=1e-5, use_bias=False, use_scale=False, name=name)


class ResnetBlock(nn.Module):
    """x + IN(conv(pad(ReLU(IN(conv(pad(x))))))): [B, H, W, F] -> [B, H, W, F], as a scan body (carry x)."""
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, _):
        features = x.shape[-1]
        conv = lambda: Conv(features, (3, 3), padding="VALID", use_bias=False, kernel_init=INIT, dtype=self.dtype)
        h = nn.relu(instance_norm()(conv()(reflect_pad(x, 1))))
        h = instance_norm()(conv()(reflect_pad(h, 1)))
        return x + h, None


class ResnetGenerator(nn.Module):
    """Images [B, H, W, C] in [-1, 1] -> translated images [B, H, W, out_channels] in [-1, 1]; H and W
    divisible by 2^num_down."""
    out_channels: int
    features: int = 64
    num_blocks: int = 9
    num_down: int = 2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, w = x.shape[1:3]
        if h % 2 ** self.num_down or w % 2 ** self.num_down:
            raise ValueError(f"The generator halves the images {self.num_down} times, so H and W must be divisible "
                             f"by {2 ** self.num_down}; got {h}x{w}.")
        conv = lambda features, size, **kw: nn.Conv(features, (size, size), kernel_init=INIT, dtype=self.dtype, **kw)
        x = x.astype(self.dtype)
        x = nn.relu(instance_norm()(conv(self.features, 7, padding="VALID", use_bias=False)(reflect_pad(x, 3))))
        for level in range(self.num_down):
            x = conv(self.features * 2 ** (level + 1), 3, strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=False)(x)
            x = nn.relu(instance_norm()(x))
        x, _ = repeat(ResnetBlock, self.num_blocks, in_axes=nn.broadcast)(self.dtype, name="blocks")(x, None)
        for level in reversed(range(self.num_down)):
            # PyTorch's ConvTranspose2d(3, stride 2, padding 1, output_padding 1): exactly 2H x 2W.
            x = UpConv2x(self.features * 2 ** level, (3, 3), "SAME", self.dtype, use_bias=False, kernel_init=INIT)(x)
            x = nn.relu(instance_norm()(x))
        x = conv(self.out_channels, 7, padding="VALID")(reflect_pad(x, 3))
        return jnp.tanh(x).astype(jnp.float32)


def patch_grid(size: int, num_layers: int) -> int:
    """The side of `PatchDiscriminator`'s logit grid for images of side `size` (30 for 256 and 3 layers)."""
    for _ in range(num_layers):  # the stride-2 4x4 convolutions, padded by 1
        size = (size - 2) // 2 + 1
    return size - 2  # the two stride-1 4x4 convolutions, padded by 1, each remove one


class PatchDiscriminator(nn.Module):
    """Images [B, H, W, C] in [-1, 1] -> patch logits [B, H', W'] (70x70 patches for num_layers=3)."""
    features: int = 64
    num_layers: int = 3
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda features, stride, bias=True: nn.Conv(features, (4, 4), strides=(stride, stride),
                                                           padding=((1, 1), (1, 1)), use_bias=bias, kernel_init=INIT,
                                                           dtype=self.dtype)
        lrelu = lambda h: nn.leaky_relu(h, 0.2)
        x = lrelu(conv(self.features, 2)(x.astype(self.dtype)))
        for n in range(1, self.num_layers + 1):
            stride = 2 if n < self.num_layers else 1
            x = lrelu(instance_norm()(conv(self.features * min(2 ** n, 8), stride, bias=False)(x)))
        return conv(1, 1)(x)[..., 0].astype(jnp.float32)
