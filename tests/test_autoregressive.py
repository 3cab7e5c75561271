"""The autoregressive family: causal networks, normalised likelihoods, samplers that draw from the
model's own distribution, the independent-pixel baseline, and training on digits."""
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from experiments import nade_mnist, pixelcnn_cifar
from gm import autoregressive as ar
from gm import config as config_lib
from gm import data as gm_data
from gm import distributions as dist
from gm import families
from gm.metrics.likelihood import evaluate_log_prob
from gm.nn.causal import causal_kernel_mask
from gm.nn.nade import NADE
from gm.nn.pixelcnn import GatedPixelCNN, PixelCNN
from gm.train import state as state_lib


def _raster_order(h, w, c):
    """Position of each sub-pixel in the autoregressive order, int [H, W, C]."""
    return np.arange(h * w * c).reshape(h, w, c)


def _dependence_fn(net, params, shape, num_inputs=3):
    """(i, j, c) -> |d logits[i, j, c] / d x| summed over a few random inputs: float [H, W, C].

    One compiled function for every position: the indices are traced, not static."""
    xs = jax.random.uniform(jax.random.key(0), (num_inputs,) + shape, minval=-1.0, maxval=1.0)

    @jax.jit
    def dependence(i, j, c):
        grad = jax.vmap(jax.grad(lambda x: net.apply(params, x)[0, i, j, c].sum()))(xs)
        return jnp.abs(grad[:, 0]).sum(0)

    return lambda pixel, colour: np.asarray(dependence(pixel[0], pixel[1], colour))


# --- masks and networks ---------------------------------------------------------------------------

def test_masks_follow_raster_and_colour_order():
    a = np.asarray(causal_kernel_mask((3, 3), (1, 1), 3, 6, 3, "A"))
    b = np.asarray(causal_kernel_mask((3, 3), (1, 1), 3, 6, 3, "B"))
    # Taps before the centre see everything, taps after see nothing.
    assert a[0].all() and a[1, 0].all() and not a[1, 2].any() and not a[2].any()
    # At the centre, output colour (k % 3) sees input colours < it (A) or <= it (B).
    colour_in, colour_out = np.arange(3)[:, None], np.arange(6)[None] % 3
    np.testing.assert_array_equal(a[1, 1], colour_in < colour_out)
    np.testing.assert_array_equal(b[1, 1], colour_in <= colour_out)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("cls, kwargs", [
    (PixelCNN, dict(features=24, num_layers=2, out_hidden=48)),
    (GatedPixelCNN, dict(features=12, num_layers=3, out_hidden=48)),
])
def test_conv_networks_are_causal(cls, kwargs, channels):
    h = w = 6
    net = cls(num_levels=4, **kwargs)
    shape = (1, h, w, channels)
    params = jax.jit(net.init)(jax.random.key(0), jnp.zeros(shape))
    order = _raster_order(h, w, channels)
    dependence = _dependence_fn(net, params, shape)
    for pixel in [(0, 0), (2, 3), (5, 5)]:
        for colour in range(channels):
            dep = dependence(pixel, colour)
            here = order[pixel[0], pixel[1], colour]
            assert not dep[order >= here].any(), (pixel, colour)
            if here > 0:
                assert dep[order < here].any(), (pixel, colour)  # not vacuous: the past does matter


def test_gated_pixelcnn_has_no_blind_spot():
    """Every earlier sub-pixel reaches the output, including those above and to the right that stacked
    masked 3x3 kernels miss."""
    net = GatedPixelCNN(num_levels=4, features=16, num_layers=3, out_hidden=32)
    shape = (1, 6, 6, 1)
    params = jax.jit(net.init)(jax.random.key(0), jnp.zeros(shape))
    dep = _dependence_fn(net, params, shape)((4, 2), 0)
    order = _raster_order(6, 6, 1)
    assert (dep[order < order[4, 2, 0]] > 0).all()


