import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gm import config as config_lib
from gm import data as gm_data
from gm import flows, optim
from gm.config import OptimConfig
from gm.flows import bijectors, layers, models, steps
from gm.train import state as state_lib


def _perturbed_params(bijector, x, key=jax.random.key(0), scale=0.2):
    """Params initialised on x (inverse direction), then moved off the identity so every term matters."""
    params = bijector.init(key, x, inverse=True).get("params", {})
    return jax.tree.map(lambda p: p + scale * jax.random.normal(jax.random.fold_in(key, p.size), p.shape), params)


def _check_bijector(bijector, x, scale=0.2):
    params = _perturbed_params(bijector, x, scale=scale)
    apply = functools.partial(bijector.apply, {"params": params})

    @jax.jit
    def round_trip(x):
        z, inv_log_det = apply(x, inverse=True)
        x_back, fwd_log_det = apply(z)
        return z, inv_log_det, x_back, fwd_log_det

    # One example's Jacobian, compiled on its own: XLA compiles that far faster than a batch of them.
    flat_inverse = lambda v: apply(v.reshape((1,) + x.shape[1:]), inverse=True)[0].reshape(-1)  # noqa: E731
    jacobian = jax.jit(jax.jacfwd(flat_inverse))(x[0].reshape(-1))
    z, inv_log_det, x_back, fwd_log_det = round_trip(x)
    np.testing.assert_allclose(x_back, x, atol=2e-5)
    np.testing.assert_allclose(inv_log_det[0], jnp.linalg.slogdet(jacobian)[1], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(fwd_log_det, -inv_log_det, rtol=1e-5, atol=1e-4)
    return z


IMAGE = jax.random.uniform(jax.random.key(1), (2, 4, 4, 2), minval=0.05, maxval=0.95)
SMALL_IMAGE = IMAGE[..., :1]  # 16 dimensions: the whole-flow Jacobians stay cheap to compile
VECTOR = jax.random.normal(jax.random.key(2), (3, 4))

BIJECTORS = {
    "actnorm": (lambda: layers.ActNorm(), IMAGE),
    "actnorm_vector": (lambda: layers.ActNorm(), VECTOR),
    "invertible_1x1": (lambda: layers.Invertible1x1Conv(seed=1), IMAGE),
    "coupling_checkerboard_tanh": (lambda: layers.AffineCoupling("checkerboard", 0, 8, 1, "tanh"), IMAGE),
    "coupling_channel_sigmoid": (lambda: layers.AffineCoupling("channel", 1, 8, 0, "sigmoid"), IMAGE),
    "coupling_vector": (lambda: layers.AffineCoupling("checkerboard", 1, 8, 1, "tanh"), VECTOR),
    "logit": (lambda: bijectors.Logit(0.05), IMAGE),
    "shift": (lambda: bijectors.Shift(0.5), IMAGE),
    "squeeze": (lambda: bijectors.Squeeze(), IMAGE),
    "factor_out": (lambda: bijectors.FactorOut(layers.AffineCoupling("checkerboard", 0, 8, 0)), IMAGE),
    "realnvp": (lambda: models.realnvp(num_scales=2, hidden=4, num_blocks=0), SMALL_IMAGE),
    "glow": (lambda: models.glow(num_levels=2, depth=1, hidden=4), SMALL_IMAGE),
    "glow_steps_scanned": (lambda: steps.GlowSteps(depth=3, hidden=4, num_blocks=1, first_seed=2), IMAGE),
    "glow_steps_scanned_remat": (lambda: steps.GlowSteps(depth=2, hidden=4, remat=True), IMAGE),
}


@pytest.mark.parametrize("name", sorted(BIJECTORS))
def test_log_det_matches_jacobian_and_inverse_inverts(name):
    make, x = BIJECTORS[name]
    _check_bijector(make(), x)


def test_planar_log_det_matches_jacobian():
    flow = models.planar_flow(3)
    z = jax.random.normal(jax.random.key(3), (4, 2))
    params = _perturbed_params_forward(flow, z)
    x, log_det = flow.apply({"params": params}, z)
    jac = jax.vmap(jax.jacfwd(lambda v: flow.apply({"params": params}, v[None])[0][0]))(z)
    np.testing.assert_allclose(log_det, jnp.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(NotImplementedError, match="no closed-form inverse"):
        flow.apply({"params": params}, x, inverse=True)


def _perturbed_params_forward(flow, z):
    params = flow.init(jax.random.key(4), z)["params"]
    return jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(5), p.shape), params)


