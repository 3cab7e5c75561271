"""Generative adversarial networks: a generator G(z) and a discriminator (critic) D(x) trained in turns.

One compiled train step does k discriminator updates, then one generator update:

    for i in 0..k-1 (parallel.scan): real slice i = rows i, i + k, i + 2k, ... of the batch, fresh z
        D <- D - step(grad_D  discriminator_loss(D(x_i), D(G(z_i))) [+ lambda GP]) [, clip D to [-c, c]]
    G <- G - step(grad_G  generator_loss(D'(G(z))))

where D' = D, or for the unrolled GAN (Metz et al. 2017) D after K more updates taken inside the
generator's loss, so grad_G differentiates through the discriminator's optimizer. Strided slices keep a
device's rows in its own slices, so `sharded` and `pmap` see the same slices when the per-device batch
is a multiple of k. Losses (config.gan.loss): see `gm.gan_losses`. WGAN (Arjovsky et al. 2017):
loss='wasserstein', clip=0.01, config.optim_d.name='rmsprop'; WGAN-GP (Gulrajani et al. 2017):
loss='wasserstein', gradient_penalty=10, a critic without batch norm.

params = {'generator', 'discriminator'}; the optimizer state holds one optax state per player (the
Method's `optimizer`); the EMA follows the generator (the discriminator's entry is the current one).
Data are images in [-1, 1] (no dequantization: the discriminator sees the data's levels) or 2-D points.
"""
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gm import checks
from gm import distributions as dist
from gm import gan_losses, parallel
from gm.method import Method
from gm.nn import dcgan
from gm.train import state as state_lib

ARCHITECTURES = ("dcgan", "mlp")


class GAN(NamedTuple):
    """generate(g_params, z [B, L], y) -> x; discriminate(d_params, x, y) -> [B]; to_data(batch) -> x."""
    latent_dim: int
    num_classes: Optional[int]
    generate: Callable
    discriminate: Callable
    to_data: Callable
    to_output: Callable  # x -> what `sample` returns (uint8 levels, or the points)


def _apply_discarding_batch_stats(net, params, *args):
    # Batch norm runs on batch statistics in training and sampling alike; nothing running is kept.
    out, _ = net.apply({"params": params}, *args, mutable=["batch_stats"])
    return out


def gan_from_config(model, info):
    """config.model -> (GAN, init(key, batch) -> params). Reads arch ('dcgan' | 'mlp'), latent_dim,
    class_conditional, g_features, d_features, g_norm, d_norm (dcgan) and hidden (mlp)."""
    if model.arch not in ARCHITECTURES:
        raise ValueError(f"config.model.arch must be one of {ARCHITECTURES}, got {model.arch!r}.")
    num_classes = info.num_classes if model.get("class_conditional", False) else None
    images = info.num_bits is not None
    checks.sizes(model, "config.model", positive=("latent_dim",) + (
        ("g_features", "d_features") if model.arch == "dcgan" else ("hidden",)))
    if model.arch == "dcgan":
        for field in ("g_norm", "d_norm"):
            checks.one_of(model[field], f"config.model.{field}", dcgan.NORMS)
        if not images:
            raise ValueError(f"config.model.arch='dcgan' needs images; use 'mlp' for {info.name!r}.")
        g = dcgan.DCGANGenerator(tuple(info.shape), model.g_features, model.g_norm, num_classes)
        d = dcgan.DCGANDiscriminator(model.d_features, model.d_norm, num_classes)
    else:
        out_dim = info.num_dims
        g = dcgan.MLPGenerator(out_dim, tuple(model.hidden), num_classes)
        d = dcgan.MLPDiscriminator(tuple(model.hidden), num_classes)
    shape = tuple(info.shape)

    def generate(params, z, y):
        x = _apply_discarding_batch_stats(g, params, z, y)
        return x.reshape((z.shape[0],) + shape)

    def discriminate(params, x, y):
        return _apply_discarding_batch_stats(d, params, x, y)

    def to_data(batch):
        if images:
            return dist.levels_to_symmetric(batch["image"], info.num_bits)
        return batch["x"].astype(jnp.float32)

    def to_output(x):
        if images:
            return dist.symmetric_to_levels(jnp.clip(x, -1.0, 1.0), info.num_bits).astype(jnp.uint8)
        return x

    gan = GAN(model.latent_dim, num_classes, generate, discriminate, to_data, to_output)

    def init(key, batch):
        g_key, d_key = jax.random.split(key)
        x = to_data(batch)
        y = batch["label"] if num_classes else None
        z = jnp.zeros((x.shape[0], model.latent_dim))
        return {"generator": g.init({"params": g_key}, z, y)["params"],
                "discriminator": d.init({"params": d_key}, x, y)["params"]}

    return gan, init


