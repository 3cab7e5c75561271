"""The DDPM UNet of Ho et al. 2020 (``diffusion_tf/models/unet.py``) in Flax.

With the default fields and a 32x32x3 input this is the paper's CIFAR-10
model: 35,746,307 parameters.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Literal, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm import checks
from gm.config import interval, nonnegative, positive, positive_entries, setting

from gm.nn.layers import (
    AttnBlock,
    Downsample,
    Dtype,
    GroupNorm,
    ResnetBlock,
    Upsample,
    default_init,
    timestep_embedding,
)
from gm.nn.scan import repeat, stack_blocks, uniform_runs
from gm.nn.song_unet import SongUNet


class _Stage(nn.Module):
    """One residual block (named 'block') and, with `attention`, its attention block ('attn'), as a scan
    body: carry h [B, H, W, out_ch]; xs the skip map concatenated to h first (the up path) or None; temb
    broadcast. Returns (h, h): the down path keeps every block's output for the skips."""
    out_ch: int
    dropout: float
    scale_shift_norm: bool
    attention: bool
    num_heads: int
    train: bool
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, skip, temb):
        x = h if skip is None else jnp.concatenate([h, skip], axis=-1)
        h = ResnetBlock(self.out_ch, self.dropout, self.scale_shift_norm, self.dtype, in_loop=True, name="block")(
            x, temb, train=self.train)
        if self.attention:
            h = AttnBlock(num_heads=self.num_heads, dtype=self.dtype, name="attn")(h)
        return h, h


