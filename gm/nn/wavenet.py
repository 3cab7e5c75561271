"""WaveNet (van den Oord et al. 2016): dilated causal convolutions with gated units, residual and skip
connections, global (label) and local (feature sequence) conditioning, and the cached one-sample step
of fast generation (Paine et al. 2016).

Every convolution has width 2, so a causal convolution of dilation d is out[t] = W0 x[t - d] + W1 x[t]
+ b (zero before the start), written as two matmuls. `WaveNet.__call__` evaluates a whole sequence (for
training and the likelihood); `WaveNet.step` evaluates one new time step from per-layer queues holding
each layer's last d inputs (`init_queues`), so a sample costs O(layers) work instead of a pass over the
whole receptive field; both use the same parameters and the same arithmetic.

Receptive field: a layer of dilation d sees d more samples, so the stack sees 1 + 1 + sum(dilations)
inputs (the initial causal layer adds one): 3,071 for three cycles of 1, 2, ..., 512.
"""
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def dilation_cycles(num_cycles: int, max_dilation: int) -> Tuple[int, ...]:
    """(1, 2, 4, ..., max_dilation) repeated num_cycles times; max_dilation a power of two."""
    if max_dilation < 1 or max_dilation & (max_dilation - 1):
        raise ValueError(f"max_dilation must be a power of two >= 1, got {max_dilation}.")
    cycle = tuple(2 ** i for i in range(max_dilation.bit_length()))
    return cycle * num_cycles


def receptive_field(dilations: Sequence[int]) -> int:
    """Past samples (including the one just before t) that can influence the prediction at t."""
    return 2 + sum(dilations)


def shift_right(x, start):
    """[B, T, ...] -> the sequence delayed by one step, `start` at t = 0: the input that predicts x[t]."""
    first = jnp.full_like(x[:, :1], start)
    return jnp.concatenate([first, x[:, :-1]], axis=1)


def delay(x, d: int):
    """[B, T, C] -> x[t - d] at t (zeros for t < d)."""
    return jnp.pad(x, ((0, 0), (d, 0), (0, 0)))[:, :x.shape[1]]


