"""StyleGAN2 (Karras et al. 2020), trained as in NVlabs/stylegan2-ada-pytorch's `StyleGAN2Loss`.

A generator G = synthesis(mapping(z)) with noise inputs (`gm.nn.stylegan2`) and a discriminator D. One
train step runs the reference's four phases, each one optimizer step:

    G main          E[softplus(-D(G(z)))]                                      every step
    G reg (PL)      pl_weight * pl_every * E[(|J_w^T y| - a)^2]                when step % pl_every == 0
    D main          E[softplus(D(G(z)))] + E[softplus(-D(x))]                  every step
    D reg (R1)      r1_gamma / 2 * r1_every * E[|grad_x D(x)|^2]               when step % r1_every == 0

The lazy regularizers (Karras et al. 2020, section 3.1) run every pl_every / r1_every steps, scaled up by
that interval; the experiments give each player's Adam the reference's correspondingly lowered rate and
betas (lr * k / (k + 1), beta ** (k / (k + 1)) for interval k). In the path-length term, y ~ N(0, I) /
sqrt(H W) over the image, J_w the Jacobian of the image with respect to every w the synthesis reads
(|.| over w_dim, averaged over the ws), on the first batch / pl_batch_shrink of fresh latents, and a an
exponential moving average of the lengths (decay pl_decay) kept in `TrainState.extra`.

With probability style_mixing_prob a batch's ws switch, at one random layer, from w = mapping(z1) to
mapping(z2) (style mixing regularization). Samples take psi-truncated ws, w_avg + psi (w - w_avg), where
w_avg is the mean of mapping(z) over 10,000 fixed z under the sampled parameters; the reference keeps a
moving average of the training batches' w instead, which estimates the same mean of a drifting mapping.
Noise inputs are drawn afresh for every sample.

params = {'generator': {'mapping', 'synthesis'}, 'discriminator'}; one optax state per player (the
generator's from config.optim, the discriminator's from config.optim_d); the EMA follows the generator;
extra = {'step', 'pl_mean'}. Images are in [-1, 1] at the data's levels.
"""
import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gm import checks
from gm import distributions as dist
from gm import gan_losses, optim
from gm.config import OptimConfig, interval, positive, setting
from gm.method import Method, Training
from gm.nn import stylegan2 as nets

LOSS = "non_saturating"
W_AVG_SAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class StyleGAN2ModelConfig:
    """config.model: z and w dimensions, mapping layers, the width min(channel_base / resolution,
    channel_max) of every block of both networks, the discriminator's minibatch-stddev group and its
    architecture ('resnet': the StyleGAN2 paper's; 'orig': without the skips, as StyleGAN2-ADA's CIFAR-10
    configuration)."""
    z_dim: int = setting(512, positive)
    w_dim: int = setting(512, positive)
    mapping_layers: int = setting(8, positive)
    channel_base: int = setting(32768, positive)
    channel_max: int = setting(512, positive)
    mbstd_group_size: int = setting(4, positive)
    d_architecture: Literal[nets.D_ARCHITECTURES] = "resnet"


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config:
    """config.stylegan2: R1's gamma and interval, the path-length weight (0: off), interval, batch shrink
    and the decay of its running mean, the style-mixing probability, and the truncation psi of samples
    (1: none)."""
    r1_gamma: float = setting(10.0, interval(0.0, None))
    r1_every: int = setting(16, positive)
    pl_weight: float = setting(2.0, interval(0.0, None))
    pl_every: int = setting(4, positive)
    pl_batch_shrink: int = setting(2, positive)
    pl_decay: float = setting(0.01, interval(0.0, 1.0, low_open=True, high_open=False))
    style_mixing_prob: float = setting(0.9, interval(0.0, 1.0, high_open=False))
    truncation_psi: float = setting(1.0, interval(0.0, 1.0, high_open=False))


@dataclasses.dataclass(frozen=True)
class Settings:
    """The StyleGAN2 family's config sections (the generator's optimizer is config.optim)."""
    model: StyleGAN2ModelConfig = StyleGAN2ModelConfig()
    stylegan2: StyleGAN2Config = StyleGAN2Config()
    optim_d: OptimConfig = OptimConfig(learning_rate=0.002, b1=0.0, b2=0.99)


