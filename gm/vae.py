"""The variational autoencoder (Kingma & Welling 2014) and its importance-weighted bound (Burda et al. 2016).

    q(z | x) = N(mean(x), diag(exp(log_var(x))))     the encoder, z = mean + exp(log_var / 2) * eps
    p(z)     = N(0, I)                                the prior
    p(x | z)                                          the decoder's likelihood at the data's bit depth

    ELBO(x)   = E_q[log p(x | z)] - KL(q(z | x) || p(z))  <=  log p(x)
    IWAE_K(x) = E[log (1/K) sum_k p(x, z_k) / q(z_k | x)],  IWAE_1 = ELBO <= IWAE_K <= IWAE_2K <= log p(x)

Likelihoods (config.model.likelihood), all over the data's integer levels so bits/dim compares with
every other family through `gm.distributions.bits_per_dim`:

    bernoulli   binarized images (config.model.binarize: 'stochastic' per step, or 'threshold')
    logistic    the discretized logistic mixture of PixelCNN++ with config.model.num_mix components
    gaussian    a discretized Gaussian with a per-sub-pixel learned scale (the DDPM decoder's bins)

Every value here is in nats per example unless its name says bits/dim. The building blocks
(`reparameterize`, `elbo_terms`, `log_importance_weights`, `iwae_bound`, `reconstruct`, `sample`) are
pure functions of a `VAE` and its params, for use in notebooks; `make(settings, info)` wraps them as the family's Method.
"""
import dataclasses
import math
from typing import Callable, Literal, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from gm import checks
from gm import distributions as dist
from gm.config import interval, nonnegative, positive, positive_entries, setting
from gm.method import Method
from gm.nn import convnets

LIKELIHOODS = ("bernoulli", "logistic", "gaussian")
KL_ESTIMATORS = ("analytic", "mc")


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """config.model: the IWAE paper's MLP VAE for binarized MNIST by default.

    latent_dim; arch 'mlp' (Dense layers of `hidden` with `activation`) or 'conv' (`channels` stride-2
    stages, `num_res_blocks` residual blocks of `res_hidden`, then Dense layers of `hidden`);
    likelihood 'bernoulli' (binarized data, `binarize`) | 'logistic' (a mixture of `num_mix`) |
    'gaussian'; kl 'analytic' | 'mc'; beta weighs the KL in training (the beta-VAE); class_conditional;
    sample_mean: sample grids show p(x | z)'s mean (the usual VAE picture) instead of a draw.
    num_importance, importance_chunk: K of the IWAE bound that `log_prob` reports (1: the ELBO), drawn
    that many at a time (so K = 5000 fits in memory).
    """
    latent_dim: int = setting(50, positive)
    arch: Literal[convnets.ARCHITECTURES] = "mlp"
    hidden: Tuple[int, ...] = setting((200, 200), positive_entries)
    activation: Literal[tuple(convnets.ACTIVATIONS)] = "tanh"
    channels: Tuple[int, ...] = setting((32, 64), positive_entries)
    num_res_blocks: int = setting(1, nonnegative)
    res_hidden: int = setting(32, positive)
    likelihood: Literal[LIKELIHOODS] = "bernoulli"
    binarize: Literal[dist.BINARIZE] = "stochastic"
    num_mix: int = setting(5, positive)
    kl: Literal[KL_ESTIMATORS] = "analytic"
    beta: float = setting(1.0, interval(0.0, None))
    class_conditional: bool = False
    sample_mean: bool = True
    num_importance: int = setting(5000, positive)
    importance_chunk: int = setting(250, positive)

    def check(self, name):
        if self.arch == "conv":
            checks.require(len(self.channels) > 0, f"{name}.channels", self.channels, "a non-empty tuple")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The VAE family's config section."""
    model: VAEConfig = VAEConfig()


class VAE(NamedTuple):
    """The model's pieces; params are {'encoder': ..., 'decoder': ...}.

    encoder(params, x [B, H, W, C] in [-1, 1], y) -> (mean, log_var) [B, L]
    decoder(params, z [B, L], y) -> the likelihood's parameters [B, H, W, P]
    log_likelihood(out, data) -> log p(x | z) in nats [B], data as `observe` returns it
    observe(key, levels) -> the modelled data (binary for Bernoulli, else the levels)
    sample_data(key, out, mean) -> integer levels [B, H, W, C] (the likelihood's mean when mean=True)
    """
    latent_dim: int
    num_bits: int
    encoder: Callable
    decoder: Callable
    log_likelihood: Callable
    observe: Callable
    sample_data: Callable
    to_input: Callable  # data -> network input in [-1, 1]


