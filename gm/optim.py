"""Optimizers, the parameter EMA and the one gradient update that training is made of.

Below the families and the trainer alike: the trainer builds its default update from a Method's loss
with `gradient_update`, and a family that keeps state no gradient trains (a loss history, codebook
statistics) builds its `gm.method.Training.update` from the same function. Nothing here names a device:
`reduce_fn` is the strategy's cross-device mean (the identity for one global batch).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from gm.config import OptimConfig
from gm.method import Training


def learning_rate_schedule(learning_rate: float, warmup_steps: int = 0, lr_decay: float = 1.0,
                           cosine_steps: int = 0, final_lr_fraction: float = 0.0, linear_decay_start: int = 0,
                           linear_decay_steps: int = 0):
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then times `lr_decay` every step
    (PixelCNN++'s 0.999995; 1.0 keeps it constant), or, with cosine_steps > 0, half a cosine from
    `learning_rate` down to learning_rate * final_lr_fraction over cosine_steps, then held there (GPT's
    schedule), or, with linear_decay_steps > 0, held until step linear_decay_start and then a straight
    line down to learning_rate * final_lr_fraction over linear_decay_steps (CycleGAN's; its authors step
    it once per epoch and end at 1/101 of the rate, this steps every update and ends at the fraction).
    A float when nothing varies."""
    if linear_decay_steps:
        decay = optax.linear_schedule(learning_rate, learning_rate * final_lr_fraction, linear_decay_steps,
                                      transition_begin=linear_decay_start - warmup_steps)
        if not warmup_steps:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps])
    if cosine_steps:
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, warmup_steps + cosine_steps,
                                                  end_value=learning_rate * final_lr_fraction)
    if lr_decay == 1.0:
        return optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps) if warmup_steps else learning_rate
    decay = optax.exponential_decay(learning_rate, transition_steps=1, decay_rate=lr_decay)
    if not warmup_steps:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps])


