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

The quantizer's state lives in params['quantizer'] = {'codebook' [K, D], 'usage' [K], 'embed_sum'
[K, D]}: the loss never differentiates 'usage' or 'embed_sum', and the family's own `train_step`
overwrites them (and, in 'ema' mode, the codebook) after the optimizer's update. During stage 1 the
prior is uniform, so `sample` decodes uniformly drawn codes.

Stage 2 (`make_prior`): any model of `gm.autoregressive` (the causal transformer by default, or a
PixelCNN) learns p(codes) on the code grids of the trained, frozen VQ-VAE, one token per grid cell in
raster order; `sample` runs prior -> codes -> decoder in one compiled call.
"""
import math
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from gm import autoregressive, checks, parallel
from gm import distributions as dist
from gm.data import DatasetInfo
from gm.method import Method
from gm.nn import convnets
from gm.train import state as state_lib

CODEBOOK_MODES = ("loss", "ema")
# Per-step statistics the loss hands to `train_step` through its metrics; never logged.
_STATS = ("vq_counts", "vq_sums", "vq_candidates")


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


def ema_codebook_update(quantizer, counts, sums, decay, epsilon=1e-5):
    """The EMA codebook step: counts [K] and sums [K, D] are this batch's n_k / n and sum z_e / n.

    Returns the new quantizer with usage N, embed_sum m and codebook m / N', where N' is N with Laplace
    smoothing (N_k + eps) / (sum N + K eps) * sum N, so an unused code keeps a finite entry.
    """
    usage = decay * quantizer["usage"] + (1.0 - decay) * counts
    embed_sum = decay * quantizer["embed_sum"] + (1.0 - decay) * sums
    total = jnp.sum(usage)
    smoothed = (usage + epsilon) / (total + usage.shape[0] * epsilon) * total
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
    codebook = params["quantizer"]["codebook"]
    codes = nearest_codes(z_e, codebook)
    return straight_through(z_e, codebook[codes]), codes


def encode_to_codes(vq, params, levels, num_bits):
    """Integer image levels [B, H, W, C] -> codes int32 [B, h, w]."""
    z_e = vq.encode(params, dist.levels_to_symmetric(levels, num_bits))
    return nearest_codes(z_e, params["quantizer"]["codebook"])


def decode_codes(vq, params, codes, num_bits):
    """codes int32 [B, h, w] -> integer image levels [B, H, W, C] (the reconstruction, rounded)."""
    x = vq.decode(params, params["quantizer"]["codebook"][codes])
    return dist.symmetric_to_levels(jnp.clip(x, -1.0, 1.0), num_bits).astype(jnp.int32)


def reconstruct(vq, params, levels, num_bits):
    """Integer levels [B, H, W, C] -> their reconstruction through the code grid, same shape."""
    return decode_codes(vq, params, encode_to_codes(vq, params, levels, num_bits), num_bits)


# ---------------------------------------------------------------------------------------------------
# Stage 1: the VQ-VAE.
# ---------------------------------------------------------------------------------------------------

def vqvae_from_config(model, info):
    """config.model -> (VQVAE, init(key, levels) -> params). Reads num_codes, code_dim, channels,
    num_res_blocks, res_hidden."""
    if model.num_codes < 2 or model.code_dim < 1:
        raise ValueError(f"config.model.num_codes must be >= 2 and config.model.code_dim >= 1, got "
                         f"{model.num_codes} and {model.code_dim}.")
    channels = tuple(model.channels)
    checks.sizes(model, "config.model", positive=("channels", "res_hidden"), nonnegative=("num_res_blocks",))
    checks.require(len(channels) > 0, "config.model.channels", channels, "a non-empty tuple")
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
                "quantizer": init_quantizer(q_key, model.num_codes, model.code_dim)}

    return vq, init


def vq_losses(vq, params, key, levels, num_bits, commitment=0.25, codebook_loss=True):
    """The stage-1 loss and its parts for integer levels [B, H, W, C].

    Returns (loss, metrics, stats): metrics are scalars (recon_mse in [-1, 1] units, commitment,
    codebook, perplexity and the share of codes used in this batch); stats are the per-batch
    statistics `train_step` needs (usage counts [K], sums [K, D], restart candidates [K, D]).
    """
    x = dist.levels_to_symmetric(levels, num_bits)
    z_e = vq.encode(params, x)
    z_q, codes = quantize(vq, params, z_e)
    codebook = params["quantizer"]["codebook"]
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
    return loss, metrics, {"vq_counts": counts, "vq_sums": sums, "vq_candidates": candidates}


def update_quantizer(quantizer, stats, mode, decay, restart_threshold):
    """The quantizer after one step's statistics: EMA (mode 'ema') or usage only, then restarts."""
    if mode == "ema":
        quantizer = ema_codebook_update(quantizer, stats["vq_counts"], stats["vq_sums"], decay)
    else:
        quantizer = usage_update(quantizer, stats["vq_counts"], decay)
    if restart_threshold > 0:
        quantizer = restart_dead_codes(quantizer, stats["vq_candidates"], restart_threshold)
    return quantizer


