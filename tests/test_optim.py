"""gm.optim: gradient accumulation over micro-batches, and AdamW's weight-decay mask."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import gan_cifar, gpt_text
from gm import families, optim, parallel
from gm.config import OptimConfig
from gm.method import Method
from gm.train import state as state_lib


def _regression(params, key, batch):
    """A mean squared error with a key-dependent term, so the per-micro-batch keys are visible."""
    pred = batch["x"] @ params["w"] + params["b"]
    noise = 1e-3 * jax.random.normal(key, ())
    loss = jnp.mean((pred - batch["y"]) ** 2) + noise * jnp.sum(params["b"])
    return loss, {"noise": noise}


def _problem(n=16):
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros(2)}
    batch = {"x": jnp.asarray(rng.normal(size=(n, 3)), jnp.float32), "y": jnp.asarray(rng.normal(size=(n, 2)),
                                                                                          jnp.float32)}
    return params, batch


def test_micro_batches_are_strided_slices_that_cover_the_batch_once():
    batch = {"x": jnp.arange(8 * 2).reshape(8, 2), "label": jnp.arange(8)}
    slices = [optim.micro_batch(batch, i, 4) for i in range(4)]
    np.testing.assert_array_equal(slices[1]["label"], [1, 5])
    np.testing.assert_array_equal(slices[1]["x"], [[2, 3], [10, 11]])
    np.testing.assert_array_equal(np.sort(np.concatenate([s["label"] for s in slices])), np.arange(8))


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_gradient_is_the_mean_over_micro_batches(k):
    params, batch = _problem()
    key = jax.random.key(0)
    objective = lambda p, key, b: _regression(p, key, b)
    (loss, aux), grads = jax.jit(lambda p: optim.accumulated_value_and_grad(objective, p, key, batch, k))(params)
    # By hand: each micro-batch with fold_in(key, i), then the mean.
    parts = [jax.value_and_grad(objective, has_aux=True)(params, jax.random.fold_in(key, i),
                                                         optim.micro_batch(batch, i, k)) for i in range(k)]
    mean = lambda tree: jax.tree.map(lambda *xs: sum(xs) / k, *tree)
    np.testing.assert_allclose(loss, np.mean([p[0][0] for p in parts]), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads,
                 mean([p[1] for p in parts]))
    np.testing.assert_allclose(aux["noise"], np.mean([p[0][1]["noise"] for p in parts]), rtol=1e-5)
    # The squared error's gradient is the full batch's: a mean of equal-size means.
    full = jax.grad(lambda p: jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2))(params)
    np.testing.assert_allclose(grads["w"], full["w"], rtol=1e-5, atol=1e-6)


def test_gradient_update_with_micro_batches_takes_one_step():
    params, batch = _problem()
    opt = optax.sgd(0.1)
    update = optim.loss_update(_regression)
    new, _, _, metrics = jax.jit(lambda p: update(p, opt.init(p), {}, jax.random.key(1), batch, optimizer=opt,
                                                  micro_batches=4))(params)
    assert set(metrics) == {"loss", "noise", "grad_norm"}
    assert not np.allclose(new["w"], params["w"])


def test_micro_batches_must_divide_each_devices_share_and_a_gan_refuses_them():
    config = gpt_text.get_config("smoke")
    config.train.micro_batches = 3  # 32 examples over 8 devices: 4 each
    with pytest.raises(ValueError, match=r"config.train.micro_batches=3 must divide the 4 examples each of the 8"):
        families.parse(config)
    config = gan_cifar.get_config("smoke")
    config.train.micro_batches = 2
    with pytest.raises(ValueError, match="config.train.micro_batches must be 1 for a GAN"):
        families.parse(config)


def test_weight_decay_on_matrices_leaves_vectors_alone():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "scale": jnp.ones(())}
    zero = jax.tree.map(jnp.zeros_like, params)
    for on, decays_bias in (("all", True), ("matrices", False)):
        opt = optim.make_optimizer(OptimConfig(learning_rate=0.1, weight_decay=0.5, weight_decay_on=on))
        updates, _ = opt.update(zero, opt.init(params), params)
        assert float(updates["kernel"][0, 0]) == pytest.approx(-0.05)
        assert (float(updates["bias"][0]) != 0.0) == decays_bias and (float(updates["scale"]) != 0.0) == decays_bias
    assert OptimConfig().weight_decay_on == "all"  # the families' published recipes decay every parameter


@pytest.mark.parametrize("strategy", ["sharded", "pmap"])
def test_micro_batches_under_a_strategy_match_the_per_device_computation(strategy):
    """16 examples on 8 devices, 2 micro-batches: each device's two rows are its two micro-batches'."""
    params, batch = _problem(16)
    batch = jax.tree.map(np.asarray, batch)
    method = Method(init=lambda key, b: params, loss=_regression, sample=None)
    opt = optax.adam(0.1)
    step = state_lib.step_function(method, opt, 0.5, micro_batches=2)
    state = state_lib.init_state(params, state_lib.training_of(method), opt)
    key = jax.random.key(5)
    s = parallel.make_strategy(strategy)
    out, metrics = s.compile_step(step)(s.put_state(parallel.replicate(jax.tree.map(jnp.copy, state))),
                                        s.put_batch(batch), key)
    out = jax.device_get(s.get_state(out))
    if strategy == "sharded":  # one global batch: the same as on one device
        expected, _ = jax.jit(step)(state, batch, key)
    else:  # per device: its slice, its key, gradients averaged (as tests/test_families.py computes it)
        slices = jax.tree.map(lambda x: x.reshape((8, -1) + x.shape[1:]), batch)
        on_device = lambda b: step(state, b, key, reduce_fn=lambda t: jax.lax.pmean(t, "d"),
                                   device_key_fn=lambda k: jax.random.fold_in(k, jax.lax.axis_index("d")))
        expected = jax.tree.map(lambda x: x[0], jax.jit(jax.vmap(on_device, axis_name="d"))(slices)[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), out.params, expected.params)
    assert int(out.step) == 1


@pytest.mark.parametrize("half_life, batch_size", [(500_000, 64), (10_000, 32), (500_000, 512)])
def test_an_ema_half_life_in_images_halves_an_old_weight_after_that_many_images(half_life, batch_size):
    decay = optim.ema_decay_of_half_life(half_life, batch_size)
    assert 0 < decay < 1
    np.testing.assert_allclose(decay ** (half_life / batch_size), 0.5, rtol=1e-12)
    np.testing.assert_allclose(decay ** (2 * half_life / batch_size), 0.25, rtol=1e-12)
