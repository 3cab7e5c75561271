"""PixelCNN++ sampling with cached activations (Ramachandran et al. 2017, "Fast generation for
convolutional autoregressive models").

The plain sampler runs the whole network once per pixel, H W times, though a new pixel changes only the
activations after it. Here every map that a convolution reads is cached, and each drawn pixel computes
every layer at one position, reading the neighbours it needs (the row above, the pixel to the left) from
the caches: O(1) network work per pixel instead of O(H W). The numbers are those of `PixelCNNPP.apply`
on the image drawn so far (the same blocks, `GatedResnet(windowed=True)`, on windows of the caches), so
for the same key the draws are the plain sampler's.

The schedule follows the two streams' causality (`gm.nn.pixelcnn_pp`):

* ``u`` at row i sees only rows < i of the image, so at the start of each row it is computed for the
  whole row, at every resolution: row i, i // 2 and i // 4 of the full, 1/2 and 1/4 resolution maps;
* ``ul`` at (i, j) sees the pixels before (i, j), so it is computed per pixel, at (i, j), (i // 2, j // 2)
  and (i // 4, j // 4), then the output at (i, j) is drawn and written into the image.

A lower resolution's position is computed once, at the row (pixel) where it starts: i (and j) divisible
by 2 or 4 (`lax.cond`). A stride-2 convolution at (r, c) reads (2r - 1 .. 2r, 2c - 1 .. 2c), all at or
before the current pixel; a transposed one feeds (r, c) from the cached output at (r // 2, c // 2),
computed at the same or an earlier step.

Caches are zero-padded maps [N, H_l + 1, W_l + 2, F] (one row above, one column each side): zero is the
network's own padding (concat_elu(0) = 0 for a block's input), so a window at the border needs no special case.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm.nn.pixelcnn_pp import (NUM_RESOLUTIONS, GatedResnet, PixelCNNPP, ShiftedConvTranspose, _check_inputs,
                               pixelcnn_pp_params_from_unrolled)

# The network's own convolutions by Flax's creation order (`PixelCNNPP.__call__`): the first maps, one
# stride-2 convolution per stream and lower level, one transposed convolution per stream and upper level.
_FIRST_U, _FIRST_UL_ABOVE, _FIRST_UL_LEFT = "Conv_0", "Conv_1", "Conv_2"
_STREAMS = ("u", "ul")
_SHIFT = {"u": "down", "ul": "down_right"}


def _downsample_name(stream: str, level: int) -> str:
    return f"Conv_{1 + 2 * level + _STREAMS.index(stream)}"


def _upsample_name(stream: str, level: int) -> str:
    return f"ShiftedConvTranspose_{2 * (level - 1) + _STREAMS.index(stream)}"


def _valid_conv(params, window: jax.Array, strides: int, dtype) -> jax.Array:
    """One of the network's convolutions, unpadded, on a window that holds its context."""
    kh, kw, _, features = params["kernel"].shape
    conv = nn.Conv(features, (kh, kw), strides=(strides, strides), padding="VALID", dtype=dtype)
    return conv.apply({"params": params}, window)


def _run_blocks(block: GatedResnet, params, cache, pos, x, aux, y):
    """A scanned run of gated blocks at the current position(s), reading and updating its caches.

    Args:
      block: the run's `GatedResnet(windowed=True)`; params: its parameters stacked on a leading axis K.
      cache: {"ins": [K, N, Hp, Wp, F] the blocks' inputs, "hid": the same for `hidden`, "out": [N, Hp,
        Wp, F] the run's output}, padded by one row above and one column each side.
      pos: (r, c) at the run's resolution, the first position computed; a row of w positions from there.
      x: [N, 1, w, F] the run's input at those positions.
      aux: [K, N, 1, w, F'] each block's aux there, or None.

    Returns:
      (output [N, 1, w, F], the blocks' inputs [K, N, 1, w, F], the updated cache).
    """
    r, c = pos
    k, n, _, _, f = cache["ins"].shape
    w = x.shape[2]
    span = w + (2 if block.shift == "down" else 1)
    windows = [jax.lax.dynamic_slice(cache[name], (0, 0, r, c, 0), (k, n, 2, span, f)) for name in ("ins", "hid")]

    def body(x, inputs):
        p, window_x, window_h, aux_k = inputs
        window_x = window_x.at[:, 1:, 1:1 + w].set(x)
        h = block.apply({"params": p}, window_x, aux_k, method=GatedResnet.hidden)
        window_h = window_h.at[:, 1:, 1:1 + w].set(h)
        out = block.apply({"params": p}, x, window_h, y, method=GatedResnet.output, train=False)
        return out, (x, h)

    out, (xs, hs) = jax.lax.scan(body, x, (params, *windows, aux))
    write = lambda buf, v, start: jax.lax.dynamic_update_slice(buf, v.astype(buf.dtype), start)
    cache = {"ins": write(cache["ins"], xs, (0, 0, r + 1, c + 1, 0)),
             "hid": write(cache["hid"], hs, (0, 0, r + 1, c + 1, 0)),
             "out": write(cache["out"], out, (0, r + 1, c + 1, 0))}
    return out, xs, cache