def make(config, info):
    """Stage 1: a VQ-VAE of images of `info.shape` -> Method with its own `train_step`.

    Reads config.model: num_codes (K), code_dim (D), channels, num_res_blocks, res_hidden, commitment
    (beta), codebook ('loss' | 'ema'), codebook_decay (the EMA's g, also the usage EMA's),
    restart_threshold (0 disables restarts). `sample` decodes uniformly drawn codes (stage 1's prior);
    there is no `log_prob`.
    """
    if info.num_bits is None:
        raise ValueError(f"The VQ-VAE models images; config.data.name={info.name!r} is not an image dataset.")
    m = config.model
    mode = m.get("codebook", "ema")
    if mode not in CODEBOOK_MODES:
        raise ValueError(f"config.model.codebook must be one of {CODEBOOK_MODES}, got {mode!r}.")
    decay, threshold = float(m.get("codebook_decay", 0.99)), float(m.get("restart_threshold", 0.0))
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"config.model.codebook_decay must be in [0, 1), got {decay}.")
    checks.number_in(threshold, "config.model.restart_threshold (0: no restarts)", 0.0, 1.0)
    vq, init_params = vqvae_from_config(m, info)
    commitment = checks.number_in(m.get("commitment", 0.25), "config.model.commitment", 0.0, None)

    def init(key, batch):
        return init_params(key, batch["image"])

    def loss_with_stats(params, key, batch):
        loss, metrics, stats = vq_losses(vq, params, key, batch["image"], info.num_bits, commitment,
                                         codebook_loss=(mode == "loss"))
        return loss, {**metrics, **stats}

    def loss(params, key, batch):
        value, metrics = loss_with_stats(params, key, batch)
        return value, {k: v for k, v in metrics.items() if k not in _STATS}

    def train_step(state, batch, key, *, optimizer, ema_decay, **strategy):
        new, metrics = state_lib.train_step(state, batch, key, loss_fn=loss_with_stats, optimizer=optimizer,
                                            ema_decay=ema_decay, **strategy)
        stats = {k: metrics.pop(k) for k in _STATS}
        finite = metrics["finite"] > 0
        quantizer = update_quantizer(new.params["quantizer"], stats, mode, decay, threshold)
        quantizer = jax.tree.map(lambda a, b: jnp.where(finite, a, b), quantizer, new.params["quantizer"])
        ema = jax.tree.map(lambda a, b: jnp.where(finite, a, b),
                           state_lib.ema_update(state.ema_params["quantizer"], quantizer, ema_decay),
                           new.ema_params["quantizer"])
        new = new.replace(params={**new.params, "quantizer": quantizer},
                          ema_params={**new.ema_params, "quantizer": ema})
        return new, metrics

    def sample(params, key, num):
        codes = jax.random.randint(key, (num,) + vq.grid, 0, vq.num_codes)
        return decode_codes(vq, params, codes, info.num_bits).astype(jnp.uint8)

    return Method(init=init, loss=loss, sample=sample, train_step=train_step)


# ---------------------------------------------------------------------------------------------------
# Stage 2: the autoregressive prior over codes.
# ---------------------------------------------------------------------------------------------------

