"""Encoders and decoders of the latent-variable family (VAE, VQ-VAE), in Flax linen. Networks only.

Images come in NHWC scaled to [-1, 1]. The convolutional pair follows the VQ-VAE paper's CIFAR-10
networks (van den Oord et al. 2017, section 4.1): stride-2 4x4 convolutions down, residual blocks
(ReLU, 3x3 conv, ReLU, 1x1 conv) at the lowest resolution, and stride-2 4x4 transposed convolutions
back up. With `len(channels) = n` downsamplings the code grid is (H / 2^n, W / 2^n).
"""
import dataclasses
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "elu": nn.elu, "swish": nn.swish, "selu": nn.selu}
ARCHITECTURES = ("mlp", "conv")


def activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"config.model.activation must be one of {tuple(ACTIVATIONS)}, got {name!r}.")
    return ACTIVATIONS[name]


def _phase_plan(n, k, padding):
    """Per axis, for lax.conv_transpose with stride 2 and `padding` ('SAME' or 'VALID') of a length-n
    input and a k-tap kernel: (output length L, [(kernel taps, x padding) for output phases 0 and 1]).

    lax pads the zero-dilated input by pad_a before; output o reads kernel tap t at dilated position
    o + t, so phase r (o = 2m + r) is y[2m + r] = sum_d x[m + d] K[pad_a - r + 2d] over the taps in
    0..k-1: a stride-1 correlation of x with every second tap.
    """
    if k < 2:
        raise ValueError(f"conv_transpose_2x needs at least 2 kernel taps per axis (each phase one), got {k}.")
    if padding == "SAME":
        pad_len = k
        pad_a = k - 1 if k < 3 else -(-pad_len // 2)
    elif padding == "VALID":
        pad_len = k + max(k - 2, 0)
        pad_a = k - 1
    else:
        raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}.")
    length = 2 * n + pad_len - k
    plan = []
    for r in (0, 1):
        d_min, d_max = -((pad_a - r) // 2), (k - 1 - pad_a + r) // 2
        start = pad_a - r + 2 * d_min
        phase_length = (length - r + 1) // 2
        plan.append((slice(start, start + 2 * (d_max - d_min) + 1, 2),
                     (-d_min, phase_length - 1 + d_max - (n - 1))))
    return length, plan


def conv_transpose_2x(x, kernel, padding="SAME"):
    """lax.conv_transpose(x, kernel, strides=(2, 2), padding) as four stride-1 convolutions, one per
    output phase (row parity x column parity), interleaved.

    x [B, H, W, I], kernel [kh, kw, I, O] -> [B, Lh, Lw, O], the same numbers: 'SAME' gives 2H x 2W,
    'VALID' (2H + kh - 2) x (2W + kw - 2). For DCGAN's 4x4 'SAME' kernel, per axis,
    y[2m] = x[m-1] K[0] + x[m] K[2] and y[2m+1] = x[m] K[1] + x[m+1] K[3].
    Why: XLA:CPU computes the kernel gradient of a transposed convolution 30-80x slower than its
    forward (2.7 s against 0.07 s for DCGAN's 4x4 -> 8x8 layer at batch 128); as plain convolutions
    every gradient is a plain convolution too (0.08 s), and the forward does no work on zeros.
    """
    (b, h, w, _), o = x.shape, kernel.shape[-1]
    out_h, rows = _phase_plan(h, kernel.shape[0], padding)
    out_w, cols = _phase_plan(w, kernel.shape[1], padding)
    half_h, half_w = -(-out_h // 2), -(-out_w // 2)
    phases = []
    for taps_h, pad_h in rows:
        for taps_w, pad_w in cols:
            # Negative padding crops: a phase may not read the first or last input row.
            xp = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pad_h, 0), (*pad_w, 0), (0, 0, 0)))
            y = jax.lax.conv_general_dilated(xp, kernel[taps_h, taps_w], (1, 1), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            # An odd output length leaves phase 1 one shorter: pad it, interleave, crop.
            phases.append(jnp.pad(y, ((0, 0), (0, half_h - y.shape[1]), (0, half_w - y.shape[2]), (0, 0))))
    y = jnp.stack(phases, axis=3).reshape(b, half_h, half_w, 2, 2, o).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * half_h, 2 * half_w, o)[:, :out_h, :out_w]


class UpConv2x(nn.Module):
    """`nn.ConvTranspose(features, kernel_size, strides=(2, 2), padding)` with the same parameters
    (kernel [kh, kw, I, O] initialised alike, bias unless use_bias=False) and compute dtype, by
    `conv_transpose_2x`."""
    features: int
    kernel_size: Tuple[int, int] = (4, 4)
    padding: str = "SAME"
    dtype: Any = jnp.float32
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape)
        y = conv_transpose_2x(x.astype(self.dtype), kernel.astype(self.dtype), self.padding)
        if not self.use_bias:
            return y
        return y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)


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