def test_planar_reparameterisation_keeps_it_invertible_for_any_raw_parameters():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):  # the condition itself, free of float32 rounding in the dot product
        for _ in range(500):
            w = rng.normal(size=3) * rng.choice([1e-2, 1.0, 1e2])
            u = rng.normal(size=3) * rng.choice([1e-2, 1.0, 1e2])
            if rng.random() < 0.3:
                u = -rng.uniform(1, 100) * w  # the adversarial direction: w.u far below -1
            u_hat = layers.planar_u_hat(jnp.asarray(u), jnp.asarray(w))
            w_dot_u_hat = float(layers.planar_w_dot_u_hat(jnp.asarray(u), jnp.asarray(w)))
            assert w_dot_u_hat >= -1.0
            # the corrected vector realises that value (up to the rounding of a dot product)
            assert float(jnp.dot(w, u_hat)) == pytest.approx(w_dot_u_hat, abs=1e-8 * (1 + abs(np.dot(w, u))))
    # the layer's Jacobian determinant 1 + (1 - tanh^2) w.u_hat stays >= 0 in float32 too
    assert float(layers.planar_w_dot_u_hat(jnp.array([100.0, 0.0]), jnp.array([-1.0, 0.0]))) >= -1.0


def test_squeeze_moves_each_2x2_block_into_channels():
    x = jnp.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    s = bijectors.squeeze2x2(x)
    assert s.shape == (2, 2, 2, 12)
    np.testing.assert_array_equal(s[1, 1, 0].reshape(2, 2, 3), x[1, 2:4, 0:2])
    np.testing.assert_array_equal(bijectors.unsqueeze2x2(s), x)


def test_coupling_masks_split_in_halves():
    for kind in ("checkerboard", "channel"):
        m0, m1 = (layers.coupling_mask((4, 4, 2), kind, p) for p in (0, 1))
        np.testing.assert_array_equal(m0 + m1, 1.0)
        assert float(m0.sum()) == 16.0
    np.testing.assert_array_equal(layers.coupling_mask((4,), "checkerboard", 0), [1, 0, 1, 0])


def test_actnorm_data_dependent_init_standardises_the_first_batch():
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(6), (16, 4, 4, 3))
    act = layers.ActNorm()
    params = act.init(jax.random.key(0), x, inverse=True)
    z, _ = act.apply(params, x, inverse=True)
    np.testing.assert_allclose(z.mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std((0, 1, 2)), 1.0, atol=1e-4)


def test_invertible_1x1_starts_as_a_rotation_and_keeps_p_and_signs_out_of_the_parameters():
    conv = layers.Invertible1x1Conv(seed=3)
    params = conv.init(jax.random.key(7), jnp.zeros((1, 2, 2, 4)), inverse=True)["params"]
    assert set(params) == {"L", "U", "log_s"}
    fixed, _ = layers.initial_lu(3, 4)
    w = layers.lu_weight(fixed, params)
    np.testing.assert_allclose(w @ w.T, np.eye(4), atol=1e-5)
    np.testing.assert_allclose(jnp.sum(params["log_s"]), 0.0, atol=1e-5)  # |det| of a rotation is 1
    np.testing.assert_allclose(jnp.abs(jnp.linalg.det(fixed[0])), 1.0)  # P is a permutation