class UNet(nn.Module):
    """Noise-prediction UNet conditioned on the timestep and, optionally, a class.

    Fields:
      ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels.
      ch_mult: width multipliers, one per resolution level. Each level but
        the last halves the spatial size, so H and W must be divisible by
        ``2 ** (len(ch_mult) - 1)``.
      num_res_blocks: residual blocks per level on the way down (one more
        on the way up, to consume the extra skip from each downsample).
      attn_resolutions: feature-map heights at which self-attention follows
        each residual block (the middle block always has attention).
      dropout: dropout rate inside the residual blocks, used when ``train``.
      resamp_with_conv: learned convs in down/upsampling rather than
        average pooling / plain nearest-neighbour.
      num_heads: attention heads in every attention block (1 in Ho et al.,
        4 in Nichol & Dhariwal's improved DDPM).
      scale_shift_norm: condition the residual blocks by scaling and
        shifting their second GroupNorm (improved DDPM) instead of adding a
        bias before it.
      num_classes: when set, a learned class embedding is added to the time
        embedding and ``y`` must be given.
      out_ch: output channels; None means the input's channel count.
      dtype: compute dtype; parameters stay float32, the output is float32.
      scan: consecutive residual blocks of a level with the same input shape
        (e.g. all but the first of each level on the way down) are traced
        once (`gm.nn.scan`), under 'down_I_blocks_A_to_B' / 'up_I_blocks_A_to_B';
        False unrolls them, the layout of checkpoints written before
        (`unet_params_from_unrolled` converts).
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    num_heads: int = 1
    scale_shift_norm: bool = False
    num_classes: int | None = None
    out_ch: int | None = None
    dtype: Dtype = jnp.float32
    scan: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, *,
                 train: bool) -> jax.Array:
        """Predict from a noisy batch.

        Args:
          x: float [B, H, W, C] (NHWC), values roughly in [-1, 1].
          t: int or float [B] timesteps.
          y: int32 [B] class labels in [0, num_classes), or None when the model
            is unconditional.
          train: enables dropout (needs a 'dropout' rng).

        Returns:
          float32 [B, H, W, out_ch] (out_ch defaults to C).
        """
        self._check_inputs(x, t, y)
        out_ch = x.shape[-1] if self.out_ch is None else self.out_ch
        num_levels = len(self.ch_mult)
        res_block = lambda h, mult, name: ResnetBlock(  # noqa: E731
            out_ch=None if mult is None else self.ch * mult, dropout=self.dropout,
            scale_shift_norm=self.scale_shift_norm, dtype=self.dtype, name=name)(h, temb, train=train)
        attn_block = lambda h, name: AttnBlock(  # noqa: E731
            num_heads=self.num_heads, dtype=self.dtype, name=name)(h)

        temb = self._embed(t, y)
        x = x.astype(self.dtype)

        # Every intermediate output is kept: the up path consumes one per block.
        hs = [nn.Conv(self.ch, (3, 3), padding="SAME", kernel_init=default_init(1.0),
                      dtype=self.dtype, name="conv_in")(x)]
        for i in range(num_levels):
            width = self.ch * self.ch_mult[i]
            signatures = [(hs[-1].shape[-1] if j == 0 else width, None) for j in range(self.num_res_blocks)]
            h = hs[-1]
            for start, stop in uniform_runs(signatures, width, self.scan):
                if stop - start == 1:
                    h = res_block(h, self.ch_mult[i], f"down_{i}_block_{start}")
                    if h.shape[1] in self.attn_resolutions:
                        h = attn_block(h, f"down_{i}_attn_{start}")
                    hs.append(h)
                else:
                    name = f"down_{i}_blocks_{start}_to_{stop - 1}"
                    h, outs = self._stage(stop - start, width, h.shape[1], train, name)(h, None, temb)
                    hs.extend(outs[k] for k in range(stop - start))
            if i != num_levels - 1:
                hs.append(Downsample(self.resamp_with_conv, dtype=self.dtype,
                                     name=f"down_{i}_downsample")(hs[-1]))

        h = hs[-1]
        h = res_block(h, None, "mid_block_1")
        h = attn_block(h, "mid_attn_1")
        h = res_block(h, None, "mid_block_2")

        for i in reversed(range(num_levels)):
            width = self.ch * self.ch_mult[i]
            count = self.num_res_blocks + 1
            skips = hs[len(hs) - count:][::-1]
            del hs[len(hs) - count:]
            signatures = [(h.shape[-1] if j == 0 else width, skips[j].shape[-1]) for j in range(count)]
            for start, stop in uniform_runs(signatures, width, self.scan):
                if stop - start == 1:
                    h = res_block(jnp.concatenate([h, skips[start]], axis=-1), self.ch_mult[i], f"up_{i}_block_{start}")
                    if h.shape[1] in self.attn_resolutions:
                        h = attn_block(h, f"up_{i}_attn_{start}")
                else:
                    h, _ = self._stage(stop - start, width, h.shape[1], train, f"up_{i}_blocks_{start}_to_{stop - 1}")(
                        h, jnp.stack(skips[start:stop]), temb)
            if i != 0:
                h = Upsample(self.resamp_with_conv, dtype=self.dtype, name=f"up_{i}_upsample")(h)
        assert not hs, "every skip connection must be consumed"

        h = nn.swish(GroupNorm(h.shape[-1], dtype=self.dtype, name="norm_out")(h))
        # Near-zero init: the untrained model predicts ~0 (e.g. zero noise).
        h = nn.Conv(out_ch, (3, 3), padding="SAME", kernel_init=default_init(0.0),
                    dtype=self.dtype, name="conv_out")(h)
        return h.astype(jnp.float32)

    def _stage(self, length, width, resolution, train, name):
        """`length` residual blocks (each followed by attention at the attention resolutions) traced once."""
        return repeat(_Stage, length, in_axes=(0, nn.broadcast))(
            out_ch=width, dropout=self.dropout, scale_shift_norm=self.scale_shift_norm,
            attention=resolution in self.attn_resolutions, num_heads=self.num_heads, train=train,
            dtype=self.dtype, name=name)

    def _embed(self, t: jax.Array, y: jax.Array | None) -> jax.Array:
        """Time (plus class) embedding, [B, 4 * ch] in the compute dtype."""
        temb = timestep_embedding(t, self.ch)
        temb = nn.Dense(4 * self.ch, kernel_init=default_init(1.0), dtype=self.dtype,
                        name="temb_dense0")(temb)
        temb = nn.Dense(4 * self.ch, kernel_init=default_init(1.0), dtype=self.dtype,
                        name="temb_dense1")(nn.swish(temb))
        if self.num_classes is not None:
            # Added, not concatenated, so every block sees it through temb_proj.
            temb = temb + nn.Embed(self.num_classes, 4 * self.ch, dtype=self.dtype,
                                   name="class_embed")(y)
        return temb

    def _check_inputs(self, x: jax.Array, t: jax.Array, y: jax.Array | None) -> None:
        if x.ndim != 4:
            raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"H and W must be divisible by {factor}, got {x.shape[1:3]}")
        if jnp.shape(t) != (x.shape[0],):
            raise ValueError(f"t must have shape [{x.shape[0]}], got {jnp.shape(t)}")
        if self.num_classes is None and y is not None:
            raise ValueError("y was given but the model is unconditional (num_classes=None)")
        if self.num_classes is not None:
            if y is None:
                raise ValueError("a class-conditional model needs labels y")
            if jnp.shape(y) != (x.shape[0],):
                raise ValueError(f"y must have shape [{x.shape[0]}], got {jnp.shape(y)}")


ARCHITECTURES = ("ddpm", "ddpmpp", "ncsnpp")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """config.model for the UNet (see `UNet`): the DDPM paper's CIFAR-10 network by default (35.7M
    parameters). class_conditional adds a class embedding; dtype is the compute dtype. architecture:
    'ddpm' (this module's UNet), or score_sde's 'ddpmpp' / 'ncsnpp' (`gm.nn.song_unet`, with ch,
    ch_mult, num_res_blocks, attn_resolutions and dropout; one attention head, no scale-shift norm).
    scan: trace the repeated residual blocks of a level once (False: unrolled, the layout of checkpoints
    written before; `unet_params_from_unrolled` converts)."""
    architecture: Literal[ARCHITECTURES] = "ddpm"
    ch: int = setting(128, positive)
    ch_mult: Tuple[int, ...] = setting((1, 2, 2, 2), positive_entries)
    num_res_blocks: int = setting(2, nonnegative)
    attn_resolutions: Tuple[int, ...] = (16,)
    dropout: float = setting(0.1, interval(0.0, 1.0))
    num_heads: int = setting(1, positive)
    scale_shift_norm: bool = False
    class_conditional: bool = False
    dtype: Literal[checks.DTYPES] = "float32"
    scan: bool = True

    def check(self, name):
        checks.require(self.ch >= 4, f"{name}.ch", self.ch, "at least 4 (the timestep embedding's width)")
        checks.require(len(self.ch_mult) > 0, f"{name}.ch_mult", self.ch_mult, "a non-empty tuple")
        if self.architecture != "ddpm":
            checks.require(self.num_heads == 1, f"{name}.num_heads", self.num_heads,
                           f"1 with {name}.architecture={self.architecture!r} (its attention has one head)")
            checks.require(not self.scale_shift_norm, f"{name}.scale_shift_norm", self.scale_shift_norm,
                           f"False with {name}.architecture={self.architecture!r}")


def check_unet_config(c: UNetConfig, image_shape) -> None:
    """The UNet's fields against images of `image_shape` [H, W, C] (config.model); one sentence each."""
    height, width = image_shape[:2]
    factor = 2 ** (len(c.ch_mult) - 1)
    checks.require(height % factor == 0 and width % factor == 0, "config.model.ch_mult", c.ch_mult,
                   f"short enough for {height}x{width} images (each level but the last halves them, so "
                   f"2 ** (levels - 1) must divide both)")
    resolutions = [height // 2 ** i for i in range(len(c.ch_mult))]
    checks.require(set(c.attn_resolutions) <= set(resolutions), "config.model.attn_resolutions",
                   tuple(c.attn_resolutions), f"some of this UNet's resolutions {tuple(resolutions)}")
    widths = [c.ch * m for r, m in zip(resolutions, c.ch_mult) if r in c.attn_resolutions]
    checks.require(all(w % c.num_heads == 0 for w in widths + [c.ch * c.ch_mult[-1]]), "config.model.num_heads",
                   c.num_heads, "a divisor of the width of every attention block")


def unet_from_config(c: UNetConfig, num_embeddings: Optional[int] = None, out_ch: Optional[int] = None,
                     image_shape=None) -> UNet:
    """The UNet `c` describes, with `num_embeddings` class embeddings and `out_ch` outputs; with
    `image_shape` the fields are checked against it first (`check_unet_config`)."""
    if image_shape is not None:
        check_unet_config(c, image_shape)
    if c.architecture != "ddpm":
        ncsnpp = c.architecture == "ncsnpp"
        return SongUNet(ch=c.ch, ch_mult=tuple(c.ch_mult), num_blocks=c.num_res_blocks,
                        attn_resolutions=tuple(c.attn_resolutions), dropout=c.dropout,
                        embedding="fourier" if ncsnpp else "positional", encoder="residual" if ncsnpp else "standard",
                        taps=(1, 3, 3, 1) if ncsnpp else (1, 1), noise_mult=2 if ncsnpp else 1,
                        num_classes=num_embeddings, out_ch=out_ch, dtype=jnp.dtype(c.dtype), scan=c.scan)
    return UNet(ch=c.ch, ch_mult=tuple(c.ch_mult), num_res_blocks=c.num_res_blocks,
                attn_resolutions=tuple(c.attn_resolutions), dropout=c.dropout, num_heads=c.num_heads,
                scale_shift_norm=c.scale_shift_norm, num_classes=num_embeddings, out_ch=out_ch,
                dtype=jnp.dtype(c.dtype), scan=c.scan)


def unet_params_from_unrolled(params, template):
    """Parameters of `UNet(scan=False)` (checkpoints written before blocks were scanned) -> the layout of
    `template`, the parameters of the scanned UNet of the same fields (e.g. from `jax.eval_shape` of its
    init): each 'PATH_I_blocks_A_to_B' gets blocks A..B of the unrolled 'PATH_I_block_J' (and
    'PATH_I_attn_J') stacked."""
    out = {}
    for name in template:
        match = re.fullmatch(r"(down|up)_(\d+)_blocks_(\d+)_to_(\d+)", name)
        if match is None:
            out[name] = params[name]
            continue
        path, level, first, last = match.group(1), match.group(2), int(match.group(3)), int(match.group(4))
        stage = {"block": stack_blocks([params[f"{path}_{level}_block_{j}"] for j in range(first, last + 1)])}
        if "attn" in template[name]:
            stage["attn"] = stack_blocks([params[f"{path}_{level}_attn_{j}"] for j in range(first, last + 1)])
        out[name] = stage
    return out
