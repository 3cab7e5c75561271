"""The Method contract: what every model family hands to the trainer.

A family is a handful of pure functions over explicit parameters and explicit PRNG keys, in the spirit
of an optax `GradientTransformation`:

    init(key, batch) -> params
    loss(params, key, batch) -> (scalar loss, {name: scalar metric})
    sample(params, key, num) -> uint8 images [num, H, W, C] at the data's bit depth
                                 (or float data-space arrays for 2-D toy data)
    log_prob(params, key, batch) -> float32 [B] log-likelihood in nats per example, or None

`log_prob_is_bound` says whether `log_prob` is exact or a lower bound (an ELBO). Families with several
players (GANs) supply their own `train_step`; everything else gets the trainer's generic one built
from `loss`.

Batches are dicts `{'image': uint8[B, H, W, C], 'label': int32[B]}` straight from `gm.data`; each family
scales and dequantizes for itself, so one data pipeline serves all of them.
"""
from typing import Any, Callable, Mapping, NamedTuple, Optional, Tuple

import jax

PRNGKey = jax.Array
Params = Any  # a pytree of arrays
Batch = Mapping[str, jax.Array]
Metrics = Mapping[str, jax.Array]

InitFn = Callable[[PRNGKey, Batch], Params]
LossFn = Callable[[Params, PRNGKey, Batch], Tuple[jax.Array, Metrics]]
SampleFn = Callable[[Params, PRNGKey, int], jax.Array]
LogProbFn = Callable[[Params, PRNGKey, Batch], jax.Array]


class Method(NamedTuple):
    """The four pure functions of a model family (see the module docstring)."""
    init: InitFn
    loss: LossFn
    sample: SampleFn
    log_prob: Optional[LogProbFn] = None
    log_prob_is_bound: bool = False
    # For families with several players: replaces the generic `gm.train.state.train_step` and takes the
    # same arguments, (state, batch, key, *, optimizer, ema_decay, reduce_fn, device_key_fn) ->
    # (state, metrics), so every parallel strategy wraps it unchanged.
    train_step: Optional[Callable[..., Any]] = None
    # An optax transformation for the trainer to initialise the optimizer state with, instead of the
    # one config.optim describes (a GAN's holds one optimizer state per player).
    optimizer: Optional[Any] = None
    # () -> the initial `TrainState.extra`: state the family's own `train_step` keeps besides its
    # parameters (checkpointed with them, not optimized, not averaged).
    init_extra: Optional[Callable[[], Any]] = None