def test_a_2d_flow_density_integrates_to_one():
    flow = models.coupling_flow_2d(num_layers=4, hidden=16, num_blocks=0)
    # Perturbed enough to be far from a Gaussian, not so much that mass leaves the grid.
    params = _perturbed_params(flow, jax.random.normal(jax.random.key(8), (64, 2)), scale=0.05)
    grid = np.linspace(-8.0, 8.0, 321)
    xx, yy = np.meshgrid(grid, grid)
    points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1), jnp.float32)
    density = jnp.exp(jax.jit(functools.partial(models.log_prob, flow))(params, points))
    assert float(density.sum()) * (grid[1] - grid[0]) ** 2 == pytest.approx(1.0, abs=1e-2)


def test_tempered_sampling_log_prob_is_the_tempered_gaussian():
    identity = bijectors.Chain([])
    x, log_q = models.sample_and_log_prob(identity, {}, jax.random.key(9), 5, (3,), temperature=0.5)
    expected = jnp.sum(-0.5 * (x / 0.5) ** 2 - 0.5 * jnp.log(2 * jnp.pi * 0.25), axis=1)
    np.testing.assert_allclose(log_q, expected, rtol=1e-5)


# --- the Method -------------------------------------------------------------------------------------

def _config(name, **model):
    fields = dict(name=name, hidden=16, num_blocks=0, num_scales=1, num_levels=1, depth=1, num_layers=4)
    fields.update(model)
    return ml_collections.ConfigDict(dict(model=fields, flow=dict(temperature=1.0)))


def _make(config, info):
    """The flow family's Method of `config`'s sections, checked as a run checks them."""
    return flows.make(config_lib.parse_sections(flows.Settings, config), info)


def _train(method, dataset, steps, batch_size=64, learning_rate=3e-3):
    batch = gm_data.train_batch(dataset, step=0, batch_size=batch_size, seed=0)
    optimizer = optim.make_optimizer(OptimConfig(learning_rate=learning_rate))
    state = state_lib.init_state(state_lib.run_once(method.init, jax.random.key(0), batch),
                                 state_lib.training_of(method), optimizer)
    step = jax.jit(state_lib.step_function(method, optimizer, 0.0))
    losses = []
    for i in range(steps):
        batch = gm_data.train_batch(dataset, step=i, batch_size=batch_size, seed=0)
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_realnvp_on_digits_learns_samples_levels_and_bounds_log_prob():
    digits = gm_data.load("digits")
    method = _make(_config("realnvp"), digits.info)
    state, losses = _train(method, digits, 150)
    assert np.mean(losses[-20:]) < losses[0] - 0.5  # bits/dim
    x = method.sample(state.params, jax.random.key(2), 6)
    assert x.shape == (6, 8, 8, 1) and x.dtype == jnp.uint8 and int(x.max()) <= 15
    test = {k: v[:32] for k, v in digits.test.items()}
    log_p = method.log_prob(state.params, jax.random.key(3), test)
    assert log_p.shape == (32,) and bool(jnp.all(jnp.isfinite(log_p))) and method.log_prob_is_bound
    bpd = float(jnp.mean(-log_p)) / (64 * np.log(2))
    assert bpd == pytest.approx(np.mean(losses[-20:]), abs=0.5)


def test_planar_flow_fits_the_eight_gaussians_by_reverse_kl():
    toy = gm_data.load("eight_gaussians")
    method = _make(_config("planar", num_layers=8), toy.info)
    assert method.log_prob is None
    _, losses = _train(method, toy, 300, batch_size=128, learning_rate=1e-2)
    assert np.mean(losses[-30:]) < np.mean(losses[:10]) - 0.5  # nats


@pytest.mark.parametrize("overrides, dataset, match", [
    (dict(name="maf"), "digits", "Unknown config.model.name 'maf'; use one of"),
    (dict(name="coupling"), "digits", "does not fit 'digits'"),
    (dict(name="glow"), "eight_gaussians", "does not fit 'eight_gaussians'"),
    (dict(name="realnvp", num_scales=5), "digits", "config.model.num_scales"),
    (dict(name="glow", num_levels=4), "digits", "config.model.num_levels"),
    (dict(name="planar"), "checkerboard", "positive everywhere"),
])
def test_bad_configs_are_one_sentence(overrides, dataset, match):
    info = gm_data.load(dataset).info
    with pytest.raises(ValueError, match=match):
        _make(_config(**overrides), info)