def _outputs_at(cache, pos, w: int) -> jax.Array:
    """The blocks' outputs of a run at w positions from (r, c): the next block's inputs, then the run's
    output: [K, N, 1, w, F]."""
    r, c = pos
    k, n, _, _, f = cache["ins"].shape
    later = jax.lax.dynamic_slice(cache["ins"], (1, 0, r + 1, c + 1, 0), (k - 1, n, 1, w, f))
    last = jax.lax.dynamic_slice(cache["out"], (0, r + 1, c + 1, 0), (n, 1, w, f))
    return jnp.concatenate([later, last[None]], axis=0)


def _skips(xs: jax.Array, out: jax.Array, level: int) -> jax.Array:
    """The first pass's maps that the second pass's run `level` reads, in its order (the reference pops
    them from a list): the matching first-pass run's inputs and, above the lowest level, its output,
    last first."""
    maps = xs if level == 0 else jnp.concatenate([xs, out[None]], axis=0)
    return maps[::-1]


def _block(net: PixelCNNPP, stream: str) -> GatedResnet:
    return GatedResnet(net.nr_filters, _SHIFT[stream], num_classes=net.num_classes, dtype=net.dtype, windowed=True)


def init_caches(net: PixelCNNPP, params, shape: tuple[int, int, int, int]):
    """Zero caches for drawing images of `shape` (N, H, W, C): (the padded image [N, H + 1, W + 2, C + 1],
    {stream: {run: cache}} for every run of blocks, `_run_blocks`'s layout)."""
    num, height, width, channels = shape
    features = net.nr_filters

    def run(name, stream, halvings):
        count = params[name][stream]["conv1"]["kernel"].shape[0]
        h, w = height >> halvings, width >> halvings
        return {"ins": jnp.zeros((count, num, h + 1, w + 2, features), net.dtype),
                "hid": jnp.zeros((count, num, h + 1, w + 2, features), net.dtype),
                "out": jnp.zeros((num, h + 1, w + 2, features), net.dtype)}

    caches = {stream: {**{f"down_{level}": run(f"down_{level}", stream, level) for level in range(NUM_RESOLUTIONS)},
                       **{f"up_{level}": run(f"up_{level}", stream, NUM_RESOLUTIONS - 1 - level)
                          for level in range(NUM_RESOLUTIONS)}}
              for stream in _STREAMS}
    return jnp.zeros((num, height + 1, width + 2, channels + 1), net.dtype), caches


def _first_map(net: PixelCNNPP, params, stream: str, image: jax.Array, i: jax.Array, j: jax.Array) -> jax.Array:
    """The stream's first map at row i ("u", [N, 1, W, F]) or pixel (i, j) ("ul", [N, 1, 1, F]), from the
    padded image, which holds the pixels before (i, j)."""
    num, _, padded_width, channels = image.shape
    conv = lambda name, window: _valid_conv(params[name], window, 1, net.dtype)
    if stream == "u":
        # down_shift(conv 2x3 (x)): row i is the conv at row i - 1, which reads image rows i - 2 and i - 1.
        window = jax.lax.dynamic_slice(image, (0, jnp.maximum(i - 1, 0), 0, 0), (num, 2, padded_width, channels))
        return conv(_FIRST_U, window) * (i > 0)
    # down_shift(conv 1x3 (x)) + right_shift(conv 2x1 (x)): the first reads row i - 1, columns j - 1 .. j + 1;
    # the second rows i - 1 and i of column j - 1.
    above = jax.lax.dynamic_slice(image, (0, i, j, 0), (num, 1, 3, channels))
    left = jax.lax.dynamic_slice(image, (0, i, j, 0), (num, 2, 1, channels))
    return conv(_FIRST_UL_ABOVE, above) * (i > 0) + conv(_FIRST_UL_LEFT, left) * (j > 0)


