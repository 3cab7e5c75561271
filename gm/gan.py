"""Generative adversarial networks: a generator G(z) and a discriminator (critic) D(x) trained in turns.

One compiled train step does k discriminator updates, then one generator update:

    for i in 0..k-1 (parallel.scan): real slice i = rows i, i + k, i + 2k, ... of the batch, fresh z
        D <- D - step(grad_D  discriminator_loss(D(x_i), D(G(z_i))) [+ lambda GP]) [, clip D to [-c, c]]
    G <- G - step(grad_G  generator_loss(D'(G(z))))

where D' = D, or for the unrolled GAN (Metz et al. 2017) D after K more updates taken inside the
generator's loss, so grad_G differentiates through the discriminator's optimizer. Strided slices keep a
device's rows in its own slices, so `sharded` and `pmap` see the same slices when the per-device batch
is a multiple of k. With packing m (PacGAN) the discriminator judges each run of m consecutive examples
of a slice as one input, real packs against generated packs, for every loss, k and penalty. Losses
(config.gan.loss): see `gm.gan_losses`. WGAN (Arjovsky et al. 2017):
loss='wasserstein', clip=0.01, config.optim_d.name='rmsprop'; WGAN-GP (Gulrajani et al. 2017):
loss='wasserstein', gradient_penalty=10, a critic without batch norm.

params = {'generator', 'discriminator'}; the optimizer state holds one optax state per player (the
generator's from config.optim, the discriminator's from config.optim_d); the EMA follows the generator
(the discriminator's entry is the current one). Data are images in [-1, 1] (no dequantization: the
discriminator sees the data's levels) or 2-D points.
"""
import dataclasses
from typing import Callable, Literal, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from gm import checks
from gm import distributions as dist
from gm import gan_losses, optim, parallel
from gm.config import OptimConfig, interval, nonnegative, positive, positive_entries, setting
from gm.method import Method, Training
from gm.nn import dcgan

ARCHITECTURES = ("dcgan", "mlp")


