"""Encoders and decoders of the latent-variable family (VAE, VQ-VAE), in Flax linen. Networks only.

Images come in NHWC scaled to [-1, 1]. The convolutional pair follows the VQ-VAE paper's CIFAR-10
networks (van den Oord et al. 2017, section 4.1): stride-2 4x4 convolutions down, residual blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv) at the lowest resolution, and stride-2 4x4 transposed convolutions
back up. With `len(channels) = n` downsamplings the code grid is (H / 2^n, W / 2^n).
"""
import dataclasses
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "elu": nn.elu, "swish": nn.swish}
ARCHITECTURES = ("mlp", "conv")


def activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"config.model.activation must be one of {tuple(ACTIVATIONS)}, got {name!r}.")
    return ACTIVATIONS[name]


def conv_transpose_2x(x, kernel):
    """The stride-2 'SAME' transposed convolution of `nn.ConvTranspose(O, (4, 4), strides=(2, 2))`,
    computed as four stride-1 2x2 convolutions, one per output phase, interleaved.

    x [B, H, W, I], kernel [4, 4, I, O] -> [B, 2H, 2W, O]: the numbers of lax.conv_transpose, which
    pads 2 before, so per axis y[2m] = x[m-1] K[0] + x[m] K[2] and y[2m+1] = x[m] K[1] + x[m+1] K[3].
    Why: XLA:CPU computes the kernel gradient of a transposed convolution 30-40x slower than its
    forward (2.7 s against 0.07 s for DCGAN's 4x4 -> 8x8 layer at batch 128); as plain convolutions
    every gradient is a plain convolution too (0.08 s), and the forward does no work on zeros.
    """
    pads = {0: (1, 0), 1: (0, 1)}  # phase 0 reads x[m-1], x[m]; phase 1 reads x[m], x[m+1]
    phases = [jax.lax.conv_general_dilated(x, kernel[ry::2, rx::2], (1, 1), (pads[ry], pads[rx]),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
              for ry in (0, 1) for rx in (0, 1)]
    b, h, w, _ = x.shape
    o = kernel.shape[-1]
    y = jnp.stack(phases, axis=3).reshape(b, h, w, 2, 2, o)  # [B, H, W, ry, rx, O]
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, o)


class UpConv2x(nn.Module):
    """`nn.ConvTranspose(features, (4, 4), strides=(2, 2))` with the same parameters (kernel
    [4, 4, I, O] initialised alike, bias), computed by `conv_transpose_2x`: [B, H, W, I] -> [B, 2H, 2W, O]."""
    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (4, 4, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv_transpose_2x(x, kernel) + bias


def check_downsampling(shape, num_down, field="config.model.channels"):
    """One sentence when H or W is not divisible by 2^num_down."""
    h, w = shape[:2]
    if h % 2 ** num_down or w % 2 ** num_down:
        raise ValueError(f"{field} has {num_down} stride-2 stages, so the image's height and width must be "
                         f"divisible by {2 ** num_down}, but the data are {h}x{w}; use fewer stages.")


class MLP(nn.Module):
    """[B, ...] -> [B, out_features]: Dense layers of `features` with `activation`, then a linear Dense."""
    features: Sequence[int]
    out_features: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for f in self.features:
            x = activation(self.activation)(nn.Dense(f)(x))
        return nn.Dense(self.out_features)(x)


class ResidualStack(nn.Module):
    """`num_blocks` of x + conv1x1(relu(conv3x3(relu(x)))), then a ReLU; channels kept."""
    num_blocks: int
    hidden: int

    @nn.compact
    def __call__(self, x):
        for _ in range(self.num_blocks):
            h = nn.Conv(self.hidden, (3, 3))(nn.relu(x))
            x = x + nn.Conv(x.shape[-1], (1, 1))(nn.relu(h))
        return nn.relu(x)


class ConvEncoder(nn.Module):
    """[B, H, W, C] -> [B, H / 2^n, W / 2^n, out_features] with n = len(channels)."""
    channels: Sequence[int]
    num_res_blocks: int
    res_hidden: int
    out_features: int

    @nn.compact
    def __call__(self, x):
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (4, 4), strides=(2, 2))(x)
            if i < len(self.channels) - 1:
                x = nn.relu(x)
        x = nn.Conv(self.channels[-1], (3, 3))(x)
        x = ResidualStack(self.num_res_blocks, self.res_hidden)(x)
        return nn.Conv(self.out_features, (1, 1))(x)


