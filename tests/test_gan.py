"""GANs: the losses against closed forms, V(D*, G) = 2 JSD - log 4, the gradient penalty, one compiled
step = k discriminator updates + one generator update (under both strategies), the unrolled loss, the
networks' shapes and the mode-coverage metric."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gm import data as gm_data
from gm import families, gan, gan_losses, optim, parallel
from gm.metrics.modes import mode_coverage
from gm.nn import dcgan
from gm.train import state as state_lib

LOG2 = np.log(2.0)


def _config(arch="mlp", **gan_fields):
    config = families.default_config("gan")
    config.model.update(arch=arch, latent_dim=8, hidden=(16, 16), g_features=8, d_features=8, g_norm="batch",
                        d_norm="none")
    config.gan.update(gan_fields)
    config.optim.update(learning_rate=1e-2, b1=0.5)
    config.optim_d.update(learning_rate=1e-2, b1=0.5, eps_root=1e-8)
    config.train.batch_size = 16
    return config


class Setup:
    """A GAN's typed config, Method, optimizers, a batch and its initial state."""

    def __init__(self, data, **gan_fields):
        setup = families.parse(_config(**gan_fields))
        self.settings, self.method = setup.settings, gan.make(setup.settings, data.info)
        self.method_gan, _ = gan.gan_from_config(setup.settings.model, data.info, setup.settings.gan.packing)
        self.g_opt, self.d_opt = optim.make_optimizer(setup.run.optim), optim.make_optimizer(setup.settings.optim_d)
        self.batch = gm_data.train_batch(data, step=0, batch_size=16, seed=0)
        self.state = state_lib.init_state(self.method.init(jax.random.key(0), self.batch),
                                          state_lib.training_of(self.method), self.g_opt)

    def step(self, ema_decay=0.0):
        return state_lib.step_function(self.method, self.g_opt, ema_decay)


@pytest.mark.parametrize("loss, d_expected, g_expected", [
    ("minimax", 2 * LOG2, -LOG2),          # D = 1/2 everywhere: -log 1/2 twice; log(1 - 1/2)
    ("non_saturating", 2 * LOG2, LOG2),   # -log 1/2
    ("wasserstein", 0.0, 0.0),
    ("hinge", 2.0, 0.0),
    ("least_squares", 0.5, 1.0),          # ((0 - 1)^2 + 0^2) / 2; (0 - 1)^2
])
def test_losses_at_zero_logits(loss, d_expected, g_expected):
    zeros = jnp.zeros(5)
    np.testing.assert_allclose(gan_losses.discriminator_loss(loss, zeros, zeros), d_expected, atol=1e-6)
    np.testing.assert_allclose(gan_losses.generator_loss(loss, zeros), g_expected, atol=1e-6)


def test_losses_at_known_outputs():
    real, fake = jnp.array([2.0, -1.0]), jnp.array([0.5, 3.0])
    sig = jax.nn.sigmoid
    bce = -np.mean(np.log(sig(real))) - np.mean(np.log(1 - sig(fake)))
    np.testing.assert_allclose(gan_losses.discriminator_loss("minimax", real, fake), bce, rtol=1e-6)
    np.testing.assert_allclose(gan_losses.generator_loss("minimax", fake), np.mean(np.log(1 - sig(fake))), rtol=1e-6)
    np.testing.assert_allclose(gan_losses.generator_loss("non_saturating", fake), -np.mean(np.log(sig(fake))), rtol=1e-6)
    np.testing.assert_allclose(gan_losses.discriminator_loss("wasserstein", real, fake), 1.75 - 0.5)
    np.testing.assert_allclose(gan_losses.discriminator_loss("hinge", real, fake), (0 + 2) / 2 + (1.5 + 4) / 2)
    np.testing.assert_allclose(gan_losses.discriminator_loss("least_squares", real, fake),
                               0.5 * ((1 + 4) / 2 + (0.25 + 9) / 2))
    np.testing.assert_allclose(gan_losses.generator_loss("least_squares", fake), (0.25 + 4) / 2)
    with pytest.raises(ValueError, match="config.gan.loss"):
        gan_losses.generator_loss("relativistic", fake)


