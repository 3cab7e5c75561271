"""PixelCNN++ (Salimans et al. 2017), in Flax linen.

The network maps an image x in [-1, 1] to the parameters of a discretized logistic mixture per pixel
(`gm.distributions.discretized_logistic_mixture_log_prob`), such that the output at pixel (i, j)
depends only on the pixels strictly before (i, j) in raster order. The colours inside a pixel are
handled by the mixture's channel coupling, not by the network, so no masks are needed.

Causality comes from shifted convolutions (`gm.nn.causal`) in two streams:

* ``u`` sees the rows above: down-shifted 2x3 convolutions, whose output at row i sees rows <= i,
  fed with a map shifted one row down;
* ``ul`` sees the rows above and the pixels to the left in the current row: down-right-shifted 2x2
  convolutions, fed with the sum of a down-shifted map and a right-shifted one; every block of ``ul``
  also reads ``u`` at the same position, which widens its view of the rows above.

Both streams run through gated residual blocks (concat_elu, dropout, a sigmoid gate) at three
resolutions: a first pass halves H and W twice with stride-2 shifted convolutions and keeps every
intermediate map; a second pass doubles them back with stride-2 shifted transposed convolutions and
feeds each of its blocks the matching map of the first pass (the reference's `u_list` / `ul_list`).

This follows ``pixel_cnn_pp/model.py`` and ``nn.py`` of the reference code, without its weight
normalisation and data-dependent initialisation: plain convolutions with Flax's default (LeCun normal)
initialisation, the last convolution of each block scaled down by 10 as in the reference, so a block
starts close to the identity.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm.distributions import dlm_num_params
from gm.nn.causal import down_padding, down_right_padding, down_shift, right_shift
from gm.nn.convnets import UpConv2x
from gm.nn.scan import conv_module, repeat, stack_blocks

SHIFTS = ("down", "down_right")
# The reference's kernels: 2x3 (one row above, centred) for `u`, 2x2 (above and left) for `ul`.
DEFAULT_KERNELS = {"down": (2, 3), "down_right": (2, 2)}
NUM_RESOLUTIONS = 3


def concat_elu(x: jax.Array) -> jax.Array:
    """ELU of [x, -x] on the channel axis: [..., C] -> [..., 2C].

    Like concatenated ReLU, it passes both signs of a feature on, unlike a plain ELU.
    """
    return nn.elu(jnp.concatenate([x, -x], axis=-1))


def _shifted_conv(features: int, shift: str, kernel_size: tuple[int, int] | None = None,
                  strides: int = 1, *, dtype, init_scale: float = 1.0,
                  name: str | None = None, in_loop: bool = False, windowed: bool = False) -> nn.Conv:
    """A conv padded so its output at (i, j) sees rows <= i: columns centred ("down") or <= j
    ("down_right"). With stride 2 it halves H and W (which must be even). `windowed`: no padding, for
    inputs that are windows already holding their context (`gm.nn.pixelcnn_pp_cache`)."""
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}.")
    kernel_size = DEFAULT_KERNELS[shift] if kernel_size is None else kernel_size
    padding = down_padding(kernel_size) if shift == "down" else down_right_padding(kernel_size)
    # Variance scale init_scale^2: the reference's init_scale multiplies the output's standard deviation.
    init = nn.initializers.variance_scaling(init_scale ** 2, "fan_in", "truncated_normal")
    return conv_module(in_loop)(features, kernel_size, strides=(strides, strides),
                                padding="VALID" if windowed else padding, kernel_init=init, dtype=dtype, name=name)


class ShiftedConvTranspose(nn.Module):
    """Stride-2 transposed conv that doubles H and W, keeping the shifted causality of `shift`.

    [B, H, W, C] -> [B, 2H, 2W, features]. Input (i, j) feeds output rows 2i, 2i + 1 and a few columns
    from 2j on; the crop keeps the rows from the top and, for "down", centres the columns (dropping the
    kernel's overhang on the left), as ``down_(right_)shifted_deconv2d`` of the reference.
    """
    features: int
    shift: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.shift not in SHIFTS:
            raise ValueError(f"shift must be one of {SHIFTS}, got {self.shift!r}.")
        kh, kw = DEFAULT_KERNELS[self.shift]
        # nn.ConvTranspose's numbers and parameter path, without its slow kernel gradient on CPU.
        y = UpConv2x(self.features, (kh, kw), "VALID", self.dtype, name="ConvTranspose_0")(x)
        height, width = 2 * x.shape[1], 2 * x.shape[2]
        left = (kw - 1) // 2 if self.shift == "down" else 0
        return y[:, :height, left:left + width]


class GatedResnet(nn.Module):
    """PixelCNN++'s gated residual block: [B, H, W, F] -> [B, H, W, F].

    x + a * sigmoid(b), where [a, b] = conv2(dropout(concat_elu(h))) (+ a class embedding) and
    h = conv1(concat_elu(x)) + nin(concat_elu(aux)) (`hidden`). Both convs are shifted by `shift`, so the
    block keeps its input's causality as long as `aux` has it too; `aux` is the other stream or the
    matching map of the first pass.

    `windowed=True` is the same block for the cached sampler: convolutions without padding, `hidden` and
    `output` called on windows of cached maps [B, kh, w + kw - 1, .] that hold each output's context.
    """
    features: int
    shift: str
    dropout: float = 0.0
    num_classes: Optional[int] = None
    dtype: jnp.dtype = jnp.float32
    in_loop: bool = False  # inside a scan: convolutions through gm.nn.scan.Conv
    windowed: bool = False

    def setup(self):
        conv = lambda features, **kw: _shifted_conv(features, self.shift, dtype=self.dtype, in_loop=self.in_loop,
                                                    windowed=self.windowed, **kw)
        self.conv1 = conv(self.features)
        self.nin_aux = nn.Dense(self.features, dtype=self.dtype)
        self.conv2 = conv(2 * self.features, init_scale=0.1)
        if self.num_classes is not None:
            # One learned vector per class and block, the reference's one-hot h times its matrix `hw`.
            self.class_embed = nn.Embed(self.num_classes, 2 * self.features,
                                        embedding_init=nn.initializers.normal(0.05), dtype=self.dtype)
        self.drop = nn.Dropout(self.dropout)

    def hidden(self, x: jax.Array, aux: jax.Array | None) -> jax.Array:
        """The first conv's output plus the projected aux, before its concat_elu: [B, H', W', F]."""
        h = self.conv1(concat_elu(x))
        if aux is not None:
            h = h + self.nin_aux(concat_elu(aux))
        return h

    def output(self, x: jax.Array, h: jax.Array, y: jax.Array | None, *, train: bool) -> jax.Array:
        """x + a * sigmoid(b) from the block input x and `hidden`'s h (a window of it, if windowed)."""
        h = self.conv2(self.drop(concat_elu(h), deterministic=not train))
        if y is not None:
            h = h + self.class_embed(y)[:, None, None, :]
        a, b = jnp.split(h, 2, axis=-1)
        return x + a * nn.sigmoid(b)

    def __call__(self, x: jax.Array, aux: jax.Array | None = None, y: jax.Array | None = None,
                 *, train: bool) -> jax.Array:
        return self.output(x, self.hidden(x, aux), y, train=train)


class _ResnetPair(nn.Module):
    """A gated block of each stream ('u', then 'ul' reading u), as a scan body: carry (u, ul); xs None in
    the first pass, or the first pass's (u, ul) maps of this position in the second; y broadcast.
    Returns the new (u, ul) as both carry and output (the first pass keeps every map)."""
    dropout: float
    num_classes: Optional[int]
    train: bool
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, carry, skips, y):
        u, ul = carry

        def block(shift, name):
            return GatedResnet(u.shape[-1], shift, self.dropout, self.num_classes, self.dtype, in_loop=True,
                               name=name)

        u = block("down", "u")(u, None if skips is None else skips[0], y, train=self.train)
        ul_aux = u if skips is None else jnp.concatenate([u, skips[1]], axis=-1)
        ul = block("down_right", "ul")(ul, ul_aux, y, train=self.train)
        return (u, ul), (u, ul)


