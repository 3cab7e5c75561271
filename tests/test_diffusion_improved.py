"""Improved DDPM, guidance and the fewer-step samplers: closed forms, invariances and config errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm import diffusion, distributions as dist

X_STAR = dist.levels_to_symmetric(jnp.array([[[[0], [5]], [[9], [15]]]]), 4)  # [1, 2, 2, 1]


def _oracle_eps(s, x_star):
    """The optimal eps-predictor when the data distribution is the single point x_star."""
    def eps_fn(xt, t):
        return (xt - diffusion._at(s.sqrt_alphas_cumprod, t, xt) * x_star) / diffusion._at(
            s.sqrt_one_minus_alphas_cumprod, t, xt)
    return eps_fn


# ---------------------------------------------------------------------------------------------------
# Learned variances and the hybrid loss.
# ---------------------------------------------------------------------------------------------------

def test_learned_variance_interpolates_log_beta_and_log_beta_tilde():
    betas = diffusion.cosine_betas(200)
    s = diffusion.make_schedule(betas)
    abar = np.cumprod(1 - betas)
    tilde = betas[1:] * (1 - abar[:-1]) / (1 - abar[1:])
    t = jnp.array([0, 1, 57, 199])
    for v in (-1.0, -0.3, 0.0, 0.8, 1.0):
        got = diffusion.learned_log_variance(s, jnp.full((4, 1), v), t)[:, 0]
        frac = (v + 1) / 2
        log_tilde = np.log(np.append(tilde[0], tilde))  # clipped at t = 0 to beta-tilde at the next step
        want = frac * np.log(betas[t]) + (1 - frac) * log_tilde[t]
        np.testing.assert_allclose(got, want, rtol=1e-5)
    # The end points are the two fixed variances.
    np.testing.assert_allclose(diffusion.learned_log_variance(s, jnp.full((200, 1), -1.0), jnp.arange(200))[:, 0],
                               diffusion.fixed_log_variance(s, "fixedsmall"), rtol=1e-6)
    np.testing.assert_allclose(diffusion.learned_log_variance(s, jnp.ones((199, 1)), jnp.arange(1, 200))[:, 0],
                               diffusion.fixed_log_variance(s, "fixedlarge")[1:], rtol=1e-6)


def _gaussian_kl(m1, logv1, m2, logv2):
    return 0.5 * (-1.0 + logv2 - logv1 + np.exp(logv1 - logv2) + (m1 - m2) ** 2 * np.exp(-logv2))


def test_vlb_terms_with_a_learned_variance_against_closed_forms():
    betas = diffusion.linear_betas(100)
    s = diffusion.make_schedule(betas)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    rng = np.random.default_rng(0)
    x0 = np.asarray(X_STAR, np.float64).repeat(3, 0)
    t = np.array([0, 7, 99])
    noise = rng.normal(size=x0.shape)
    a = abar[t][:, None, None, None]
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * noise
    # A model that is roughly right (so the decoder term at t = 0 is not astronomically small).
    eps, v = noise + 0.3 * rng.normal(size=x0.shape), rng.uniform(-1, 1, size=x0.shape)
    out = np.concatenate([eps, v], axis=-1)
    got = np.asarray(diffusion.vlb_terms(s, jnp.asarray(out, jnp.float32), jnp.asarray(x0, jnp.float32),
                                         jnp.asarray(xt, jnp.float32), jnp.asarray(t), 4, "learned_range",
                                         clip_denoised=False))
    for i, ti in enumerate(t):
        x0_hat = (xt[i] - np.sqrt(1 - abar[ti]) * eps[i]) / np.sqrt(abar[ti])
        c1 = betas[ti] * np.sqrt(abar_prev[ti]) / (1 - abar[ti])
        c2 = (1 - abar_prev[ti]) * np.sqrt(1 - betas[ti]) / (1 - abar[ti])
        tilde = betas * (1 - abar_prev) / (1 - abar)
        log_tilde = np.log(tilde[1]) if ti == 0 else np.log(tilde[ti])
        frac = (v[i] + 1) / 2
        log_var = frac * np.log(betas[ti]) + (1 - frac) * log_tilde
        model_mean = c1 * x0_hat + c2 * xt[i]
        if ti > 0:
            want = _gaussian_kl(c1 * x0[i] + c2 * xt[i], log_tilde, model_mean, log_var).sum()
        else:  # the decoder: a Gaussian discretized into 16 bins of width 2/15, open at both ends
            std, half = np.exp(0.5 * log_var), 1 / 15
            # The reference code's tanh approximation of the normal CDF, which gm keeps for equal numbers.
            cdf = lambda z: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))  # noqa: E731
            upper = np.where(x0[i] > 1 - half, 1.0, cdf((x0[i] + half - model_mean) / std))
            lower = np.where(x0[i] < -1 + half, 0.0, cdf((x0[i] - half - model_mean) / std))
            want = -np.log(upper - lower).sum()
        np.testing.assert_allclose(got[i], want, rtol=2e-4, atol=1e-4)


def test_hybrid_vb_term_is_the_bound_in_bits_per_dim_and_trains_only_the_variance():
    s = diffusion.schedule_from_name("cosine", 400)
    rng = np.random.default_rng(1)
    x0 = jnp.asarray(np.asarray(X_STAR).repeat(4, 0))
    noise = jnp.asarray(rng.normal(size=x0.shape), jnp.float32)
    t = jnp.array([0, 3, 150, 399])
    xt = diffusion.q_sample(s, x0, t, noise)
    out = jnp.asarray(rng.uniform(-1, 1, size=x0.shape[:-1] + (2,)), jnp.float32)
    terms = diffusion.per_example_losses(s, out, noise, x0, xt, t, 4, "learned_range")
    nats = diffusion.vlb_terms(s, out, x0, xt, t, 4, "learned_range", clip_denoised=False)
    np.testing.assert_allclose(terms["vb"], nats / (4 * math.log(2)) * (400 / 1000), rtol=1e-5)
    np.testing.assert_allclose(terms["mse"], jnp.mean((out[..., :1] - noise) ** 2, axis=(1, 2, 3)), rtol=1e-6)
    # The stop-gradient: the vb term moves only v, L_simple only eps.
    grad_vb = jax.grad(lambda o: jnp.sum(diffusion.per_example_losses(s, o, noise, x0, xt, t, 4,
                                                                      "learned_range")["vb"]))(out)
    grad_mse = jax.grad(lambda o: jnp.sum(diffusion.per_example_losses(s, o, noise, x0, xt, t, 4,
                                                                       "learned_range")["mse"]))(out)
    assert float(jnp.abs(grad_vb[..., :1]).max()) == 0.0 and float(jnp.abs(grad_vb[..., 1:]).max()) > 0
    assert float(jnp.abs(grad_mse[..., 1:]).max()) == 0.0


def test_learned_variance_bound_at_v_minus_one_is_the_fixedsmall_bound():
    s = diffusion.schedule_from_name("linear", 60)
    eps_fn = lambda x, t: 0.2 * x + 0.1  # noqa: E731
    learned = lambda x, t: jnp.concatenate([eps_fn(x, t), -jnp.ones_like(x)], axis=-1)  # noqa: E731
    a = diffusion.vlb(s, eps_fn, jax.random.key(0), X_STAR, 4, "fixedsmall")
    b = diffusion.vlb(s, learned, jax.random.key(0), X_STAR, 4, "learned_range")
    np.testing.assert_allclose(a, b, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Importance-sampled timesteps.
# ---------------------------------------------------------------------------------------------------

def test_importance_probabilities_are_uniform_until_every_history_is_full():
    hist = diffusion.init_loss_history(5, history=3)
    np.testing.assert_allclose(diffusion.importance_probs(hist), np.full(5, 0.2))
    for step in range(3):
        t = jnp.array([0, 1, 2, 3, 3, 4, 4])
        losses = jnp.array([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 8.0]) * (step + 1)
        hist = diffusion.update_loss_history(hist, *diffusion.timestep_loss_sums(t, losses, 5))
        if step < 2:
            np.testing.assert_allclose(diffusion.importance_probs(hist), np.full(5, 0.2))
    # Each timestep's history holds its batch means of the three steps, newest last.
    np.testing.assert_allclose(hist.values[3], [5.0, 10.0, 15.0])
    np.testing.assert_array_equal(hist.count, [3] * 5)
    rms = np.sqrt(np.mean(np.asarray(hist.values) ** 2, axis=1))
    want = rms / rms.sum() * (1 - 0.001) + 0.001 / 5
    np.testing.assert_allclose(diffusion.importance_probs(hist), want, rtol=1e-6)
    # A timestep absent from a batch keeps its history.
    after = diffusion.update_loss_history(hist, *diffusion.timestep_loss_sums(jnp.array([1]), jnp.array([9.0]), 5))
    np.testing.assert_array_equal(after.values[0], hist.values[0])
    np.testing.assert_allclose(after.values[1], [4.0, 6.0, 9.0])


def test_importance_weights_keep_the_loss_unbiased():
    probs = jnp.asarray(np.random.default_rng(0).dirichlet(np.ones(6)), jnp.float32)
    t, w = diffusion.sample_timesteps(jax.random.key(0), probs, 200_000)
    f = jnp.arange(6.0) ** 2
    # sum_t p_t / (T p_t) f(t) = mean_t f(t); the Monte Carlo estimate is close to it.
    np.testing.assert_allclose(float(jnp.mean(w * f[t])), float(jnp.mean(f)), rtol=2e-2)
    np.testing.assert_allclose(np.bincount(np.asarray(t), minlength=6) / 200_000, probs, atol=5e-3)


# ---------------------------------------------------------------------------------------------------
# Respacing.
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 10, 37, "ddim25", "5,10,2"])
def test_respaced_schedule_keeps_alpha_bar_at_the_kept_steps(name, steps):
    betas = diffusion.betas_from_name(name, 1000)
    full = diffusion.make_schedule(betas)
    respaced = diffusion.respace(betas, steps)
    ts = respaced.timesteps
    assert np.all(np.diff(ts) > 0) and 0 <= ts[0] and ts[-1] <= 999
    np.testing.assert_allclose(respaced.schedule.alphas_cumprod, full.alphas_cumprod[ts], rtol=1e-6)
    if isinstance(steps, int):
        assert len(ts) == steps and (steps == 1 or (ts[0] == 0 and ts[-1] == 999))


def test_space_timesteps_matches_ddim_and_sections():
    for spacing in diffusion.SPACINGS:
        np.testing.assert_array_equal(diffusion.space_timesteps(1000, "ddim30", spacing),
                                      diffusion.ddim_timesteps(1000, 30, spacing))
    ts = diffusion.space_timesteps(300, "10,5,1")
    assert len(ts) == 16 and ts[0] == 0 and ts[9] == 99 and ts[10] == 100 and ts[14] == 199 and ts[15] == 200
    with pytest.raises(ValueError, match="num_timesteps=100"):
        diffusion.space_timesteps(100, 101)


@pytest.mark.parametrize("count", [1, 7, 30, 50, 64, 600, 999, 1000])
def test_every_spacing_gives_distinct_sorted_steps_and_trailing_starts_at_t_minus_1(count):
    for spacing in diffusion.SPACINGS:
        ts = diffusion.spaced_timesteps(1000, count, spacing)
        assert ts.dtype == np.int32 and len(ts) == count and np.all(np.diff(ts) > 0)
        assert 0 <= ts[0] and ts[-1] <= 999
    assert diffusion.spaced_timesteps(1000, count, "trailing")[-1] == 999
    assert diffusion.ddim_timesteps(1000, count)[-1] == 999  # the default
    if count > 1:
        assert diffusion.spaced_timesteps(1000, count, "linspace")[[0, -1]].tolist() == [0, 999]


def test_spacings_match_the_diffusers_formulas():
    # diffusers' DDIMScheduler.set_timesteps for T = 1000, K = 10 and K = 30, reversed to ascending.
    np.testing.assert_array_equal(diffusion.spaced_timesteps(1000, 10, "trailing"), np.arange(99, 1000, 100))
    np.testing.assert_array_equal(diffusion.spaced_timesteps(1000, 10, "leading"), np.arange(0, 1000, 100))
    np.testing.assert_array_equal(diffusion.spaced_timesteps(1000, 10, "linspace"), np.arange(0, 1000, 111))
    trailing30 = diffusion.spaced_timesteps(1000, 30, "trailing")
    assert trailing30[:3].tolist() == [32, 66, 99] and trailing30[-3:].tolist() == [932, 966, 999]
    assert diffusion.spaced_timesteps(1000, 30, "leading")[-1] == 957  # the DDIM paper's start
    assert diffusion.spaced_timesteps(1000, 600, "leading")[-1] == 599


def _gaussian_eps(s, mean, std):
    """The exact eps-predictor when the data are N(mean, std^2) in every coordinate."""
    def eps_fn(xt, t):
        abar = diffusion._at(s.alphas_cumprod, t, xt)
        return jnp.sqrt(1 - abar) * (xt - jnp.sqrt(abar) * mean) / (abar * std ** 2 + 1 - abar)
    return eps_fn


@pytest.mark.parametrize("count", [300, 600, 1000])
def test_ddim_with_the_exact_score_recovers_gaussian_data_whether_or_not_k_divides_t(count):
    # x_T ~ N(0, I) is only right at t = T-1. From 'leading''s t = 599 (K = 600, sqrt(abar) = 0.16)
    # the deterministic map's mean is off by about std * sqrt(abar) * mean / 1 = 0.17; from t = 999 by
    # 0.006. Few steps (K = 30) shrink the std by DDIM's discretization, not by the start: not tested.
    s = diffusion.schedule_from_name("linear", 1000)
    mean, std = 2.0, 0.5
    x = diffusion.ddim_sample(s, _gaussian_eps(s, mean, std), jax.random.key(0), (20_000, 1, 1, 1),
                              num_steps=count, clip_denoised=False)
    assert abs(float(x.mean()) - mean) < 0.03
    assert abs(float(x.std()) - std) < 0.02


def test_respaced_ancestral_sampler_recovers_a_point_mass():
    betas = diffusion.linear_betas(200)
    full = diffusion.make_schedule(betas)
    respaced = diffusion.respace(betas, 20)
    model_fn = diffusion.respaced_model_fn(_oracle_eps(full, X_STAR), respaced.timesteps)
    x = diffusion.ancestral_sample(respaced.schedule, model_fn, jax.random.key(0), (3, 2, 2, 1))
    np.testing.assert_allclose(x, jnp.broadcast_to(X_STAR, (3, 2, 2, 1)), atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# The probability-flow ODE.
# ---------------------------------------------------------------------------------------------------

def test_probability_flow_ode_transports_noise_to_gaussian_data_along_the_closed_form():
    # For data N(mu, s^2) the optimal eps is known in closed form, and the ODE's flow is the affine map
    # x(tau) = m(tau) + sqrt(v(tau) / v(T-1)) (x(T-1) - m(T-1)), m = sqrt(abar) mu, v = abar s^2 + 1 - abar;
    # the last step is the posterior mean E[x_0 | x] = mu + s^2 sqrt(abar_0) (x - m_0) / v_0.
    mu, s_data = 0.3, 0.5
    sched = diffusion.schedule_from_name("linear", 100)
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    m, v = np.sqrt(abar) * mu, abar * s_data ** 2 + 1 - abar

    def eps_fn(x, t):
        a = jnp.exp(diffusion.log_alphas_cumprod_at(sched, t.astype(jnp.float32)))[:, None, None, None]
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s_data ** 2 + 1 - a)

    shape = (2000, 1, 1, 1)
    z = np.asarray(jax.random.normal(jax.random.key(0), shape), np.float64)  # the sampler's x_T
    x_tau0 = m[0] + np.sqrt(v[0] / v[-1]) * (z - m[-1])
    want = mu + s_data ** 2 * np.sqrt(abar[0]) * (x_tau0 - m[0]) / v[0]
    for method, steps in (("dopri5", 1), ("rk4", 50), ("rk4", 99)):
        x, nfe = diffusion.ode_sample(sched, eps_fn, jax.random.key(0), shape, method=method, num_steps=steps,
                                      clip_denoised=False)
        np.testing.assert_allclose(np.asarray(x), want, atol=2e-3)
        assert int(nfe) > 1
    x, nfe = diffusion.ode_sample(sched, eps_fn, jax.random.key(0), shape, method="euler", num_steps=10)
    assert int(nfe) == 11 and float(jnp.abs(x).max()) <= 1.0  # 10 steps and the final denoising; clipped


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_continuous_log_alpha_bar_passes_through_the_trained_levels_with_a_positive_beta(name):
    sched = diffusion.schedule_from_name(name, 50)
    log_abar = np.log(np.asarray(sched.alphas_cumprod, np.float64))
    np.testing.assert_allclose(diffusion.log_alphas_cumprod_at(sched, jnp.arange(50.0)), log_abar, rtol=1e-5)
    tau = jnp.linspace(0.0, 49.0, 49 * 64 + 1)
    beta = np.asarray(diffusion.beta_at(sched, tau), np.float64)
    assert beta.min() > 0
    # beta is the derivative: its integral over each unit interval is the drop of log abar there.
    integral = np.array([np.trapezoid(beta[64 * k:64 * (k + 1) + 1], dx=1 / 64) for k in range(49)])
    np.testing.assert_allclose(integral, log_abar[:-1] - log_abar[1:], rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Classifier-free guidance.
# ---------------------------------------------------------------------------------------------------

def _class_model(x, t, y):
    """A toy class-conditional 'network': eps and v depend on the label (y = 3 is the null class)."""
    shift = (y.astype(jnp.float32) - 1.0)[:, None, None, None]
    return jnp.concatenate([0.2 * x + 0.1 * shift, jnp.tanh(shift) * jnp.ones_like(x)], axis=-1)


def test_guidance_weight_zero_is_the_conditional_sampler():
    sched = diffusion.schedule_from_name("linear", 40)
    labels = jnp.array([0, 1, 2, 2])
    shape = (4, 2, 2, 1)
    conditional = lambda x, t: _class_model(x, t, labels)  # noqa: E731
    guided = diffusion.guided_model_fn(_class_model, labels, 3, 0.0)
    for sample in (lambda f: diffusion.ancestral_sample(sched, f, jax.random.key(0), shape, "learned_range"),
                   lambda f: diffusion.ddim_sample(sched, f, jax.random.key(0), shape, num_steps=8)):
        np.testing.assert_allclose(sample(guided), sample(conditional), atol=1e-6)
    # w > 0 extrapolates eps away from the unconditional prediction; v is the conditional one.
    x, t = jnp.ones(shape), jnp.zeros((4,), jnp.int32)
    out = diffusion.guided_model_fn(_class_model, labels, 3, 2.0)(x, t)
    cond, uncond = _class_model(x, t, labels), _class_model(x, t, jnp.full((4,), 3))
    np.testing.assert_allclose(out[..., :1], 3.0 * cond[..., :1] - 2.0 * uncond[..., :1], rtol=1e-6)
    np.testing.assert_allclose(out[..., 1:], cond[..., 1:])


# ---------------------------------------------------------------------------------------------------
# The Method: configs, errors, training with importance sampling and guidance.
# ---------------------------------------------------------------------------------------------------

def _tiny_config(**diffusion_fields):
    from experiments import ddpm_cifar
    config = ddpm_cifar.get_config("smoke")
    config.model.update(ch=16, ch_mult=(1,), attn_resolutions=(8,))
    config.diffusion.update(num_timesteps=50, **diffusion_fields)
    return config


@pytest.mark.parametrize("fields, message", [
    (dict(loss="hybrid"), "var_type='learned_range'"),
    (dict(var_type="learned_range", loss="simple"), "config.diffusion.loss='hybrid'"),
    (dict(var_type="learned"), "config.diffusion.var_type"),
    (dict(guidance_weight=1.0), "config.diffusion.label_dropout > 0"),
    (dict(label_dropout=0.1), "config.model.class_conditional=True"),
    (dict(timestep_sampling="loss"), "config.diffusion.timestep_sampling"),
    (dict(sampler="pndm"), "config.diffusion.sampler"),
    (dict(sample_steps=51), "num_timesteps=50"),
])
def test_bad_diffusion_fields_are_one_sentence(fields, message):
    from gm import data as gm_data
    from gm import families
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        families.make(_tiny_config(**fields), gm_data.load("digits").info)


def test_importance_sampled_hybrid_training_keeps_a_loss_history_and_guided_samples():
    import optax
    from gm import data as gm_data
    from gm import families
    from gm.train import state as state_lib

    config = _tiny_config(var_type="learned_range", loss="hybrid", timestep_sampling="importance",
                          importance_history=2, label_dropout=0.2, guidance_weight=1.5, sample_steps=10)
    config.model.class_conditional = True
    digits = gm_data.load("digits")
    method = families.make(config, digits.info)
    opt = optax.adam(1e-3)
    batch = gm_data.train_batch(digits, step=0, batch_size=64, seed=0)
    params = jax.jit(method.init)(jax.random.key(0), batch)
    assert params["conv_out"]["kernel"].shape[-1] == 2  # eps and v
    assert params["class_embed"]["embedding"].shape[0] == 11  # ten digits and the null class
    state = state_lib.init_state(params, state_lib.training_of(method), opt)
    step = jax.jit(state_lib.step_function(method, opt, 0.9))
    for i in range(6):
        state, metrics = step(state, gm_data.train_batch(digits, step=i, batch_size=64, seed=0), jax.random.key(1))
        assert {"loss", "mse", "vb", "grad_norm", "finite"} <= set(metrics) and np.isfinite(float(metrics["vb"]))
    count = np.asarray(state.extra["loss_history"]["count"])
    assert count.max() == 2 and count.sum() > 64  # every batch pushed up to one mean per timestep it drew
    images = jax.jit(method.sample, static_argnums=2)(state.ema_params, jax.random.key(2), 4)
    assert images.shape == (4, 8, 8, 1) and images.dtype == jnp.uint8 and int(images.max()) <= 15
    nats = jax.jit(method.log_prob)(state.ema_params, jax.random.key(3), {k: v[:4] for k, v in digits.test.items()})
    assert nats.shape == (4,) and np.all(np.isfinite(nats))


def test_guidance_weight_on_a_model_without_a_null_class_is_refused_at_sampling():
    from gm import data as gm_data
    from gm import families
    config = _tiny_config()
    config.model.class_conditional = True
    settings = families.parse(config).settings
    diff = diffusion.build(settings, gm_data.load("digits").info)
    with pytest.raises(ValueError, match="config.diffusion.label_dropout > 0"):
        diffusion.sample(diff, settings.diffusion, {}, jax.random.key(0), 2, guidance_weight=2.0)
