"""Training objectives and timestep sampling.

* L_simple (Ho et al.): |eps - eps_theta(x_t, t)|^2, mean over dimensions.
* L_hybrid (Nichol & Dhariwal 2021): L_simple + lambda L_vlb, where the L_vlb term sees the predicted
  mean through a stop-gradient, so it trains only the variance. As in their code, the term is in bits
  per dimension and scaled by T / 1000: with t uniform, T E_t[L_t] is the whole bound, so this is
  their lambda = 0.001 on L_vlb, kept equal across chain lengths.
* Importance-sampled timesteps: p_t proportional to sqrt(E[L_t^2]) over the last `history` values of
  each t's loss, mixed with a little uniform probability, and the loss reweighted by 1 / (T p_t) so it
  stays unbiased. Timesteps are uniform until every t has a full history.

Per-example losses are float32 [B]; the batch loss is their (importance-weighted) mean.
"""
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gm.diffusion import process

LOSSES = ("simple", "hybrid")
TIMESTEP_SAMPLING = ("uniform", "importance")


def check_loss(loss, var_type):
    """Reject an objective that cannot train the configured variance, before any training."""
    if loss not in LOSSES:
        raise ValueError(f"Unknown config.diffusion.loss {loss!r}; use one of {LOSSES}.")
    process.check_var_type(var_type)
    if (loss == "hybrid") != (var_type == "learned_range"):
        raise ValueError("config.diffusion.loss='hybrid' trains a learned variance and needs "
                         "config.diffusion.var_type='learned_range' (and the other way round); "
                         f"got loss={loss!r}, var_type={var_type!r}.")


def per_example_losses(sched, out, noise, x0, xt, t, num_bits, var_type):
    """{'mse': [B], 'vb': [B] (bits/dim; 0 without a learned variance), 'loss': [B]} at timesteps t [B].

    out: the model output at (xt, t). The vb term's mean is built from stop_gradient(eps).
    """
    eps, v = process.split_output(out.astype(jnp.float32), var_type)
    mse = jnp.mean((eps - noise).reshape(eps.shape[0], -1) ** 2, axis=1)
    if v is None:
        vb = jnp.zeros_like(mse)
    else:
        frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
        # No clipping of the predicted x_0 in training, as in the reference code.
        nats = process.vlb_terms(sched, frozen, x0, xt, t, num_bits, var_type, clip_denoised=False)
        vb = nats / (math.prod(x0.shape[1:]) * math.log(2.0)) * (sched.num_timesteps / 1000.0)
    return {"mse": mse, "vb": vb, "loss": mse + vb}


def simple_loss(sched, eps_fn, key, x0):
    """L_simple with uniform timesteps: a scalar, mean over dimensions and batch."""
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, sched.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    eps = eps_fn(process.q_sample(sched, x0, t, noise), t)
    return jnp.mean((eps.astype(jnp.float32) - noise) ** 2)


# ---------------------------------------------------------------------------------------------------
# Timestep sampling.
# ---------------------------------------------------------------------------------------------------

class LossHistory(NamedTuple):
    """The last `H` batch-mean losses of each timestep: values float32 [T, H] (newest last), count int32
    [T] (how many are filled, at most H)."""
    values: jax.Array
    count: jax.Array


def init_loss_history(num_timesteps, history=10):
    return LossHistory(jnp.zeros((num_timesteps, history), jnp.float32), jnp.zeros((num_timesteps,), jnp.int32))


def importance_probs(hist, uniform_prob=0.001):
    """p_t [T]: proportional to sqrt(mean of the squared history), mixed with `uniform_prob` of the
    uniform distribution; uniform until every timestep has a full history."""
    num_timesteps, history = hist.values.shape
    weights = jnp.sqrt(jnp.mean(hist.values ** 2, axis=1))
    weights = weights / jnp.maximum(jnp.sum(weights), 1e-30)
    probs = weights * (1.0 - uniform_prob) + uniform_prob / num_timesteps
    warm = jnp.all(hist.count >= history)
    return jnp.where(warm, probs, jnp.full((num_timesteps,), 1.0 / num_timesteps))


def sample_timesteps(key, probs, batch_size):
    """t int32 [B] drawn from probs [T], and the weights 1 / (T p_t) [B] that keep the loss unbiased."""
    t = jax.random.choice(key, probs.shape[0], (batch_size,), p=probs).astype(jnp.int32)
    return t, 1.0 / (probs.shape[0] * probs[t])


def timestep_loss_sums(t, losses, num_timesteps):
    """(sum of the losses at each timestep [T], how many examples had it [T]) for a batch."""
    one_hot = jax.nn.one_hot(t, num_timesteps, dtype=jnp.float32)
    return one_hot.T @ jax.lax.stop_gradient(losses), jnp.sum(one_hot, axis=0)


def update_loss_history(hist, loss_sums, counts):
    """Push each timestep's batch-mean loss onto its history; timesteps absent from the batch keep theirs.

    loss_sums and counts [T] may be means over devices (a pmap): their ratio is the global mean either way.
    """
    seen = counts > 0
    mean = loss_sums / jnp.maximum(counts, 1e-30)
    pushed = jnp.concatenate([hist.values[:, 1:], mean[:, None]], axis=1)
    values = jnp.where(seen[:, None], pushed, hist.values)
    count = jnp.where(seen, jnp.minimum(hist.count + 1, hist.values.shape[1]), hist.count)
    return LossHistory(values, count)
