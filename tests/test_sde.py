"""Score SDEs, EDM and DPM-Solver++ against closed forms: Gaussian data, whose score is known exactly."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm import diffusion
from gm.diffusion import dpm_solver, edm, sde as sde_lib

MU, STD = 0.3, 0.5  # the data: N(MU, STD^2) in every dimension


def exact_eps(sde):
    """The noise prediction E[eps | x_t] for Gaussian data: x_t ~ N(alpha MU, alpha^2 STD^2 + sigma^2)."""
    def eps(x, t):
        alpha, sigma = (sde_lib.expand(v, x) for v in sde.marginal(t))
        return sigma * (x - alpha * MU) / (alpha ** 2 * STD ** 2 + sigma ** 2)
    return eps


def exact_denoiser(x, sigma):
    """E[x_0 | x_0 + sigma n = x] for Gaussian data."""
    sigma = sde_lib.expand(jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (x.shape[0],)), x)
    return MU + STD ** 2 / (STD ** 2 + sigma ** 2) * (x - MU)


def flow_to_data(x_init, sigma_init):
    """Where the exact probability-flow ODE carries x_init at sigma_init to at sigma = 0 (it is affine)."""
    return MU + (x_init - MU) * STD / math.sqrt(STD ** 2 + sigma_init ** 2)


def assert_gaussian_data(x, tol=0.02):
    np.testing.assert_allclose(float(jnp.mean(x)), MU, atol=tol)
    np.testing.assert_allclose(float(jnp.std(x)), STD, atol=tol)


@pytest.mark.parametrize("name", sde_lib.SDES)
def test_marginals_are_the_closed_forms_and_solve_the_moment_equations(name):
    sde = sde_lib.sde_from_name(name)
    t = jnp.linspace(0.01, 1.0, 7)
    alpha, sigma = sde.marginal(t)
    if name in ("vp", "subvp"):
        log_alpha = -0.25 * t ** 2 * 19.9 - 0.5 * t * 0.1
        np.testing.assert_allclose(alpha, np.exp(log_alpha), rtol=1e-5)
        expected = np.sqrt(1 - np.exp(2 * log_alpha)) if name == "vp" else 1 - np.exp(2 * log_alpha)
        np.testing.assert_allclose(sigma, expected, rtol=1e-5)
    else:
        np.testing.assert_allclose(alpha, 1.0)
        np.testing.assert_allclose(sigma, 0.01 * (50 / 0.01) ** t, rtol=1e-5)
    # The mean and variance of a linear SDE obey d alpha / dt = f alpha, d sigma^2 / dt = 2 f sigma^2 + g^2.
    d_alpha = jax.jvp(lambda s: sde.marginal(s)[0], (t,), (jnp.ones_like(t),))[1]
    d_var = jax.jvp(lambda s: sde.marginal(s)[1] ** 2, (t,), (jnp.ones_like(t),))[1]
    f, g = sde.coefficients(t)
    np.testing.assert_allclose(d_alpha, f * alpha, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d_var, 2 * f * sigma ** 2 + g ** 2, rtol=1e-3, atol=1e-5)  # float32 cancellation


@pytest.mark.parametrize("name", sde_lib.SDES)
def test_time_of_sigma_inverts_the_noise_level_and_the_denoiser_is_the_posterior_mean(name):
    sde = sde_lib.sde_from_name(name)
    t = jnp.array([0.001, 0.1, 0.5, 0.99])
    np.testing.assert_allclose(sde.time_of_sigma(sde.sigma_hat(t)), t, rtol=1e-4, atol=1e-6)
    x = 2.0 * jax.random.normal(jax.random.key(0), (4, 3))
    denoise = sde_lib.denoiser_from_eps(sde, exact_eps(sde))
    for sigma in (0.05, 1.7, 30.0):
        np.testing.assert_allclose(denoise(x, sigma), exact_denoiser(x, sigma), rtol=1e-4, atol=1e-5)


def test_the_vp_denoiser_is_edms_vp_preconditioning():
    """EDM's VPPrecond: D = c_skip x + c_out F(c_in x), c_skip 1, c_out -sigma, c_in 1 / sqrt(1 + sigma^2),
    with F the noise prediction at the time whose sigma is sigma (its sigma_inv, beta_d 19.9, beta_min 0.1)."""
    sde = sde_lib.vp_sde()
    net = lambda x, t: jnp.sin(3 * x) * sde_lib.expand(t, x)  # noqa: E731  any network of (x, t)
    x = jax.random.normal(jax.random.key(1), (3, 4))
    for sigma in (0.01, 0.5, 20.0):
        t = (math.sqrt(0.1 ** 2 + 2 * 19.9 * math.log1p(sigma ** 2)) - 0.1) / 19.9
        expected = x - sigma * net(x / math.sqrt(1 + sigma ** 2), jnp.full((3,), t))
        np.testing.assert_allclose(sde_lib.denoiser_from_eps(sde, net)(x, sigma), expected, rtol=2e-4, atol=1e-5)


def test_the_ve_denoiser_is_edms_ve_preconditioning():
    """EDM's VEPrecond: c_skip 1, c_out sigma, c_in 1 (gm's network predicts -F, the noise), at the time whose
    sigma is sigma."""
    sde = sde_lib.ve_sde()
    net = lambda x, t: jnp.cos(2 * x) * sde_lib.expand(t, x)  # noqa: E731
    x = jax.random.normal(jax.random.key(11), (3, 4))
    for sigma in (0.02, 1.0, 40.0):
        t = math.log(sigma / 0.01) / math.log(50 / 0.01)
        expected = x - sigma * net(x, jnp.full((3,), t))
        np.testing.assert_allclose(sde_lib.denoiser_from_eps(sde, net)(x, sigma), expected, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("name", sde_lib.SDES)
def test_pc_and_ode_samplers_with_the_exact_score_reproduce_the_data(name):
    sde = sde_lib.sde_from_name(name)
    shape, key = (20_000, 2), jax.random.key(2)
    for predictor, corrector in (("euler_maruyama", "none"), ("reverse_diffusion", "langevin")):
        x, nfe = sde_lib.pc_sample(sde, exact_eps(sde), key, shape, 500, predictor, corrector)
        assert_gaussian_data(x)
        assert nfe == (500 if corrector == "none" else 1000)
    x, nfe = sde_lib.ode_sample(sde, exact_eps(sde), key, shape, "rk4", 100)
    assert_gaussian_data(x)
    assert int(nfe) == 401


@pytest.mark.parametrize("name", sde_lib.SDES)
def test_ode_likelihood_of_gaussian_data_is_the_analytic_one(name):
    """The probability-flow ODE maps p_{t_min} to p_1 exactly; the model's density is that map's pushforward
    of the prior, so log p(x) = log N(z; 0, prior^2) + log p_{t_min}(x) - log p_1(z), z the affine flow map."""
    sde = sde_lib.sde_from_name(name)
    x = MU + STD * jax.random.normal(jax.random.key(3), (8, 3))
    a0, s0 = (float(v) for v in sde.marginal(sde.t_min))
    a1, s1 = (float(v) for v in sde.marginal(1.0))
    var0, var1 = a0 ** 2 * STD ** 2 + s0 ** 2, a1 ** 2 * STD ** 2 + s1 ** 2
    z = a1 * MU + (x - a0 * MU) * math.sqrt(var1 / var0)
    normal = lambda v, mean, var: jnp.sum(-0.5 * jnp.log(2 * math.pi * var) - 0.5 * (v - mean) ** 2 / var, -1)  # noqa: E731
    expected = normal(z, 0.0, sde.prior_std ** 2) + normal(x, a0 * MU, var0) - normal(z, a1 * MU, var1)
    got, _ = sde_lib.log_likelihood(sde, exact_eps(sde), x, divergence="exact")
    np.testing.assert_allclose(got, expected, atol=2e-3)
    hutchinson, _ = sde_lib.log_likelihood(sde, exact_eps(sde), x, jax.random.key(4), method="rk4", num_steps=200)
    # The Jacobian is diagonal (a multiple of I), so Rademacher probes are exact.
    np.testing.assert_allclose(hutchinson, expected, atol=2e-3)


def test_dsm_loss_weightings():
    sde = sde_lib.vp_sde()
    x0 = MU + STD * jax.random.normal(jax.random.key(5), (64, 4))
    eps_fn = exact_eps(sde)
    key = jax.random.key(6)
    plain = sde_lib.dsm_loss(sde, eps_fn, key, x0, "eps")
    weighted = sde_lib.dsm_loss(sde, eps_fn, key, x0, "likelihood")
    t = jax.random.uniform(jax.random.split(key)[0], (64,), jnp.float32, sde.t_train, 1.0)
    np.testing.assert_allclose(weighted, plain * (sde.coefficients(t)[1] / sde.marginal(t)[1]) ** 2, rtol=1e-5)
    # The exact noise prediction is the minimiser: a perturbed one scores worse on average.
    worse = sde_lib.dsm_loss(sde, lambda x, t: eps_fn(x, t) + 0.1, key, x0, "eps")
    assert float(jnp.mean(worse)) > float(jnp.mean(plain))


def test_edm_preconditioning_is_the_papers():
    sigma, sd = 2.0, 0.5
    c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma, sd)
    expected = [0.25 / 4.25, 2 * 0.5 / math.sqrt(4.25), 1 / math.sqrt(4.25), math.log(2) / 4]
    np.testing.assert_allclose([c_skip, c_out, c_in, c_noise], expected, rtol=1e-6)
    np.testing.assert_allclose(edm.loss_weight(sigma, sd), 1 / c_out ** 2, rtol=1e-6)
    # The effective training target of F, (x_0 - c_skip (x_0 + sigma n)) / c_out, has unit variance for
    # data of variance sd^2 at every sigma.
    for s in (0.01, 0.5, 80.0):
        c_skip, c_out, _, _ = edm.preconditioning(s, sd)
        np.testing.assert_allclose(((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * s ** 2) / c_out ** 2, 1.0, rtol=1e-5)


def test_karras_sigmas():
    sigmas = edm.karras_sigmas(18)
    assert len(sigmas) == 19 and sigmas[-1] == 0
    np.testing.assert_allclose(sigmas[[0, 17]], [80.0, 0.002], rtol=1e-12)
    np.testing.assert_allclose(np.diff(sigmas[:-1] ** (1 / 7)), (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 17, rtol=1e-9)


def test_edm_heun_is_second_order_and_churn_keeps_the_distribution():
    key, shape = jax.random.key(7), (512, 2)
    x_init = 80.0 * jax.random.normal(jax.random.split(key)[0], shape)  # the sampler's own starting point
    errors = {}
    for sampler in ("euler", "heun"):
        samples = [edm.sample(exact_denoiser, key, shape, edm.loglinear_sigmas(n, 0.002, 80.0), sampler)
                   for n in (32, 64)]
        errors[sampler] = [float(jnp.max(jnp.abs(x - flow_to_data(x_init, 80.0)))) for x in samples]
    np.testing.assert_allclose(errors["euler"][0] / errors["euler"][1], 2.0, rtol=0.15)
    np.testing.assert_allclose(errors["heun"][0] / errors["heun"][1], 4.0, rtol=0.15)
    assert edm.sampler_nfe("heun", 18) == 35
    x = edm.sample(exact_denoiser, key, (20_000, 2), edm.karras_sigmas(64), "heun", s_churn=40.0, s_tmin=0.05,
                   s_tmax=50.0, s_noise=1.0)
    assert_gaussian_data(x)


def test_dpm_solver_pp_converges_at_its_order():
    """Orders 1 and 2 halve and quarter the error when the steps halve. The 3M solver starts with an order-1
    and an order-2 step (no history yet), whose local errors cap its global order at 2, so it is checked as
    at least second order and more accurate than 2M."""
    key, shape = jax.random.key(8), (512, 2)
    x_init = 80.0 * jax.random.normal(key, shape)
    errors = {order: [float(jnp.max(jnp.abs(dpm_solver.sample(exact_denoiser, key, shape,
                                                              edm.loglinear_sigmas(n, 0.002, 80.0), order)
                                            - flow_to_data(x_init, 80.0)))) for n in (32, 64)]
              for order in dpm_solver.ORDERS}
    ratios = {order: e[0] / e[1] for order, e in errors.items()}
    np.testing.assert_allclose(ratios[1], 2.0, rtol=0.15)
    np.testing.assert_allclose(ratios[2], 4.0, rtol=0.2)
    assert ratios[3] > 3.5 and errors[3][1] < errors[2][1] / 2, errors


def test_dpm_solver_of_order_one_is_ddim_on_a_ddpm_network():
    """DDIM is DPM-Solver++(1) over the same timesteps (and Euler's method in sigma space)."""
    sched = diffusion.schedule_from_name("linear", 1000)
    w = jax.random.normal(jax.random.key(9), (3, 3)) * 0.3
    model_fn = lambda x, t: jnp.tanh(x @ w) * (1 + sde_lib.expand(t, x) / 1000)  # noqa: E731
    shape, key = (16, 3), jax.random.key(10)
    for steps in (10, 30, 50):
        ddim = diffusion.ddim_sample(sched, model_fn, key, shape, steps, clip_denoised=False)
        timesteps = diffusion.ddim_timesteps(1000, steps)
        sigmas = dpm_solver.schedule_sigmas(sched, timesteps)
        denoise = dpm_solver.denoiser_from_schedule(sched, model_fn, 3)
        # The same x_T: DDIM draws it from its first split key, in x_t = x_hat / sqrt(1 + sigma^2) units.
        x_t = jax.random.normal(jax.random.split(key)[0], shape)
        got = dpm_solver.sample(denoise, None, shape, sigmas, 1, x_init=x_t * math.sqrt(1 + sigmas[0] ** 2))
        np.testing.assert_allclose(got, ddim, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(dpm_solver.timestep_of_sigma(sched, sigmas[:-1]), timesteps[::-1], atol=1e-3)