# ---------------------------------------------------------------------------------------------------
# The two objectives.
# ---------------------------------------------------------------------------------------------------

class Objective(NamedTuple):
    """What config.gan sets: the loss, the gradient-penalty weight (0: none) and the weight clip (0: none)."""
    loss: str = "non_saturating"
    gradient_penalty: float = 0.0
    clip: float = 0.0


def _latents(gan, key, num):
    z_key, y_key = jax.random.split(key)
    z = jax.random.normal(z_key, (num, gan.latent_dim))
    y = jax.random.randint(y_key, (num,), 0, gan.num_classes) if gan.num_classes else None
    return z, y


def discriminator_objective(gan, objective, d_params, g_params, key, real, y=None):
    """The discriminator's loss on a real slice [b, ...] against b fresh samples of G (with the real
    labels when class-conditional), plus the gradient penalty on interpolates when configured."""
    z_key, gp_key = jax.random.split(key)
    z, _ = _latents(gan, z_key, real.shape[0])
    fake = gan.generate(g_params, z, y)
    loss = gan_losses.discriminator_loss(objective.loss, gan.discriminate(d_params, real, y),
                                         gan.discriminate(d_params, fake, y))
    if objective.gradient_penalty:
        critic = lambda x: gan.discriminate(d_params, x, y)
        loss = loss + objective.gradient_penalty * gan_losses.gradient_penalty(critic, gp_key, real, fake)
    return loss


def generator_objective(gan, objective, g_params, d_params, key, num):
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


def two_player_optimizer(g_optimizer, d_optimizer):
    """An optax transformation whose state is {'generator': ..., 'discriminator': ...}; the GAN step
    updates each player with its own optimizer, so `update` is never called on the pair."""
    def init(params):
        return {"generator": g_optimizer.init(params["generator"]),
                "discriminator": d_optimizer.init(params["discriminator"])}

    def update(updates, state, params=None):
        raise NotImplementedError("A GAN updates its players separately; see gm.gan.make_train_step.")

    return optax.GradientTransformation(init, update)


def make_train_step(gan, objective, g_optimizer, d_optimizer, d_steps=1, unrolled_steps=0):
    """The k:1 step: (state, batch, key, *, optimizer, ema_decay, reduce_fn, device_key_fn) ->
    (state, metrics), the signature of `gm.train.state.train_step`, so every strategy wraps it."""
    def train_step(state, batch, key, *, optimizer=None, ema_decay=0.0, reduce_fn=lambda x: x,
                   device_key_fn=lambda x: x):
        del optimizer  # each player has its own; the pair only initialised the state
        step_key = device_key_fn(jax.random.fold_in(key, state.step))
        d_key, g_key, unroll_key = jax.random.split(step_key, 3)
        real = gan.to_data(batch)
        if real.shape[0] % d_steps:
            raise ValueError(f"The batch of {real.shape[0]} per device must be a multiple of "
                             f"config.gan.d_steps={d_steps}; change config.train.batch_size.")
        reals = strided_slices(real, d_steps)
        ys = strided_slices(batch["label"], d_steps) if gan.num_classes else None
        g_params, d_params = state.params["generator"], state.params["discriminator"]

        def d_step(carry, inputs):
            d, s = carry
            i, real_i, y_i = inputs
            loss, grads = jax.value_and_grad(discriminator_objective, argnums=2)(
                gan, objective, d, g_params, jax.random.fold_in(d_key, i), real_i, y_i)
            grads, loss = reduce_fn((grads, loss))
            return discriminator_update(d_optimizer, objective, d, s, grads), loss

        (new_d, new_d_state), d_losses = parallel.scan(
            d_step, (d_params, state.opt_state["discriminator"]), (jnp.arange(d_steps), reals, ys))

        def g_loss_fn(g):
            d_for_g = new_d
            if unrolled_steps:
                d_for_g = unrolled_discriminator(gan, objective, d_optimizer, new_d, new_d_state, g, unroll_key,
                                                 reals, ys, unrolled_steps, reduce_fn)
            return generator_objective(gan, objective, g, d_for_g, g_key, reals.shape[1])

        g_loss, g_grads = jax.value_and_grad(g_loss_fn)(g_params)
        g_grads, g_loss = reduce_fn((g_grads, g_loss))
        updates, new_g_state = g_optimizer.update(g_grads, state.opt_state["generator"], g_params)
        new_g = optax.apply_updates(g_params, updates)

        finite = (jnp.isfinite(g_loss) & jnp.all(jnp.isfinite(d_losses)) & state_lib.all_finite(g_grads)
                  & state_lib.all_finite(new_d))
        proposed = state.replace(
            params={"generator": new_g, "discriminator": new_d},
            opt_state={"generator": new_g_state, "discriminator": new_d_state},
            ema_params={"generator": state_lib.ema_update(state.ema_params["generator"], new_g, ema_decay),
                        "discriminator": new_d})
        kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), proposed, state)
        new_state = kept.replace(step=state.step + 1,
                                 num_nonfinite=state.num_nonfinite + (~finite).astype(jnp.int32))
        metrics = {"loss": jnp.mean(d_losses), "d_loss": jnp.mean(d_losses), "g_loss": g_loss,
                   "g_grad_norm": optax.global_norm(g_grads), "finite": finite.astype(jnp.float32)}
        return new_state, metrics

    return train_step