def test_value_at_the_optimal_discriminator_is_twice_jsd_minus_log4():
    p_data = jnp.array([0.5, 0.3, 0.2, 0.0])
    p_g = jnp.array([0.1, 0.2, 0.3, 0.4])
    d_star = gan_losses.optimal_discriminator(p_data, p_g)
    v_star = gan_losses.value(p_data, p_g, jnp.clip(d_star, 1e-12, 1 - 1e-7))
    np.testing.assert_allclose(v_star, gan_losses.value_at_optimum(p_data, p_g), rtol=1e-5)
    # D* maximises V over discriminators, and at p_g = p_data the value is -log 4.
    for seed in range(5):
        d = jax.random.uniform(jax.random.key(seed), (4,), minval=0.01, maxval=0.99)
        assert gan_losses.value(p_data, p_g, d) <= v_star + 1e-6
    np.testing.assert_allclose(gan_losses.value_at_optimum(p_g, p_g), -np.log(4.0), rtol=1e-6)


def test_gradient_penalty_is_taken_on_interpolates():
    real = jax.random.normal(jax.random.key(0), (6, 3))
    fake = jax.random.normal(jax.random.key(1), (6, 3))
    key = jax.random.key(2)
    # A linear critic has gradient w everywhere: (|w| - 1)^2.
    w = jnp.array([3.0, 0.0, 4.0])
    np.testing.assert_allclose(gan_losses.gradient_penalty(lambda x: x @ w, key, real, fake), 16.0, rtol=1e-5)
    # |x|^2 / 2 has gradient x: the penalty depends on where the interpolates are.
    eps = jax.random.uniform(key, (6, 1))
    x_hat = eps * real + (1 - eps) * fake
    expected = np.mean((np.linalg.norm(x_hat, axis=1) - 1) ** 2)
    got = gan_losses.gradient_penalty(lambda x: 0.5 * jnp.sum(x ** 2, -1), key, real, fake)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.fixture(scope="module")
def ring():
    return gm_data.load("ring8")


def _count(opt_state):
    return int(optax.tree_utils.tree_get(opt_state, "count"))


def test_one_step_is_k_discriminator_updates_then_one_generator_update(ring):
    k = 4
    s = Setup(ring, d_steps=k)
    batch, state, key = s.batch, s.state, jax.random.key(7)
    new, metrics = jax.jit(s.step(ema_decay=0.5))(state, batch, key)
    assert _count(new.opt_state["discriminator"]) == k and _count(new.opt_state["generator"]) == 1
    assert float(metrics["finite"]) == 1.0 and int(new.step) == 1

    # The same by hand: k sequential updates on the strided slices, then the generator's.
    g_model, _ = gan.gan_from_config(s.settings.model, ring.info)
    objective, d_opt, g_opt = s.settings.gan, s.d_opt, s.g_opt
    d_key, g_key, _ = jax.random.split(jax.random.fold_in(key, 0), 3)
    reals = gan.strided_slices(batch["x"], k)
    for i in range(k):
        np.testing.assert_array_equal(reals[i], batch["x"][i::k])

    @jax.jit
    def by_hand(params, opt_state):
        d, d_state, g = params["discriminator"], opt_state["discriminator"], params["generator"]
        for i in range(k):
            grads = jax.grad(gan.discriminator_objective, argnums=2)(g_model, objective, d, g,
                                                                     jax.random.fold_in(d_key, i), reals[i])
            d, d_state = gan.discriminator_update(d_opt, objective, d, d_state, grads)
        g_grads = jax.grad(gan.generator_objective, argnums=2)(g_model, objective, g, d, g_key, 16 // k)
        updates, _ = g_opt.update(g_grads, opt_state["generator"], g)
        return d, optax.apply_updates(g, updates)

    d, g = by_hand(state.params, state.opt_state)
    close = functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=1e-6)
    jax.tree.map(close, new.params["discriminator"], d)
    jax.tree.map(close, new.params["generator"], g)
    # The EMA follows the generator only.
    jax.tree.map(close, new.ema_params["generator"],
                 jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, state.params["generator"], g))


