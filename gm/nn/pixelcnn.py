"""PixelCNN (van den Oord et al. 2016a) and gated PixelCNN (van den Oord et al. 2016b).

Both map images in [-1, 1] to a softmax over the data's levels for every sub-pixel,
logits [B, H, W, C, L], where the logits of sub-pixel (i, j, c) depend only on pixels before (i, j) in
raster order and on colours < c of pixel (i, j) itself (R -> G -> B).

* `PixelCNN`: a 7x7 type-'A' masked convolution, residual blocks of masked 1x1 -> 3x3 -> 1x1
  convolutions (type 'B'), and two masked 1x1 layers to the logits. Its receptive field has a blind
  spot: stacked masked 3x3 kernels never reach some pixels above and to the right.
* `GatedPixelCNN`: a vertical stack (rows above) feeding a horizontal stack (the current row to the
  left) removes the blind spot; tanh * sigmoid gates; optional class conditioning as a per-layer bias.
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from gm.nn.causal import MaskedConv, causal_kernel_mask, down_padding, down_right_padding, down_shift


def _check_gated_features(features, num_channels):
    # The gate multiplies channel k by channel k + F; both must carry the same colour (k % C).
    if features % num_channels:
        raise ValueError(f"config.model.gated_pixelcnn.features={features} must be a multiple of the "
                         f"{num_channels} image channels, so the two halves of each gate share colours.")


class LevelLogits(nn.Module):
    """ReLU -> masked 1x1 (hidden) -> ReLU -> masked 1x1 to logits [B, H, W, C, num_levels]."""
    num_levels: int
    num_channels: int
    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        c = self.num_channels
        h = MaskedConv(self.hidden, (1, 1), "B", c, self.dtype)(nn.relu(h))
        out = MaskedConv(c * self.num_levels, (1, 1), "B", c, self.dtype)(nn.relu(h))
        # Output channel k has colour k % C and level k // C.
        out = out.reshape(out.shape[:3] + (self.num_levels, c))
        return jnp.swapaxes(out, -1, -2).astype(jnp.float32)


class _PixelCNNFields(nn.Module):
    """The sizes both PixelCNNs share.

    num_levels: L, softmax size per sub-pixel. first_kernel / kernel: the first layer's and the later
    layers' kernel width. out_hidden: width of the masked 1x1 layer before the logits.
    num_classes: class-conditional (a per-layer bias from the label y) when set.
    """
    num_levels: int
    features: int = 128
    num_layers: int = 15
    first_kernel: int = 7
    kernel: int = 3
    out_hidden: int = 1024
    num_classes: Optional[int] = None
    dtype: jnp.dtype = jnp.float32


class PixelCNN(_PixelCNNFields):
    """PixelCNN: x float [B, H, W, C] in [-1, 1] (y int [B] if num_classes) -> logits [B, H, W, C, L].

    features: channels of the residual stream (2h in the paper); colours take channels in turn (k % C).
    num_layers: residual blocks after the first layer.
    """

    @nn.compact
    def __call__(self, x, y=None, *, train=False):
        del train  # no dropout
        c = x.shape[-1]
        h = MaskedConv(self.features, (self.first_kernel,) * 2, "A", c, self.dtype)(x)
        if self.num_classes:
            h = h + nn.Embed(self.num_classes, self.features)(y)[:, None, None, :]
        for _ in range(self.num_layers):
            r = MaskedConv(self.features // 2, (1, 1), "B", c, self.dtype)(nn.relu(h))
            r = MaskedConv(self.features // 2, (self.kernel,) * 2, "B", c, self.dtype)(nn.relu(r))
            h = h + MaskedConv(self.features, (1, 1), "B", c, self.dtype)(nn.relu(r))
        return LevelLogits(self.num_levels, c, self.out_hidden, self.dtype)(h)


def _gate(a):
    """tanh(first half) * sigmoid(second half) over the channel axis: [..., 2F] -> [..., F]."""
    f = a.shape[-1] // 2
    return jnp.tanh(a[..., :f]) * nn.sigmoid(a[..., f:])


class GatedLayer(nn.Module):
    """One gated layer: (v, h) -> (v, h), each [B, H, W, features].

    v at row i sees input rows <= i; it reaches h only moved one row down, so h at (i, j) sees rows < i
    through v and row i, columns <= j through its own 1 x (k//2 + 1) kernel (masked by colour at j).
    """
    features: int
    kernel: int
    mask_type: str
    num_channels: int
    num_classes: Optional[int] = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, v, h, y=None):
        f, k = 2 * self.features, self.kernel
        v_kernel, h_kernel = (k // 2 + 1, k), (1, k // 2 + 1)
        v_pre = nn.Conv(f, v_kernel, padding=down_padding(v_kernel), dtype=self.dtype)(v)
        h_mask = causal_kernel_mask(h_kernel, (0, k // 2), h.shape[-1], f, self.num_channels, self.mask_type)
        h_pre = nn.Conv(f, h_kernel, padding=down_right_padding(h_kernel), mask=h_mask, dtype=self.dtype)(h)
        h_pre = h_pre + nn.Conv(f, (1, 1), dtype=self.dtype)(down_shift(v_pre))
        if self.num_classes:
            bias = nn.Embed(self.num_classes, f)(y)[:, None, None, :]
            v_pre, h_pre = v_pre + bias, h_pre + bias
        h_out = MaskedConv(self.features, (1, 1), "B", self.num_channels, self.dtype)(_gate(h_pre))
        if self.mask_type == "B":  # the first layer's input is the image, of another width
            h_out = h_out + h
        return _gate(v_pre), h_out


class GatedPixelCNN(_PixelCNNFields):
    """Gated PixelCNN: x float [B, H, W, C] in [-1, 1] (y int [B] if num_classes) -> logits
    [B, H, W, C, L], without a blind spot.

    features: channels of each stack; a multiple of C. num_layers: gated layers after the first.
    """

    @nn.compact
    def __call__(self, x, y=None, *, train=False):
        del train  # no dropout
        c = x.shape[-1]
        _check_gated_features(self.features, c)
        layer = lambda kernel, mask_type: GatedLayer(self.features, kernel, mask_type, c, self.num_classes,
                                                     self.dtype)
        v, h = layer(self.first_kernel, "A")(x, x, y)
        for _ in range(self.num_layers):
            v, h = layer(self.kernel, "B")(v, h, y)
        return LevelLogits(self.num_levels, c, self.out_hidden, self.dtype)(h)