def test_temperature_must_be_positive():
    config = _config("realnvp")
    config.flow.temperature = 0.0
    with pytest.raises(ValueError, match="config.flow.temperature"):
        _make(config, gm_data.load("digits").info)


def test_realnvp_with_three_scales_is_a_bijector_with_the_right_log_det():
    # Each inner scale squeezes and must unsqueeze before FactorOut concatenates it back. Perturbations
    # are smaller than the other cases': 3 scales of 0.2 compound to |z| ~ 3e3 and float32 round-off.
    x = jax.random.uniform(jax.random.key(3), (2, 8, 8, 1), minval=0.05, maxval=0.95)
    _check_bijector(models.realnvp(num_scales=3, hidden=4, num_blocks=0), x, scale=0.05)


@pytest.mark.parametrize("num_scales", [3, 4])
def test_realnvp_with_three_or_four_scales_inits_and_keeps_cifar_shapes(num_scales):
    flow = models.realnvp(num_scales=num_scales, hidden=8, num_blocks=1)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    params = jax.eval_shape(lambda v: flow.init(jax.random.key(0), v, inverse=True), x)["params"]
    z, log_det = jax.eval_shape(lambda p, v: flow.apply({"params": p}, v, inverse=True), params, x)
    assert z.shape == (2, 16, 16, 12) and log_det.shape == (2,)
    back, _ = jax.eval_shape(lambda p, v: flow.apply({"params": p}, v), params, z)
    assert back.shape == x.shape


def test_glows_shift_maps_the_unit_interval_to_a_centred_one():
    first = models.glow(num_levels=1, depth=1, hidden=4).layers[0]
    z, _ = first.apply({}, jnp.array([0.0, 0.999]), inverse=True)
    np.testing.assert_allclose(z, [-0.5, 0.499], atol=1e-6)


@pytest.mark.parametrize("scan", [True, False])
def test_paper_glow_has_the_papers_44m_parameters(scan):
    """Glow's CIFAR-10 model (L = 3, K = 32, 512 channels) through eval_shape: the channel coupling's
    network sees only the half that passes through, so the count is the paper's 44.0M, scanned or not."""
    glow = models.glow(num_levels=3, depth=32, hidden=512, scan=scan)
    shapes = jax.eval_shape(lambda x: glow.init(jax.random.key(0), x, inverse=True), jnp.zeros((2, 32, 32, 3)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 44_047_872


UNROLLED = {  # (unrolled flow, scanned flow, converter of the unrolled parameters)
    "glow": (models.glow(2, 3, 4, 1, scan=False), models.glow(2, 3, 4, 1),
             lambda p: steps.glow_params_from_unrolled(p, num_levels=2, depth=3, num_blocks=1)),
    "realnvp": (models.realnvp(2, 4, 2, scan=False), models.realnvp(2, 4, 2),
                lambda p: layers.conditioners_from_unrolled(p, num_blocks=2)),
}


@pytest.mark.parametrize("name", sorted(UNROLLED))
def test_unrolled_parameters_convert_to_the_scanned_flow_with_the_same_numbers(name):
    unrolled, scanned, convert = UNROLLED[name]
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 2), minval=0.05, maxval=0.95)
    params = _perturbed_params(unrolled, x, scale=0.05)
    converted = convert(params)
    fresh = scanned.init(jax.random.key(0), x, inverse=True)["params"]
    assert jax.tree.structure(converted) == jax.tree.structure(fresh)
    assert [a.shape for a in jax.tree.leaves(converted)] == [a.shape for a in jax.tree.leaves(fresh)]
    np.testing.assert_allclose(models.log_prob(scanned, converted, x), models.log_prob(unrolled, params, x),
                               rtol=1e-5)
    z = jax.random.normal(jax.random.key(2), (3,) + tuple(models.latent_shape(scanned, converted, x.shape[1:])))
    np.testing.assert_allclose(scanned.apply({"params": converted}, z)[0], unrolled.apply({"params": params}, z)[0],
                               rtol=1e-5, atol=1e-5)
