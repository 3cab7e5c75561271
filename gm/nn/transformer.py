"""A decoder-only causal transformer over discrete tokens, in Flax linen.

One network serves two autoregressive models: images as sequences of integer levels (pixels in raster
order, channels minor: R, G, B of a pixel, then the next pixel) and the prior over VQ-VAE code grids.
Both factorise p(x | y) = prod_i p(x_i | x_<i, y) over a fixed length T.

The input is the sequence shifted right by one: position 0 holds a learned start-of-sequence embedding
(plus a learned class embedding when the model is class-conditional) and position i > 0 holds the
embedding of x_{i-1}; x_{T-1} is never an input. With causal self-attention, the output at position i
therefore sees x_<i (and y) only, and parameterises p(x_i | x_<i, y).

Blocks are pre-LayerNorm (GPT-2): x + Attn(LN(x)), then x + MLP(LN(x)) with GELU, then a final
LayerNorm and a linear head to the vocabulary.

Sampling reuses keys and values: `decode` runs ONE position against an explicit cache of every
earlier position's keys and values, so step i costs O(T) rather than the O(T^2) of a full forward
pass. The cache is a plain pytree passed in and returned (`init_cache`), not a Flax variable
collection, so `sample_tokens` is an ordinary `lax.scan` over positions with the cache in its carry.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm.distributions import categorical_log_prob, sample_categorical

Dtype = Any
# Per layer, {"k": [B, T, heads, head_dim], "v": [B, T, heads, head_dim]} in the compute dtype.
Cache = tuple[dict[str, jax.Array], ...]

# GPT-2's initialisation: N(0, 0.02) everywhere; the projections closing a residual branch are
# further scaled by 1/sqrt(2 * num_layers) so the residual stream's variance does not grow with depth.
_INIT_STD = 0.02


def _normal(std: float) -> nn.initializers.Initializer:
    return nn.initializers.normal(stddev=std)


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, query_positions: jax.Array) -> jax.Array:
    """Causal multi-head attention of n queries over all T cached/full keys.

    Args:
      q: [B, n, heads, head_dim] queries at sequence positions ``query_positions``.
      k, v: [B, T, heads, head_dim] keys and values at positions 0..T-1.
      query_positions: int [n]; a query at position p attends to keys at positions <= p only.

    Returns:
      [B, n, heads, head_dim] in the dtype of ``v``.
    """
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (q.shape[-1] ** -0.5)
    mask = jnp.arange(k.shape[1])[None, :] <= query_positions[:, None]  # [n, T]
    # A finite floor rather than -inf: masked keys get weight exactly 0 and no row is ever all-NaN.
    scores = jnp.where(mask[None, None], scores, jnp.finfo(jnp.float32).min)
    # Softmax in float32: low-precision logits saturate the exponent quickly.
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def rotary(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
    """Rotary position embedding (Su et al. 2021, RoFormer; GPT-NeoX's half-split layout): x [B, n,
    heads, head_dim] at int positions [n] -> x with each pair (i, i + head_dim/2) rotated by the angle
    position * base^(-2i / head_dim). A query at p and a key at s then score q.k as a function of p - s
    only. head_dim must be even."""
    half = x.shape[-1] // 2
    if 2 * half != x.shape[-1]:
        raise ValueError(f"rotary positions need an even head_dim, got {x.shape[-1]}.")
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[:, None] * freq[None, :]  # [n, half]
    cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


# Queries per block of full-sequence attention: a block's scores are [B, heads, block, T] float32.
ATTENTION_BLOCK = 512


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, block: int = ATTENTION_BLOCK) -> jax.Array:
    """Causal self-attention of a whole sequence (query i at position i), `block` queries at a time.

    The numbers of one `_attend` over all T queries, but one block's scores exist at a time: the blocks
    are a `lax.scan` whose body is recomputed in the backward pass instead of keeping its scores. Per
    layer that is O(B heads block T) memory instead of O(B heads T^2): at T = 3072 (a 32x32x3 image)
    the paper transformer's scores alone would be 38 GB per layer at batch 128. A scan, not a Python
    loop over blocks, because XLA may run independent blocks at once and keep all their scores.

    Args:
      q, k, v: [B, T, heads, head_dim].
    Returns:
      [B, T, heads, head_dim] in the dtype of ``v``.
    """
    b, t, h, d = q.shape
    if t <= block:
        return _attend(q, k, v, jnp.arange(t))
    n = -(-t // block)
    # Padding queries sit at positions >= T: they see every key (no empty row) and are dropped.
    q = jnp.pad(q, ((0, 0), (0, n * block - t), (0, 0), (0, 0)))
    blocks = jnp.swapaxes(q.reshape(b, n, block, h, d), 0, 1)  # [n, B, block, heads, head_dim]

    @jax.checkpoint
    def one_block(_, inputs):
        q_block, positions = inputs
        return None, _attend(q_block, k, v, positions)

    _, out = jax.lax.scan(one_block, None, (blocks, jnp.arange(n * block).reshape(n, block)))
    return jnp.swapaxes(out, 0, 1).reshape(b, n * block, h, d)[:, :t]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, [B, n, D] -> [B, n, D], with an explicit key/value cache."""

    embed_dim: int
    num_heads: int
    out_init_std: float = _INIT_STD
    attention_block: int = ATTENTION_BLOCK
    rotary: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads "
                             f"({self.num_heads}).")
        self.qkv = nn.Dense(3 * self.embed_dim, kernel_init=_normal(_INIT_STD), dtype=self.dtype)
        self.out = nn.Dense(self.embed_dim, kernel_init=_normal(self.out_init_std), dtype=self.dtype)

    def _qkv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.embed_dim // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.rotary:
            q, k = rotary(q, positions), rotary(k, positions)
        return q, k, v

    def _merge(self, h: jax.Array) -> jax.Array:
        return self.out(h.reshape(h.shape[0], h.shape[1], self.embed_dim))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Full sequence: x [B, T, D] at positions 0..T-1 -> [B, T, D]."""
        q, k, v = self._qkv(x, jnp.arange(x.shape[1]))
        return self._merge(causal_attention(q, k, v, self.attention_block))

    def step(self, x: jax.Array, position: jax.Array,
             cache: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One position: x [B, 1, D] at int scalar ``position`` -> ([B, 1, D], updated cache).

        The new key and value are written into the cache at ``position``; the query then attends to
        cache entries 0..position. Entries after ``position`` may hold anything: they are masked.
        """
        q, k, v = self._qkv(x, jnp.reshape(position, (1,)))
        start = (0, position, 0, 0)
        cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
                 "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)}
        h = _attend(q, cache["k"], cache["v"], jnp.reshape(position, (1,)))
        return self._merge(h), cache


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + Attn(LN(x)), then x + MLP(LN(x)); [B, n, D] -> [B, n, D]."""

    embed_dim: int
    num_heads: int
    mlp_ratio: int = 4
    dropout: float = 0.0
    out_init_std: float = _INIT_STD
    attention_block: int = ATTENTION_BLOCK
    rotary: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        self.ln_attn = nn.LayerNorm(dtype=self.dtype)
        self.attn = CausalSelfAttention(self.embed_dim, self.num_heads, self.out_init_std,
                                        self.attention_block, self.rotary, dtype=self.dtype)
        self.ln_mlp = nn.LayerNorm(dtype=self.dtype)
        self.mlp_in = nn.Dense(self.mlp_ratio * self.embed_dim, kernel_init=_normal(_INIT_STD),
                               dtype=self.dtype)
        self.mlp_out = nn.Dense(self.embed_dim, kernel_init=_normal(self.out_init_std),
                                dtype=self.dtype)
        self.drop = nn.Dropout(self.dropout)

    def _mlp_residual(self, x: jax.Array, train: bool) -> jax.Array:
        h = self.mlp_out(nn.gelu(self.mlp_in(self.ln_mlp(x))))
        return x + self.drop(h, deterministic=not train)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h = self.attn(self.ln_attn(x))
        return self._mlp_residual(x + self.drop(h, deterministic=not train), train)

    def step(self, x: jax.Array, position: jax.Array,
             cache: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        """One position at inference (no dropout): x [B, 1, D] -> ([B, 1, D], updated cache)."""
        h, cache = self.attn.step(self.ln_attn(x), position, cache)
        return self._mlp_residual(x + h, False), cache


class CausalTransformer(nn.Module):
    """Autoregressive model over token sequences of length ``seq_len``.

    Fields:
      vocab_size: tokens are ints in [0, vocab_size) (e.g. 2^num_bits pixel levels, or codebook size).
      seq_len: T, the fixed sequence length (H * W * C for images in raster order, channels minor).
      num_layers, num_heads, embed_dim, mlp_ratio: the usual sizes; embed_dim % num_heads == 0.
      dropout: residual dropout rate, used when ``train`` (needs a 'dropout' rng).
      num_classes: when set, a learned class embedding is added to the start token and ``y`` must be
        given; every later position sees it through attention.
      attention_block: queries per block of the full-sequence attention (`causal_attention`): memory
        against speed; the result does not depend on it.
      positions: 'learned' (an embedding per position added to the input, GPT-2), 'rotary' (queries
        and keys rotated by their position in every layer, `rotary`; no position parameters) or 'none'
        (no positions here: a subclass adds its own in `_position_embedding`, e.g. per modality).
      tie_embeddings: the output layer is the token embedding transposed (GPT-2; no head parameters).
      dtype: compute dtype; parameters stay float32 and logits are returned in float32.
    """

    vocab_size: int
    seq_len: int
    num_layers: int = 4
    num_heads: int = 4
    embed_dim: int = 128
    mlp_ratio: int = 4
    dropout: float = 0.0
    num_classes: Optional[int] = None
    attention_block: int = ATTENTION_BLOCK
    positions: str = "learned"
    tie_embeddings: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        d = self.embed_dim
        if self.positions not in ("learned", "rotary", "none"):
            raise ValueError(f"positions must be 'learned', 'rotary' or 'none', got {self.positions!r}.")
        self.token_embed = nn.Embed(self.vocab_size, d, embedding_init=_normal(_INIT_STD),
                                    dtype=self.dtype)
        if self.positions == "learned":
            self.pos_embed = self.param("pos_embed", _normal(_INIT_STD), (self.seq_len, d))
        self.start_embed = self.param("start_embed", _normal(_INIT_STD), (d,))
        if self.num_classes is not None:
            self.class_embed = nn.Embed(self.num_classes, d, embedding_init=_normal(_INIT_STD),
                                        dtype=self.dtype)
        out_std = _INIT_STD / math.sqrt(2 * self.num_layers)
        self.blocks = [
            TransformerBlock(d, self.num_heads, self.mlp_ratio, self.dropout, out_std, self.attention_block,
                             self.positions == "rotary", dtype=self.dtype)
            for _ in range(self.num_layers)
        ]
        self.ln_final = nn.LayerNorm(dtype=self.dtype)
        if not self.tie_embeddings:
            self.head = nn.Dense(self.vocab_size, kernel_init=_normal(_INIT_STD), dtype=self.dtype)

    def __call__(self, tokens: jax.Array, y: Optional[jax.Array] = None, *,
                 train: bool) -> jax.Array:
        """Teacher-forced logits for a whole batch of sequences.

        Args:
          tokens: int [B, T] in [0, vocab_size).
          y: int [B] class labels in [0, num_classes), or None when the model is unconditional.
          train: enables residual dropout.

        Returns:
          float32 [B, T, vocab_size]; ``logits[:, i]`` parameterise p(x_i | x_<i, y) and do not
          depend on ``tokens[:, j]`` for any j >= i.
        """
        self._check_inputs(tokens, y)
        # Shift right: the token at position i - 1 is the input at position i; x_{T-1} is dropped.
        prev = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
        h = self._embed_inputs(prev, jnp.arange(self.seq_len), y)
        for block in self.blocks:
            h = block(h, train=train)
        return self._logits(h)

    def decode(self, prev_tokens: jax.Array, position: jax.Array, cache: Cache,
               y: Optional[jax.Array] = None) -> tuple[jax.Array, Cache]:
        """One step of cached decoding: the logits of p(x_i | x_<i, y) at i = ``position``.

        Call with ``method="decode"``. Positions must be visited in order 0, 1, ..., since step i
        reads the keys and values that steps 0..i-1 wrote into the cache.

        Args:
          prev_tokens: int [B], the token x_{i-1} (ignored at position 0, where the start token is used).
          position: int scalar i in [0, T); may be traced.
          cache: from `init_cache` or the previous step.
          y: int [B] class labels, or None when the model is unconditional.

        Returns:
          (float32 logits [B, vocab_size], the cache with position i's keys and values written).
        """
        self._check_labels(y, prev_tokens.shape[0])
        h = self._embed_inputs(prev_tokens[:, None], jnp.reshape(position, (1,)), y)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            h, layer_cache = block.step(h, position, layer_cache)
            new_cache.append(layer_cache)
        return self._logits(h)[:, 0], tuple(new_cache)

    def _embed_inputs(self, prev: jax.Array, positions: jax.Array,
                      y: Optional[jax.Array]) -> jax.Array:
        """prev int [B, n] (x_{p-1} for each position p), positions int [n] -> [B, n, D]."""
        start = self.start_embed.astype(self.dtype)[None, None, :]  # [1, 1, D]
        if self.num_classes is not None:
            start = start + self.class_embed(y)[:, None, :]  # [B, 1, D]
        h = jnp.where((positions == 0)[None, :, None], start, self.token_embed(prev))
        return h + self._position_embedding(positions).astype(self.dtype)[None]

    def _position_embedding(self, positions: jax.Array) -> jax.Array:
        """[n, D] added to the inputs at int `positions` [n] (zeros when positions enter elsewhere)."""
        if self.positions == "learned":
            return self.pos_embed[positions]
        return jnp.zeros((positions.shape[0], self.embed_dim), self.dtype)  # rotary: in every attention layer

    def _logits(self, h: jax.Array) -> jax.Array:
        h = self.ln_final(h)
        out = self.token_embed.attend(h) if self.tie_embeddings else self.head(h)
        return out.astype(jnp.float32)

    def _check_labels(self, y: Optional[jax.Array], batch: int) -> None:
        if self.num_classes is None and y is not None:
            raise ValueError("y was given but the model is unconditional (num_classes=None).")
        if self.num_classes is not None:
            if y is None:
                raise ValueError("a class-conditional model needs labels y.")
            if jnp.shape(y) != (batch,):
                raise ValueError(f"y must have shape [{batch}], got {jnp.shape(y)}.")

    def _check_inputs(self, tokens: jax.Array, y: Optional[jax.Array]) -> None:
        if tokens.ndim != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"tokens must have shape [B, {self.seq_len}], got {tokens.shape}.")
        self._check_labels(y, tokens.shape[0])


def init_cache(model: CausalTransformer, batch_size: int) -> Cache:
    """An empty key/value cache for `CausalTransformer.decode`: per layer, zeros [B, T, heads, head_dim]."""
    shape = (batch_size, model.seq_len, model.num_heads, model.embed_dim // model.num_heads)
    return tuple({"k": jnp.zeros(shape, model.dtype), "v": jnp.zeros(shape, model.dtype)}
                 for _ in range(model.num_layers))


def sample_tokens(model: CausalTransformer, params, key: jax.Array, num: int,
                  y: Optional[jax.Array] = None, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, prefix: Optional[jax.Array] = None,
                  allowed: Optional[tuple[int, int]] = None) -> jax.Array:
    """Draw ``num`` sequences x ~ p(x | y) with cached decoding, as one `lax.scan` over positions.

    Args:
      model: the network.
      params: its 'params' collection (``model.init(...)["params"]``).
      key: PRNG key; token i is drawn with ``fold_in(key, i)``.
      num: number of sequences (a Python int).
      y: int [num] class labels, or None when the model is unconditional.
      temperature: > 0; logits are divided by it (-> 0 approaches greedy decoding).
      top_k, top_p: draw from the k most likely tokens only (0: all) and from the nucleus holding
        probability top_p (1: all), as `gm.distributions.filter_logits`.
      prefix: int [num, P] tokens given at positions 0..P-1 (a prompt, run through the cache like any
        token); positions P..T-1 are drawn. None: every position is drawn.
      allowed: (lo, hi): drawn tokens are restricted to [lo, hi) (e.g. the image codes of a joint
        text-and-image vocabulary); the filters then act on those tokens' logits.

    Returns:
      int32 [num, T] in [0, vocab_size), beginning with ``prefix``. Jit-compatible (``model``, ``num``
      and ``allowed`` static).
    """
    variables = {"params": params}
    given = 0 if prefix is None else prefix.shape[1]
    if given > model.seq_len:
        raise ValueError(f"a prefix of {given} tokens does not fit in the model's {model.seq_len} positions.")
    forced = jnp.zeros((num, model.seq_len), jnp.int32)
    if given:
        forced = forced.at[:, :given].set(jnp.asarray(prefix, jnp.int32))
    vocab = jnp.arange(model.vocab_size)

    def step(carry, i):
        prev, cache = carry
        logits, cache = model.apply(variables, prev, i, cache, y, method="decode")
        if allowed is not None:
            logits = jnp.where((vocab >= allowed[0]) & (vocab < allowed[1]), logits, -jnp.inf)
        token = sample_categorical(jax.random.fold_in(key, i), logits, temperature, top_k, top_p)
        if given:
            token = jnp.where(i < given, forced[:, i], token)
        return (token, cache), token

    carry = (jnp.zeros((num,), jnp.int32), init_cache(model, num))
    _, tokens = jax.lax.scan(step, carry, jnp.arange(model.seq_len))
    return tokens.T  # [T, num] -> [num, T]


def log_prob_tokens(model: CausalTransformer, params, tokens: jax.Array,
                    y: Optional[jax.Array] = None) -> jax.Array:
    """Exact log p(x | y) = sum_i log p(x_i | x_<i, y) in nats: tokens int [B, T] -> float32 [B]."""
    logits = model.apply({"params": params}, tokens, y, train=False)
    return jnp.sum(categorical_log_prob(logits, tokens), axis=-1)