@dataclasses.dataclass(frozen=True)
class GANModelConfig:
    """config.model: the two networks. arch 'dcgan' (a generator from a 4x4 grid of 8 g_features
    channels through stride-2 transposed convolutions to tanh, a discriminator of stride-2 convolutions
    from d_features channels, each with g_norm / d_norm) or 'mlp' (the generator's layers of `hidden`:
    Dense, g_norm, ReLU; the discriminator's of `d_hidden`, or `hidden` when empty: ReLU units, or
    maxout units of maxout_pieces pieces when > 1; no d_norm); init_std > 0 draws the MLPs' weights
    from N(0, init_std^2) with zero biases (PacGAN's and ALI's 0.02); z ~ N(0, I) of latent_dim
    dimensions; class_conditional adds the label to both players."""
    arch: Literal[ARCHITECTURES] = "dcgan"
    latent_dim: int = setting(100, positive)
    g_features: int = setting(64, positive)
    d_features: int = setting(64, positive)
    g_norm: Literal[dcgan.NORMS] = "batch"
    d_norm: Literal[dcgan.NORMS] = "batch"
    hidden: Tuple[int, ...] = setting((128, 128), positive_entries)
    d_hidden: Tuple[int, ...] = setting((), positive_entries)
    maxout_pieces: int = setting(1, positive)
    init_std: float = setting(0.0, interval(0.0, None))
    class_conditional: bool = False

    def check(self, name):
        if self.arch == "mlp" and self.d_norm != "none":
            raise ValueError(f"{name}.d_norm={self.d_norm!r}: the 'mlp' discriminator has no normalisation; "
                             f"set it to 'none'.")
        if self.arch != "mlp" and (self.maxout_pieces > 1 or self.init_std or self.d_hidden):
            raise ValueError(f"{name}.d_hidden, maxout_pieces and init_std apply to arch='mlp'; "
                             f"leave them at (), 1 and 0 for {self.arch!r}.")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """config.gan: the loss (`gm.gan_losses`: minimax | non_saturating | wasserstein | hinge |
    least_squares); d_steps, k discriminator updates per generator update; packing, PacGAN's m (Lin et al. 2018: the
    discriminator judges m samples, all real or all generated, concatenated along the features; 1: an
    ordinary GAN); gradient_penalty, the weight of WGAN-GP's penalty (0: none); clip, WGAN's weight clip
    (0: none); unrolled_steps, Metz et al.'s K (0: not unrolled)."""
    loss: Literal[gan_losses.LOSSES] = "non_saturating"
    d_steps: int = setting(1, positive)
    packing: int = setting(1, positive)
    gradient_penalty: float = setting(0.0, interval(0.0, None))
    clip: float = setting(0.0, interval(0.0, None))
    unrolled_steps: int = setting(0, nonnegative)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The GAN family's config sections: its networks, its objective and the discriminator's optimizer
    (the generator's is config.optim; optim_d.ema_decay is unused, the EMA follows the generator)."""
    model: GANModelConfig = GANModelConfig()
    gan: ObjectiveConfig = ObjectiveConfig()
    optim_d: OptimConfig = OptimConfig()

    def check(self):
        if self.gan.gradient_penalty and self.model.d_norm == "batch":
            raise ValueError("config.model.d_norm='batch' couples the examples the gradient penalty treats "
                             "separately; set it to 'layer' or 'none'.")
        if self.gan.packing > 1 and self.model.class_conditional:
            raise ValueError("config.gan.packing > 1 packs samples of different classes; use it with "
                             "config.model.class_conditional=False.")
        if self.gan.unrolled_steps and self.optim_d.name == "adam" and not self.optim_d.eps_root:
            raise ValueError("config.gan.unrolled_steps differentiates through Adam, whose square root has no "
                             "derivative at 0: set config.optim_d.eps_root > 0 (e.g. 1e-8).")


def check_batch_size(settings: Settings, batch_size: int, micro_batches: int = 1) -> None:
    """The k discriminator updates split the training batch (config.train.batch_size) in k slices, each
    of whole packs of m; the players' alternating updates are not one gradient, so they do not
    accumulate over micro-batches."""
    checks.require(micro_batches == 1, "config.train.micro_batches", micro_batches,
                   "1 for a GAN (its generator and discriminator steps alternate within a batch)")
    k, m = settings.gan.d_steps, settings.gan.packing
    checks.require(batch_size % (k * m) == 0, "config.train.batch_size", batch_size,
                   f"a multiple of config.gan.d_steps x config.gan.packing = {k} x {m}")


class GAN(NamedTuple):
    """generate(g_params, z [B, L], y) -> x; discriminate(d_params, x, y) -> [B / packing] (one output
    per pack of `packing` consecutive examples; see `pack`); to_data(batch) -> x."""
    latent_dim: int
    num_classes: Optional[int]
    generate: Callable
    discriminate: Callable
    to_data: Callable
    to_output: Callable  # x -> what `sample` returns (uint8 levels, or the points)
    packing: int = 1
    discriminate_packs: Optional[Callable] = None  # (d_params, packs [B / m, ..., m C], y) -> [B / m]


def pack(x, m):
    """[B, ..., C] -> [B / m, ..., m C]: each run of m consecutive examples concatenated along the last
    axis (features of points, channels of images), as PacGAN feeds its discriminator."""
    if m == 1:
        return x
    b = x.shape[0]
    if b % m:
        raise ValueError(f"A batch of {b} does not split into packs of config.gan.packing={m}.")
    x = x.reshape((b // m, m) + x.shape[1:])
    return jnp.moveaxis(x, 1, -2).reshape((b // m,) + x.shape[2:-1] + (m * x.shape[-1],))


def gan_from_config(model: GANModelConfig, info, packing: int = 1):
    """The two networks `model` describes for `info`'s data, the discriminator judging packs of `packing`
    -> (GAN, init(key, batch) -> params)."""
    num_classes = info.num_classes if model.class_conditional else None
    images = info.num_bits is not None
    if model.arch == "dcgan":
        if not images:
            raise ValueError(f"config.model.arch='dcgan' needs images; use 'mlp' for {info.name!r}.")
        g = dcgan.DCGANGenerator(tuple(info.shape), model.g_features, model.g_norm, num_classes)
        d = dcgan.DCGANDiscriminator(model.d_features, model.d_norm, num_classes)
    else:
        out_dim = info.num_dims
        g = dcgan.MLPGenerator(out_dim, model.hidden, num_classes, model.g_norm, model.init_std)
        d = dcgan.MLPDiscriminator(model.d_hidden or model.hidden, num_classes, model.maxout_pieces, model.init_std)
    shape = tuple(info.shape)
    m = packing

    def generate(params, z, y):
        x = dcgan.apply_discarding_batch_stats(g, params, z, y)
        return x.reshape((z.shape[0],) + shape)

    def discriminate_packs(params, packs, y):
        return dcgan.apply_discarding_batch_stats(d, params, packs, y)

    def discriminate(params, x, y):
        return discriminate_packs(params, pack(x, m), y)

    def to_data(batch):
        if images:
            return dist.levels_to_symmetric(batch["image"], info.num_bits)
        return batch["x"].astype(jnp.float32)

    def to_output(x):
        if images:
            return dist.symmetric_to_levels(jnp.clip(x, -1.0, 1.0), info.num_bits).astype(jnp.uint8)
        return x

    gan = GAN(model.latent_dim, num_classes, generate, discriminate, to_data, to_output, packing,
              discriminate_packs)

    def init(key, batch):
        g_key, d_key = jax.random.split(key)
        x = to_data(batch)
        y = batch["label"] if num_classes else None
        z = jnp.zeros((x.shape[0], model.latent_dim))
        packs = pack(jnp.repeat(x[:1], m, axis=0), m)  # one pack: the discriminator's input shape
        return {"generator": g.init({"params": g_key}, z, y)["params"],
                "discriminator": d.init({"params": d_key}, packs, None if y is None else y[:1])["params"]}

    return gan, init


# ---------------------------------------------------------------------------------------------------
# The two objectives.
# ---------------------------------------------------------------------------------------------------

def _latents(gan, key, num):
    z_key, y_key = jax.random.split(key)
    z = jax.random.normal(z_key, (num, gan.latent_dim))
    y = jax.random.randint(y_key, (num,), 0, gan.num_classes) if gan.num_classes else None
    return z, y


def discriminator_objective(gan, objective: ObjectiveConfig, d_params, g_params, key, real, y=None):
    """The discriminator's loss on a real slice [b, ...] against b fresh samples of G (with the real
    labels when class-conditional), judged in packs of `gan.packing`, plus the gradient penalty on
    interpolated packs when configured."""
    z_key, gp_key = jax.random.split(key)
    z, _ = _latents(gan, z_key, real.shape[0])
    fake = gan.generate(g_params, z, y)
    loss = gan_losses.discriminator_loss(objective.loss, gan.discriminate(d_params, real, y),
                                         gan.discriminate(d_params, fake, y))
    if objective.gradient_penalty:
        # On packs: one interpolation weight and one gradient norm per pack, the critic's own input.
        critic = lambda packs: gan.discriminate_packs(d_params, packs, y)  # noqa: E731
        loss = loss + objective.gradient_penalty * gan_losses.gradient_penalty(
            critic, gp_key, pack(real, gan.packing), pack(fake, gan.packing))
    return loss


def generator_objective(gan, objective: ObjectiveConfig, g_params, d_params, key, num):
    """The generator's loss on `num` fresh samples (labels drawn uniformly when class-conditional)."""
    z, y = _latents(gan, key, num)
    return gan_losses.generator_loss(objective.loss, gan.discriminate(d_params, gan.generate(g_params, z, y), y))


def discriminator_update(optimizer, objective, d_params, opt_state, grads):
    """One optimizer step of the discriminator, then weight clipping when configured."""
    updates, opt_state = optimizer.update(grads, opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    if objective.clip:
        d_params = jax.tree.map(lambda p: jnp.clip(p, -objective.clip, objective.clip), d_params)
    return d_params, opt_state


def unrolled_discriminator(gan, objective, d_optimizer, d_params, d_state, g_params, key, reals, ys,
                           num_steps, reduce_fn=lambda x: x):
    """D after `num_steps` more updates on the real slices [k, b, ...] (step j uses slice j mod k and
    fold_in(key, j)), as a differentiable function of g_params (Metz et al. 2017)."""
    k = reals.shape[0]

    def step(carry, j):
        d, s = carry
        real = reals[j % k]
        y = None if ys is None else ys[j % k]
        grads = jax.grad(discriminator_objective, argnums=2)(gan, objective, d, g_params,
                                                             jax.random.fold_in(key, j), real, y)
        return discriminator_update(d_optimizer, objective, d, s, reduce_fn(grads)), None

    (d, _), _ = parallel.scan(step, (d_params, d_state), jnp.arange(num_steps))
    return d


def strided_slices(x, k):
    """[B, ...] -> [k, B / k, ...] with slice i = rows i, i + k, i + 2k, ... (None stays None)."""
    if x is None:
        return None
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def training(gan, objective: ObjectiveConfig, d_optimizer) -> Training:
    """The k:1 step as the family's `Training`: k discriminator updates with `d_optimizer`, then one
    generator update with the trainer's optimizer (config.optim); one optimizer state per player; the
    EMA averages the generator only."""
    d_steps, unrolled_steps = objective.d_steps, objective.unrolled_steps

    def update(params, opt_state, extra, key, batch, *, optimizer, reduce_fn=lambda x: x):
        d_key, g_key, unroll_key = jax.random.split(key, 3)
        real = gan.to_data(batch)
        if real.shape[0] % (d_steps * gan.packing):
            raise ValueError(f"The batch of {real.shape[0]} per device must be a multiple of config.gan.d_steps x "
                             f"config.gan.packing = {d_steps} x {gan.packing}; change config.train.batch_size.")
        reals = strided_slices(real, d_steps)
        ys = strided_slices(batch["label"], d_steps) if gan.num_classes else None
        g_params, d_params = params["generator"], params["discriminator"]

        def d_step(carry, inputs):
            d, s = carry
            i, real_i, y_i = inputs
            loss, grads = jax.value_and_grad(discriminator_objective, argnums=2)(
                gan, objective, d, g_params, jax.random.fold_in(d_key, i), real_i, y_i)
            grads, loss = reduce_fn((grads, loss))
            return discriminator_update(d_optimizer, objective, d, s, grads), loss

        (new_d, new_d_state), d_losses = parallel.scan(
            d_step, (d_params, opt_state["discriminator"]), (jnp.arange(d_steps), reals, ys))

        def g_loss_fn(g):
            d_for_g = new_d
            if unrolled_steps:
                d_for_g = unrolled_discriminator(gan, objective, d_optimizer, new_d, new_d_state, g, unroll_key,
                                                 reals, ys, unrolled_steps, reduce_fn)
            return generator_objective(gan, objective, g, d_for_g, g_key, reals.shape[1])

        g_loss, g_grads = jax.value_and_grad(g_loss_fn)(g_params)
        g_grads, g_loss = reduce_fn((g_grads, g_loss))
        updates, new_g_state = optimizer.update(g_grads, opt_state["generator"], g_params)
        new_params = {"generator": optax.apply_updates(g_params, updates), "discriminator": new_d}
        new_opt_state = {"generator": new_g_state, "discriminator": new_d_state}
        metrics = {"loss": jnp.mean(d_losses), "d_loss": jnp.mean(d_losses), "g_loss": g_loss,
                   "g_grad_norm": optax.global_norm(g_grads)}
        return new_params, new_opt_state, extra, metrics

    return optim.two_player_training(update, d_optimizer)


def make(settings: Settings, info) -> Method:
    """A GAN for `info`'s data (see `Settings`) -> Method with its own `training`.

    `loss` reports both players' losses on one batch (for monitoring); there is no `log_prob`. `sample`
    returns uint8 levels for images and float points for 2-D data.
    """
    objective = settings.gan
    gan, init = gan_from_config(settings.model, info, objective.packing)
    d_optimizer = optim.make_optimizer(settings.optim_d)

    def loss(params, key, batch):
        d_key, g_key = jax.random.split(key)
        real = gan.to_data(batch)
        real = real[:real.shape[0] - real.shape[0] % gan.packing]  # whole packs
        y = batch["label"] if gan.num_classes else None
        d_loss = discriminator_objective(gan, objective, params["discriminator"], params["generator"], d_key,
                                         real, y)
        g_loss = generator_objective(gan, objective, params["generator"], params["discriminator"], g_key,
                                     real.shape[0])
        return d_loss, {"d_loss": d_loss, "g_loss": g_loss}

    def sample(params, key, num):
        z, y = _latents(gan, key, num)
        return gan.to_output(gan.generate(params["generator"], z, y))

    return Method(init=init, loss=loss, sample=sample, training=training(gan, objective, d_optimizer))
