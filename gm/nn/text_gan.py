"""The networks of a text-conditional GAN (Reed et al. 2016, GAN-INT-CLS), at DCGAN's shapes.

* `CharCNNEncoder`: caption bytes [B, L] (PAD after the text) -> a sentence embedding [B, D]: byte
  embeddings, two width-3 convolutions with ReLU, a max over the caption's positions, a dense layer.
  The paper pretrains a char-CNN-RNN with a joint image-text loss; here a char-CNN is trained with the
  discriminator (a caption's embedding is what the discriminator learns to match to images).
* `TextConditionalGenerator`: (z [B, Z], embedding [B, D]) -> images: the embedding compressed by a dense
  layer with leaky ReLU 0.2 to `compressed` dimensions, concatenated to z, into DCGAN's generator.
* `MatchingDiscriminator`: (images, embedding) -> logits [B]: DCGAN's stride-2 convolutions to the 4x4
  (or smaller) grid, the compressed embedding replicated over that grid and concatenated to the
  features, a 1x1 convolution with leaky ReLU, then a dense logit: D judges the image and its match to
  the text at once.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm.nn.dcgan import DCGANGenerator, _norm, dcgan_stages


class CharCNNEncoder(nn.Module):
    """int32 [B, L] bytes (values >= `pad` are padding) -> float32 [B, features]."""
    features: int = 64
    vocab: int = 257
    pad: int = 256
    hidden: int = 64

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab, self.hidden)(tokens)
        for _ in range(2):
            x = nn.relu(nn.Conv(self.hidden, (3,), padding="SAME")(x))
        valid = (tokens < self.pad)[..., None]
        x = jnp.max(jnp.where(valid, x, -jnp.inf), axis=1)  # the strongest match of each filter in the text
        return nn.Dense(self.features)(x)


class TextConditionalGenerator(nn.Module):
    """(z [B, Z], text embedding [B, D]) -> images [B, H, W, C] in [-1, 1]."""
    image_shape: tuple
    features: int = 64
    compressed: int = 128
    norm: str = "batch"

    @nn.compact
    def __call__(self, z: jax.Array, text: jax.Array) -> jax.Array:
        t = nn.leaky_relu(nn.Dense(self.compressed)(text), 0.2)
        return DCGANGenerator(tuple(self.image_shape), self.features, self.norm)(jnp.concatenate([z, t], axis=-1))


class MatchingDiscriminator(nn.Module):
    """(images [B, H, W, C] in [-1, 1], text embedding [B, D]) -> logits [B]."""
    features: int = 64
    compressed: int = 128
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, text: jax.Array) -> jax.Array:
        n = dcgan_stages(x.shape[1])
        for i in range(n):
            x = nn.Conv(self.features * 2 ** i, (4, 4), strides=(2, 2))(x)
            x = nn.leaky_relu(x if i == 0 else _norm(self.norm)(x), 0.2)
        t = nn.leaky_relu(nn.Dense(self.compressed)(text), 0.2)
        t = jnp.broadcast_to(t[:, None, None, :], x.shape[:3] + (t.shape[-1],))
        h = nn.leaky_relu(nn.Conv(x.shape[-1], (1, 1))(jnp.concatenate([x, t], axis=-1)), 0.2)
        return nn.Dense(1)(h.reshape(h.shape[0], -1))[:, 0]