def test_weight_clipping_bounds_the_critic(ring):
    s = Setup(ring, loss="wasserstein", clip=0.01, d_steps=2)
    new, _ = jax.jit(s.step())(s.state, s.batch, jax.random.key(0))
    assert max(float(jnp.abs(p).max()) for p in jax.tree.leaves(new.params["discriminator"])) <= 0.01 + 1e-7


def test_unrolled_loss_equals_a_hand_unrolled_computation(ring):
    s = Setup(ring, d_steps=2)
    batch, state = s.batch, s.state
    g_model, _ = gan.gan_from_config(s.settings.model, ring.info)
    objective, d_opt = s.settings.gan, s.d_opt
    d0, s0, g0 = state.params["discriminator"], state.opt_state["discriminator"], state.params["generator"]
    reals = gan.strided_slices(batch["x"], 2)
    key, g_key = jax.random.key(3), jax.random.key(4)

    def by_scan(g):
        d = gan.unrolled_discriminator(g_model, objective, d_opt, d0, s0, g, key, reals, None, 3)
        return gan.generator_objective(g_model, objective, g, d, g_key, 8)

    def by_hand(g, stop=False):
        d, s = d0, s0
        for j in range(3):
            grads = jax.grad(gan.discriminator_objective, argnums=2)(g_model, objective, d, g,
                                                                     jax.random.fold_in(key, j), reals[j % 2])
            d, s = gan.discriminator_update(d_opt, objective, d, s, grads)
        d = jax.lax.stop_gradient(d) if stop else d
        return gan.generator_objective(g_model, objective, g, d, g_key, 8)

    (scan_loss, scan_grads), (hand_loss, hand_grads) = jax.jit(
        lambda g: (jax.value_and_grad(by_scan)(g), jax.value_and_grad(by_hand)(g)))(g0)
    np.testing.assert_allclose(scan_loss, hand_loss, rtol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-6), scan_grads, hand_grads)
    # The generator's gradient really flows through the discriminator's updates.
    frozen = jax.jit(jax.grad(functools.partial(by_hand, stop=True)))(g0)
    assert not all(np.allclose(a, b, atol=1e-7) for a, b in zip(jax.tree.leaves(scan_grads), jax.tree.leaves(frozen)))


def test_unrolled_through_adam_needs_eps_root(ring):
    config = _config(unrolled_steps=2)
    config.optim_d.eps_root = 0.0
    with pytest.raises(ValueError, match="config.optim_d.eps_root"):
        families.parse(config)


@pytest.mark.parametrize("shape, stages", [((32, 32, 3), 3), ((28, 28, 1), 2), ((8, 8, 1), 1)])
def test_dcgan_shapes(shape, stages):
    assert dcgan.dcgan_stages(shape[0]) == stages
    g = dcgan.DCGANGenerator(shape, features=8, num_classes=10)
    d = dcgan.DCGANDiscriminator(features=8, num_classes=10)
    z, y = jnp.zeros((2, 16)), jnp.array([1, 2])
    g_vars = jax.eval_shape(g.init, jax.random.key(0), z, y)
    out = jax.eval_shape(lambda v: g.apply(v, z, y, mutable=["batch_stats"])[0], g_vars)
    assert out.shape == (2,) + shape
    d_vars = jax.eval_shape(d.init, jax.random.key(0), jnp.zeros((2,) + shape), y)
    logits = jax.eval_shape(lambda v: d.apply(v, jnp.zeros((2,) + shape), y, mutable=["batch_stats"])[0], d_vars)
    assert logits.shape == (2,)