def upsample(features, length: int):
    """Local conditioning features [B, F_t, F] at one frame per `length / F_t` samples -> [B, length, F],
    each frame repeated over its hop (frame i covers samples i * hop .. (i + 1) * hop - 1)."""
    hop = -(-length // features.shape[1])
    return jnp.repeat(features, hop, axis=1)[:, :length]


class CausalConv(nn.Module):
    """A width-2 causal convolution of dilation `dilation`, [B, T, in_features] -> [B, T, features]."""
    in_features: int
    features: int
    dilation: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.kernel = self.param("kernel", nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                                 (2, self.in_features, self.features))
        self.bias = self.param("bias", nn.initializers.zeros, (self.features,))

    def __call__(self, x):
        k = self.kernel.astype(self.dtype)
        return delay(x, self.dilation) @ k[0] + x @ k[1] + self.bias.astype(self.dtype)

    def step(self, past, x):
        """x[t - d] [B, in], x[t] [B, in] -> out[t] [B, features]."""
        k = self.kernel.astype(self.dtype)
        return past @ k[0] + x @ k[1] + self.bias.astype(self.dtype)


class WaveNet(nn.Module):
    """Inputs [B, T] (the previous samples: int levels when `input_levels` is set, else float in [-1, 1])
    -> outputs [B, T, out_features] (a softmax's logits or a mixture's parameters) for each next sample.

    label: int [B] in [0, num_labels) (global conditioning, a learned bias per layer) or None;
    features: [B, T, feature_dim] already upsampled to the sample rate (local conditioning, a 1x1
    projection per layer) or None.
    """
    out_features: int
    input_levels: Optional[int] = 256
    residual_channels: int = 64
    dilation_channels: int = 64
    skip_channels: int = 256
    dilations: Tuple[int, ...] = dilation_cycles(3, 512)
    num_labels: Optional[int] = None
    feature_dim: Optional[int] = None
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c, g, dt = self.residual_channels, self.dilation_channels, self.dtype
        self.embed = (nn.Embed(self.input_levels, c, dtype=dt, name="embed") if self.input_levels
                      else nn.Dense(c, dtype=dt, name="embed"))
        self.causal = CausalConv(c, c, 1, dtype=dt)
        n = len(self.dilations)
        self.filters = [CausalConv(c, 2 * g, d, dtype=dt) for d in self.dilations]
        # The last layer's residual output would be unused, so it has none.
        self.residuals = [nn.Dense(c, dtype=dt) for _ in range(n - 1)]
        self.skips = [nn.Dense(self.skip_channels, dtype=dt) for _ in range(n)]
        self.labels = [nn.Embed(self.num_labels, 2 * g, dtype=dt) for _ in range(n)] if self.num_labels else None
        self.locals = ([nn.Dense(2 * g, use_bias=False, dtype=dt) for _ in range(n)]
                       if self.feature_dim else None)
        self.out_hidden = nn.Dense(self.skip_channels, dtype=dt)
        self.out = nn.Dense(self.out_features, dtype=dt)

    def _inputs(self, x):
        return self.embed(x) if self.input_levels else self.embed(x[..., None].astype(self.dtype))

    def _layer(self, i, z, h, label, feature):
        """The gated unit of layer i on its dilated convolution's output z -> (new h, skip)."""
        if self.labels is not None:
            z = z + self.labels[i](label)
        if self.locals is not None:
            z = z + self.locals[i](feature.astype(self.dtype))
        g = self.dilation_channels
        gated = jnp.tanh(z[..., :g]) * jax.nn.sigmoid(z[..., g:])
        skip = self.skips[i](gated)
        if i < len(self.residuals):
            h = h + self.residuals[i](gated)
        return h, skip

    def _head(self, skips):
        return self.out(nn.relu(self.out_hidden(nn.relu(skips))))

    def __call__(self, inputs, label=None, features=None):
        self._check(label, features)
        h = self.causal(self._inputs(inputs))
        label = None if label is None else label[:, None]
        skips = 0.0
        for i, conv in enumerate(self.filters):
            h, skip = self._layer(i, conv(h), h, label, features)
            skips = skips + skip
        return self._head(skips)

    def step(self, queues, t, inputs_t, label=None, features_t=None):
        """One time step: (queues, t, inputs_t [B], label [B], features_t [B, F]) -> (queues, out [B, out]).

        `queues[j]` [B, d_j, C] holds the last d_j inputs of causal layer j (the initial layer first) at
        slots s mod d_j; t is the (traced) index of this step, whose input each layer reads d_j steps
        back before overwriting that slot."""
        self._check(label, features_t)
        new = []

        def conv_step(j, conv, x):
            queue = queues[j]
            slot = t % queue.shape[1]
            past = jax.lax.dynamic_index_in_dim(queue, slot, axis=1, keepdims=False)
            new.append(jax.lax.dynamic_update_index_in_dim(queue, x.astype(queue.dtype), slot, axis=1))
            return conv.step(past.astype(self.dtype), x)

        h = conv_step(0, self.causal, self._inputs(inputs_t))
        skips = 0.0
        for i, conv in enumerate(self.filters):
            h, skip = self._layer(i, conv_step(i + 1, conv, h), h, label, features_t)
            skips = skips + skip
        return new, self._head(skips)

    def _check(self, label, features):
        if (label is None) != (self.num_labels is None):
            raise ValueError("WaveNet: pass a label exactly when the network has num_labels (global conditioning).")
        if (features is None) != (self.feature_dim is None):
            raise ValueError("WaveNet: pass features exactly when the network has feature_dim (local conditioning).")


def init_queues(net: WaveNet, batch: int, dtype=jnp.float32):
    """Empty queues for `WaveNet.step`: [B, d, residual_channels] per causal layer (zeros = the silence
    before the start that the full pass pads with)."""
    return [jnp.zeros((batch, d, net.residual_channels), dtype) for d in (1,) + tuple(net.dilations)]