def matrices_only(params):
    """The weight-decay mask of GPT-2 / nanoGPT: decay leaves of two or more dimensions (weight matrices,
    embeddings, kernels), never biases, gains or other vectors."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(o: OptimConfig) -> optax.GradientTransformation:
    """Global-norm clipping (o.grad_clip > 0) -> Adam(W) (or RMSProp with decay o.b2, as WGAN uses) on
    `learning_rate_schedule`; AdamW decays every parameter or, with o.weight_decay_on='matrices', those
    `matrices_only` selects. o.eps_root > 0 keeps Adam's square root differentiable where a second
    moment is 0 (needed to differentiate through updates)."""
    schedule = learning_rate_schedule(o.learning_rate, o.warmup_steps, o.lr_decay, o.cosine_steps, o.final_lr_fraction,
                                      o.linear_decay_start, o.linear_decay_steps)
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
    if o.name == "rmsprop":
        parts.append(optax.rmsprop(schedule, decay=o.b2, eps=o.eps))
    elif o.weight_decay:
        mask = matrices_only if o.weight_decay_on == "matrices" else None
        parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, eps_root=o.eps_root,
                                 weight_decay=o.weight_decay, mask=mask))
    else:
        parts.append(optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps, eps_root=o.eps_root))
    return optax.chain(*parts)


def ema_decay_of_half_life(half_life_images: int, batch_size: int) -> float:
    """The per-step EMA decay whose weights halve every `half_life_images` images at `batch_size` images a
    step: the half-life in images (StyleGAN2's and EDM's `ema_kimg`) as a constant decay."""
    return 0.5 ** (batch_size / half_life_images)


def ema_update(ema_params, params, decay):
    """Exponential moving average: decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def all_finite(tree) -> jax.Array:
    """Scalar bool: every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _identity(x):
    return x


def micro_batch(batch, index, micro_batches: int):
    """Micro-batch `index` of `micro_batches`: rows index, index + k, index + 2k, ... of every array.

    Strided rather than contiguous: with the batch sharded over devices in contiguous blocks, each
    device's block holds whole groups of k rows (when batch / devices is a multiple of k), so every
    micro-batch is split over the devices like the batch and no row moves between devices.
    """
    def take(x):
        x = jnp.asarray(x)
        return x.reshape((x.shape[0] // micro_batches, micro_batches) + x.shape[1:])[:, index]

    return jax.tree.map(take, batch)


def accumulated_value_and_grad(objective: Callable, params, key, batch, micro_batches: int):
    """`jax.value_and_grad(objective, has_aux=True)` over a batch seen `micro_batches` at a time.

    objective(params, key, batch) -> (loss, aux pytree). Micro-batch i (`micro_batch`) gets
    fold_in(key, i); the loss, aux and gradients are means over the micro-batches, in one `lax.scan` that
    keeps one micro-batch's activations at a time. For a loss that is a mean over examples this is the
    full batch's gradient (up to float rounding) at a fraction of the activation memory.
    """
    value_and_grad = jax.value_and_grad(objective, has_aux=True)
    if micro_batches == 1:
        return value_and_grad(params, key, batch)

    def one(total, i):
        out = value_and_grad(params, jax.random.fold_in(key, i), micro_batch(batch, i, micro_batches))
        return jax.tree.map(jnp.add, total, out), None

    first = value_and_grad(params, jax.random.fold_in(key, 0), micro_batch(batch, 0, micro_batches))
    total, _ = jax.lax.scan(one, first, jnp.arange(1, micro_batches))
    return jax.tree.map(lambda x: x / micro_batches, total)


def gradient_update(loss_fn: Callable, after: Optional[Callable] = None):
    """A `gm.method.Training.update` that takes one optimizer step on `loss_fn`.

    loss_fn(params, extra, key, batch) -> (scalar loss, {name: scalar metric}, aux): aux is any pytree
      the step needs besides the gradient (None for none).
    after(params, extra, aux) -> (params, extra): state no gradient trains, updated after the optimizer
      from aux (a loss history, a codebook's statistics).

    Gradients, metrics and aux are averaged over devices with `reduce_fn` before they are used, so the
    update is the same whatever the strategy. With micro_batches = k > 1 (gradient accumulation,
    config.train.micro_batches) they are first averaged over k micro-batches of the batch
    (`accumulated_value_and_grad`). Returns (params, opt_state, extra, metrics) with the metrics' 'loss'
    and 'grad_norm' (of the averaged gradient, before clipping).
    """
    def update(params, opt_state, extra, key, batch, *, optimizer, reduce_fn=_identity, micro_batches=1):
        def objective(p, k, b):
            loss, metrics, aux = loss_fn(p, extra, k, b)
            return loss, (dict(metrics, loss=loss), aux)

        (_, (metrics, aux)), grads = accumulated_value_and_grad(objective, params, key, batch, micro_batches)
        grads, metrics, aux = reduce_fn((grads, metrics, aux))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if after is not None:
            params, extra = after(params, extra, aux)
        return params, opt_state, extra, dict(metrics, grad_norm=optax.global_norm(grads))

    return update


def loss_update(loss: Callable):
    """The default update of a Method: one optimizer step on loss(params, key, batch) -> (loss, metrics)."""
    def loss_fn(params, extra, key, batch):
        value, metrics = loss(params, key, batch)
        return value, metrics, None

    return gradient_update(loss_fn)


def two_player_training(update, d_optimizer, init_extra=None, generator: str = "generator",
                        discriminator: str = "discriminator") -> Training:
    """The `Training` of a family of two players, a generator and a discriminator (the GANs): `update`
    as given, one optax state per player under the players' keys of params (the generator's from the
    trainer's optimizer, the discriminator's from `d_optimizer`), and the EMA over the generator only (the
    discriminator's entry is the current one)."""

    def init_opt_state(params, optimizer):
        return {generator: optimizer.init(params[generator]), discriminator: d_optimizer.init(params[discriminator])}

    def average(ema_params, params, decay):
        return {generator: ema_update(ema_params[generator], params[generator], decay),
                discriminator: params[discriminator]}

    return Training(update=update, init_opt_state=init_opt_state, init_extra=init_extra, average=average)