def _stream_step(net: PixelCNNPP, params, stream: str, image: jax.Array, caches, i: jax.Array, j: jax.Array, y):
    """One stream's runs at the positions of row i ("u") or pixel (i, j) ("ul") at every resolution,
    updating caches[stream]; returns (caches, the last run's output there [N, 1, w, F]).

    A lower resolution is computed only at the rows (pixels) where its position starts, i (and j)
    divisible by 2^halvings; the others read its output from the caches.
    """
    if stream == "u":
        j = jnp.zeros_like(i)
    num, features = image.shape[0], net.nr_filters
    block = _block(net, stream)

    def position(halvings):
        return i >> halvings, j >> halvings

    def width(run):
        return run["out"].shape[2] - 2 if stream == "u" else 1

    def down(level, caches, x=None):
        name, pos = f"down_{level}", position(level)
        if x is None:
            below = caches[stream][f"down_{level - 1}"]["out"]
            span = below.shape[2] if stream == "u" else 2
            window = jax.lax.dynamic_slice(below, (0, 2 * pos[0], 2 * pos[1], 0), (num, 2, span, features))
            x = _valid_conv(params[_downsample_name(stream, level)], window, 2, net.dtype)
        aux = None if stream == "u" else _outputs_at(caches["u"][name], pos, 1)
        x, xs, run = _run_blocks(block, params[name][stream], caches[stream][name], pos, x, aux, y)
        return {**caches, stream: {**caches[stream], name: run}}, (xs, x)

    def up(level, caches, first):
        name, pos = f"up_{level}", position(NUM_RESOLUTIONS - 1 - level)
        if level == 0:
            x = first[1]
        else:
            below = caches[stream][f"up_{level - 1}"]["out"]
            x = jax.lax.dynamic_slice(below, (0, pos[0] // 2 + 1, pos[1] // 2 + 1, 0),
                                      (num, 1, width(caches[stream][f"up_{level - 1}"]), features))
            x = ShiftedConvTranspose(features, _SHIFT[stream], net.dtype).apply(
                {"params": params[_upsample_name(stream, level)]}, x)
            x = jax.lax.dynamic_slice_in_dim(x, pos[0] % 2, 1, axis=1)
            if stream == "ul":
                x = jax.lax.dynamic_slice_in_dim(x, pos[1] % 2, 1, axis=2)
        aux = _skips(*first, level)
        if stream == "ul":
            aux = jnp.concatenate([_outputs_at(caches["u"][name], pos, 1), aux], axis=-1)
        x, _, run = _run_blocks(block, params[name][stream], caches[stream][name], pos, x, aux, y)
        return {**caches, stream: {**caches[stream], name: run}}, x

    def starts(halvings):
        at_row = i % (1 << halvings) == 0
        return at_row if stream == "u" else at_row & (j % (1 << halvings) == 0)

    def lowest(caches):
        caches, first = down(2, caches)
        return up(0, caches, first)[0]

    def middle(caches):
        caches, first = down(1, caches)
        caches = jax.lax.cond(starts(2), lowest, lambda c: c, caches)
        return up(1, caches, first)[0]

    assert NUM_RESOLUTIONS == 3, "the schedule below nests one branch per lower resolution"
    caches, first = down(0, caches, _first_map(net, params, stream, image, i, j))
    caches = jax.lax.cond(starts(1), middle, lambda c: c, caches)
    return up(2, caches, first)


def u_row(net: PixelCNNPP, params, image: jax.Array, caches, i: jax.Array, y):
    """The `u` stream for image row i at every resolution (row i >> halvings), from the rows < i of the
    padded image; returns the updated caches."""
    return _stream_step(net, params, "u", image, caches, i, None, y)[0]


def ul_pixel(net: PixelCNNPP, params, image: jax.Array, caches, i: jax.Array, j: jax.Array, y):
    """The `ul` stream at pixel (i, j) (and (i, j) >> halvings) and the network's output there, from the
    pixels before (i, j) and `u_row`'s caches of row i: (float32 [N, P] mixture parameters, caches)."""
    caches, x = _stream_step(net, params, "ul", image, caches, i, j, y)
    out = nn.Dense(params["nin_out"]["kernel"].shape[-1], dtype=net.dtype).apply(
        {"params": params["nin_out"]}, nn.elu(x))
    return out[:, 0, 0].astype(jnp.float32), caches


def sample(net: PixelCNNPP, params, key: jax.Array, shape: tuple[int, int, int, int], y: jax.Array | None,
           draw: Callable[[jax.Array, jax.Array], jax.Array],
           to_input: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Draw images pixel by pixel in raster order with cached activations.

    Args:
      net, params: a `PixelCNNPP` and its parameters (either layout of `net.scan`).
      key: pixel (i, j) is drawn with fold_in(key, i * W + j), as `gm.autoregressive.sample_raster`.
      shape: (N, H, W, C), H and W divisible by 4.
      y: int [N] labels of a class-conditional network, else None.
      draw: (key, float32 [N, P] the network's output at one pixel) -> int32 [N, C] the pixel's levels.
      to_input: int32 levels [N, C] -> the network's input there, float in [-1, 1].

    Returns:
      int32 [N, H, W, C].
    """
    _check_inputs(jax.ShapeDtypeStruct(shape, jnp.float32), y, net.num_classes)
    if not net.scan:
        params = pixelcnn_pp_params_from_unrolled(params, net.nr_resnet)
    num, height, width, channels = shape
    ones = jnp.ones((num, 1), net.dtype)

    def row(i, state):
        image, caches, levels = state
        caches = u_row(net, params, image, caches, i, y)

        def pixel(j, state):
            image, caches, levels = state
            out, caches = ul_pixel(net, params, image, caches, i, j, y)
            values = draw(jax.random.fold_in(key, i * width + j), out)
            levels = jax.lax.dynamic_update_slice(levels, values[:, None, None], (0, i, j, 0))
            value = jnp.concatenate([to_input(values).astype(net.dtype), ones], axis=-1)
            image = jax.lax.dynamic_update_slice(image, value[:, None, None], (0, i + 1, j + 1, 0))
            return image, caches, levels

        return jax.lax.fori_loop(0, width, pixel, (image, caches, levels))

    image, caches = init_caches(net, params, shape)
    levels = jnp.zeros(shape, jnp.int32)
    return jax.lax.fori_loop(0, height, row, (image, caches, levels))[2]
