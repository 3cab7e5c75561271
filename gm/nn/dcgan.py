"""GAN networks: the DCGAN generator and discriminator (Radford et al. 2016) for 32x32, 28x28 and 8x8
images, and MLPs for 2-D data. Networks only; the losses live in `gm.gan_losses`."""
from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from gm.nn.convnets import UpConv2x, _with_label


def dcgan_stages(size):
    """Stride-2 stages between a 4x4 (or 7x7, for 28) grid and an image of height `size`: the most
    halvings that leave at least 4 rows (32 -> 3, 28 -> 2, 8 -> 1)."""
    stages = 0
    while size % 2 == 0 and size // 2 >= 4:
        size //= 2
        stages += 1
    return stages


NORMS = ("batch", "layer", "none")


def _norm(kind):
    """'batch': batch statistics, in training and sampling alike (the DCGAN reference never switches its
    networks to inference mode); 'layer'; 'none' (WGAN-GP's critic must not couple examples)."""
    if kind == "batch":
        return nn.BatchNorm(use_running_average=False, momentum=0.9)
    if kind == "layer":
        return nn.LayerNorm()
    if kind == "none":
        return lambda x: x
    raise ValueError(f"config.model.g_norm and config.model.d_norm must be 'batch', 'layer' or 'none', got {kind!r}.")


def apply_discarding_batch_stats(net: nn.Module, params, *args):
    """net.apply on `params`: batch norm runs on batch statistics in training and sampling alike, and
    nothing running is kept (DCGAN's use of it)."""
    out, _ = net.apply({"params": params}, *args, mutable=["batch_stats"])
    return out


class DCGANGenerator(nn.Module):
    """z [B, L] (+ one-hot y) -> images [B, H, W, C] in [-1, 1] (tanh): Dense to the smallest grid with
    features * 2^(n-1) channels, then n stride-2 4x4 transposed convolutions, halving the channels."""
    image_shape: Tuple[int, ...]
    features: int = 64
    norm: str = "batch"
    num_classes: Optional[int] = None

    @nn.compact
    def __call__(self, z, y=None):
        h, w, c = self.image_shape
        n = dcgan_stages(h)
        width = self.features * 2 ** (n - 1)
        x = nn.Dense((h >> n) * (w >> n) * width)(_with_label(z, y, self.num_classes))
        x = nn.relu(_norm(self.norm)(x.reshape(z.shape[0], h >> n, w >> n, width)))
        # Named as nn.ConvTranspose's were, so checkpoints keep their parameter paths.
        for i in range(n - 1):
            x = UpConv2x(width >> (i + 1), name=f"ConvTranspose_{i}")(x)
            x = nn.relu(_norm(self.norm)(x))
        return jnp.tanh(UpConv2x(c, name=f"ConvTranspose_{n - 1}")(x))


class DCGANDiscriminator(nn.Module):
    """Images [B, H, W, C] in [-1, 1] -> one logit (or critic value) per example [B]: n stride-2 4x4
    convolutions doubling the channels from `features`, leaky ReLU 0.2, no norm on the first; a class
    label enters as a projection (Miyato & Koyama 2018)."""
    features: int = 64
    norm: str = "batch"
    num_classes: Optional[int] = None

    @nn.compact
    def __call__(self, x, y=None):
        n = dcgan_stages(x.shape[1])
        for i in range(n):
            x = nn.Conv(self.features * 2 ** i, (4, 4), strides=(2, 2))(x)
            x = nn.leaky_relu(x if i == 0 else _norm(self.norm)(x), 0.2)
        h = x.reshape(x.shape[0], -1)
        out = nn.Dense(1)(h)[:, 0]
        if self.num_classes is not None:
            out = out + jnp.sum(nn.Embed(self.num_classes, h.shape[-1])(y) * h, axis=-1)
        return out


def _dense(features, init_std, use_bias=True):
    """nn.Dense with N(0, init_std^2) weights and zero biases (init_std = 0: Flax's defaults)."""
    if not init_std:
        return nn.Dense(features, use_bias=use_bias)
    return nn.Dense(features, use_bias=use_bias, kernel_init=nn.initializers.normal(init_std))


class _GeneratorLayers(nn.Module):
    hidden: Tuple[int, ...]
    out_dim: int
    norm: str
    init_std: float

    @nn.compact
    def __call__(self, x):
        for f in self.hidden:
            x = nn.relu(_norm(self.norm)(_dense(f, self.init_std, use_bias=self.norm != "batch")(x)))
        return _dense(self.out_dim, self.init_std)(x)


class MLPGenerator(nn.Module):
    """z [B, L] -> points [B, D] (2-D toys): hidden layers of Dense, `norm`, ReLU; a linear output.
    With batch norm the hidden Dense layers have no bias (the norm's shift replaces it), as PacGAN's."""
    out_dim: int
    hidden: Tuple[int, ...] = (128, 128)
    num_classes: Optional[int] = None
    norm: str = "none"
    init_std: float = 0.0

    @nn.compact
    def __call__(self, z, y=None):
        # Named as the plain MLP was, so checkpoints keep their parameter paths.
        layers = _GeneratorLayers(self.hidden, self.out_dim, self.norm, self.init_std, name="MLP_0")
        return layers(_with_label(z, y, self.num_classes))


class Maxout(nn.Module):
    """[B, F] -> [B, features]: the max over `pieces` affine maps (Goodfellow et al. 2013)."""
    features: int
    pieces: int
    init_std: float = 0.0

    @nn.compact
    def __call__(self, x):
        h = _dense(self.features * self.pieces, self.init_std)(x)
        return jnp.max(h.reshape(h.shape[:-1] + (self.features, self.pieces)), axis=-1)


class _DiscriminatorLayers(nn.Module):
    hidden: Tuple[int, ...]
    maxout_pieces: int
    init_std: float

    @nn.compact
    def __call__(self, x):
        for f in self.hidden:
            if self.maxout_pieces > 1:
                x = Maxout(f, self.maxout_pieces, self.init_std)(x)
            else:
                x = nn.relu(_dense(f, self.init_std)(x))
        return _dense(1, self.init_std)(x)


class MLPDiscriminator(nn.Module):
    """Points [B, D] (or packs [B, m D]) -> [B] logits: hidden layers of ReLU units, or of maxout units
    with `maxout_pieces` > 1 (as PacGAN's and ALI's toy discriminators); no normalisation."""
    hidden: Tuple[int, ...] = (128, 128)
    num_classes: Optional[int] = None
    maxout_pieces: int = 1
    init_std: float = 0.0

    @nn.compact
    def __call__(self, x, y=None):
        x = _with_label(x.reshape(x.shape[0], -1), y, self.num_classes)
        return _DiscriminatorLayers(self.hidden, self.maxout_pieces, self.init_std, name="MLP_0")(x)[:, 0]