class ConvDecoder(nn.Module):
    """[B, h, w, D] -> [B, h 2^n, w 2^n, out_features]: the mirror of ConvEncoder."""
    channels: Sequence[int]
    num_res_blocks: int
    res_hidden: int
    out_features: int

    @nn.compact
    def __call__(self, z):
        x = nn.Conv(self.channels[-1], (3, 3))(z)
        x = ResidualStack(self.num_res_blocks, self.res_hidden)(x)
        # Named as nn.ConvTranspose's were, so checkpoints keep their parameter paths.
        for i, c in enumerate(reversed(self.channels[:-1])):
            x = nn.relu(UpConv2x(c, name=f"ConvTranspose_{i}")(x))
        return UpConv2x(self.out_features, name=f"ConvTranspose_{len(self.channels) - 1}")(x)


def _with_label(h, y, num_classes):
    """Concatenate a one-hot label to features [B, F] when the model is class-conditional."""
    if num_classes is None:
        return h
    return jnp.concatenate([h, jax.nn.one_hot(y, num_classes, dtype=h.dtype)], axis=-1)


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """The shared body of an encoder / decoder pair. arch 'mlp': Dense layers of `hidden`. 'conv':
    ConvEncoder / ConvDecoder with `channels` (one stride-2 stage each), `num_res_blocks` residual blocks
    of `res_hidden`, and Dense layers of `hidden` between the flattened grid and the latents."""
    arch: str = "mlp"
    hidden: Tuple[int, ...] = (500,)
    channels: Tuple[int, ...] = (32, 64)
    num_res_blocks: int = 1
    res_hidden: int = 32
    activation: str = "relu"


class GaussianEncoder(nn.Module):
    """q(z | x, y) = N(mean, diag(exp(log_var))): images [B, H, W, C] in [-1, 1] -> (mean, log_var) [B, L]."""
    latent_dim: int
    spec: NetSpec = NetSpec()
    num_classes: Optional[int] = None

    @nn.compact
    def __call__(self, x, y=None):
        s = self.spec
        if s.arch == "conv":
            h = ConvEncoder(s.channels, s.num_res_blocks, s.res_hidden, s.channels[-1])(x)
            h = h.reshape(h.shape[0], -1)
        else:
            h = x.reshape(x.shape[0], -1)
        h = _with_label(h, y, self.num_classes)
        out = MLP(s.hidden, 2 * self.latent_dim, s.activation)(h)
        mean, log_var = jnp.split(out, 2, axis=-1)
        return mean, log_var


class LatentDecoder(nn.Module):
    """p(x | z, y)'s parameters: latents [B, L] -> [B, H, W, out_features] (e.g. logits per sub-pixel);
    'conv' goes through Dense layers to the lowest-resolution grid, then ConvDecoder up to (H, W)."""
    image_shape: Tuple[int, ...]
    out_features: int
    spec: NetSpec = NetSpec()
    num_classes: Optional[int] = None

    @nn.compact
    def __call__(self, z, y=None):
        s = self.spec
        h, w = self.image_shape[:2]
        z = _with_label(z, y, self.num_classes)
        if s.arch == "conv":
            scale = 2 ** len(s.channels)
            grid = (h // scale, w // scale, s.channels[-1])
            x = MLP(s.hidden, grid[0] * grid[1] * grid[2], s.activation)(z)
            x = x.reshape((z.shape[0],) + grid)
            return ConvDecoder(s.channels, s.num_res_blocks, s.res_hidden, self.out_features)(x)
        x = MLP(s.hidden, h * w * self.out_features, s.activation)(z)
        return x.reshape(z.shape[0], h, w, self.out_features)

