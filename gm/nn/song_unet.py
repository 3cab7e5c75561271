"""The DDPM++ and NCSN++ U-Nets of score_sde (Song et al. 2021) as EDM re-implements them (NVlabs/edm
`training/networks.py`, SongUNet), in Flax. NHWC throughout.

The two differ in four places: DDPM++ embeds the noise label with sinusoids (`positional`), keeps a
plain encoder and resamples with the box filter [1, 1] (2x2 average pooling, nearest-neighbour
upsampling); NCSN++ uses random Fourier features of scale 16 (`fourier`, twice as wide), adds a
residual path that downsamples the input image alongside the encoder (`residual`), and resamples with
the FIR filter [1, 3, 3, 1]. Both use BigGAN-style residual blocks that resample inside the block, skip
connections scaled by sqrt(1/2), one-head attention at the listed resolutions and Xavier-uniform
initialisation with near-zero last layers. With EDM's CIFAR-10 settings (128 channels, multipliers
(2, 2, 2), 4 blocks per resolution, attention at 16x16) DDPM++ has 55.7M parameters.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gm.nn.layers import Dtype
from gm.nn.scan import conv_module, repeat, stack_blocks, uniform_runs

EMBEDDINGS = ("positional", "fourier")
ENCODERS = ("standard", "residual")


def xavier(weight: float = 1.0):
    """Xavier-uniform scaled by `weight` (EDM's init_weight)."""
    return nn.initializers.variance_scaling(weight ** 2, "fan_avg", "uniform")


def group_norm(channels: int, eps: float, dtype, name: str) -> nn.GroupNorm:
    """EDM's GroupNorm: min(32, channels // 4) groups."""
    return nn.GroupNorm(num_groups=min(32, channels // 4), epsilon=eps, dtype=dtype, name=name)


def _filter(taps: Sequence[int], channels: int, dtype) -> jax.Array:
    """The separable resampling filter f f^T / (sum f)^2 as a depthwise kernel [k, k, 1, channels]."""
    f = np.asarray(taps, np.float32)
    f2 = np.outer(f, f) / f.sum() ** 2
    return jnp.asarray(np.tile(f2[:, :, None, None], (1, 1, 1, channels)), dtype)


def downsample(x: jax.Array, taps: Sequence[int]) -> jax.Array:
    """Filter then keep every other pixel: [B, H, W, C] -> [B, H/2, W/2, C]."""
    k, c = len(taps), x.shape[-1]
    pad = (k - 1) // 2
    return jax.lax.conv_general_dilated(x, _filter(taps, c, x.dtype), (2, 2), [(pad, pad)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def upsample(x: jax.Array, taps: Sequence[int]) -> jax.Array:
    """Transposed filtering by 4 f f^T at stride 2: [B, H, W, C] -> [B, 2H, 2W, C] ([1, 1]: nearest)."""
    k, c = len(taps), x.shape[-1]
    pad = k - 1 - (k - 1) // 2
    return jax.lax.conv_general_dilated(x, 4 * _filter(taps, c, x.dtype), (1, 1), [(pad, pad)] * 2,
                                        lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c)


def _conv(features: int, kernel: int, weight: float = 1.0, dtype=jnp.float32, name: Optional[str] = None,
          in_loop: bool = False):
    return conv_module(in_loop)(features, (kernel, kernel), padding="SAME", kernel_init=xavier(weight),
                                dtype=dtype, name=name)


class Block(nn.Module):
    """EDM's UNetBlock as DDPM++ / NCSN++ configure it: [B, H, W, C] and the embedding [B, E] ->
    [B, H', W', out_ch] (H' = 2H with up, H / 2 with down), optionally followed by one-head attention."""
    out_ch: int
    up: bool = False
    down: bool = False
    attention: bool = False
    dropout: float = 0.0
    taps: Sequence[int] = (1, 1)
    dtype: Dtype = jnp.float32
    in_loop: bool = False  # inside a scan: convolutions through gm.nn.scan.Conv

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, *, train: bool) -> jax.Array:
        skip_scale, eps, c = math.sqrt(0.5), 1e-6, x.shape[-1]
        conv = functools.partial(_conv, in_loop=self.in_loop)
        resample = (lambda h: upsample(h, self.taps)) if self.up else (lambda h: downsample(h, self.taps)) \
            if self.down else (lambda h: h)
        h = resample(nn.silu(group_norm(c, eps, self.dtype, "norm0")(x)))
        h = conv(self.out_ch, 3, dtype=self.dtype, name="conv0")(h)
        h = h + nn.Dense(self.out_ch, kernel_init=xavier(), dtype=self.dtype, name="affine")(emb)[:, None, None, :]
        h = nn.silu(group_norm(self.out_ch, eps, self.dtype, "norm1")(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv(self.out_ch, 3, weight=1e-5, dtype=self.dtype, name="conv1")(h)
        if self.out_ch != c or self.up or self.down:
            x = conv(self.out_ch, 1, dtype=self.dtype, name="skip")(resample(x))
        x = (h + x) * skip_scale
        if not self.attention:
            return x
        b, height, width, ch = x.shape
        qkv = conv(3 * ch, 1, weight=math.sqrt(0.2), dtype=self.dtype, name="qkv")(
            group_norm(ch, eps, self.dtype, "norm2")(x))
        qkv = qkv.reshape(b, height * width, ch, 3)  # EDM's channel layout: (channel, q/k/v)
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        w = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / math.sqrt(ch), axis=-1)
        a = jnp.einsum("bqk,bkc->bqc", w.astype(v.dtype), v).reshape(b, height, width, ch)
        return (conv(ch, 1, weight=1e-5, dtype=self.dtype, name="proj")(a) + x) * skip_scale


class _Stage(nn.Module):
    """A `Block` (named 'block') as a scan body: carry h; xs the skip map concatenated to h first (the
    decoder) or None; the embedding broadcast. Returns (h, h): the encoder keeps every output."""
    out_ch: int
    attention: bool
    dropout: float
    taps: Sequence[int]
    train: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, skip, emb):
        x = h if skip is None else jnp.concatenate([h, skip], axis=-1)
        h = Block(self.out_ch, attention=self.attention, dropout=self.dropout, taps=tuple(self.taps), dtype=self.dtype,
                  in_loop=True, name="block")(x, emb, train=self.train)
        return h, h


class SongUNet(nn.Module):
    """DDPM++ (embedding 'positional', encoder 'standard', taps (1, 1), noise_mult 1) or NCSN++
    ('fourier', 'residual', (1, 3, 3, 1), 2): (x [B, H, W, C], noise label [B], class [B] or None, train)
    -> float32 [B, H, W, out_ch].

    scan: consecutive blocks of a resolution with the same input shape are traced once (`gm.nn.scan`),
    under 'enc_R_blocksA_to_B' / 'dec_R_blocksA_to_B'; False unrolls them, the layout of checkpoints
    written before (`song_unet_params_from_unrolled` converts)."""
    ch: int = 128
    ch_mult: Sequence[int] = (2, 2, 2)
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    embedding: str = "positional"
    encoder: str = "standard"
    taps: Sequence[int] = (1, 1)
    noise_mult: int = 1
    num_classes: Optional[int] = None
    out_ch: Optional[int] = None
    dtype: Dtype = jnp.float32
    scan: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: Optional[jax.Array] = None, *, train: bool) -> jax.Array:
        out_ch = x.shape[-1] if self.out_ch is None else self.out_ch
        emb = self._embed(t, y)
        block = lambda out, name, **kw: Block(out, dropout=self.dropout, taps=tuple(self.taps), dtype=self.dtype,  # noqa: E731
                                              name=name, **kw)
        x = x.astype(self.dtype)
        aux, h, skips = x, None, []
        for level, mult in enumerate(self.ch_mult):
            res = x.shape[1] >> level
            if level == 0:
                h = _conv(self.ch, 3, dtype=self.dtype, name=f"enc_{res}_conv")(x)
            else:
                h = block(h.shape[-1], f"enc_{res}_down", down=True)(h, emb, train=train)
                if self.encoder == "residual":
                    # NCSN++'s input path: conv then the filter at stride 2 (EDM's fused resampling).
                    pad = (len(self.taps) - 1) // 2 + 1
                    r = nn.Conv(h.shape[-1], (3, 3), padding=[(pad, pad)] * 2, kernel_init=xavier(), dtype=self.dtype,
                                name=f"enc_{res}_aux_residual")(aux)
                    r = jax.lax.conv_general_dilated(r, _filter(self.taps, r.shape[-1], r.dtype), (2, 2), "VALID",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                     feature_group_count=r.shape[-1])
                    h = aux = (h + r) / math.sqrt(2.0)
            skips.append(h)
            width, attention = self.ch * mult, res in self.attn_resolutions
            signatures = [(h.shape[-1] if i == 0 else width, None) for i in range(self.num_blocks)]
            for start, stop in uniform_runs(signatures, width, self.scan):
                if stop - start == 1:
                    h = block(width, f"enc_{res}_block{start}", attention=attention)(h, emb, train=train)
                    skips.append(h)
                else:
                    name = f"enc_{res}_blocks{start}_to_{stop - 1}"
                    h, outs = self._stage(stop - start, width, attention, train, name)(h, None, emb)
                    skips.extend(outs[k] for k in range(stop - start))
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            res = x.shape[1] >> level
            if level == len(self.ch_mult) - 1:
                h = block(h.shape[-1], f"dec_{res}_in0", attention=True)(h, emb, train=train)
                h = block(h.shape[-1], f"dec_{res}_in1")(h, emb, train=train)
            else:
                h = block(h.shape[-1], f"dec_{res}_up", up=True)(h, emb, train=train)
            count, width = self.num_blocks + 1, self.ch * mult
            level_skips = skips[len(skips) - count:][::-1]
            del skips[len(skips) - count:]
            attention = [i == self.num_blocks and res in self.attn_resolutions for i in range(count)]
            signatures = [(h.shape[-1] if i == 0 else width, level_skips[i].shape[-1], attention[i])
                          for i in range(count)]
            for start, stop in uniform_runs(signatures, width, self.scan):
                if stop - start == 1:
                    h = block(width, f"dec_{res}_block{start}", attention=attention[start])(
                        jnp.concatenate([h, level_skips[start]], axis=-1), emb, train=train)
                else:
                    name = f"dec_{res}_blocks{start}_to_{stop - 1}"
                    h, _ = self._stage(stop - start, width, attention[start], train, name)(
                        h, jnp.stack(level_skips[start:stop]), emb)
        assert not skips, "every skip connection must be consumed"
        h = nn.silu(group_norm(h.shape[-1], 1e-6, self.dtype, "out_norm")(h))
        return _conv(out_ch, 3, weight=1e-5, dtype=self.dtype, name="out_conv")(h).astype(jnp.float32)

    def _stage(self, length, width, attention, train, name):
        """`length` blocks of one signature traced once."""
        return repeat(_Stage, length, in_axes=(0, nn.broadcast))(
            width, attention, self.dropout, tuple(self.taps), train, self.dtype, name=name)

    def _embed(self, t: jax.Array, y: Optional[jax.Array]) -> jax.Array:
        width = self.ch * self.noise_mult
        t = jnp.asarray(t, jnp.float32)
        if self.embedding == "positional":
            freqs = (1.0 / 10000.0) ** (jnp.arange(width // 2, dtype=jnp.float32) / (width // 2 - 1))
        else:
            # A fixed random draw (EDM's buffer): a parameter the loss never reaches.
            freqs = 2 * math.pi * jax.lax.stop_gradient(self.param(
                "fourier_freqs", lambda key: 16.0 * jax.random.normal(key, (width // 2,))))
        args = t[:, None] * freqs
        emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)  # EDM swaps its [cos, sin] to this
        if self.num_classes is not None:
            onehot = jax.nn.one_hot(y, self.num_classes) * math.sqrt(self.num_classes)
            emb = emb + nn.Dense(width, kernel_init=xavier(), name="map_label")(onehot)
        emb = nn.silu(nn.Dense(4 * self.ch, kernel_init=xavier(), dtype=self.dtype, name="map_layer0")(emb))
        return nn.silu(nn.Dense(4 * self.ch, kernel_init=xavier(), dtype=self.dtype, name="map_layer1")(emb))


def song_unet_params_from_unrolled(params, template):
    """Parameters of `SongUNet(scan=False)` (checkpoints written before blocks were scanned) -> the layout
    of `template`, the scanned SongUNet's parameters (e.g. `jax.eval_shape` of its init): each
    'PREFIX_blocksA_to_B' gets the unrolled 'PREFIX_blockJ', J = A..B, stacked."""
    out = {}
    for name in template:
        match = re.fullmatch(r"(.+)_blocks(\d+)_to_(\d+)", name)
        out[name] = params[name] if match is None else {"block": stack_blocks(
            [params[f"{match.group(1)}_block{j}"] for j in range(int(match.group(2)), int(match.group(3)) + 1)])}
    return out