def lazy_adam(learning_rate: float, b2: float, every: int) -> dict:
    """The reference's Adam settings for a player regularized every `every` steps: rate and beta2 (beta1
    is 0) lowered as if the regularization steps were spread over the others."""
    ratio = every / (every + 1)
    return dict(learning_rate=learning_rate * ratio, b1=0.0, b2=b2 ** ratio)


class Networks(NamedTuple):
    """The three modules and the number of ws the synthesis reads."""
    mapping: nets.MappingNetwork
    synthesis: nets.SynthesisNetwork
    discriminator: nets.Discriminator
    num_ws: int
    z_dim: int

    def ws(self, g_params, z):
        """[B, z_dim] -> every layer's w [B, num_ws, w_dim]."""
        w = self.mapping.apply({"params": g_params["mapping"]}, z)
        return jnp.broadcast_to(w[:, None], (w.shape[0], self.num_ws, w.shape[-1]))

    def synthesize(self, g_params, ws, noise_key):
        return self.synthesis.apply({"params": g_params["synthesis"]}, ws, noise_key)

    def judge(self, d_params, images):
        return self.discriminator.apply({"params": d_params}, images)


def networks(model: StyleGAN2ModelConfig, shape) -> Networks:
    """The networks for images of `shape` (R, R, C), R a power of two >= 4."""
    resolution, channels = shape[0], shape[-1]
    return Networks(nets.MappingNetwork(model.w_dim, model.mapping_layers),
                    nets.SynthesisNetwork(resolution, channels, model.channel_base, model.channel_max),
                    nets.Discriminator(resolution, model.channel_base, model.channel_max, model.mbstd_group_size,
                                       model.d_architecture),
                    nets.num_ws(resolution), model.z_dim)


def check_shape(info) -> None:
    """One sentence unless the images are square with a power-of-two side of at least 4."""
    h, w = info.shape[:2]
    if h != w or h < 4 or h & (h - 1):
        raise ValueError(f"StyleGAN2 needs square images with a power-of-two side of at least 4; "
                         f"config.data.name={info.name!r} has {h}x{w}.")


def check_batch(run, settings: Settings) -> None:
    """The registry's check: the discriminator's minibatch-stddev groups divide config.train.batch_size
    (under pmap each device's share is checked when the step compiles)."""
    group, batch = settings.model.mbstd_group_size, run.train.batch_size
    checks.require(batch % min(group, batch) == 0, "config.model.mbstd_group_size", group,
                   f"a divisor of config.train.batch_size={batch} (or at least it)")


def init_params(n: Networks, key, image) -> dict:
    """Both players' parameters from one example image [1, R, R, C]."""
    m_key, s_key, d_key = jax.random.split(key, 3)
    z = jnp.zeros((1, n.z_dim))
    mapping = n.mapping.init(m_key, z)["params"]
    ws = jnp.zeros((1, n.num_ws, n.mapping.w_dim))
    return {"generator": {"mapping": mapping, "synthesis": n.synthesis.init(s_key, ws)["params"]},
            "discriminator": n.discriminator.init(d_key, image)["params"]}


# ---------------------------------------------------------------------------------------------------
# The generator's pieces: style mixing, truncation, the path-length penalty.
# ---------------------------------------------------------------------------------------------------

def mixed_ws(n: Networks, g_params, key, num: int, prob: float):
    """ws [num, num_ws, w_dim] of fresh z; with probability `prob` every layer from a random cutoff in
    [1, num_ws) on reads the w of a second z (one cutoff per batch, as the reference draws it)."""
    z_key, z2_key, p_key, c_key = jax.random.split(key, 4)
    ws = n.ws(g_params, jax.random.normal(z_key, (num, n.z_dim)))
    if not prob:
        return ws
    cutoff = jax.random.randint(c_key, (), 1, n.num_ws)
    cutoff = jnp.where(jax.random.uniform(p_key) < prob, cutoff, n.num_ws)
    other = n.ws(g_params, jax.random.normal(z2_key, (num, n.z_dim)))
    return jnp.where((jnp.arange(n.num_ws) >= cutoff)[None, :, None], other, ws)


