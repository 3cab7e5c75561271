"""VDM: the schedule, the ELBO's terms against the discrete-time bound, and the variance-minimizing gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm import diffusion, families
from gm import data as gm_data
from gm.diffusion import vdm


def test_the_learned_schedule_is_monotone_with_fixed_endpoints():
    schedule = vdm.init_schedule(jax.random.key(0), "nnet", -13.3, 5.0, num_features=64)
    # Perturb every parameter so the check is not only of the initialisation.
    schedule = jax.tree.map(lambda p: p + 0.5 * jax.random.normal(jax.random.key(1), jnp.shape(p)), schedule)
    t = jnp.linspace(0.0, 1.0, 1001)
    gamma = vdm.gamma_at(schedule, t, -13.3, 5.0)
    assert bool(jnp.all(jnp.diff(gamma) > 0))
    b, w = vdm.endpoints_of(schedule, -13.3, 5.0)
    np.testing.assert_allclose([gamma[0], gamma[-1]], [b, b + w], rtol=1e-5)
    np.testing.assert_allclose(vdm.gamma_at({}, t, -13.3, 5.0), -13.3 + 18.3 * t, rtol=1e-6)


def test_the_discrete_diffusion_term_is_the_ddpm_kl_with_the_posterior_variance():
    """VDM's (T/2) expm1(gamma_t - gamma_s) ||eps - eps_hat||^2 term, at one step, is DDPM's
    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) with p's variance the posterior's ('fixedsmall')."""
    sched = diffusion.schedule_from_name("linear", 100)
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    gamma = np.log((1 - abar) / abar)  # -log SNR at each timestep
    key = jax.random.key(2)
    x0 = jax.random.uniform(key, (4, 3, 3, 1), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.key(3), x0.shape)
    eps_hat = eps + 0.3 * jax.random.normal(jax.random.key(4), x0.shape)
    for t in (1, 10, 60, 99):
        tt = jnp.full((4,), t)
        xt = diffusion.q_sample(sched, x0, tt, eps)
        kl = diffusion.vlb_terms(sched, eps_hat, x0, xt, tt, num_bits=8, var_type="fixedsmall", clip_denoised=False)
        term = vdm.diffusion_loss_discrete(jnp.float32(gamma[t]), jnp.float32(gamma[t - 1]), eps, eps_hat, 1) / 1
        np.testing.assert_allclose(kl, term, rtol=2e-3)


def test_the_discrete_loss_tends_to_the_continuous_one():
    """With a fixed schedule and noise prediction, the T-step loss averaged over its T steps approaches the
    continuous-time integral (1/2) int gamma'(t) ||eps - eps_hat(t)||^2 dt as T grows."""
    eps = jnp.ones((1, 4))
    error = lambda t: jnp.sin(3 * t)[:, None] * eps  # noqa: E731  ||eps - eps_hat(t)||^2 = 4 sin^2(3t)
    gmin, gmax = -13.3, 5.0
    gamma = lambda t: vdm.gamma_at({}, t, gmin, gmax)  # noqa: E731
    fine = jnp.linspace(0.0, 1.0, 200_001)
    continuous = float(jnp.mean(vdm.diffusion_loss_continuous(jnp.full(fine.shape, gmax - gmin), jnp.zeros(
        (fine.shape[0], 4)), error(fine))))
    gaps = []
    for num_timesteps in (10, 100, 1000):
        t = jnp.arange(1, num_timesteps + 1) / num_timesteps
        discrete = vdm.diffusion_loss_discrete(gamma(t), gamma(t - 1 / num_timesteps), jnp.zeros((t.shape[0], 4)),
                                               error(t), num_timesteps)
        gaps.append(abs(float(jnp.mean(discrete)) - continuous))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2 * continuous, (gaps, continuous)


def test_variance_minimizing_gives_theta_the_loss_gradient_and_eta_the_variance_gradient():
    def shape_fn(eta, aux):
        return jnp.tanh(eta * aux)

    def loss_fn(theta, s, aux):
        return (theta * s + aux) ** 2

    theta, eta, aux = jnp.float32(0.7), jnp.float32(-0.4), jnp.array([0.5, -1.0, 2.0])
    trick = vdm.variance_minimizing(loss_fn, shape_fn)
    g_theta, g_eta = jax.grad(lambda th, e: jnp.mean(trick(th, e, aux)), argnums=(0, 1))(theta, eta)
    plain = lambda th, e: loss_fn(th, shape_fn(e, aux), aux)  # noqa: E731
    np.testing.assert_allclose(trick(theta, eta, aux), plain(theta, eta), rtol=1e-6)
    np.testing.assert_allclose(g_theta, jax.grad(lambda th: jnp.mean(plain(th, eta)))(theta), rtol=1e-5)
    np.testing.assert_allclose(g_eta, jax.grad(lambda e: jnp.var(plain(theta, e)))(eta), rtol=1e-5)