# ---------------------------------------------------------------------------------------------------
# Likelihoods p(x | z) over integer levels.
# ---------------------------------------------------------------------------------------------------

def likelihood_num_params(likelihood, num_channels, num_mix=1):
    """P, the decoder's output features per pixel for `likelihood`."""
    if likelihood == "bernoulli":
        return num_channels
    if likelihood == "gaussian":
        return 2 * num_channels
    if likelihood == "logistic":
        return dist.dlm_num_params(num_channels, num_mix)
    raise ValueError(f"config.model.likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")


def observation_log_prob(likelihood, out, data, num_bits):
    """log p(x | z) in nats [B] of integer `data` [B, H, W, C] (binary for Bernoulli) given the decoder's
    output `out` [B, H, W, P]."""
    if likelihood == "bernoulli":
        return dist.sum_per_example(dist.bernoulli_log_prob(out, data))
    x = dist.levels_to_symmetric(data, num_bits)
    if likelihood == "gaussian":
        mean, log_scale = jnp.split(out, 2, axis=-1)
        return dist.sum_per_example(dist.discretized_gaussian_log_prob(x, mean, log_scale, num_bits))
    return dist.sum_per_example(dist.discretized_logistic_mixture_log_prob(x, out, num_bits))


def observation_sample(likelihood, key, out, num_bits, num_channels, mean=False):
    """Integer levels [B, H, W, C] drawn from p(x | z), or with mean=True its mean rounded to a level
    (for the logistic mixture: temperature 0, a drawn component's centre; `key` may then be None).

    Bernoulli draws are 0/1 scaled to the top level for display."""
    top = dist.num_levels(num_bits) - 1
    if likelihood == "bernoulli":
        p = jax.nn.sigmoid(out)
        binary = p if mean else jax.random.bernoulli(key, p).astype(jnp.float32)
        return jnp.round(binary * top).astype(jnp.int32)
    if likelihood == "gaussian":
        mu, log_scale = jnp.split(out, 2, axis=-1)
        x = mu if mean else mu + jnp.exp(log_scale) * jax.random.normal(key, mu.shape)
        return dist.symmetric_to_levels(jnp.clip(x, -1.0, 1.0), num_bits).astype(jnp.int32)
    # The mixture at temperature 0: a drawn component's (channel-coupled) centre, snapped to a level.
    key = jax.random.key(0) if key is None else key
    x = dist.sample_discretized_logistic_mixture(key, out, num_bits, num_channels, 0.0 if mean else 1.0)
    return dist.symmetric_to_levels(x, num_bits).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------------
# The bounds.
# ---------------------------------------------------------------------------------------------------

def reparameterize(key, mean, log_var, num=None):
    """z = mean + exp(log_var / 2) * eps with eps ~ N(0, I): [B, L], or [num, B, L] when num is given.

    The gradient flows to mean and log_var through the deterministic transform (the trick)."""
    shape = mean.shape if num is None else (num,) + mean.shape
    return mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, shape, mean.dtype)