class PixelCNNPP(nn.Module):
    """PixelCNN++: images [B, H, W, C] in [-1, 1] -> discretized logistic mixture parameters.

    Attributes:
      nr_resnet: gated blocks per resolution in the first pass (the second pass has one more at the
        two higher resolutions, to consume the downsampling layers' maps).
      nr_filters: feature width F of both streams.
      nr_logistic_mix: mixture components M.
      dropout: dropout rate inside every block, active when ``train=True`` (rng name "dropout").
      num_classes: if set, the network is class-conditional and needs labels ``y``.
      dtype: compute precision; parameters are float32 and the output is cast to float32.
      scan: each resolution's gated blocks of a pass are traced once (`gm.nn.scan`), under
        'down_L' (first pass) and 'up_L' (second); False unrolls them (GatedResnet_0, ...), the
        layout of checkpoints written before (`pixelcnn_pp_params_from_unrolled` converts).

    Call ``model.apply(params, x, y, train=...)``; x is float [B, H, W, C] with H and W divisible by 4
    (two halvings), y int [B] in {0..num_classes-1} or None. Returns float32
    [B, H, W, dlm_num_params(C, nr_logistic_mix)], whose pixel (i, j) depends only on the pixels of x
    strictly before (i, j) in raster order (and on y).
    """
    nr_resnet: int = 5
    nr_filters: int = 160
    nr_logistic_mix: int = 10
    dropout: float = 0.5
    num_classes: Optional[int] = None
    dtype: jnp.dtype = jnp.float32
    scan: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array | None = None, *, train: bool) -> jax.Array:
        _check_inputs(x, y, self.num_classes)
        num_channels = x.shape[-1]
        filters = self.nr_filters
        # A channel of ones tells the first convs the image apart from their zero padding.
        x = x.astype(self.dtype)
        x = jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), self.dtype)], axis=-1)

        def block(shift):
            return GatedResnet(filters, shift, dropout=self.dropout, num_classes=self.num_classes, dtype=self.dtype)

        def conv(shift, kernel_size=None, strides=1):
            return _shifted_conv(filters, shift, kernel_size, strides, dtype=self.dtype)

        # Shifting after the first convs makes them see strictly earlier rows (u) and, in the current
        # row, strictly earlier columns (ul); every later layer only keeps that property.
        u_list = [down_shift(conv("down", (2, 3))(x))]
        ul_list = [down_shift(conv("down", (1, 3))(x)) + right_shift(conv("down_right", (2, 1))(x))]

        def pairs(length, name):
            return repeat(_ResnetPair, length, in_axes=(0, nn.broadcast))(
                self.dropout, self.num_classes, train, self.dtype, name=name)

        # First pass: full, 1/2 and 1/4 resolution, keeping every map for the second pass.
        for level in range(NUM_RESOLUTIONS):
            if level > 0:
                u_list.append(conv("down", strides=2)(u_list[-1]))
                ul_list.append(conv("down_right", strides=2)(ul_list[-1]))
            if self.scan:
                _, (us, uls) = pairs(self.nr_resnet, f"down_{level}")((u_list[-1], ul_list[-1]), None, y)
                u_list.extend(us[k] for k in range(self.nr_resnet))
                ul_list.extend(uls[k] for k in range(self.nr_resnet))
                continue
            for _ in range(self.nr_resnet):
                u_list.append(block("down")(u_list[-1], None, y, train=train))
                ul_list.append(block("down_right")(ul_list[-1], u_list[-1], y, train=train))

        # Second pass: back up to full resolution, consuming the first pass's maps in reverse.
        u, ul = u_list.pop(), ul_list.pop()
        for level in range(NUM_RESOLUTIONS):
            if level > 0:
                u = ShiftedConvTranspose(filters, "down", self.dtype)(u)
                ul = ShiftedConvTranspose(filters, "down_right", self.dtype)(ul)
            count = self.nr_resnet + (level > 0)
            if self.scan:
                skips = [jnp.stack([maps.pop() for _ in range(count)]) for maps in (u_list, ul_list)]
                (u, ul), _ = pairs(count, f"up_{level}")((u, ul), tuple(skips), y)
                continue
            for _ in range(count):
                u = block("down")(u, u_list.pop(), y, train=train)
                ul = block("down_right")(ul, jnp.concatenate([u, ul_list.pop()], axis=-1), y,
                                         train=train)
        assert not u_list and not ul_list, "every map of the first pass is used exactly once"

        out = nn.Dense(dlm_num_params(num_channels, self.nr_logistic_mix), dtype=self.dtype,
                       name="nin_out")(nn.elu(ul))
        return out.astype(jnp.float32)