def _config(gamma_type="nnet", num_timesteps=0):
    config = families.default_config("vdm")
    config.data.name = "digits"
    config.model.update(ch=16, num_res_blocks=1, dropout=0.0)
    config.vdm.update(gamma_type=gamma_type, num_features=16, num_timesteps=num_timesteps, sample_steps=5)
    return families.parse(config).settings


def _model(gamma_type="nnet", num_timesteps=0):
    dataset = gm_data.load("digits")
    return vdm.Model(_config(gamma_type, num_timesteps), dataset.info), dataset


@pytest.mark.parametrize("gamma_type, num_timesteps", [("nnet", 0), ("scalar", 20)])
def test_an_oracle_for_a_point_mass_has_no_diffusion_loss(gamma_type, num_timesteps):
    """All data at one image x*: eps_hat = (z_t - alpha_t x*) / sigma_t is exact, so the diffusion term is 0
    and the bound is the reconstruction and prior terms alone."""
    model, dataset = _model(gamma_type, num_timesteps)
    batch = {"image": jnp.broadcast_to(jnp.asarray(dataset.train["image"][:1]), (8, 8, 8, 1)),
             "label": jnp.zeros((8,), jnp.int32)}
    x_star = vdm.encode(batch["image"], 4)
    params = model.init(jax.random.key(0), batch)

    def oracle(net_params, labels=None, train=False, dropout_key=None):
        def eps(z, gamma):
            var = jax.nn.sigmoid(gamma)[:, None, None, None]
            return (z - jnp.sqrt(1 - var) * x_star) / jnp.sqrt(var)
        return eps

    model.eps_fn = oracle
    terms = model.terms(params, jax.random.key(1), batch)
    np.testing.assert_allclose(terms["diffusion"], 0.0, atol=1e-3)
    # At gamma_0 = -13.3 the decoder is sure of the level; the prior term is KL(N(alpha_1 x*, sigma_1^2) || N(0, 1)).
    assert float(jnp.max(terms["recon"])) < 1e-3
    var_1 = jax.nn.sigmoid(5.0)
    expected = 0.5 * jnp.sum((1 - var_1) * x_star[0] ** 2 + var_1 - jnp.log(var_1) - 1)
    np.testing.assert_allclose(terms["prior"], expected, rtol=1e-4)


def test_vdm_trains_its_endpoints_by_the_elbo_and_samples_levels():
    dataset = gm_data.load("digits")
    method = vdm.make(_config(), dataset.info)
    batch = gm_data.train_batch(dataset, step=0, batch_size=16, seed=0)
    params = method.init(jax.random.key(0), batch)
    (value, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(params, jax.random.key(1), batch)
    assert np.isfinite(float(value)) and float(metrics["gamma_0"]) == pytest.approx(-13.3)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["gamma"]["endpoints"]["b"])) > 0
    assert float(jnp.abs(grads["gamma"]["shape"]["k3"]).sum()) > 0
    samples = jax.jit(method.sample, static_argnums=2)(params, jax.random.key(2), 4)
    assert samples.shape == (4, 8, 8, 1) and samples.dtype == jnp.uint8 and int(samples.max()) <= 15


@pytest.mark.parametrize("num_bits", [4, 8])
def test_fourier_features_read_the_offset_from_the_nearest_level(num_bits):
    """The highest frequency's period is the level spacing: its features (sine and cosine, columns 1 and 3
    for one channel) are the same at every level's centre plus an offset, and their phase is that offset
    within half a bin (what predicting eps at low noise needs); the lower one, of period two
    levels, tells neighbouring levels apart."""
    centres = vdm.encode(jnp.arange(2 ** num_bits), num_bits)
    spacing = 2.0 / 2 ** num_bits
    offsets = jnp.linspace(-0.4, 0.4, 9) * spacing
    features = vdm.fourier_features((centres[:, None] + offsets[None, :])[..., None], num_bits)  # [levels, offsets, 4]
    highest = features[..., jnp.array([1, 3])]
    np.testing.assert_allclose(highest, jnp.broadcast_to(highest[:1], highest.shape), atol=2e-3)
    np.testing.assert_allclose(features[1, :, 0], -features[0, :, 0], atol=2e-3)
    # The phase of (sine, cosine) relative to the centre's is 2 pi offset / spacing: the offset, read back.
    phase = jnp.angle(jnp.exp(1j * (jnp.arctan2(highest[0, :, 0], highest[0, :, 1])
                                    - jnp.arctan2(highest[0, 4, 0], highest[0, 4, 1]))))
    np.testing.assert_allclose(phase, 2 * jnp.pi * offsets / spacing, atol=1e-3)