def test_nade_is_causal_and_normalised():
    d = 10
    net = NADE(num_dims=d, num_hidden=8)
    params = net.init(jax.random.key(0), jnp.zeros((1, d)))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (1, d)), jnp.float32)
    jac = np.asarray(jax.jacfwd(lambda x: net.apply(params, x))(x)[0, :, 0])
    assert not np.triu(jac).any()  # logit d ignores x_d and everything after
    assert (jac[np.tril_indices(d, -1)] != 0).all()
    # All 2^10 binary vectors: probabilities sum to one.
    every = jnp.asarray(list(itertools.product([0, 1], repeat=d)), jnp.float32)
    log_p = dist.bernoulli_log_prob(net.apply(params, every), every).sum(-1)
    np.testing.assert_allclose(float(jax.nn.logsumexp(log_p)), 0.0, atol=1e-5)


# --- samplers draw from the model's own distribution ----------------------------------------------

def _tiny_info(shape, num_bits):
    return gm_data.DatasetInfo("tiny", shape, num_bits, 10, 1, 1)


def _every_image(shape, num_levels):
    grid = np.asarray(list(itertools.product(range(num_levels), repeat=int(np.prod(shape)))), np.uint8)
    return grid.reshape((-1,) + shape)


def _assert_samples_follow(method, params, info, num=4000):
    """exp(log_prob) over every image sums to 1, and sample frequencies match it (chi-square)."""
    images = _every_image(info.shape, info.num_levels)
    batch = {"image": jnp.asarray(images), "label": jnp.zeros(len(images), jnp.int32)}
    p = np.exp(np.asarray(jax.jit(method.log_prob)(params, jax.random.key(0), batch), np.float64))
    np.testing.assert_allclose(p.sum(), 1.0, atol=1e-4)
    samples = np.asarray(jax.jit(lambda k: method.sample(params, k, num))(jax.random.key(1)))
    index = {im.tobytes(): i for i, im in enumerate(images)}
    counts = np.bincount([index[s.tobytes()] for s in samples], minlength=len(images))
    expected = num * p
    chi2 = np.sum((counts - expected) ** 2 / expected)
    # Mean len(images) - 1, sd sqrt(2 (len - 1)): 6 sd above the mean fails only on a wrong sampler.
    dof = len(images) - 1
    assert chi2 < dof + 6 * np.sqrt(2 * dof), chi2


def _model_config(name, **fields):
    return ml_collections.ConfigDict({"name": name, "class_conditional": False, "dtype": "float32",
                                      name: fields})


def _make(config, info):
    """The Method of the family's sections in `config`, checked as a run checks them."""
    return ar.make(config_lib.parse_sections(ar.Settings, config), info)


@pytest.mark.parametrize("name, shape, fields", [
    ("pixelcnn", (2, 2, 1), dict(features=8, num_layers=1, out_hidden=8, first_kernel=3)),
    ("gated_pixelcnn", (1, 2, 3), dict(features=6, num_layers=1, out_hidden=12, first_kernel=3)),
    ("nade", (2, 3, 1), dict(num_hidden=5)),
    ("transformer", (2, 2, 1), dict(num_layers=1, num_heads=2, embed_dim=8)),
])
def test_sampler_draws_the_modelled_distribution(name, shape, fields):
    config = ml_collections.ConfigDict({"model": _model_config(name, **fields)})
    if name == "nade":
        config.model.nade.binarize = "threshold"
    info = _tiny_info(shape, 1)
    method = _make(config, info)
    batch = {"image": jnp.zeros((1,) + shape, jnp.uint8), "label": jnp.zeros(1, jnp.int32)}
    params = state_lib.run_once(method.init, jax.random.key(3), batch)
    # Random init is close to uniform: sharpen it so a wrong order or a wrong position would show.
    params = jax.tree.map(lambda a: 4.0 * a, params)
    _assert_samples_follow(method, params, info)


# --- data treatment and the baseline --------------------------------------------------------------

