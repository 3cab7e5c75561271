"""Causal convolutions for autoregressive image models, in raster order with R -> G -> B inside a pixel.

Two ways to keep a convolution from seeing the future, both used by the PixelCNN family:

* a **mask** on a centred kernel (PixelCNN; the horizontal stack of gated PixelCNN): taps after the
  centre in raster order are zero, and at the centre an output channel of colour c sees input colours
  < c (type 'A', the first layer) or <= c (type 'B', every later layer);
* **shifted padding** (the vertical stack of gated PixelCNN, PixelCNN++): pad only above (and to the
  left), so an output at row i sees rows <= i; `down_shift` / `right_shift` then move a whole map by one
  row / column so it sees strictly earlier rows / columns.

Feature channels are split into colour groups by `channel % num_channels`, so any feature count that
is a multiple of the colour count works, and splitting 2F gated features into two halves of F keeps
every channel's colour.
"""
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

MASK_TYPES = ("A", "B")


def colour_groups(num_features, num_channels):
    """Colour index of each of `num_features` channels: int [num_features], channel % num_channels."""
    return np.arange(num_features) % num_channels


def causal_kernel_mask(kernel_size, centre, in_features, out_features, num_channels, mask_type):
    """0/1 float32 mask [kh, kw, in, out] for a kernel whose output pixel sits at tap `centre`.

    Taps after `centre` in raster order are 0; taps before are 1; at the centre, output colour c sees
    input colours < c ('A') or <= c ('B').
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}.")
    kh, kw = kernel_size
    ci, cj = centre
    mask = np.ones((kh, kw, in_features, out_features), np.float32)
    mask[ci, cj + 1:] = 0.0
    mask[ci + 1:] = 0.0
    g_in, g_out = colour_groups(in_features, num_channels), colour_groups(out_features, num_channels)
    allowed = g_in[:, None] < g_out[None] if mask_type == "A" else g_in[:, None] <= g_out[None]
    mask[ci, cj] = allowed.astype(np.float32)
    return jnp.asarray(mask)


class MaskedConv(nn.Module):
    """PixelCNN's masked convolution with SAME padding: [B, H, W, in] -> [B, H, W, features].

    The output at (i, j), colour c, depends on input pixels before (i, j) in raster order and, at
    (i, j) itself, on colours < c ('A') or <= c ('B').
    """
    features: int
    kernel_size: tuple[int, int]
    mask_type: str
    num_channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        mask = causal_kernel_mask(self.kernel_size, (kh // 2, kw // 2), x.shape[-1], self.features,
                                  self.num_channels, self.mask_type)
        return nn.Conv(self.features, self.kernel_size, padding="SAME", mask=mask, dtype=self.dtype)(x)


def down_shift(x):
    """[B, H, W, C] -> the map moved one row down (row 0 zero): output row i holds input row i - 1."""
    return jnp.pad(x, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def right_shift(x):
    """[B, H, W, C] -> the map moved one column right (column 0 zero)."""
    return jnp.pad(x, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def down_padding(kernel_size):
    """Explicit padding for a conv whose output at row i sees rows i - kh + 1 .. i, columns centred."""
    kh, kw = kernel_size
    return ((kh - 1, 0), ((kw - 1) // 2, kw // 2))


def down_right_padding(kernel_size):
    """Explicit padding for a conv whose output at (i, j) sees rows <= i and columns <= j."""
    kh, kw = kernel_size
    return ((kh - 1, 0), (kw - 1, 0))