def _check_inputs(x, y, num_classes):
    if x.ndim != 4:
        raise ValueError(f"PixelCNNPP expects images [B, H, W, C], got shape {x.shape}.")
    height, width = x.shape[1:3]
    if height % 4 or width % 4:
        raise ValueError(
            f"PixelCNNPP halves H and W twice, so both must be divisible by 4; got {height}x{width}. "
            f"Pad or crop the images.")
    if num_classes is None and y is not None:
        raise ValueError("Labels y were given but num_classes is None; set num_classes to condition on them.")
    if num_classes is not None and y is None:
        raise ValueError(f"This PixelCNNPP is class-conditional (num_classes={num_classes}); pass labels y.")


def pixelcnn_pp_params_from_unrolled(params, nr_resnet: int):
    """Parameters of `PixelCNNPP(scan=False)` (checkpoints written before blocks were scanned) -> the
    scanned layout: the unrolled GatedResnet_K, created u then ul per position, first pass then second,
    stacked per resolution and pass into 'down_L' / 'up_L' {'u', 'ul'}."""
    out = {k: v for k, v in params.items() if not k.startswith("GatedResnet_")}
    counts = [(f"down_{level}", nr_resnet) for level in range(NUM_RESOLUTIONS)] + [
        (f"up_{level}", nr_resnet + (level > 0)) for level in range(NUM_RESOLUTIONS)]
    pair = 0
    for name, count in counts:
        out[name] = {stream: stack_blocks([params[f"GatedResnet_{2 * (pair + k) + offset}"] for k in range(count)])
                     for offset, stream in enumerate(("u", "ul"))}
        pair += count
    return out