def code_info(vq, info):
    """The code grids seen as a dataset: shape (h, w, 1), 2^ceil(log2 K) levels (codes >= K unused)."""
    bits = max(1, math.ceil(math.log2(vq.num_codes)))
    return DatasetInfo(f"{info.name}_codes", vq.grid + (1,), bits, info.num_classes, info.num_train,
                       info.num_test)


def make_prior(config, info, vq_config, vq_params):
    """Stage 2: an autoregressive prior over the codes of a trained VQ-VAE -> Method on the images.

    `vq_config` is stage 1's config (its model fields build the VQ-VAE), `vq_params` its trained (EMA)
    params, frozen. config.prior is an autoregressive config.model (name, class_conditional, dtype and
    the network's fields); the loss is the prior's negative log-likelihood in bits per code, the images
    of each batch encoded on the fly. `sample` draws codes from the prior and decodes them to uint8
    levels at the data's bit depth, in one compiled call. `log_prob` is the prior's exact log p(codes)
    in nats per example (not a likelihood of the pixels).
    """
    vq, _ = vqvae_from_config(vq_config.model, info)
    codes_info = code_info(vq, info)
    prior = autoregressive.model_from_config(config.prior, codes_info, field="config.prior")
    conditional = bool(config.prior.get("class_conditional", False))
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

    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=False)


# ---------------------------------------------------------------------------------------------------
# Evaluation of stage 1.
# ---------------------------------------------------------------------------------------------------

def reconstruction_errors(vq, params, levels, num_bits):
    """Per example: 'mse' [B] of the decoder's output in [-1, 1] units, 'level_mse' [B] of the rounded
    reconstruction in levels, and the 'codes' [B, h, w]."""
    x = dist.levels_to_symmetric(levels, num_bits)
    codes = encode_to_codes(vq, params, levels, num_bits)
    out = vq.decode(params, params["quantizer"]["codebook"][codes])
    rounded = dist.symmetric_to_levels(jnp.clip(out, -1.0, 1.0), num_bits)
    per_example = lambda e: jnp.mean(e.reshape(e.shape[0], -1), axis=-1)
    return {"mse": per_example((out - x) ** 2),
            "level_mse": per_example((rounded - levels.astype(jnp.float32)) ** 2), "codes": codes}


def evaluate_reconstruction(vq, params, batches, num_bits, num_batches=None):
    """Reconstruction error and codebook use over `batches` from `gm.data.eval_batches`.

    Returns recon_mse (in [-1, 1] units, what the loss sees), psnr_db (of the rounded reconstruction,
    peak = the top level), perplexity and codes_used (the share of the K codes used at least once),
    both over the whole split's code histogram, and num_examples.
    """
    compiled = parallel.jit_per_example(lambda p, _, batch: reconstruction_errors(vq, p, batch["image"], num_bits))
    mse, level_mse, counts = [], [], np.zeros(vq.num_codes, np.int64)
    for batch in tqdm(batches, total=num_batches, desc="eval", mininterval=2.0,
                      disable=parallel.process_index() != 0):
        sharded = parallel.shard_batch({"image": batch["image"], "mask": batch["mask"]})
        out, mask = parallel.to_host((compiled(params, jax.random.key(0), sharded), sharded["mask"]))
        mask = np.asarray(mask)
        mse.append(np.asarray(out["mse"], np.float64)[mask])
        level_mse.append(np.asarray(out["level_mse"], np.float64)[mask])
        counts += np.bincount(np.asarray(out["codes"])[mask].reshape(-1), minlength=vq.num_codes)
    mse, level_mse = np.concatenate(mse), np.concatenate(level_mse)
    top = dist.num_levels(num_bits) - 1
    usage = counts / counts.sum()
    return {"recon_mse": float(mse.mean()), "recon_mse_stderr": float(mse.std(ddof=1) / np.sqrt(mse.size)),
            "psnr_db": float(10 * np.log10(top ** 2 / max(level_mse.mean(), 1e-12))),
            "perplexity": float(perplexity(jnp.asarray(usage))), "codes_used": float(np.mean(counts > 0)),
            "num_examples": int(mse.size)}