def mean_w(n: Networks, g_params) -> jax.Array:
    """The mean of mapping(z) [w_dim] over W_AVG_SAMPLES fixed z: the centre of truncation."""
    z = jax.random.normal(jax.random.key(2020), (W_AVG_SAMPLES, n.z_dim))
    return jnp.mean(n.mapping.apply({"params": g_params["mapping"]}, z), axis=0)


def truncate(ws, w_avg, psi: float):
    """w_avg + psi (ws - w_avg): psi = 1 leaves ws, psi = 0 gives every sample w_avg."""
    return w_avg + psi * (ws - w_avg)


def path_lengths(n: Networks, g_params, ws, key):
    """|J_w^T y| per example [B]: y ~ N(0, I) / sqrt(H W) over the image, J_w the Jacobian of the image
    (noise from `key` too) with respect to ws [B, num_ws, w_dim]; squared over w_dim, averaged over the
    ws, square-rooted (the reference's pl_lengths)."""
    noise_key, y_key = jax.random.split(key)
    images, vjp = jax.vjp(lambda w: n.synthesize(g_params, w, noise_key), ws)
    h, w = images.shape[1:3]
    y = jax.random.normal(y_key, images.shape) / jnp.sqrt(h * w)
    (grads,) = vjp(y)
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1))


def path_length_penalty(n: Networks, s: StyleGAN2Config, g_params, pl_mean, key, num: int):
    """(the G-reg loss, the new running mean of the lengths) on `num` fresh latents: the mean moves
    towards this batch's mean length first, and the penalty is taken against the moved mean, as in the
    reference."""
    ws_key, pl_key = jax.random.split(key)
    ws = mixed_ws(n, g_params, ws_key, num, s.style_mixing_prob)
    lengths = path_lengths(n, g_params, ws, pl_key)
    new_mean = jax.lax.stop_gradient(pl_mean + s.pl_decay * (jnp.mean(lengths) - pl_mean))
    penalty = jnp.mean(jnp.square(lengths - new_mean))
    return penalty * s.pl_weight * s.pl_every, new_mean


# ---------------------------------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------------------------------

def generator_loss(n: Networks, s: StyleGAN2Config, g_params, d_params, key, num: int):
    """G main: the non-saturating loss on `num` fresh samples (style-mixed with its probability)."""
    ws_key, noise_key = jax.random.split(key)
    fake = n.synthesize(g_params, mixed_ws(n, g_params, ws_key, num, s.style_mixing_prob), noise_key)
    return gan_losses.generator_loss(LOSS, n.judge(d_params, fake))


def discriminator_loss(n: Networks, s: StyleGAN2Config, d_params, g_params, key, real):
    """D main: the logistic loss on the real batch [B, R, R, C] against B fresh samples (no gradient to G)."""
    ws_key, noise_key = jax.random.split(key)
    fake = n.synthesize(g_params, mixed_ws(n, g_params, ws_key, real.shape[0], s.style_mixing_prob), noise_key)
    fake = jax.lax.stop_gradient(fake)
    return gan_losses.discriminator_loss(LOSS, n.judge(d_params, real), n.judge(d_params, fake))


def r1_loss(n: Networks, s: StyleGAN2Config, d_params, real):
    """gamma / 2 * r1_every * E[|grad_x D(x)|^2] on the real batch (the D-reg phase)."""
    penalty = gan_losses.r1_penalty(lambda x: n.judge(d_params, x), real)
    return jnp.mean(penalty) * (s.r1_gamma / 2) * s.r1_every


def _optimizer_step(optimizer, objective, params, opt_state, reduce_fn):
    """One step of `optimizer` on objective(params) -> (loss, aux), gradients and loss averaged over
    devices by `reduce_fn` -> (params, opt_state, loss, aux)."""
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
    grads, loss = reduce_fn((grads, loss))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux


