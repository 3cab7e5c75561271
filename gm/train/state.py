"""Training state, optimizer, EMA and the generic train step built from a Method's loss.

Nothing here names a device or an axis: `gm.parallel` wraps `train_step` for a strategy and hands it a
`reduce_fn` (identity for one global batch, a cross-device mean under pmap).
"""
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from gm import checks


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue exactly, apart from the data position (= `step`).

    step: int32 scalar, the number of train steps taken (and so the index of the next batch).
    params / opt_state / ema_params: pytrees of float32 arrays.
    num_nonfinite: int32 scalar, updates skipped because the loss or a gradient was not finite.
    extra: a family's own state besides its parameters, neither optimized nor averaged (the diffusion
      loss history for importance-sampled timesteps); updated by the family's `train_step`, {} otherwise.
    """
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    num_nonfinite: jax.Array
    extra: Any = flax.struct.field(default_factory=dict)


def learning_rate_schedule(learning_rate, warmup_steps=0, lr_decay=1.0, *, field="config.optim"):
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then times `lr_decay` every step
    (PixelCNN++'s 0.999995; 1.0 keeps it constant). A float when nothing varies. `field` names the
    config section in error messages."""
    checks.number_in(learning_rate, f"{field}.learning_rate", 0.0, None, low_open=True)
    checks.nonnegative_int(warmup_steps, f"{field}.warmup_steps")
    checks.number_in(lr_decay, f"{field}.lr_decay", 0.0, 1.0, low_open=True, high_open=False)
    if lr_decay == 1.0:
        return optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps) if warmup_steps else learning_rate
    decay = optax.exponential_decay(learning_rate, transition_steps=1, decay_rate=lr_decay)
    if not warmup_steps:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), decay], [warmup_steps])


OPTIMIZERS = ("adam", "rmsprop")


def make_optimizer(learning_rate, warmup_steps=0, grad_clip=None, b1=0.9, b2=0.999, eps=1e-8,
                   weight_decay=0.0, lr_decay=1.0, name="adam", eps_root=0.0, *, field="config.optim"):
    """Global-norm clipping -> Adam(W) (or RMSProp with decay b2, as WGAN uses) on
    `learning_rate_schedule(learning_rate, warmup_steps, lr_decay)`. `eps_root` > 0 keeps Adam's
    square root differentiable where a second moment is 0 (needed to differentiate through updates).
    `field` names the config section in error messages (a GAN's discriminator has config.optim_d)."""
    checks.one_of(name, f"{field}.name", OPTIMIZERS)
    checks.number_in(b1, f"{field}.b1", 0.0, 1.0)
    checks.number_in(b2, f"{field}.b2", 0.0, 1.0)
    checks.number_in(eps, f"{field}.eps", 0.0, None)
    checks.number_in(eps_root, f"{field}.eps_root", 0.0, None)
    checks.number_in(weight_decay, f"{field}.weight_decay", 0.0, None)
    if grad_clip is not None:
        checks.number_in(grad_clip, f"{field}.grad_clip (0: no clipping)", 0.0, None)
    schedule = learning_rate_schedule(learning_rate, warmup_steps, lr_decay, field=field)
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip else []
    if name == "rmsprop":
        parts.append(optax.rmsprop(schedule, decay=b2, eps=eps))
    elif weight_decay:
        parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay))
    else:
        parts.append(optax.adam(schedule, b1=b1, b2=b2, eps=eps, eps_root=eps_root))
    return optax.chain(*parts)


def optimizer_from_config(optim, field="config.optim"):
    """config.optim (learning_rate, warmup_steps, grad_clip, b1, b2, eps, weight_decay, lr_decay, name,
    eps_root) -> optax chain; the fields after warmup_steps are optional. `field`: the section's name."""
    return make_optimizer(optim.learning_rate, optim.warmup_steps, optim.get("grad_clip"),
                          optim.get("b1", 0.9), optim.get("b2", 0.999), optim.get("eps", 1e-8),
                          optim.get("weight_decay", 0.0), optim.get("lr_decay", 1.0), optim.get("name", "adam"),
                          optim.get("eps_root", 0.0), field=field)


# XLA's backend optimizations cost far more compile time than they save on a program that runs once:
# PixelCNN++'s initializer (114 threefry draws) compiles in 11 s without them and 36 s with them on CPU.
_COMPILE_ONCE_OPTIONS = {"xla_backend_optimization_level": 0}


def run_once(fn, *args):
    """fn(*args) jit-compiled for a single call (an initializer): a quick compile, not a quick program."""
    return jax.jit(fn).lower(*args).compile(compiler_options=_COMPILE_ONCE_OPTIONS)(*args)


def init_state(params, optimizer, extra=None):
    """A fresh TrainState at step 0 with EMA params equal to params (and `extra`, default {})."""
    # The EMA gets its own buffers: a donated step must never see one buffer twice.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      ema_params=jax.tree.map(jnp.copy, params), num_nonfinite=jnp.zeros((), jnp.int32),
                      extra={} if extra is None else extra)


def ema_update(ema_params, params, decay):
    """Exponential moving average: decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def all_finite(tree):
    """Scalar bool: every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _identity(x):
    return x


def train_step(state, batch, key, *, loss_fn, optimizer, ema_decay,
               reduce_fn: Callable[[Any], Any] = _identity, device_key_fn: Callable[[Any], Any] = _identity):
    """One optimizer step on `batch`; returns (new state, scalar metrics).

    The step's randomness is fold_in(key, state.step), so a run's base key never changes (a per-device
    strategy then folds in the device index through `device_key_fn`). When the loss
    or any gradient is not finite the update is skipped (params, optimizer state and EMA unchanged),
    `num_nonfinite` counts it and `metrics['finite']` is 0; the trainer decides whether to stop.
    `reduce_fn` averages gradients and metrics across devices when the caller shards the batch.
    """
    step_key = device_key_fn(jax.random.fold_in(key, state.step))
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, step_key, batch)
    grads, metrics = reduce_fn((grads, dict(metrics, loss=loss)))
    finite = jnp.isfinite(metrics["loss"]) & all_finite(grads)

    def apply_update(_):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return params, opt_state, ema_update(state.ema_params, params, ema_decay)

    # lax.cond rather than a select per leaf: same result, and XLA compiles it several times faster.
    params, opt_state, ema_params = jax.lax.cond(
        finite, apply_update, lambda _: (state.params, state.opt_state, state.ema_params), None)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params,
                              num_nonfinite=state.num_nonfinite + (~finite).astype(jnp.int32))
    metrics = dict(metrics, grad_norm=optax.global_norm(grads), finite=finite.astype(jnp.float32))
    return new_state, metrics
