import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gm import diffusion, distributions as dist


def test_linear_schedule_is_the_papers_at_1000_steps():
    betas = diffusion.linear_betas(1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    short = diffusion.make_schedule(diffusion.linear_betas(100))
    assert float(short.alphas_cumprod[-1]) < 1e-4  # shorter chains still end near pure noise


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_constants_against_direct_products(name):
    s = diffusion.schedule_from_name(name, 200)
    betas = diffusion.linear_betas(200) if name == "linear" else diffusion.cosine_betas(200)
    abar = np.array([np.prod(1 - betas[: t + 1]) for t in range(200)])
    np.testing.assert_allclose(s.alphas_cumprod, abar, rtol=1e-5)
    np.testing.assert_allclose(s.alphas_cumprod_prev[1:], abar[:-1], rtol=1e-5)
    assert float(s.alphas_cumprod_prev[0]) == 1.0
    tilde = betas[1:] * (1 - abar[:-1]) / (1 - abar[1:])
    np.testing.assert_allclose(s.posterior_variance[1:], tilde, rtol=1e-5)


def test_cosine_schedule_follows_its_defining_curve():
    s = diffusion.schedule_from_name("cosine", 1000)
    f = lambda u: np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    t = np.arange(1, 800)  # before the 0.999 clip matters
    np.testing.assert_allclose(s.alphas_cumprod[t - 1], f(t / 1000) / f(0), rtol=1e-4)


def test_posterior_matches_gaussian_conditioning():
    s = diffusion.schedule_from_name("linear", 1000)
    betas = diffusion.linear_betas(1000)
    x0, xt = jnp.array([[0.3, -0.7]]), jnp.array([[1.1, 0.2]])
    for t in (1, 10, 500, 999):
        beta, abar_prev = betas[t], np.prod(1 - betas[:t])
        # q(x_{t-1}|x_t,x0) ∝ N(x_t; sqrt(1-beta) x_{t-1}, beta) N(x_{t-1}; sqrt(abar_prev) x0, 1-abar_prev)
        precision = (1 - beta) / beta + 1 / (1 - abar_prev)
        mean = (math.sqrt(1 - beta) / beta * xt + math.sqrt(abar_prev) / (1 - abar_prev) * x0) / precision
        got_mean, got_var, got_log_var = diffusion.q_posterior(s, x0, xt, jnp.array([t]))
        np.testing.assert_allclose(got_mean, mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got_var[0, 0], 1 / precision, rtol=1e-4)
        np.testing.assert_allclose(got_log_var[0, 0], math.log(1 / precision), rtol=1e-4)


def test_q_sample_moments():
    s = diffusion.schedule_from_name("linear", 1000)
    n, t = 200_000, 300
    x0 = jnp.full((n, 1), 0.8)
    xt = diffusion.q_sample(s, x0, jnp.full((n,), t), jax.random.normal(jax.random.key(0), (n, 1)))
    abar = float(s.alphas_cumprod[t])
    np.testing.assert_allclose(xt.mean(), math.sqrt(abar) * 0.8, atol=5e-3)
    np.testing.assert_allclose(xt.var(), 1 - abar, rtol=1e-2)


def _oracle_eps(s, x_star):
    """The optimal eps-predictor when the data distribution is the single point x_star."""
    def eps_fn(xt, t):
        return (xt - diffusion._at(s.sqrt_alphas_cumprod, t, xt) * x_star) / diffusion._at(
            s.sqrt_one_minus_alphas_cumprod, t, xt)
    return eps_fn


X_STAR = dist.levels_to_symmetric(jnp.array([[[[0], [5]], [[9], [15]]]]), 4)  # [1, 2, 2, 1]


def test_samplers_recover_a_point_mass_exactly():
    s = diffusion.schedule_from_name("linear", 100)
    eps_fn = _oracle_eps(s, X_STAR)
    shape = (3, 2, 2, 1)
    for x in (diffusion.ancestral_sample(s, eps_fn, jax.random.key(0), shape),
              diffusion.ancestral_sample(s, eps_fn, jax.random.key(0), shape, var_type="fixedsmall"),
              diffusion.ddim_sample(s, eps_fn, jax.random.key(0), shape, num_steps=10),
              diffusion.ddim_sample(s, eps_fn, jax.random.key(0), shape, num_steps=10, eta=1.0)):
        np.testing.assert_allclose(x, jnp.broadcast_to(X_STAR, shape), atol=1e-4)


def test_samplers_shapes_and_determinism():
    s = diffusion.schedule_from_name("linear", 50)
    eps_fn = lambda x, t: 0.1 * x
    a = diffusion.ancestral_sample(s, eps_fn, jax.random.key(3), (4, 3, 3, 2))
    b = diffusion.ancestral_sample(s, eps_fn, jax.random.key(3), (4, 3, 3, 2))
    c = diffusion.ancestral_sample(s, eps_fn, jax.random.key(4), (4, 3, 3, 2))
    assert a.shape == (4, 3, 3, 2) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_vlb_of_the_oracle_is_decoder_plus_prior_in_closed_form():
    # With the exact posterior mean and the posterior variance (fixedsmall) every KL term for t > 0
    # vanishes, so the bound is L_0 (a discretized Gaussian at x*, std sqrt(beta-tilde_1)) plus L_T.
    s = diffusion.schedule_from_name("linear", 100)
    got = diffusion.vlb(s, _oracle_eps(s, X_STAR), jax.random.key(0), X_STAR, num_bits=4, var_type="fixedsmall")
    std = math.sqrt(float(s.posterior_variance[1]))
    half = 1 / 15
    x = np.asarray(X_STAR, np.float64).ravel()
    p = np.where(x < -1 + half, stats.norm.cdf(half / std),
                 np.where(x > 1 - half, 1 - stats.norm.cdf(-half / std),
                          stats.norm.cdf(half / std) - stats.norm.cdf(-half / std)))
    abar_T = float(np.prod(1 - np.asarray(diffusion.linear_betas(100))))
    prior = 0.5 * np.sum(-1 - math.log(1 - abar_T) + (1 - abar_T) + abar_T * x ** 2)
    np.testing.assert_allclose(got[0], -np.log(p).sum() + prior, rtol=1e-3, atol=1e-3)


def test_vlb_is_a_valid_bound_for_a_random_model():
    s = diffusion.schedule_from_name("linear", 50)
    x0 = X_STAR
    eps_fn = lambda x, t: 0.3 * x
    nats = diffusion.vlb(s, eps_fn, jax.random.key(1), x0, num_bits=4)
    # No model can beat -log(1) = 0 nats on discrete data; a bad one pays a lot.
    assert nats.shape == (1,) and float(nats[0]) > 0


def test_ddpm_method_learns_digits_and_samples_uint8_levels():
    import optax
    from experiments import ddpm_cifar
    from gm import data as gm_data
    from gm import families
    from gm.train import state as state_lib

    config = ddpm_cifar.get_config("smoke")
    config.model.update(ch=16, ch_mult=(1,), attn_resolutions=(8,))  # one level: compiles in seconds
    config.diffusion.update(num_timesteps=50)
    digits = gm_data.load("digits")
    method = families.make(config, digits.info)
    batches = [gm_data.train_batch(digits, step=s, batch_size=64, seed=0) for s in range(120)]
    opt = optax.adam(3e-3)
    state = state_lib.init_state(jax.jit(method.init)(jax.random.key(0), batches[0]), state_lib.training_of(method),
                                 opt)
    step = jax.jit(state_lib.step_function(method, opt, 0.9))
    losses = []
    for b in batches:
        state, metrics = step(state, b, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:10]), (losses[:10], losses[-20:])

    sample = jax.jit(method.sample, static_argnums=2)
    a = sample(state.ema_params, jax.random.key(5), 8)
    b = sample(state.ema_params, jax.random.key(5), 8)
    assert a.shape == (8, 8, 8, 1) and a.dtype == jnp.uint8 and int(a.max()) <= 15
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample(state.ema_params, jax.random.key(6), 8))
    # The bound on test digits is a valid number of bits per 4-bit pixel.
    test = {k: v[:16] for k, v in digits.test.items()}
    bpd = dist.bits_per_dim(-jax.jit(method.log_prob)(state.ema_params, jax.random.key(7), test), 64)
    assert np.all(np.asarray(bpd) > 0) and np.all(np.isfinite(bpd))
