"""VQ-VAE (van den Oord et al. 2017): a discrete code grid, then an autoregressive prior over it.

Stage 1 (`make`): an encoder maps images [B, H, W, C] in [-1, 1] to vectors z_e [B, h, w, D]; each is
replaced by its nearest codebook entry e_k (K entries); the decoder reconstructs from the z_q grid.

    loss = ||x - decoder(z_q)||^2  +  ||sg(z_e) - z_q||^2  +  beta ||z_e - sg(z_q)||^2
           reconstruction          codebook                commitment (beta = 0.25)

The decoder's gradient reaches the encoder through the straight-through estimator
z_e + sg(z_q - z_e). With config.model.codebook='ema' the codebook term is dropped and the entries follow
exponential moving averages instead (the paper's appendix A.1):

    N_k <- g N_k + (1 - g) n_k,   m_k <- g m_k + (1 - g) sum_{i: k(i) = k} z_e,i,   e_k = m_k / N_k

with n_k and the sums taken per assigned vector as fractions of the batch (so the update does not depend
on how the batch is split across devices) and N Laplace-smoothed. Codes whose usage N_k falls below
config.model.restart_threshold / K are restarted at encoder outputs of the current batch (as in
Dhariwal et al. 2020). Under `pmap` the restart candidates are averaged over devices like every metric;
the default `sharded` strategy sees the global batch.

The codebook [K, D] is params['codebook'], what encoding and decoding read; the statistics no gradient
trains, 'usage' N [K] and 'embed_sum' m [K, D], are `TrainState.extra`. The family's `Training` updates
them (and, in 'ema' mode, the codebook, which then gets no gradient) after the optimizer's step. The
parameter EMA averages the encoder and decoder and takes the codebook as it is: the codebook is already
an average of encoder outputs, and averaging it again would mix a restarted code's old and new
entries. During stage 1 the prior is uniform, so `sample` decodes uniformly drawn codes.

Stage 2 (`make_prior`): any model of `gm.autoregressive` (the causal transformer by default, or a
PixelCNN) learns p(codes) on the code grids of the trained, frozen VQ-VAE, one token per grid cell in
raster order; `sample` runs prior -> codes -> decoder in one compiled call.
"""
import dataclasses
import math
from typing import Callable, Literal, NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gm import autoregressive, optim
from gm import distributions as dist
from gm.config import OptimConfig, TrainConfig, interval, nonnegative, positive, positive_entries, setting
from gm.data import DatasetInfo
from gm.method import Method, Training
from gm.nn import convnets