def training(n: Networks, s: StyleGAN2Config, d_optimizer, to_data) -> Training:
    """The four phases of the module docstring as the family's `Training`."""

    def update(params, opt_state, extra, key, batch, *, optimizer, reduce_fn=lambda x: x):
        g_key, pl_key, d_key = jax.random.split(key, 3)
        real = to_data(batch)
        num = real.shape[0]
        g, d = params["generator"], params["discriminator"]
        g_state, d_state = opt_state["generator"], opt_state["discriminator"]
        step = extra["step"]

        g, g_state, g_loss, _ = _optimizer_step(
            optimizer, lambda p: (generator_loss(n, s, p, d, g_key, num), None), g, g_state, reduce_fn)

        def g_reg(carry):
            g, g_state, pl_mean = carry
            shrunk = max(num // s.pl_batch_shrink, 1)
            objective = lambda p: path_length_penalty(n, s, p, pl_mean, pl_key, shrunk)  # noqa: E731
            g, g_state, _, new_mean = _optimizer_step(optimizer, objective, g, g_state, reduce_fn)
            return g, g_state, reduce_fn(new_mean)

        do_pl = (step % s.pl_every == 0) & (s.pl_weight > 0)
        g, g_state, pl_mean = jax.lax.cond(do_pl, g_reg, lambda carry: carry, (g, g_state, extra["pl_mean"]))

        d, d_state, d_loss, _ = _optimizer_step(
            d_optimizer, lambda p: (discriminator_loss(n, s, p, g, d_key, real), None), d, d_state, reduce_fn)

        def d_reg(carry):
            d, d_state = carry
            d, d_state, _, _ = _optimizer_step(d_optimizer, lambda p: (r1_loss(n, s, p, real), None), d, d_state,
                                               reduce_fn)
            return d, d_state

        do_r1 = (step % s.r1_every == 0) & (s.r1_gamma > 0)
        d, d_state = jax.lax.cond(do_r1, d_reg, lambda carry: carry, (d, d_state))

        metrics = {"loss": g_loss, "g_loss": g_loss, "d_loss": d_loss, "pl_mean": pl_mean}
        return ({"generator": g, "discriminator": d}, {"generator": g_state, "discriminator": d_state},
                {"step": step + 1, "pl_mean": pl_mean}, metrics)

    def init_extra(params):
        return {"step": jnp.zeros((), jnp.int32), "pl_mean": jnp.zeros((), jnp.float32)}

    return optim.two_player_training(update, d_optimizer, init_extra)


def make(settings: Settings, info) -> Method:
    """StyleGAN2 for `info`'s images -> Method with its own `training`; `sample` draws psi-truncated
    images (config.stylegan2.truncation_psi) with fresh noise; no `log_prob`."""
    model, s = settings.model, settings.stylegan2
    if info.num_bits is None or info.domains is not None:
        raise ValueError(f"StyleGAN2 models images; config.data.name={info.name!r} is {info.modality} data.")
    check_shape(info)
    n = networks(model, tuple(info.shape))
    d_optimizer = optim.make_optimizer(settings.optim_d)
    to_data = lambda batch: dist.levels_to_symmetric(batch["image"], info.num_bits)  # noqa: E731

    def init(key, batch):
        return init_params(n, key, to_data(batch)[:1])

    def loss(params, key, batch):
        g_key, d_key = jax.random.split(key)
        real = to_data(batch)
        g, d = params["generator"], params["discriminator"]
        g_loss = generator_loss(n, s, g, d, g_key, real.shape[0])
        d_loss = discriminator_loss(n, s, d, g, d_key, real)
        return d_loss, {"g_loss": g_loss, "d_loss": d_loss}

    def sample(params, key, num):
        z_key, noise_key = jax.random.split(key)
        g = params["generator"]
        ws = n.ws(g, jax.random.normal(z_key, (num, n.z_dim)))
        if s.truncation_psi != 1.0:
            ws = truncate(ws, mean_w(n, g), s.truncation_psi)
        images = n.synthesize(g, ws, noise_key)
        return dist.symmetric_to_levels(jnp.clip(images, -1.0, 1.0), info.num_bits).astype(jnp.uint8)

    return Method(init=init, loss=loss, sample=sample, training=training(n, s, d_optimizer, to_data))
