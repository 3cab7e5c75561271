"""A GPT-style language model: text one token at a time, p(x) = prod_i p(x_i | x_<i).

The network is gm's causal transformer (`gm.nn.transformer.CausalTransformer`): pre-LayerNorm blocks,
learned or rotary positions, the output layer tied to the token embedding, residual dropout. It trains
on windows of `config.data.context` tokens of a corpus (`gm.text_datasets`), AdamW with cosine decay and
gradient accumulation coming from the trainer (config.optim, config.train.micro_batches).

Each window is one example: position 0 is predicted from a learned start token, position i from
x_<i of the same window. The loss is the mean negative log-likelihood in nats per token (the number
GPT papers and nanoGPT print as "loss"); `log_prob` is exact, in nats per window, and `log_prob_per`
spreads it over the UTF-8 bytes the window stands for, so evaluations report bits per byte, which
compares across tokenizers (bits per character on ASCII text).

Sampling runs the key/value-cached decoder as one `lax.scan` (`gm.nn.transformer.sample_tokens`) with
temperature, top-k and nucleus filtering (config.sampling), continuing config.sampling.prompt when set.
`fit_ngram` / `ngram_log_prob` are the unigram and bigram baselines, scored by the same harness.
"""
import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np

from gm import checks
from gm import distributions as dist
from gm.autoregressive import SamplingConfig, TransformerConfig
from gm.config import interval, positive, setting
from gm.method import Method
from gm.nn import transformer


@dataclasses.dataclass(frozen=True)
class ModelConfig(TransformerConfig):
    """config.model: a causal transformer; by default nanoGPT's character-level Shakespeare model (6
    layers, 6 heads, width 384, dropout 0.2, learned positions, tied embeddings: 10.7M parameters)."""
    num_layers: int = setting(6, positive)
    num_heads: int = setting(6, positive)
    embed_dim: int = setting(384, positive)
    dropout: float = setting(0.2, interval(0.0, 1.0))
    tie_embeddings: bool = True
    dtype: Literal[checks.DTYPES] = "float32"


@dataclasses.dataclass(frozen=True)
class TextSamplingConfig(SamplingConfig):
    """config.sampling: the filters of `gm.autoregressive.SamplingConfig` and a prompt, text every sample
    continues (tokenized with the data's tokenizer; '' : none); samples are context tokens long."""
    prompt: str = ""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The GPT family's config sections."""
    model: ModelConfig = ModelConfig()
    sampling: TextSamplingConfig = TextSamplingConfig()


def network(m: ModelConfig, vocab_size: int, context: int) -> transformer.CausalTransformer:
    """The transformer of config.model over `vocab_size` tokens and windows of `context`."""
    return transformer.CausalTransformer(
        vocab_size=vocab_size, seq_len=context, num_layers=m.num_layers, num_heads=m.num_heads,
        embed_dim=m.embed_dim, mlp_ratio=m.mlp_ratio, dropout=m.dropout, attention_block=m.attention_block,
        positions=m.positions, tie_embeddings=m.tie_embeddings, dtype=jnp.dtype(m.dtype))


def token_log_probs(net, params, tokens, dropout_key=None):
    """log p(x_i | x_<i) in nats, float32 [B, T], of int tokens [B, T]; dropout when `dropout_key` is given."""
    train = dropout_key is not None
    logits = net.apply({"params": params}, tokens, train=train, rngs={"dropout": dropout_key} if train else {})
    return dist.categorical_log_prob(logits, tokens)


def prompt_tokens(prompt: str, tokenizer, context: int):
    """config.sampling.prompt as int32 ids [P] (None for ''); one sentence when it leaves no room."""
    if not prompt:
        return None
    ids = np.asarray(tokenizer.encode(prompt), np.int32)
    checks.require(len(ids) < context, "config.sampling.prompt", prompt,
                   f"shorter than config.data.context={context} tokens (it is {len(ids)})")
    return ids


def make(settings: Settings, info) -> Method:
    """A language model of windows of `info.shape` = (context,) tokens from `info.vocab_size` -> Method."""
    if not info.is_text:
        raise ValueError(f"The GPT models text; config.data.name={info.name!r} is not a text dataset "
                         "(use pydoc or tiny_shakespeare).")
    m, s = settings.model, settings.sampling
    context = info.shape[0]
    net = network(m, info.vocab_size, context)
    prompt = prompt_tokens(s.prompt, info.tokenizer, context)

    def init(key, batch):
        return net.init({"params": key}, batch["tokens"], train=False)["params"]

    def loss(params, key, batch):
        nats = -jnp.mean(token_log_probs(net, params, batch["tokens"], key))
        return nats, {"loss": nats, "bits_per_token": nats / dist.LN2}

    def sample(params, key, num):
        prefix = None if prompt is None else jnp.broadcast_to(prompt, (num, len(prompt)))
        return transformer.sample_tokens(net, params, key, num, None, s.temperature, s.top_k, s.top_p, prefix)

    def log_prob(params, key, batch):
        del key
        return jnp.sum(token_log_probs(net, params, batch["tokens"]), axis=-1)

    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=False,
                  log_prob_per=(context * info.bytes_per_token, "byte"))


# ---------------------------------------------------------------------------------------------------
# The n-gram baselines.
# ---------------------------------------------------------------------------------------------------

def stream_of(windows) -> np.ndarray:
    """The token stream [L] that stride-1 windows [N, T] of it cover (gm.data's training split)."""
    windows = np.asarray(windows)
    return np.concatenate([windows[0], windows[1:, -1]])


def fit_ngram(stream, vocab_size: int, order: int, pseudo_count: float = 1.0):
    """An add-`pseudo_count` n-gram of a token stream [L]: order 1 -> log p(x) [V], order 2 -> log
    p(x_i | x_{i-1}) [V, V] (row: the previous token), float64 in nats."""
    stream = np.asarray(stream, np.int64)
    checks.require(order in (1, 2), "order", order, "1 (unigram) or 2 (bigram)")
    if order == 1:
        counts = np.bincount(stream, minlength=vocab_size) + pseudo_count
        return np.log(counts / counts.sum())
    counts = np.bincount(stream[:-1] * vocab_size + stream[1:], minlength=vocab_size ** 2)
    counts = counts.reshape(vocab_size, vocab_size) + pseudo_count
    return np.log(counts / counts.sum(-1, keepdims=True))


def ngram_log_prob(unigram, bigram, tokens):
    """log p(window) in nats [B] of int tokens [B, T] under a bigram (None: the unigram alone). Position
    0 of a window is scored by the unigram, as the transformer predicts it without context."""
    tokens = jnp.asarray(tokens, jnp.int32)
    first = jnp.asarray(unigram)[tokens[:, 0]]
    if bigram is None:
        return first + jnp.sum(jnp.asarray(unigram)[tokens[:, 1:]], axis=-1)
    return first + jnp.sum(jnp.asarray(bigram)[tokens[:, :-1], tokens[:, 1:]], axis=-1)
