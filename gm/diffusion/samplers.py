"""Samplers: ancestral (any chain, respaced or not), DDIM, and the probability-flow ODE; plus guidance.

Each sampler is one on-device loop over a model function `model_fn(x_t, t) -> out` (see
`gm.diffusion.process` for `out`), from x_T ~ N(0, I) to float32 samples in [-1, 1] (when clipped).
A respaced chain is an ordinary Schedule whose model function maps its step index to the trained
timestep (`respaced_model_fn`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from gm import ode
from gm.diffusion import process, schedule as schedule_lib


def respaced_model_fn(model_fn, timesteps):
    """The model function of a respaced chain: step i is trained timestep timesteps[i]."""
    timesteps = jnp.asarray(timesteps, jnp.int32)
    return lambda x, i: model_fn(x, timesteps[i])


def guided_model_fn(model_fn, labels, null_label, guidance_weight):
    """Classifier-free guidance (Ho & Salimans 2022) in one batched network call.

    model_fn(x, t, y) -> out is a class-conditional model trained with label dropout, y = null_label
    meaning "no class". Returns (x, t) -> out with eps = (1 + w) eps(x, y) - w eps(x, null); a learned
    variance (the channels after eps) comes from the conditional half. w = 0 is the conditional model;
    w may be a traced scalar, so one compiled sampler serves every guidance strength.
    """
    def fn(x, t):
        num = x.shape[0]
        both = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                        jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
        cond, uncond = both[:num], both[num:]
        channels = x.shape[-1]
        eps = (1.0 + guidance_weight) * cond[..., :channels] - guidance_weight * uncond[..., :channels]
        return jnp.concatenate([eps, cond[..., channels:]], axis=-1)

    return fn


def ancestral_sample(sched, model_fn, key, shape, var_type="fixedlarge", clip_denoised=True):
    """Ho et al.'s Algorithm 2 over every step of `sched`: float32 samples of `shape`."""
    init_key, loop_key = jax.random.split(key)

    def step(x, t):
        tt = jnp.full((shape[0],), t, jnp.int32)
        mean, log_var, _ = process.p_mean_log_variance(sched, model_fn(x, tt), x, tt, var_type, clip_denoised)
        z = jax.random.normal(jax.random.fold_in(loop_key, t), shape)
        # No noise is added at the last step (t = 0): the sample is the decoder's mean.
        return mean + (t > 0) * jnp.exp(0.5 * log_var) * z, None

    x, _ = jax.lax.scan(step, jax.random.normal(init_key, shape), jnp.arange(sched.num_timesteps)[::-1])
    return x


def ddim_timesteps(num_timesteps, num_steps, spacing="trailing"):
    """DDIM's timesteps, sorted ascending int32 [num_steps] (see `schedule.spaced_timesteps`)."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"config.diffusion.ddim_steps must be in [1, {num_timesteps}], got {num_steps}.")
    return schedule_lib.spaced_timesteps(num_timesteps, num_steps, spacing)


def ddim_sample(sched, model_fn, key, shape, num_steps=50, eta=0.0, clip_denoised=True, spacing="trailing"):
    """DDIM (Song et al. 2021) over `num_steps` steps; eta = 0 is deterministic, eta = 1 is DDPM-like.

    eta may be a traced scalar. Only the eps channels of the model output are used. The last step
    lands on alpha-bar = 1 (x_0), whatever the smallest visited timestep.
    """
    ts = ddim_timesteps(sched.num_timesteps, num_steps, spacing)
    prev_ts = np.append(-1, ts[:-1]).astype(np.int32)
    init_key, loop_key = jax.random.split(key)
    abar = sched.alphas_cumprod

    def step(x, i_t_prev):
        i, t, t_prev = i_t_prev
        tt = jnp.full((shape[0],), t, jnp.int32)
        eps = model_fn(x, tt)[..., :shape[-1]]
        x0 = process.predict_x0_from_eps(sched, x, tt, eps)
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
            # Re-derive eps from the clipped x_0 so the update stays consistent with it.
            eps = (x - jnp.sqrt(abar[t]) * x0) / jnp.sqrt(1.0 - abar[t])
        abar_prev = jnp.where(t_prev >= 0, abar[jnp.maximum(t_prev, 0)], 1.0)
        sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar[t]) * (1.0 - abar[t] / abar_prev))
        z = jax.random.normal(jax.random.fold_in(loop_key, i), shape)
        x = jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev - sigma ** 2) * eps + sigma * z
        return x, None

    xs = (jnp.arange(len(ts)), jnp.asarray(ts[::-1]), jnp.asarray(prev_ts[::-1]))
    x, _ = jax.lax.scan(step, jax.random.normal(init_key, shape), xs)
    return x


def probability_flow_velocity(sched, model_fn, num_channels):
    """dx/dtau of the probability-flow ODE (Song et al. 2021) in fractional timesteps tau in [0, T-1].

    With abar(tau) from `schedule.log_alphas_cumprod_at` and beta(tau) = -d log abar / d tau, the
    forward process is the VP SDE dx = -beta/2 x dtau + sqrt(beta) dW, whose marginals the ODE
        dx/dtau = -beta(tau)/2 (x + score) = -beta(tau)/2 (x - eps(x, tau) / sqrt(1 - abar(tau)))
    shares. The network sees the fractional timestep tau.
    """
    def velocity(x, tau):
        tt = jnp.full((x.shape[0],), tau, jnp.float32)
        eps = model_fn(x, tt)[..., :num_channels]
        sigma = jnp.sqrt(-jnp.expm1(schedule_lib.log_alphas_cumprod_at(sched, tau)))
        return -0.5 * schedule_lib.beta_at(sched, tau) * (x - eps / sigma)

    return velocity


def ode_sample(sched, model_fn, key, shape, method="dopri5", num_steps=100, rtol=1e-5, atol=1e-5,
               clip_denoised=True):
    """Integrate the probability-flow ODE from tau = T-1 to 0 with `gm.ode.solve`, then denoise.

    The last step maps x at tau = 0 (noise level sqrt(1 - abar_0)) to its predicted x_0, as the
    ancestral sampler's last step does. Returns (float32 samples of `shape`, nfe: network evaluations,
    the final denoising one included).
    """
    velocity = probability_flow_velocity(sched, model_fn, shape[-1])
    x, nfe = ode.solve(velocity, jax.random.normal(key, shape), float(sched.num_timesteps - 1), 0.0,
                       method=method, num_steps=num_steps, rtol=rtol, atol=atol)
    t0 = jnp.zeros((shape[0],), jnp.int32)
    x0 = process.predict_x0_from_eps(sched, x, t0, model_fn(x, t0)[..., :shape[-1]])
    return (jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0), nfe + 1