def test_binarize():
    levels = jnp.asarray(np.arange(16, dtype=np.uint8))
    np.testing.assert_array_equal(ar.binarize(None, levels, 4, "threshold"), (np.arange(16) >= 8))
    draws = ar.binarize(jax.random.key(0), jnp.tile(levels, (20000, 1)), 4, "stochastic")
    np.testing.assert_allclose(np.asarray(draws).mean(0), np.arange(16) / 15, atol=0.015)
    with pytest.raises(ValueError, match="binarize"):
        ar.binarize(None, levels, 4, "median")


def test_independent_pixels_baseline():
    images = np.array([[0, 1], [0, 2], [1, 2]], np.uint8)[..., None]  # [3, 2, 1]
    table = ar.fit_independent_pixels(images, 3, pseudo_count=1.0)
    np.testing.assert_allclose(np.exp(table).sum(-1), 1.0)
    # Pixel 0 saw levels (0, 0, 1): smoothed counts (3, 2, 1) / 6.
    np.testing.assert_allclose(np.exp(table[0, 0]), [3 / 6, 2 / 6, 1 / 6])
    log_p = ar.independent_pixels_log_prob(table, np.array([[[0], [2]]], np.uint8))
    np.testing.assert_allclose(log_p, [np.log(3 / 6) + np.log(3 / 6)])


# --- the Method on digits -------------------------------------------------------------------------

SMOKE_MODELS = [(nade_mnist, "nade"), (pixelcnn_cifar, "pixelcnn"), (pixelcnn_cifar, "gated_pixelcnn"),
                (pixelcnn_cifar, "pixelcnn_pp"), (pixelcnn_cifar, "transformer")]


@pytest.mark.parametrize("experiment, name", SMOKE_MODELS)
def test_loss_falls_on_digits_and_bpd_is_the_shared_convention(experiment, name):
    dataset = gm_data.load("digits")
    config = experiment.get_config("smoke")
    config.model.name = name
    method = families.make(config, dataset.info)
    batch = lambda step: gm_data.train_batch(dataset, step=step, batch_size=32, seed=0)
    params = state_lib.run_once(method.init, jax.random.key(0), batch(0))
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, key, batch):
        (value, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(params, key, batch)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, value, metrics

    opt_state, losses = optimizer.init(params), []
    for i in range(40):
        params, opt_state, value, metrics = step(params, opt_state, jax.random.key(i), batch(i))
        losses.append(float(value))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    # The loss is bits/dim of the nats it reports, through the one shared function.
    np.testing.assert_allclose(float(value), dist.bits_per_dim(float(metrics["nll_nats"]), 64), rtol=1e-5)

    # Exact log-likelihood through the harness: bits/dim of the mean NLL over a masked, padded split.
    batches = gm_data.eval_batches(dataset, batch_size=64, split="test", limit=100)
    result = evaluate_log_prob(method.log_prob, params, jax.random.key(9), batches, 64, is_bound=False)
    assert result["kind"] == "exact" and result["num_examples"] == 100
    np.testing.assert_allclose(result["bpd"], result["nll_nats"] / (64 * np.log(2)), rtol=1e-6)

    samples = np.asarray(jax.jit(lambda k: method.sample(params, k, 4))(jax.random.key(1)))
    assert samples.shape == (4, 8, 8, 1) and samples.dtype == np.uint8 and samples.max() <= 15


def test_unknown_model_and_bad_fields_are_one_sentence():
    info = gm_data.load("digits").info
    config = pixelcnn_cifar.get_config("smoke")
    config.model.name = "wavenet"
    with pytest.raises(ValueError, match="config.model.name"):
        families.make(config, info)
    config = ml_collections.ConfigDict({"model": _model_config("pixelcnn", features=8, depth=3)})
    with pytest.raises(ValueError, match="config.model.pixelcnn has no field 'depth'"):
        _make(config, info)
    config = ml_collections.ConfigDict({"model": _model_config("gated_pixelcnn", features=7)})
    with pytest.raises(ValueError, match="features"):
        jax.eval_shape(_make(config, _tiny_info((4, 4, 3), 8)).init, jax.random.key(0),
                       {"image": jnp.zeros((1, 4, 4, 3), jnp.uint8), "label": jnp.zeros(1, jnp.int32)})
