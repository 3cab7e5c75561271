"""The VAE: the KL estimators agree, IWAE_1 is the ELBO and the bound tightens with K, chunking is exact,
every likelihood and architecture has the right shapes, and the ELBO improves on digits."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import vae_mnist
from gm import data as gm_data
from gm import distributions as dist
from gm import families, optim, vae
from gm.train import state as state_lib


@pytest.fixture(scope="module")
def digits():
    return gm_data.load("digits")


def _config(**model):
    config = vae_mnist.get_config("smoke")
    config.model.update(model)
    return config


def _batch(digits, n=48):
    return {"image": digits.test["image"][:n], "label": digits.test["label"][:n]}


def test_analytic_kl_equals_monte_carlo_kl():
    key_m, key_v, key_z = jax.random.split(jax.random.key(0), 3)
    mean = jax.random.normal(key_m, (4, 6))
    log_var = 0.5 * jax.random.normal(key_v, (4, 6))
    analytic = vae.gaussian_kl_to_standard(mean, log_var)
    z = vae.reparameterize(key_z, mean, log_var, 40_000)
    per_sample = (jnp.sum(dist.gaussian_log_prob(z, mean, log_var), -1)
                  - jnp.sum(dist.gaussian_log_prob(z, 0.0, 0.0), -1))  # [N, 4]
    mc, stderr = per_sample.mean(0), per_sample.std(0) / np.sqrt(per_sample.shape[0])
    assert np.all(np.abs(mc - analytic) < 4 * stderr), (mc, analytic, stderr)


@pytest.fixture(scope="module")
def model(digits):
    """A VAE on the binarized digits, with its params after init."""
    v, init = vae.vae_from_config(families.parse(_config()).settings.model, digits.info)
    batch = _batch(digits)
    params = init(jax.random.key(0), batch["image"], None)
    data = v.observe(jax.random.key(1), batch["image"])
    return v, params, data


def test_iwae_with_one_sample_is_the_monte_carlo_elbo(model):
    v, params, data = model
    key = jax.random.key(2)
    elbo = vae.elbo_terms(v, params, jax.random.fold_in(key, 0), data, kl="mc")["elbo"]
    np.testing.assert_allclose(vae.iwae_bound(v, params, key, data, num_samples=1), elbo, rtol=1e-6, atol=1e-4)


def test_iwae_chunks_are_one_logsumexp_over_all_samples(model):
    v, params, data = model
    key = jax.random.key(3)
    # K = 10 in chunks of 4: chunks 0, 1 and the first 2 samples of chunk 2.
    log_w = jnp.concatenate([vae.log_importance_weights(v, params, jax.random.fold_in(key, c), data, num=4)
                             for c in range(3)])[:10]
    expected = jax.nn.logsumexp(log_w, axis=0) - np.log(10)
    got = vae.iwae_bound(v, params, key, data, num_samples=10, chunk_size=4)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)


def test_iwae_does_not_decrease_with_k(model):
    v, params, data = model
    bound = jax.jit(functools.partial(vae.iwae_bound, v), static_argnames=("num_samples", "chunk_size"))
    means = [float(jnp.mean(bound(params, jax.random.key(4), data, num_samples=k, chunk_size=50)))
             for k in (1, 10, 100)]
    assert means[0] < means[1] < means[2], means
    # ...and stays a bound: below log p(x) <= 0 for discrete data.
    assert means[2] < 0


@pytest.mark.parametrize("likelihood, arch, conditional", [
    ("bernoulli", "conv", False), ("logistic", "mlp", True), ("gaussian", "conv", True)])
def test_likelihoods_and_architectures(digits, likelihood, arch, conditional):
    config = _config(likelihood=likelihood, arch=arch, class_conditional=conditional, channels=(8,),
                     hidden=(16,), res_hidden=8, num_mix=2)
    method = families.make(config, digits.info)
    batch = _batch(digits, 8)
    params = method.init(jax.random.key(0), batch)
    loss, metrics = method.loss(params, jax.random.key(1), batch)
    assert np.isfinite(loss) and metrics["kl_nats"] >= 0
    # beta = 1: the loss is the negative ELBO in bits/dim.
    np.testing.assert_allclose(loss, metrics["elbo_bpd"], rtol=1e-6)
    log_p = method.log_prob(params, jax.random.key(2), batch)
    assert log_p.shape == (8,) and np.all(log_p < 0)
    samples = method.sample(params, jax.random.key(3), 5)
    assert samples.shape == (5, 8, 8, 1) and samples.dtype == jnp.uint8 and int(samples.max()) <= 15


def test_beta_weights_only_the_kl(digits):
    batch = _batch(digits, 8)
    plain = families.make(_config(), digits.info)
    weighted = families.make(_config(beta=4.0), digits.info)
    params = plain.init(jax.random.key(0), batch)
    loss1, m1 = plain.loss(params, jax.random.key(1), batch)
    loss4, m4 = weighted.loss(params, jax.random.key(1), batch)
    np.testing.assert_allclose(loss4 - loss1, dist.bits_per_dim(3.0 * m1["kl_nats"], 64), rtol=1e-5)
    np.testing.assert_allclose(m4["elbo_bpd"], m1["elbo_bpd"], rtol=1e-6)


@pytest.mark.parametrize("field, value", [("likelihood", "poisson"), ("arch", "resnet"), ("kl", "exact"),
                                          ("binarize", "median"), ("activation", "gelu2")])
def test_bad_model_fields_name_the_field(digits, field, value):
    with pytest.raises(ValueError, match=f"config.model.{field}"):
        families.make(_config(**{field: value}), digits.info)


def test_independent_pixel_baseline_binarizes_like_the_vae():
    from experiments import independent_pixels

    mode = lambda config: independent_pixels.binarize_mode(families.parse(config))  # noqa: E731
    assert mode(_config()) == "stochastic"
    assert mode(_config(binarize="threshold")) == "threshold"
    assert mode(_config(likelihood="logistic")) is None


def test_conv_architecture_checks_the_image_size():
    info = gm_data.DatasetInfo("odd", (12, 12, 1), 4, 10, 10, 10)
    with pytest.raises(ValueError, match="config.model.channels"):
        families.make(_config(arch="conv", channels=(8, 8, 8)), info)


def test_elbo_improves_on_digits(digits):
    setup = families.parse(_config())
    method = vae.make(setup.settings, digits.info)
    optimizer = optim.make_optimizer(setup.run.optim)
    train = digits.train
    state = state_lib.init_state(method.init(jax.random.key(0), {"image": train["image"][:32],
                                                                  "label": train["label"][:32]}),
                                 state_lib.training_of(method), optimizer)
    step = jax.jit(state_lib.step_function(method, optimizer, 0.0))
    test = _batch(digits, 360)
    log_prob = jax.jit(method.log_prob)  # K = 500: IWAE on the test split, the same binarization each time
    before = float(jnp.mean(log_prob(state.params, jax.random.key(5), test)))
    rng = np.random.default_rng(0)
    for _ in range(150):
        rows = rng.integers(0, len(train["label"]), 64)
        state, _ = step(state, {"image": train["image"][rows], "label": train["label"][rows]}, jax.random.key(1))
    after = float(jnp.mean(log_prob(state.params, jax.random.key(5), test)))
    # A uniform Bernoulli is 64 log 2 = 44.4 nats; after 150 steps the model is far better.
    assert after > before + 10 and -after < 30, (before, after)
