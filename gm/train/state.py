"""Training state and the one train step every family runs through.

Nothing here names a device or an axis: `gm.parallel` wraps `train_step` for a strategy and hands it a
`reduce_fn` (identity for one global batch, a cross-device mean under pmap) and a `device_key_fn`.
"""
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

from gm import optim
from gm.method import Method, Training


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue exactly, apart from the data position (= `step`).

    step: int32 scalar, the number of train steps taken (and so the index of the next batch).
    params / opt_state / ema_params: pytrees of float32 arrays.
    num_nonfinite: int32 scalar, updates skipped because the loss, a metric or a new parameter was not finite.
    extra: a family's state that no gradient trains (`gm.method.Training.init_extra`), {} otherwise.
    """
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    num_nonfinite: jax.Array
    extra: Any = flax.struct.field(default_factory=dict)


def training_of(method: Method) -> Training:
    """The method's `Training` with every default filled in: one optimizer step on its loss, the
    optimizer's own state, no extra state and an EMA of every parameter."""
    t = method.training or Training(update=optim.loss_update(method.loss))
    return Training(update=t.update,
                    init_opt_state=t.init_opt_state or (lambda params, optimizer: optimizer.init(params)),
                    init_extra=t.init_extra or (lambda params: {}),
                    average=t.average or optim.ema_update)


# XLA's backend optimizations cost far more compile time than they save on a program that runs once:
# PixelCNN++'s initializer (114 threefry draws) compiles in 11 s without them and 36 s with them on CPU.
_COMPILE_ONCE_OPTIONS = {"xla_backend_optimization_level": 0}


def run_once(fn, *args):
    """fn(*args) jit-compiled for a single call (an initializer): a quick compile, not a quick program."""
    return jax.jit(fn).lower(*args).compile(compiler_options=_COMPILE_ONCE_OPTIONS)(*args)


def init_state(params, training: Training, optimizer) -> TrainState:
    """A fresh TrainState at step 0: the training's optimizer state and extra, EMA params equal to params."""
    # The EMA gets its own buffers: a donated step must never see one buffer twice.
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=training.init_opt_state(params, optimizer),
                      ema_params=jax.tree.map(jnp.copy, params), num_nonfinite=jnp.zeros((), jnp.int32),
                      extra=training.init_extra(params))


def _identity(x):
    return x


def train_step(state: TrainState, batch, key, *, training: Training, optimizer, ema_decay: float,
               reduce_fn: Callable[[Any], Any] = _identity, device_key_fn: Callable[[Any], Any] = _identity,
               micro_batches: int = 1):
    """One step of `training.update` on `batch`; returns (new state, scalar metrics).

    The step's randomness is fold_in(key, state.step), so a run's base key never changes (a per-device
    strategy then folds in the device index through `device_key_fn`). The non-finite guard, the same
    for every family: when a metric (the loss among them) or a new parameter is not finite, the update
    is dropped (params, optimizer state, extra and EMA unchanged), `num_nonfinite` counts it and
    `metrics['finite']` is 0; the trainer decides whether to stop. micro_batches > 1 is handed to the
    update (`gm.optim.gradient_update` accumulates over them; a family with its own update refuses it
    when its config is checked).
    """
    step_key = device_key_fn(jax.random.fold_in(key, state.step))
    accumulate = {"micro_batches": micro_batches} if micro_batches > 1 else {}
    params, opt_state, extra, metrics = training.update(state.params, state.opt_state, state.extra, step_key,
                                                        batch, optimizer=optimizer, reduce_fn=reduce_fn, **accumulate)
    finite = optim.all_finite(metrics) & optim.all_finite(params)
    ema_params = training.average(state.ema_params, params, ema_decay)
    # One lax.cond over the whole state rather than a select per leaf: the same result, and XLA
    # compiles it several times faster.
    params, opt_state, extra, ema_params = jax.lax.cond(
        finite, lambda new, old: new, lambda new, old: old, (params, opt_state, extra, ema_params),
        (state.params, state.opt_state, state.extra, state.ema_params))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params,
                              extra=extra, num_nonfinite=state.num_nonfinite + (~finite).astype(jnp.int32))
    return new_state, dict(metrics, finite=finite.astype(jnp.float32))


def step_function(method: Method, optimizer, ema_decay: float, micro_batches: int = 1):
    """(state, batch, key, **strategy hooks) -> (state, metrics): the train step of `method` with its
    optimizer, EMA decay and gradient accumulation (`micro_batches`) bound, before a strategy compiles it."""
    return functools.partial(train_step, training=training_of(method), optimizer=optimizer, ema_decay=ema_decay,
                             micro_batches=micro_batches)