CODEBOOK_MODES = ("loss", "ema")
STATISTICS = ("usage", "embed_sum")  # the quantizer's entries that live in TrainState.extra


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
    """config.model: the paper's CIFAR-10 VQ-VAE by default (two stride-2 4x4 convolutions and two
    residual blocks of 256 channels each way, an 8x8 grid of K = 512 codes of dimension 64).

    commitment: beta; codebook 'ema' (entries follow moving averages with codebook_decay, the paper's
    appendix A.1) or 'loss' (trained by the codebook term; codebook_decay then drives only the usage
    average); restart_threshold: codes whose usage falls below it / K restart at encoder outputs (0: never).
    """
    num_codes: int = setting(512, positive)
    code_dim: int = setting(64, positive)
    channels: Tuple[int, ...] = setting((256, 256), positive_entries)
    num_res_blocks: int = setting(2, nonnegative)
    res_hidden: int = setting(256, positive)
    commitment: float = setting(0.25, interval(0.0, None))
    codebook: Literal[CODEBOOK_MODES] = "ema"
    codebook_decay: float = setting(0.99, interval(0.0, 1.0))
    restart_threshold: float = setting(0.03, interval(0.0, 1.0))

    def check(self, name):
        if self.num_codes < 2:
            raise ValueError(f"{name}.num_codes must be >= 2, got {self.num_codes}.")
        if not self.channels:
            raise ValueError(f"{name}.channels must be a non-empty tuple, got {self.channels!r}.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The VQ-VAE family's sections: stage 1's networks (config.model; it trains with config.train and
    config.optim), and stage 2's prior over codes (config.prior, an autoregressive model, trained with
    config.prior_train and config.prior_optim)."""
    model: VQVAEConfig = VQVAEConfig()
    prior: autoregressive.ModelConfig = autoregressive.ModelConfig(name="transformer")
    prior_train: TrainConfig = TrainConfig()
    prior_optim: OptimConfig = OptimConfig()


class VQVAE(NamedTuple):
    """encode(params, x [B, H, W, C] in [-1, 1]) -> z_e [B, h, w, D];
    decode(params, z_q [B, h, w, D]) -> reconstruction [B, H, W, C] in [-1, 1] units."""
    num_codes: int
    code_dim: int
    grid: tuple
    encode: Callable
    decode: Callable


# ---------------------------------------------------------------------------------------------------
# The quantizer.
# ---------------------------------------------------------------------------------------------------

def nearest_codes(z_e, codebook):
    """Indices int32 [...] of the nearest codebook rows [K, D] (squared Euclidean) to vectors z_e [..., D]."""
    d = (jnp.sum(z_e ** 2, -1, keepdims=True) - 2.0 * z_e @ codebook.T + jnp.sum(codebook ** 2, -1))
    return jnp.argmin(d, axis=-1).astype(jnp.int32)


def straight_through(z_e, z_q):
    """Forward value z_q, gradient of z_e: d loss / d z_q is passed to the encoder unchanged."""
    return z_e + jax.lax.stop_gradient(z_q - z_e)


def code_usage(codes, num_codes):
    """Share of the vectors assigned to each code: float32 [K] summing to 1."""
    counts = jnp.zeros(num_codes, jnp.float32).at[codes.reshape(-1)].add(1.0)
    return counts / codes.size


def perplexity(usage):
    """exp(entropy) of a usage distribution [K]: K when every code is used equally, 1 when one is."""
    p = usage / jnp.sum(usage)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def init_quantizer(key, num_codes, code_dim):
    """{'codebook': [K, D] uniform with variance 1/D (Sonnet's VQ init), 'usage': 1/K each, 'embed_sum'}."""
    codebook = nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=-1, out_axis=-2)(
        key, (num_codes, code_dim))
    usage = jnp.full((num_codes,), 1.0 / num_codes)
    return {"codebook": codebook, "usage": usage, "embed_sum": codebook * usage[:, None]}


def ema_codebook_update(quantizer, counts, sums, decay, num_vectors, epsilon=1e-5):
    """The EMA codebook step: counts [K] and sums [K, D] are this batch's n_k / n and sum z_e / n.

    Returns the new quantizer with usage N, embed_sum m and codebook m / N', where N' is N with Laplace
    smoothing, so an unused code keeps a finite entry. Sonnet smooths *counts* with eps = 1e-5 of one
    vector: (N_k + eps) / (n + K eps) * n. N here holds fractions of the n = `num_vectors` vectors of a
    batch, so eps is divided by n: the same smoothing, and a code chosen by one vector of a large batch
    keeps that vector as its entry instead of being pulled toward the origin.
    """
    usage = decay * quantizer["usage"] + (1.0 - decay) * counts
    embed_sum = decay * quantizer["embed_sum"] + (1.0 - decay) * sums
    total = jnp.sum(usage)
    eps = epsilon / num_vectors
    smoothed = (usage + eps) / (total + usage.shape[0] * eps) * total
    return {"codebook": embed_sum / smoothed[:, None], "usage": usage, "embed_sum": embed_sum}


def usage_update(quantizer, counts, decay):
    """Codebook trained by the loss: only the usage EMA moves (it decides which codes are dead)."""
    return dict(quantizer, usage=decay * quantizer["usage"] + (1.0 - decay) * counts)


def restart_dead_codes(quantizer, candidates, threshold):
    """Codes with usage < threshold / K take the candidate vectors [K, D] (encoder outputs) instead.

    A restarted code gets usage 1/K (and a matching embed_sum), so it has time to attract vectors."""
    num_codes = quantizer["usage"].shape[0]
    dead = quantizer["usage"] < threshold / num_codes
    codebook = jnp.where(dead[:, None], candidates, quantizer["codebook"])
    usage = jnp.where(dead, 1.0 / num_codes, quantizer["usage"])
    embed_sum = jnp.where(dead[:, None], candidates / num_codes, quantizer["embed_sum"])
    return {"codebook": codebook, "usage": usage, "embed_sum": embed_sum}


def quantize(vq, params, z_e):
    """(z_q [B, h, w, D] with the straight-through gradient, codes int32 [B, h, w])."""
    codebook = params["codebook"]
    codes = nearest_codes(z_e, codebook)
    return straight_through(z_e, codebook[codes]), codes


def encode_to_codes(vq, params, levels, num_bits):
    """Integer image levels [B, H, W, C] -> codes int32 [B, h, w]."""
    z_e = vq.encode(params, dist.levels_to_symmetric(levels, num_bits))
    return nearest_codes(z_e, params["codebook"])


def decode_codes(vq, params, codes, num_bits):
    """codes int32 [B, h, w] -> integer image levels [B, H, W, C] (the reconstruction, rounded)."""
    x = vq.decode(params, params["codebook"][codes])
    return dist.symmetric_to_levels(jnp.clip(x, -1.0, 1.0), num_bits).astype(jnp.int32)


def reconstruct(vq, params, levels, num_bits):
    """Integer levels [B, H, W, C] -> their reconstruction through the code grid, same shape."""
    return decode_codes(vq, params, encode_to_codes(vq, params, levels, num_bits), num_bits)


# ---------------------------------------------------------------------------------------------------
# Stage 1: the VQ-VAE.
# ---------------------------------------------------------------------------------------------------

def vqvae_from_config(model: VQVAEConfig, info):
    """The VQ-VAE `model` describes for images of `info` -> (VQVAE, init(key, levels) -> params)."""
    channels = model.channels
    convnets.check_downsampling(info.shape, len(channels))
    enc = convnets.ConvEncoder(channels, model.num_res_blocks, model.res_hidden, model.code_dim)
    dec = convnets.ConvDecoder(channels, model.num_res_blocks, model.res_hidden, info.shape[-1])
    scale = 2 ** len(channels)
    grid = (info.shape[0] // scale, info.shape[1] // scale)
    vq = VQVAE(num_codes=model.num_codes, code_dim=model.code_dim, grid=grid,
               encode=lambda p, x: enc.apply({"params": p["encoder"]}, x),
               decode=lambda p, z: dec.apply({"params": p["decoder"]}, z))

    def init(key, levels):
        e_key, d_key, q_key = jax.random.split(key, 3)
        x = dist.levels_to_symmetric(levels, info.num_bits)
        z = jnp.zeros((levels.shape[0],) + grid + (model.code_dim,))
        return {"encoder": enc.init({"params": e_key}, x)["params"],
                "decoder": dec.init({"params": d_key}, z)["params"],
                "codebook": init_quantizer(q_key, model.num_codes, model.code_dim)["codebook"]}

    return vq, init


def vq_losses(vq, params, key, levels, num_bits, commitment=0.25, codebook_loss=True):
    """The stage-1 loss and its parts for integer levels [B, H, W, C].

    Returns (loss, metrics, stats): metrics are scalars (recon_mse in [-1, 1] units, commitment,
    codebook, perplexity and the share of codes used in this batch); stats are the per-batch
    statistics the quantizer's update needs: 'counts' [K] (usage), 'sums' [K, D], 'candidates' [K, D]
    (restart candidates) and 'vectors' (how many vectors the counts are fractions of: the batch's, or
    under `pmap` one device's, as Sonnet counts per replica).
    """
    x = dist.levels_to_symmetric(levels, num_bits)
    z_e = vq.encode(params, x)
    z_q, codes = quantize(vq, params, z_e)
    codebook = params["codebook"]
    chosen = codebook[codes]
    recon_mse = jnp.mean((vq.decode(params, z_q) - x) ** 2)
    commit = jnp.mean((z_e - jax.lax.stop_gradient(chosen)) ** 2)
    codebook_term = jnp.mean((jax.lax.stop_gradient(z_e) - chosen) ** 2) if codebook_loss else 0.0
    loss = recon_mse + codebook_term + commitment * commit
    flat = jax.lax.stop_gradient(z_e).reshape(-1, z_e.shape[-1])
    counts = code_usage(codes, vq.num_codes)
    sums = jnp.zeros_like(codebook).at[codes.reshape(-1)].add(flat) / flat.shape[0]
    candidates = flat[jax.random.randint(key, (vq.num_codes,), 0, flat.shape[0])]
    metrics = {"recon_mse": recon_mse, "commitment": commit, "codebook": jnp.asarray(codebook_term),
               "perplexity": perplexity(counts), "codes_used": jnp.mean(counts > 0)}
    return loss, metrics, {"counts": counts, "sums": sums, "candidates": candidates,
                           "vectors": jnp.float32(flat.shape[0])}


def update_quantizer(quantizer, stats, mode, decay, restart_threshold):
    """The quantizer {'codebook', 'usage', 'embed_sum'} after one step's statistics (`vq_losses`): EMA
    (mode 'ema') or usage only, then restarts."""
    if mode == "ema":
        quantizer = ema_codebook_update(quantizer, stats["counts"], stats["sums"], decay, stats["vectors"])
    else:
        quantizer = usage_update(quantizer, stats["counts"], decay)
    if restart_threshold > 0:
        quantizer = restart_dead_codes(quantizer, stats["candidates"], restart_threshold)
    return quantizer


def vq_training(vq, model: VQVAEConfig, num_bits) -> Training:
    """Stage 1's training: one optimizer step on the loss, then the quantizer's update from the step's
    statistics (averaged over devices like the gradients): the statistics live in `TrainState.extra`,
    the codebook in the parameters; the EMA of the parameters leaves the codebook as it is."""
    def loss_fn(params, extra, key, batch):
        return vq_losses(vq, params, key, batch["image"], num_bits, model.commitment,
                         codebook_loss=(model.codebook == "loss"))

    def after(params, extra, stats):
        quantizer = update_quantizer({"codebook": params["codebook"], **extra}, stats, model.codebook,
                                     model.codebook_decay, model.restart_threshold)
        return {**params, "codebook": quantizer["codebook"]}, {k: quantizer[k] for k in STATISTICS}

    def init_extra(params):
        usage = jnp.full((vq.num_codes,), 1.0 / vq.num_codes)
        return {"usage": usage, "embed_sum": params["codebook"] * usage[:, None]}

    def average(ema_params, params, decay):
        return {**optim.ema_update(ema_params, params, decay), "codebook": params["codebook"]}

    return Training(update=optim.gradient_update(loss_fn, after), init_extra=init_extra, average=average)


def make(settings: Settings, info) -> Method:
    """Stage 1: a VQ-VAE of images of `info.shape` (see `VQVAEConfig`) -> Method with its own training.

    `sample` decodes uniformly drawn codes (stage 1's prior); there is no `log_prob`; `reconstruct`
    gives the reconstruction through the code grid and the codes.
    """
    if not info.is_image:
        raise ValueError(f"The VQ-VAE models images; config.data.name={info.name!r} is not an image dataset.")
    m = settings.model
    vq, init_params = vqvae_from_config(m, info)

    def init(key, batch):
        return init_params(key, batch["image"])

    def loss(params, key, batch):
        value, metrics, _ = vq_losses(vq, params, key, batch["image"], info.num_bits, m.commitment,
                                      codebook_loss=(m.codebook == "loss"))
        return value, metrics

    def sample(params, key, num):
        codes = jax.random.randint(key, (num,) + vq.grid, 0, vq.num_codes)
        return decode_codes(vq, params, codes, info.num_bits).astype(jnp.uint8)

    def reconstruct_fn(params, key, batch):
        codes = encode_to_codes(vq, params, batch["image"], info.num_bits)
        return {"data": batch["image"], "codes": codes,
                "reconstruction": decode_codes(vq, params, codes, info.num_bits).astype(jnp.uint8)}

    return Method(init=init, loss=loss, sample=sample, reconstruct=reconstruct_fn,
                  training=vq_training(vq, m, info.num_bits))


# ---------------------------------------------------------------------------------------------------
# Stage 2: the autoregressive prior over codes.
# ---------------------------------------------------------------------------------------------------

def code_info(vq, info):
    """The code grids seen as a dataset: shape (h, w, 1), 2^ceil(log2 K) levels (codes >= K unused)."""
    bits = max(1, math.ceil(math.log2(vq.num_codes)))
    return DatasetInfo(f"{info.name}_codes", vq.grid + (1,), bits, info.num_classes, info.num_train,
                       info.num_test)


def make_prior(settings: Settings, info, vq_params) -> Method:
    """Stage 2: an autoregressive prior over the codes of a trained VQ-VAE -> Method on the images.

    settings.model builds the VQ-VAE whose trained (EMA) params `vq_params` are frozen here;
    settings.prior is an autoregressive model config (`gm.autoregressive.ModelConfig`). The loss is the
    prior's negative log-likelihood in bits per code, the images of each batch encoded on the fly.
    `sample` draws codes from the prior and decodes them to uint8 levels at the data's bit depth, in
    one compiled call. `log_prob` is the prior's exact log p(codes) in nats per example (not a
    likelihood of the pixels), spread over the grid's codes (`log_prob_per`).
    """
    vq, _ = vqvae_from_config(settings.model, info)
    codes_info = code_info(vq, info)
    prior = autoregressive.model_from_config(settings.prior, codes_info)
    conditional = settings.prior.class_conditional
    num_code_dims = codes_info.num_dims

    def codes_of(batch):
        return encode_to_codes(vq, vq_params, batch["image"], info.num_bits)[..., None]

    def labels(batch):
        return batch["label"] if conditional else None

    def init(key, batch):
        return prior.init(key, codes_of(batch), labels(batch))

    def log_prob(params, key, batch):
        del key  # the codes are a deterministic function of the image
        return prior.log_prob(params, codes_of(batch), labels(batch))

    def loss(params, key, batch):
        nll = -prior.log_prob(params, codes_of(batch), labels(batch), key)
        bpd = dist.bits_per_dim(jnp.mean(nll), num_code_dims)
        return bpd, {"loss": bpd, "nll_nats": jnp.mean(nll)}

    def sample(params, key, num):
        label_key, key = jax.random.split(key)
        y = jax.random.randint(label_key, (num,), 0, info.num_classes) if conditional else None
        codes = prior.sample(params, key, num, y)[..., 0]
        codes = jnp.minimum(codes, vq.num_codes - 1)  # levels past K are never seen in training
        return decode_codes(vq, vq_params, codes, info.num_bits).astype(jnp.uint8)

    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=False,
                  log_prob_per=(num_code_dims, "code"))