def test_dcgan_method_on_digits_samples_levels():
    digits = gm_data.load("digits")
    config = _config(arch="dcgan")
    config.model.class_conditional = True
    method = families.make(config, digits.info)
    batch = gm_data.train_batch(digits, step=0, batch_size=16, seed=0)
    params = jax.jit(method.init)(jax.random.key(0), batch)
    d_loss, metrics = jax.jit(method.loss)(params, jax.random.key(1), batch)
    np.testing.assert_allclose(d_loss, metrics["d_loss"])
    assert np.isfinite(d_loss) and np.isfinite(metrics["g_loss"])
    samples = jax.jit(method.sample, static_argnums=2)(params, jax.random.key(2), 5)
    assert samples.shape == (5, 8, 8, 1) and samples.dtype == jnp.uint8 and int(samples.max()) <= 15


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jax.extend.core.Jaxpr):
                yield v


def _has_convolution(jaxpr):
    return any(e.primitive.name == "conv_general_dilated" or any(_has_convolution(j) for j in _subjaxprs(e))
               for e in jaxpr.eqns)


def _rolled_scans_over_convolutions(jaxpr):
    """(length, unroll) of every scan in `jaxpr` (at any depth) whose body has a convolution and that
    XLA compiles as a loop: fewer unrolled iterations than its length, or one iteration (unroll=True
    of a length-1 scan is still a loop of one)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan" and _has_convolution(eqn.params["jaxpr"].jaxpr):
            if eqn.params["length"] == 1 or eqn.params["unroll"] < eqn.params["length"]:
                found.append((eqn.params["length"], eqn.params["unroll"]))
        for sub in _subjaxprs(eqn):
            found.extend(_rolled_scans_over_convolutions(sub))
    return found


@pytest.mark.parametrize("d_steps", [1, 2])
def test_the_k_updates_are_straight_line_code_on_cpu(d_steps):
    # XLA:CPU runs a loop body's convolutions without its fast kernels, even in a loop of one iteration:
    # a DCGAN step at batch 128 took 11.4 s that way and 0.64 s as straight-line code.
    info = gm_data.DatasetInfo("cifar10", (32, 32, 3), 8, 10, 50_000, 10_000)
    method = families.make(_config(arch="dcgan", d_steps=d_steps), info)
    batch = {"image": jnp.zeros((8, 32, 32, 3), jnp.uint8), "label": jnp.zeros(8, jnp.int32)}
    opt = optim.make_optimizer(families.parse(_config()).run.optim)
    state = jax.eval_shape(
        lambda b: state_lib.init_state(method.init(jax.random.key(0), b), state_lib.training_of(method), opt), batch)
    step = state_lib.step_function(method, opt, 0.9)
    jaxpr = jax.make_jaxpr(step)(state, batch, jax.random.key(1)).jaxpr
    assert _has_convolution(jaxpr) and _rolled_scans_over_convolutions(jaxpr) == []


@pytest.mark.parametrize("length", [1, 3])
def test_parallel_scan_is_lax_scan(length):
    def body(carry, x):
        return carry * 2.0 + x, {"sum": carry + x}

    xs = jnp.arange(length * 2.0).reshape(length, 2)
    want = jax.lax.scan(body, jnp.ones(2), xs)
    got = jax.jit(lambda xs: parallel.scan(body, jnp.ones(2), xs))(xs)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_gradient_penalty_refuses_a_batch_norm_critic(ring):
    config = _config(arch="dcgan", gradient_penalty=10.0)
    config.model.d_norm = "batch"
    with pytest.raises(ValueError, match="config.model.d_norm='batch' couples the examples"):
        families.parse(config)


@pytest.mark.parametrize("k, m, batch", [(3, 1, 16), (2, 3, 16), (1, 5, 24)])
def test_the_batch_must_split_into_the_k_discriminator_slices_of_whole_packs(ring, k, m, batch):
    config = _config(d_steps=k, packing=m)
    config.train.batch_size = batch
    with pytest.raises(ValueError, match=rf"config.train.batch_size must be a multiple of config.gan.d_steps x "
                                         rf"config.gan.packing = {k} x {m}, got {batch}"):
        families.parse(config)


# --- packing (PacGAN) -----------------------------------------------------------------------------

def test_pack_concatenates_consecutive_examples_along_the_last_axis():
    x = jnp.arange(12.0).reshape(6, 2)
    np.testing.assert_array_equal(gan.pack(x, 3), [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    images = jnp.arange(16.0).reshape(4, 2, 2, 1)
    packed = gan.pack(images, 2)
    assert packed.shape == (2, 2, 2, 2)
    np.testing.assert_array_equal(packed[1, ..., 0], images[2, ..., 0])
    np.testing.assert_array_equal(packed[1, ..., 1], images[3, ..., 0])
    assert gan.pack(x, 1) is x


def test_packed_discriminator_loss_is_the_loss_on_hand_made_packs(ring):
    m = 4
    s = Setup(ring, packing=m, loss="minimax", gradient_penalty=1.0)
    model, params, key = s.method_gan, s.state.params, jax.random.key(3)
    d, g = params["discriminator"], params["generator"]
    assert d["MLP_0"]["Dense_0"]["kernel"].shape[0] == 2 * m  # the first layer sees m points
    real = ring.train["x"][:16]
    got = gan.discriminator_objective(model, s.settings.gan, d, g, key, real)

    z_key, gp_key = jax.random.split(key)
    z, _ = gan._latents(model, z_key, 16)
    fake = model.generate(g, z, None)
    real_packs, fake_packs = real.reshape(4, 2 * m), fake.reshape(4, 2 * m)  # rows 4i..4i+3 side by side
    critic = lambda p: model.discriminate_packs(d, p, None)  # noqa: E731
    want = (jnp.mean(jax.nn.softplus(-critic(real_packs))) + jnp.mean(jax.nn.softplus(critic(fake_packs)))
            + gan_losses.gradient_penalty(critic, gp_key, real_packs, fake_packs))
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("loss", gan_losses.LOSSES)
def test_packing_trains_with_every_loss_and_k_steps(ring, loss):
    extra = dict(gradient_penalty=0.1) if loss == "wasserstein" else {}
    s = Setup(ring, packing=2, d_steps=2, loss=loss, **extra)
    new, metrics = jax.jit(s.step(ema_decay=0.0))(s.state, s.batch, jax.random.key(1))
    assert float(metrics["finite"]) == 1.0 and _count(new.opt_state["discriminator"]) == 2
    kernel = lambda state_params: state_params["generator"]["MLP_0"]["Dense_0"]["kernel"]  # noqa: E731
    assert not np.allclose(kernel(new.params), kernel(s.state.params))


def test_packing_refuses_class_labels(ring):
    config = _config(packing=2)
    config.model.class_conditional = True
    with pytest.raises(ValueError, match="config.gan.packing > 1 packs samples of different classes"):
        families.parse(config)


def test_mode_coverage():
    modes = gm_data.TOY_MODES["ring8"]
    rng = np.random.default_rng(0)
    # 100 samples on each of modes 0..2, 50 far away: 3 of 8 covered, 300 / 350 high quality.
    near = np.concatenate([modes[i] + 0.01 * rng.standard_normal((100, 2)) for i in range(3)])
    far = rng.uniform(-0.5, 0.5, (50, 2))
    result = mode_coverage(np.concatenate([near, far]), modes, std=0.02)
    assert result["modes_covered"] == 3 and result["num_modes"] == 8
    np.testing.assert_allclose(result["high_quality"], 300 / 350)
    # Three equal shares of eight modes: KL(q || uniform) = log(8 / 3).
    np.testing.assert_allclose(result["reverse_kl"], np.log(8 / 3), rtol=1e-12)
    # PacGAN counts a mode from one high-quality sample.
    one_more = np.concatenate([near, modes[5:6]])
    assert mode_coverage(one_more, modes, std=0.02)["modes_covered"] == 3
    assert mode_coverage(one_more, modes, std=0.02, min_count=1)["modes_covered"] == 4
