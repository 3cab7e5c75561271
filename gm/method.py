"""The Method contract: what every model family hands to the trainer.

A family is a handful of pure functions over explicit parameters and explicit PRNG keys, in the spirit
of an optax `GradientTransformation`:

    init(key, batch) -> params
    loss(params, key, batch) -> (scalar loss, {name: scalar metric})
    sample(params, key, num) -> uint8 images [num, H, W, C] at the data's bit depth
                                 (or float data-space arrays for 2-D toy data); None for a family
                                 that only maps given data to data (`translate`)
    log_prob(params, key, batch) -> float32 [B] log-likelihood in nats per example, or None

`log_prob_is_bound` says whether `log_prob` is exact or a lower bound (an ELBO). By default the trainer
takes one optimizer step on `loss` per train step; a family whose update is something else (several
players, state no gradient trains) says how through ONE typed hook, `training` (see `Training`).

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
# (params, key, batch) -> {'data': uint8 [B, H, W, C] levels as the model sees them (binarized ones for a
# Bernoulli decoder), 'reconstruction': the same shape, and optionally 'codes': int [B, ...] discrete latents}
ReconstructFn = Callable[[Params, PRNGKey, Batch], Mapping[str, jax.Array]]
# (params, key, batch of two domains) -> {'image_a', 'fake_b', 'cycle_a', 'image_b', 'fake_a', 'cycle_b'}: uint8
# [B, H, W, C] levels; the test images of each domain, their translations and the translations back
# (fake_b = G(a), cycle_a = F(G(a)), fake_a = F(b), cycle_b = G(F(b))).
TranslateFn = Callable[[Params, PRNGKey, Batch], Mapping[str, jax.Array]]
# (params, opt_state, extra, key, batch, *, optimizer, reduce_fn) -> (params, opt_state, extra, metrics)
UpdateFn = Callable[..., Tuple[Params, Any, Any, Metrics]]


class Training(NamedTuple):
    """How a family trains when its train step is not one optimizer step on `loss`.

    update(params, opt_state, extra, key, batch, *, optimizer, reduce_fn) -> (params, opt_state, extra,
      metrics): one train step. `key` is the step's (and the device's) key; `optimizer` is the optax
      transformation config.optim describes; `reduce_fn` averages a pytree over devices (the identity
      on one global batch) and must be applied to gradients and metrics before they are used. Metrics
      are scalars and include 'loss'. `gm.optim.gradient_update` builds the usual kind.
    init_opt_state(params, optimizer) -> the optimizer state (default `optimizer.init(params)`; a GAN
      holds one per player).
    init_extra(params) -> `TrainState.extra`: state that no gradient trains (a loss history, codebook
      statistics), checkpointed with the parameters and never optimized or averaged (default {}).
    average(ema_params, params, decay) -> the new EMA parameters (default: every leaf; a GAN averages
      its generator only).

    The trainer applies the non-finite guard for every family: an update whose metrics or new
    parameters are not all finite is dropped (parameters, optimizer state, extra and EMA kept) and
    counted, the same for every family.
    """
    update: UpdateFn
    init_opt_state: Optional[Callable[[Params, Any], Any]] = None
    init_extra: Optional[Callable[[Params], Any]] = None
    average: Optional[Callable[[Params, Params, float], Params]] = None


class Method(NamedTuple):
    """The pure functions of a model family (see the module docstring)."""
    init: InitFn
    loss: LossFn
    sample: Optional[SampleFn]
    log_prob: Optional[LogProbFn] = None
    log_prob_is_bound: bool = False
    # What log_prob's nats are spread over when it is not the data's dimensions, as (count, name): a prior
    # over an 8x8 code grid is (64, 'code'), and evaluations report bits per code; a language model's is
    # (the UTF-8 bytes a window of tokens stands for, a real number, 'byte').
    log_prob_per: Optional[Tuple[float, str]] = None
    # Encoder-decoder families: the data and its reconstruction, for the 'recon' evaluation and grids.
    reconstruct: Optional[ReconstructFn] = None
    training: Optional[Training] = None
    # Conditional samplers: what sample(params, key, num) draws each of its num samples for, the same
    # for every key. sample_prompts(num) -> num texts (text-to-image: written beside sample grids);
    # sample_labels(num) -> int [num] classes (evaluations score how often a classifier agrees).
    sample_prompts: Optional[Callable[[int], Tuple[str, ...]]] = None
    sample_labels: Optional[Callable[[int], Any]] = None
    # Image-to-image translation between two domains (`TranslateFn`): its sample grids, --mode=sample
    # and the 'translation' evaluation translate test images, where other families draw samples.
    translate: Optional[TranslateFn] = None
