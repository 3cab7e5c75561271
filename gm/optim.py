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


def learning_rate_schedule(learning_rate: float, warmup_steps: int = 0, lr_decay: float = 1.0,
                           cosine_steps: int = 0, final_lr_fraction: float = 0.0):
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then times `lr_decay` every step
    (PixelCNN++'s 0.999995; 1.0 keeps it constant), or, with cosine_steps > 0, half a cosine from
    `learning_rate` down to learning_rate * final_lr_fraction over cosine_steps, then held there (GPT's
    schedule). A float when nothing varies."""
    if cosine_steps:
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, warmup_steps + cosine_steps,
                                                  end_value=learning_rate * final_lr_fraction)
    if lr_decay == 1.0:
        return optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps) if warmup_steps else learning_rate
    decay = optax.exponential_decay(learning_rate, transition_steps=1, decay_rate=lr_decay)
    if not warmup_steps:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps])


def make_optimizer(o: OptimConfig) -> optax.GradientTransformation:
    """Global-norm clipping (o.grad_clip > 0) -> Adam(W) (or RMSProp with decay o.b2, as WGAN uses) on
    `learning_rate_schedule`. o.eps_root > 0 keeps Adam's square root differentiable where a second
    moment is 0 (needed to differentiate through updates)."""
    schedule = learning_rate_schedule(o.learning_rate, o.warmup_steps, o.lr_decay, o.cosine_steps, o.final_lr_fraction)
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip else []
    if o.name == "rmsprop":
        parts.append(optax.rmsprop(schedule, decay=o.b2, eps=o.eps))
    elif o.weight_decay:
        parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, eps_root=o.eps_root,
                                 weight_decay=o.weight_decay))
    else:
        parts.append(optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps, eps_root=o.eps_root))
    return optax.chain(*parts)


def ema_update(ema_params, params, decay):
    """Exponential moving average: decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def all_finite(tree) -> jax.Array:
    """Scalar bool: every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _identity(x):
    return x


def gradient_update(loss_fn: Callable, after: Optional[Callable] = None):
    """A `gm.method.Training.update` that takes one optimizer step on `loss_fn`.

    loss_fn(params, extra, key, batch) -> (scalar loss, {name: scalar metric}, aux): aux is any pytree
      the step needs besides the gradient (None for none).
    after(params, extra, aux) -> (params, extra): state no gradient trains, updated after the optimizer
      from aux (a loss history, a codebook's statistics).

    Gradients, metrics and aux are averaged over devices with `reduce_fn` before they are used, so the
    update is the same whatever the strategy. Returns (params, opt_state, extra, metrics) with the
    metrics' 'loss' and 'grad_norm' (of the averaged gradient, before clipping).
    """
    def update(params, opt_state, extra, key, batch, *, optimizer, reduce_fn=_identity):
        def objective(p):
            loss, metrics, aux = loss_fn(p, extra, key, batch)
            return loss, (dict(metrics, loss=loss), aux)

        (_, (metrics, aux)), grads = jax.value_and_grad(objective, has_aux=True)(params)
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

