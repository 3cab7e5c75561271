"""DALL-E 1 (Ramesh et al. 2021) at small scale: text-to-image as one sequence model over a frozen
VQ-VAE's codes, in two stages like `gm.vqvae`.

Stage 1 ('vqvae') is `gm.vqvae.make`: a VQ-VAE that turns an image into an h x w grid of K codes (DALL-E's
dVAE, here the VQ-VAE gm already has). Stage 2 ('prior') trains one causal transformer on
[caption tokens ; image codes] (`gm.nn.text_image.TextImageTransformer`, separate position embeddings
per modality), the codes of each batch's images computed on the fly by the frozen stage 1.

Captions come from the labels (`gm.captions`): each training image gets a phrasing of its class drawn
uniformly ("a handwritten seven", "the digit 7", ...), as bytes padded to config.prior.text_len. A
captioned dataset (`gm.caption_datasets`, COCO) brings its own: one of each image's captions is drawn
every step, cut at text_len bytes as DALL-E cuts at 256 tokens. The
loss, as in DALL-E, weights the mean cross-entropy of the text tokens by text_loss_weight (1/8) and
of the image codes by the rest (7/8); each position's softmax is over its own modality's tokens, so
`log_prob` is the exact log p(codes | caption) in nats, reported per code (`log_prob_per`).

Sampling encodes the prompts (config.prior.prompts, or config.prior.prompt_template filled in for every
class, cycled over the samples), runs them through the cached decoder and draws the image codes in the
same `lax.scan`, with temperature / top-k / top-p (config.prior.sampling). With candidates = R > 1 it
draws R images per prompt and keeps the one the transformer itself finds most likely given the prompt,
DALL-E's re-ranking with the model's own score in place of CLIP's. The codes are decoded by stage 1.
"""
import dataclasses
from typing import Literal, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gm import captions, checks, text_conditioning
from gm import distributions as dist
from gm import vqvae
from gm.autoregressive import SamplingConfig, TransformerConfig
from gm.config import OptimConfig, TrainConfig, interval, positive, setting
from gm.method import Method
from gm.nn.text_image import TextImageTransformer
from gm.nn.transformer import sample_tokens


@dataclasses.dataclass(frozen=True)
class PriorConfig(TransformerConfig):
    """config.prior: the joint transformer's sizes (`gm.autoregressive.TransformerConfig`; its positions
    are DALL-E's per-modality tables, 'modality'), the caption length in bytes, the text loss weight
    (DALL-E: 1/8), what samples are drawn for (prompts: free texts; else prompt_template, e.g. 'a
    handwritten {name}' or 'the digit {numeral}', filled in for every class; '' : the dataset's default in
    `gm.captions.PROMPT_TEMPLATES`), candidates re-ranked per sample, and the sampling filters."""
    positions: Literal["modality"] = "modality"
    text_len: int = setting(24, positive)
    text_loss_weight: float = setting(0.125, interval(0.0, 1.0))
    prompts: Tuple[str, ...] = ()
    prompt_template: str = ""
    candidates: int = setting(1, positive)
    sampling: SamplingConfig = SamplingConfig()
    dtype: Literal[checks.DTYPES] = "float32"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The DALL-E family's sections: stage 1's VQ-VAE (config.model, trained with config.train and
    config.optim) and stage 2's joint transformer (config.prior, config.prior_train, config.prior_optim)."""
    model: vqvae.VQVAEConfig = vqvae.VQVAEConfig()
    prior: PriorConfig = PriorConfig()
    prior_train: TrainConfig = TrainConfig()
    prior_optim: OptimConfig = OptimConfig()


def network(p: PriorConfig, grid, num_codes: int) -> TextImageTransformer:
    """The joint transformer over text_len caption tokens then a code grid of `num_codes` codes."""
    return TextImageTransformer(
        vocab_size=captions.TEXT_VOCAB + num_codes, seq_len=p.text_len + grid[0] * grid[1],
        num_layers=p.num_layers, num_heads=p.num_heads, embed_dim=p.embed_dim, mlp_ratio=p.mlp_ratio,
        dropout=p.dropout, attention_block=p.attention_block, tie_embeddings=p.tie_embeddings,
        text_len=p.text_len, image_grid=tuple(grid), dtype=jnp.dtype(p.dtype))


def modality_log_probs(logits, text_len: int):
    """float32 [B, T, V] logits -> log-probabilities with each position's softmax over its own modality:
    text positions (< text_len) over the text tokens, image positions over the codes (-inf elsewhere)."""
    positions, tokens = jnp.arange(logits.shape[1]), jnp.arange(logits.shape[2])
    same = (positions < text_len)[:, None] == (tokens < captions.TEXT_VOCAB)[None, :]
    return jax.nn.log_softmax(jnp.where(same[None], logits, -jnp.inf), axis=-1)