def make(config, info):
    """A GAN for `info`'s data -> Method with its own `train_step` and `optimizer`.

    Reads config.model (see `gan_from_config`), config.gan (loss, d_steps, gradient_penalty, clip,
    unrolled_steps), config.optim (the generator's optimizer) and config.optim_d (the
    discriminator's). `loss` reports both players' losses on one batch (for monitoring); there is no
    `log_prob`. `sample` returns uint8 levels for images and float points for 2-D data.
    """
    g = config.gan
    objective = Objective(g.loss, float(g.get("gradient_penalty", 0.0)), float(g.get("clip", 0.0)))
    if objective.loss not in gan_losses.LOSSES:
        raise ValueError(f"config.gan.loss must be one of {gan_losses.LOSSES}, got {objective.loss!r}.")
    checks.number_in(objective.gradient_penalty, "config.gan.gradient_penalty (0: none)", 0.0, None)
    checks.number_in(objective.clip, "config.gan.clip (0: no clipping)", 0.0, None)
    d_steps, unrolled_steps = int(g.get("d_steps", 1)), int(g.get("unrolled_steps", 0))
    if d_steps < 1 or unrolled_steps < 0:
        raise ValueError(f"config.gan.d_steps must be >= 1 and config.gan.unrolled_steps >= 0, got "
                         f"{d_steps} and {unrolled_steps}.")
    if objective.gradient_penalty and config.model.get("d_norm", "none") == "batch":
        raise ValueError("config.model.d_norm='batch' couples the examples the gradient penalty treats "
                         "separately; set it to 'layer' or 'none'.")
    if unrolled_steps and config.optim_d.get("name", "adam") == "adam" and not config.optim_d.get("eps_root", 0.0):
        raise ValueError("config.gan.unrolled_steps differentiates through Adam, whose square root has no "
                         "derivative at 0: set config.optim_d.eps_root > 0 (e.g. 1e-8).")
    if config.train.batch_size % d_steps:
        raise ValueError(f"config.train.batch_size={config.train.batch_size} must be a multiple of "
                         f"config.gan.d_steps={d_steps}.")
    gan, init = gan_from_config(config.model, info)
    g_optimizer = state_lib.optimizer_from_config(config.optim)
    d_optimizer = state_lib.optimizer_from_config(config.optim_d, "config.optim_d")

    def loss(params, key, batch):
        d_key, g_key = jax.random.split(key)
        real = gan.to_data(batch)
        y = batch["label"] if gan.num_classes else None
        d_loss = discriminator_objective(gan, objective, params["discriminator"], params["generator"], d_key,
                                         real, y)
        g_loss = generator_objective(gan, objective, params["generator"], params["discriminator"], g_key,
                                     real.shape[0])
        return d_loss, {"d_loss": d_loss, "g_loss": g_loss}

    def sample(params, key, num):
        z, y = _latents(gan, key, num)
        return gan.to_output(gan.generate(params["generator"], z, y))

    return Method(init=init, loss=loss, sample=sample,
                  train_step=make_train_step(gan, objective, g_optimizer, d_optimizer, d_steps, unrolled_steps),
                  optimizer=two_player_optimizer(g_optimizer, d_optimizer))
