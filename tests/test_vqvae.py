"""VQ-VAE: nearest codes, the straight-through gradient, the EMA codebook formula, restarts, the family's
train step, and the prior over codes sampled end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import vqvae_cifar
from gm import data as gm_data
from gm import families, optim, vqvae
from gm.train import state as state_lib


@pytest.fixture(scope="module")
def digits():
    return gm_data.load("digits")


def _config(**model):
    config = vqvae_cifar.get_config("smoke")
    config.model.update(model)
    return config


def test_nearest_codes_is_the_brute_force_argmin():
    z = jax.random.normal(jax.random.key(0), (3, 5, 4))
    codebook = jax.random.normal(jax.random.key(1), (7, 4))
    d = ((np.asarray(z)[..., None, :] - np.asarray(codebook)) ** 2).sum(-1)
    np.testing.assert_array_equal(vqvae.nearest_codes(z, codebook), d.argmin(-1))


def test_straight_through_passes_the_decoders_gradient_to_the_encoder():
    z_e = jax.random.normal(jax.random.key(0), (6, 3))
    z_q = jax.random.normal(jax.random.key(1), (6, 3))
    decoder_loss = lambda z: jnp.sum(jnp.sin(z) * jnp.arange(3.0))
    value, grad = jax.value_and_grad(lambda z: decoder_loss(vqvae.straight_through(z, z_q)))(z_e)
    np.testing.assert_allclose(value, decoder_loss(z_q), rtol=1e-6)       # forward: the code
    np.testing.assert_allclose(grad, jax.grad(decoder_loss)(z_q), rtol=1e-6)  # backward: its gradient


def test_ema_codebook_update_matches_its_formula():
    rng = np.random.default_rng(0)
    k, d, decay, eps = 5, 3, 0.9, 1e-5
    q = {"codebook": rng.normal(size=(k, d)), "usage": rng.dirichlet(np.ones(k)), "embed_sum": rng.normal(size=(k, d))}
    z = rng.normal(size=(20, d))
    codes = rng.integers(0, k, 20)
    counts = np.bincount(codes, minlength=k) / 20
    sums = np.stack([z[codes == i].sum(0) for i in range(k)]) / 20
    new = vqvae.ema_codebook_update(jax.tree.map(jnp.asarray, q), jnp.asarray(counts), jnp.asarray(sums), decay,
                                    20, eps)
    n = decay * q["usage"] + (1 - decay) * counts
    m = decay * q["embed_sum"] + (1 - decay) * sums
    # Sonnet's smoothing of counts (20 n), written back as fractions.
    n_smooth = (20 * n + eps) / (20 * n.sum() + k * eps) * n.sum()
    np.testing.assert_allclose(new["usage"], n, rtol=1e-5)
    np.testing.assert_allclose(new["embed_sum"], m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["codebook"], m / n_smooth[:, None], rtol=1e-4, atol=1e-6)


def test_a_code_chosen_by_one_vector_of_a_large_batch_keeps_that_vector():
    # 8,192 vectors (batch 128 of 8x8 grids); code 0 gets one of them. eps = 1e-5 of a *fraction* would
    # be 8% of that vector's 1 / 8192 share and shrink the entry toward the origin by as much.
    n, k = 8192, 512
    vector = jnp.array([1.0, -2.0, 0.5])
    counts = jnp.zeros(k).at[0].set(1.0 / n).at[1].set(1.0 - 1.0 / n)
    sums = jnp.zeros((k, 3)).at[0].set(vector / n)
    q = {"codebook": jnp.zeros((k, 3)), "usage": jnp.zeros(k), "embed_sum": jnp.zeros((k, 3))}
    new = vqvae.ema_codebook_update(q, counts, sums, decay=0.0, num_vectors=n)
    np.testing.assert_allclose(new["codebook"][0], vector, rtol=1e-4)
    assert bool(jnp.all(jnp.isfinite(new["codebook"])))


def test_dead_codes_restart_at_candidates_and_live_codes_stay():
    q = vqvae.init_quantizer(jax.random.key(0), 4, 2)
    q["usage"] = jnp.array([0.5, 0.001, 0.499, 0.0])
    candidates = jnp.arange(8.0).reshape(4, 2)
    new = vqvae.restart_dead_codes(q, candidates, threshold=0.03)
    np.testing.assert_array_equal(new["codebook"][1], candidates[1])
    np.testing.assert_array_equal(new["codebook"][3], candidates[3])
    np.testing.assert_array_equal(new["codebook"][::2], q["codebook"][::2])
    np.testing.assert_allclose(new["usage"], [0.5, 0.25, 0.499, 0.25])


def test_perplexity_bounds():
    assert float(vqvae.perplexity(jnp.full(8, 1 / 8))) == pytest.approx(8.0, rel=1e-5)
    assert float(vqvae.perplexity(jnp.eye(8)[2])) == pytest.approx(1.0, rel=1e-5)


def _trainer(config, digits):
    """(Method, optimizer, initial TrainState) of stage 1 as the trainer builds them."""
    setup = families.parse(config)
    method = vqvae.make(setup.settings, digits.info)
    optimizer = optim.make_optimizer(setup.run.optim)
    batch = {"image": digits.train["image"][:32], "label": digits.train["label"][:32]}
    state = state_lib.init_state(method.init(jax.random.key(0), batch), state_lib.training_of(method), optimizer)
    return setup, method, optimizer, state


@pytest.mark.parametrize("mode", ["ema", "loss"])
def test_the_step_updates_the_codebook_and_its_statistics_after_the_optimizer(digits, mode):
    config = _config(codebook=mode, restart_threshold=0.995)
    setup, method, optimizer, state = _trainer(config, digits)
    vq, _ = vqvae.vqvae_from_config(setup.settings.model, digits.info)
    batch = {"image": digits.train["image"][:32], "label": digits.train["label"][:32]}
    key = jax.random.key(1)
    # The statistics no gradient trains are TrainState.extra, never the optimizer's.
    assert set(state.extra) == {"usage", "embed_sum"} and set(state.params) == {"encoder", "decoder", "codebook"}
    new, metrics = jax.jit(state_lib.step_function(method, optimizer, 0.5))(state, batch, key)
    assert set(metrics) >= {"loss", "recon_mse", "perplexity", "codes_used", "commitment", "grad_norm"}
    assert all(np.ndim(v) == 0 for v in metrics.values())  # statistics never reach the logs
    # The quantizer is what update_quantizer makes of the statistics at the step's key.
    _, _, stats = vqvae.vq_losses(vq, state.params, jax.random.fold_in(key, 0), batch["image"], 4,
                                  codebook_loss=(mode == "loss"))
    before = {"codebook": state.params["codebook"], **state.extra}
    expected = vqvae.update_quantizer(before, stats, mode, 0.99, 0.995)
    np.testing.assert_allclose(new.extra["usage"], expected["usage"], rtol=1e-5)
    dead = np.asarray(expected["usage"] == 1 / 16)  # restarted: codes this batch did not use
    assert 0 < dead.sum() < 16
    got = new.params["codebook"]
    np.testing.assert_allclose(got[dead], stats["candidates"][dead], rtol=1e-5, atol=1e-5)
    if mode == "ema":  # every entry is its moving average, and the loss gives the codebook no gradient
        np.testing.assert_allclose(got, expected["codebook"], rtol=1e-4, atol=1e-6)
        mu = optax.tree_utils.tree_get(new.opt_state, "mu")
        assert not np.any(np.asarray(mu["codebook"]))
    else:  # live entries are where the optimizer moved them
        assert not np.allclose(got[~dead], before["codebook"][~dead])
    # The parameter EMA averages the networks and takes the codebook as it is (already an average).
    np.testing.assert_array_equal(new.ema_params["codebook"], got)
    jax.tree.map(lambda e, old, p: np.testing.assert_allclose(e, 0.5 * old + 0.5 * p, rtol=1e-5, atol=1e-7),
                 new.ema_params["encoder"], state.params["encoder"], new.params["encoder"])


def test_reconstruction_improves_and_prior_samples_end_to_end(digits):
    config = _config()
    setup, method, optimizer, state = _trainer(config, digits)
    train = digits.train
    step = jax.jit(state_lib.step_function(method, optimizer, 0.0))
    rng = np.random.default_rng(0)
    history = []
    for i in range(120):
        rows = rng.integers(0, len(train["label"]), 32)
        state, metrics = step(state, {"image": train["image"][rows], "label": train["label"][rows]},
                              jax.random.key(1))
        history.append(float(metrics["recon_mse"]))
    assert np.mean(history[-10:]) < 0.5 * np.mean(history[:10]), history[::10]
    assert float(metrics["perplexity"]) > 4  # most of the 16 codes in use
    out = jax.jit(method.reconstruct)(state.params, jax.random.key(0), {"image": train["image"][:8]})
    assert out["reconstruction"].shape == (8, 8, 8, 1) and out["reconstruction"].dtype == jnp.uint8
    assert out["codes"].shape == (8, 4, 4) and int(out["codes"].max()) < 16

    # Stage 2 on the frozen stage-1 params: a transformer over the 4x4 grid of codes.
    prior = families.make(config, digits.info, stage="prior", previous=state.params)
    batch = {"image": train["image"][:32], "label": train["label"][:32]}
    params = prior.init(jax.random.key(2), batch)
    loss, _ = prior.loss(params, jax.random.key(3), batch)
    assert 0 < float(loss) < 6  # bits per code, a uniform prior over 16 codes being 4
    images = jax.jit(prior.sample, static_argnums=2)(params, jax.random.key(4), 6)
    assert images.shape == (6, 8, 8, 1) and images.dtype == jnp.uint8 and int(images.max()) <= 15
    log_p = prior.log_prob(params, jax.random.key(5), batch)
    assert prior.log_prob_per == (16, "code")
    np.testing.assert_allclose(-jnp.mean(log_p) / (16 * np.log(2)), loss, rtol=1e-5)