def sequence(text_tokens, codes):
    """Caption tokens int [B, L] and codes int [B, h, w] -> the joint sequence int32 [B, L + h w]."""
    flat = codes.reshape(codes.shape[0], -1) + captions.TEXT_VOCAB
    return jnp.concatenate([text_tokens, flat], axis=1).astype(jnp.int32)


def best_candidates(sequences, scores, candidates: int):
    """Re-ranking: sequences [R * N, T] with scores [R * N] (candidate j of sample i at row j * N + i) ->
    the highest-scoring candidate of each sample, [N, T]."""
    num = sequences.shape[0] // candidates
    best = jnp.argmax(scores.reshape(candidates, num), axis=0)
    return sequences.reshape(candidates, num, -1)[best, jnp.arange(num)]


def check(run, settings: Settings) -> None:
    """Before anything trains (`gm.families.Family.check`): the dataset has captions or class names to
    caption with, and every training caption and prompt fits config.prior.text_len."""
    p = settings.prior
    text_conditioning.check_captions(run.data.name, p.text_len, p.prompts, p.prompt_template)


def make_prior(settings: Settings, info, vq_params) -> Method:
    """Stage 2: the joint transformer over captions and the codes of the trained, frozen VQ-VAE whose
    (EMA) parameters are `vq_params` -> Method on labelled images (see the module docstring)."""
    if not info.is_image:
        raise ValueError(f"DALL-E models images; config.data.name={info.name!r} is not an image dataset.")
    p = settings.prior
    vq, _ = vqvae.vqvae_from_config(settings.model, info)
    net = network(p, vq.grid, vq.num_codes)
    caption_tokens = text_conditioning.caption_sampler(info, p.text_len)
    texts, labels = text_conditioning.prompt_texts(info.name, p.prompts, p.prompt_template)
    prompts = jnp.asarray(captions.encode(texts, p.text_len, "config.prior.prompts"))
    num_codes = vq.grid[0] * vq.grid[1]

    def sequence_of(batch, key):
        codes = vqvae.encode_to_codes(vq, vq_params, batch["image"], info.num_bits)
        return sequence(caption_tokens(batch, key), codes)

    def log_probs(params, seq, dropout_key=None):
        train = dropout_key is not None
        logits = net.apply({"params": params}, seq, train=train, rngs={"dropout": dropout_key} if train else {})
        return jnp.take_along_axis(modality_log_probs(logits, p.text_len), seq[..., None], axis=-1)[..., 0]

    def code_log_prob(params, seq):
        return jnp.sum(log_probs(params, seq)[:, p.text_len:], axis=-1)

    def init(key, batch):
        return net.init({"params": key}, sequence_of(batch, key), train=False)["params"]

    def loss(params, key, batch):
        caption_key, dropout_key = jax.random.split(key)
        lp = log_probs(params, sequence_of(batch, caption_key), dropout_key)
        text, image = -jnp.mean(lp[:, :p.text_len]), -jnp.mean(lp[:, p.text_len:])
        value = p.text_loss_weight * text + (1.0 - p.text_loss_weight) * image
        return value, {"loss": value, "text_nats": text, "image_bits_per_code": image / dist.LN2}

    def log_prob(params, key, batch):
        return code_log_prob(params, sequence_of(batch, key))

    def prompt_rows(num):
        return jnp.arange(num) % len(texts)

    def sample(params, key, num):
        r = p.candidates
        prefix = jnp.tile(prompts[prompt_rows(num)], (r, 1))  # candidate j of sample i: row j * num + i
        seq = draw_sequences(params, key, prefix)
        if r > 1:
            seq = best_candidates(seq, code_log_prob(params, seq), r)
        codes = (seq[:, p.text_len:] - captions.TEXT_VOCAB).reshape((num,) + vq.grid)
        return vqvae.decode_codes(vq, vq_params, codes, info.num_bits).astype(jnp.uint8)

    def draw_sequences(params, key, prefix):
        s = p.sampling
        return sample_tokens(net, params, key, prefix.shape[0], None, s.temperature, s.top_k, s.top_p, prefix,
                             allowed=(captions.TEXT_VOCAB, captions.TEXT_VOCAB + vq.num_codes))

    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=False,
                  log_prob_per=(num_codes, "code"),
                  sample_prompts=lambda num: tuple(texts[i % len(texts)] for i in range(num)),
                  sample_labels=None if labels is None else (lambda num: labels[np.arange(num) % len(labels)]))
