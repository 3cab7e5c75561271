"""One causal transformer over [text tokens ; image codes], DALL-E 1's (Ramesh et al. 2021) layout.

The sequence is the caption's `text_len` tokens followed by the h x w codes of an image in raster order,
over one joint vocabulary (text tokens first, image codes after them). As in DALL-E, the two modalities
get separate position embeddings: a learned embedding per text position, and a row plus a column
embedding per image position. Everything else is `gm.nn.transformer.CausalTransformer` (pre-LN blocks,
the start token, blocked causal attention, the key/value cache), so text positions attend only to
earlier text, and image code i to the whole text and codes < i.
"""
import jax
import jax.numpy as jnp

from gm.nn.transformer import _INIT_STD, CausalTransformer, _normal


class TextImageTransformer(CausalTransformer):
    """A CausalTransformer with seq_len = text_len + h * w and modality-specific positions.

    Fields (beyond CausalTransformer's; its `positions` must stay 'none'):
      text_len: tokens of text before the image.
      image_grid: (h, w) of the code grid.
    """

    text_len: int = 1
    image_grid: tuple = (1, 1)
    positions: str = "none"

    def setup(self):
        if self.positions != "none":
            raise ValueError("TextImageTransformer adds its own positions; leave positions='none'.")
        h, w = self.image_grid
        if self.seq_len != self.text_len + h * w:
            raise ValueError(f"seq_len={self.seq_len} must be text_len + h * w = {self.text_len + h * w}.")
        super().setup()
        d = self.embed_dim
        self.text_pos = self.param("text_pos", _normal(_INIT_STD), (self.text_len, d))
        self.row_pos = self.param("row_pos", _normal(_INIT_STD), (h, d))
        self.col_pos = self.param("col_pos", _normal(_INIT_STD), (w, d))

    def _position_embedding(self, positions: jax.Array) -> jax.Array:
        """[n, D] at int positions [n]: the text table for p < text_len, row + column for image code
        p - text_len."""
        w = self.image_grid[1]
        text = self.text_pos[jnp.clip(positions, 0, self.text_len - 1)]
        code = jnp.maximum(positions - self.text_len, 0)
        image = self.row_pos[code // w] + self.col_pos[code % w]
        return jnp.where((positions < self.text_len)[:, None], text, image)