def gaussian_kl_to_standard(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) in nats [B], analytic."""
    return jnp.sum(dist.normal_kl(mean, log_var, 0.0, 0.0), axis=-1)


def _log_standard_normal(z):
    return jnp.sum(dist.gaussian_log_prob(z, 0.0, 0.0), axis=-1)


def elbo_terms(vae, params, key, data, y=None, kl="analytic"):
    """One-sample ELBO terms, each [B] in nats: {'elbo', 'log_likelihood', 'kl'}.

    kl='analytic' uses the closed form; 'mc' uses log q(z | x) - log p(z) at the same z (then the ELBO
    equals `log_importance_weights` with num=1 under the same key, exactly)."""
    if kl not in KL_ESTIMATORS:
        raise ValueError(f"config.model.kl must be one of {KL_ESTIMATORS}, got {kl!r}.")
    mean, log_var = vae.encoder(params, vae.to_input(data), y)
    z = reparameterize(key, mean, log_var, 1)[0]
    log_px = vae.log_likelihood(vae.decoder(params, z, y), data)
    if kl == "analytic":
        kl_value = gaussian_kl_to_standard(mean, log_var)
    else:
        kl_value = jnp.sum(dist.gaussian_log_prob(z, mean, log_var), axis=-1) - _log_standard_normal(z)
    return {"elbo": log_px - kl_value, "log_likelihood": log_px, "kl": kl_value}


def log_importance_weights(vae, params, key, data, y=None, num=1, encoded=None):
    """log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x) for z_k ~ q(z | x): [num, B] nats.

    `encoded` = (mean, log_var) skips the encoder when the caller already has them."""
    mean, log_var = encoded if encoded is not None else vae.encoder(params, vae.to_input(data), y)
    z = reparameterize(key, mean, log_var, num)  # [num, B, L]
    flat = z.reshape((-1, z.shape[-1]))
    rep = lambda a: None if a is None else jnp.tile(a, (num,) + (1,) * (a.ndim - 1))
    out = vae.decoder(params, flat, rep(y))
    log_px = vae.log_likelihood(out, rep(data)).reshape(num, -1)
    log_q = jnp.sum(dist.gaussian_log_prob(z, mean, log_var), axis=-1)
    return log_px + _log_standard_normal(z) - log_q


def iwae_bound(vae, params, key, data, y=None, num_samples=1, chunk_size=None):
    """The importance-weighted bound log (1/K) sum_k w_k in nats [B], K = num_samples.

    The K samples are drawn `chunk_size` at a time inside a `lax.scan` that carries a running
    logsumexp, so memory is O(B * chunk_size) whatever K is (K = 5000 fits). Chunk c uses
    fold_in(key, c); with K <= chunk_size this is one call of `log_importance_weights` with
    fold_in(key, 0), so IWAE_1 equals the 'mc' ELBO under that key.
    """
    chunk = min(chunk_size or num_samples, num_samples)
    num_chunks = -(-num_samples // chunk)
    encoded = vae.encoder(params, vae.to_input(data), y)

    def body(running, c):
        log_w = log_importance_weights(vae, params, jax.random.fold_in(key, c), data, y, chunk, encoded)
        valid = (c * chunk + jnp.arange(chunk)) < num_samples  # the last chunk may run past K
        log_w = jnp.where(valid[:, None], log_w, -jnp.inf)
        return jnp.logaddexp(running, jax.nn.logsumexp(log_w, axis=0)), None

    start = jnp.full(data.shape[:1], -jnp.inf, jnp.float32)
    total, _ = jax.lax.scan(body, start, jnp.arange(num_chunks))
    return total - math.log(num_samples)


def reconstruct(vae, params, data, y=None):
    """The data [B, H, W, C] (as `observe` returns them) -> the decoder's mean at the encoder's mean,
    as integer levels [B, H, W, C]."""
    mean, _ = vae.encoder(params, vae.to_input(data), y)
    return vae.sample_data(None, vae.decoder(params, mean, y), True)


def sample(vae, params, key, num, y=None, mean=False):
    """z ~ N(0, I) -> decoder -> integer levels [num, H, W, C]."""
    z_key, x_key = jax.random.split(key)
    z = jax.random.normal(z_key, (num, vae.latent_dim))
    return vae.sample_data(x_key, vae.decoder(params, z, y), mean)


# ---------------------------------------------------------------------------------------------------
# From a config.
# ---------------------------------------------------------------------------------------------------

_NETWORK_FIELDS = ("arch", "hidden", "channels", "num_res_blocks", "res_hidden", "activation")


def vae_from_config(model: VAEConfig, info):
    """The VAE `model` describes for images of `info` -> (VAE, init(key, levels, y) -> params)."""
    likelihood = model.likelihood
    num_channels = info.shape[-1]
    out_features = likelihood_num_params(likelihood, num_channels, model.num_mix)
    mode = model.binarize
    if model.arch == "conv":
        convnets.check_downsampling(info.shape, len(model.channels))
    num_classes = info.num_classes if model.class_conditional else None
    spec = convnets.NetSpec(**{f: getattr(model, f) for f in _NETWORK_FIELDS})
    enc = convnets.GaussianEncoder(model.latent_dim, spec, num_classes)
    dec = convnets.LatentDecoder(tuple(info.shape), out_features, spec, num_classes)
    num_bits = info.num_bits

    def observe(key, levels):
        return dist.binarize(key, levels, num_bits, mode) if likelihood == "bernoulli" else levels

    def to_input(data):
        return data * 2.0 - 1.0 if likelihood == "bernoulli" else dist.levels_to_symmetric(data, num_bits)

    vae = VAE(
        latent_dim=model.latent_dim, num_bits=num_bits,
        encoder=lambda p, x, y: enc.apply({"params": p["encoder"]}, x, y),
        decoder=lambda p, z, y: dec.apply({"params": p["decoder"]}, z, y),
        log_likelihood=lambda out, data: observation_log_prob(likelihood, out, data, num_bits),
        observe=observe,
        sample_data=lambda key, out, mean: observation_sample(likelihood, key, out, num_bits, num_channels, mean),
        to_input=to_input)

    def init(key, levels, y):
        e_key, d_key = jax.random.split(key)
        x = to_input(observe(jax.random.key(0), levels))
        z = jnp.zeros((levels.shape[0], model.latent_dim))
        return {"encoder": enc.init({"params": e_key}, x, y)["params"],
                "decoder": dec.init({"params": d_key}, z, y)["params"]}

    return vae, init


def make(settings: Settings, info) -> Method:
    """A VAE of images of `info.shape` at `info.num_bits` (see `VAEConfig`) -> Method.

    The loss is the negative beta-ELBO in bits/dim; metrics give the ELBO (beta = 1) in bits/dim,
    E_q log p(x|z) and the KL in nats. `log_prob` is the IWAE bound with K = num_importance (K = 1: the
    ELBO with the Monte Carlo KL), labelled a bound. Bernoulli data are binarized with a fresh key each
    step and with `log_prob`'s key in evaluation. `reconstruct` shows the data as the model sees them
    and the decoder's mean at their encodings.
    """
    if not info.is_image:
        raise ValueError(f"The VAE models images; config.data.name={info.name!r} is not an image dataset.")
    m = settings.model
    vae, init_params = vae_from_config(m, info)
    beta, kl, num_importance, chunk = m.beta, m.kl, m.num_importance, m.importance_chunk
    conditional = m.class_conditional
    num_dims, sample_mean = info.num_dims, m.sample_mean

    def labels(batch):
        return batch["label"] if conditional else None

    def init(key, batch):
        return init_params(key, batch["image"], labels(batch))

    def loss(params, key, batch):
        data_key, z_key = jax.random.split(key)
        terms = elbo_terms(vae, params, z_key, vae.observe(data_key, batch["image"]), labels(batch), kl)
        objective = jnp.mean(terms["log_likelihood"] - beta * terms["kl"])
        bpd = dist.bits_per_dim(-objective, num_dims)
        return bpd, {"elbo_bpd": dist.bits_per_dim(-jnp.mean(terms["elbo"]), num_dims),
                     "log_likelihood_nats": jnp.mean(terms["log_likelihood"]), "kl_nats": jnp.mean(terms["kl"])}

    def sample_fn(params, key, num):
        label_key, key = jax.random.split(key)
        y = jax.random.randint(label_key, (num,), 0, info.num_classes) if conditional else None
        return sample(vae, params, key, num, y, sample_mean).astype(jnp.uint8)

    def log_prob(params, key, batch):
        # The data key is `key` itself (as in the autoregressive family), so a binarized test set is the
        # same one the independent-pixel baseline and NADE see under the same evaluation key.
        data = vae.observe(key, batch["image"])
        return iwae_bound(vae, params, jax.random.fold_in(key, 1), data, labels(batch), num_importance, chunk)

    def reconstruct_fn(params, key, batch):
        # The same binarization as `log_prob` under the same key; 0/1 shown as the top level.
        data = vae.observe(key, batch["image"])
        shown = data * (dist.num_levels(info.num_bits) - 1) if m.likelihood == "bernoulli" else data
        return {"data": shown.astype(jnp.uint8),
                "reconstruction": reconstruct(vae, params, data, labels(batch)).astype(jnp.uint8)}

    return Method(init=init, loss=loss, sample=sample_fn, log_prob=log_prob, log_prob_is_bound=True,
                  reconstruct=reconstruct_fn)
