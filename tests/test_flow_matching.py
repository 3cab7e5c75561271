import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from gm import config as config_lib
from gm import flow_matching as fm
from gm.data import DatasetInfo

# Compilation, not computation, dominates these tests: without XLA's backend optimisations their
# programs compile about twice as fast, and what they check does not depend on the optimisations.
quick_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


PATHS = {"ot": fm.ot_path(sigma_min=0.01), "vp": fm.vp_path(), "linear": fm.linear_path(sigma=0.0)}


@pytest.mark.parametrize("name", PATHS)
def test_target_velocity_is_the_time_derivative_of_the_path(name):
    path = PATHS[name]
    rng = np.random.default_rng(0)  # NumPy data: eager jax.random draws each cost a compilation
    x0, x1 = rng.standard_normal((2, 5, 3, 2)).astype(np.float32)
    t = rng.uniform(0.0, 0.99, 5).astype(np.float32)

    @quick_jit
    def velocities(x0, x1, t):
        _, dxt_dt = jax.jvp(lambda t: path.sample_xt(x0, x1, t), (t,), (jnp.ones_like(t),))
        return path.target_velocity(x0, x1, t), dxt_dt

    target, dxt_dt = velocities(x0, x1, t)
    np.testing.assert_allclose(target, dxt_dt, rtol=1e-4, atol=1e-4)


def test_ot_path_goes_from_noise_to_data_and_vp_path_keeps_unit_variance():
    x0, x1 = np.random.default_rng(1).standard_normal((2, 4, 3)).astype(np.float32)
    ot = PATHS["ot"]

    @quick_jit
    def points(x0, x1):
        return (ot.sample_xt(x0, x1, 0.0), ot.sample_xt(x0, x1, jnp.ones(4)), ot.target_velocity(x0, x1, 0.4),
                fm.vp_coefficients(jnp.linspace(0.0, 1.0, 11)))

    start, end, velocity, (a, b, _, _) = points(x0, x1)
    np.testing.assert_allclose(start, x0)
    np.testing.assert_allclose(end, x1 + 0.01 * x0, rtol=1e-6)  # a scalar t and a [B] one alike
    np.testing.assert_allclose(velocity, x1 - 0.99 * x0, rtol=1e-6)
    np.testing.assert_allclose(a ** 2 + b ** 2, 1.0, rtol=1e-6)
    assert float(a[0]) < 0.01 and float(a[-1]) == 1.0 and float(b[-1]) == 0.0  # noise at 0, data at 1


def test_ot_coupling_is_the_brute_force_optimum_under_jit():
    x0, x1 = np.random.default_rng(2).standard_normal((2, 5, 2, 1)).astype(np.float32)
    perm, coupled = quick_jit(lambda a, b: (fm.ot_permutation(a, b), fm.ot_couple_noise(a, b)))(x0, x1)
    x0, x1, perm, coupled = map(np.asarray, (x0, x1, perm, coupled))
    cost = lambda noise: float(np.sum((noise - x1) ** 2))  # noqa: E731
    best = min(cost(x0[list(p)]) for p in itertools.permutations(range(5)))
    assert cost(coupled) == pytest.approx(best, rel=1e-5)
    assert cost(coupled) < cost(x0)  # this draw is not already optimal
    # A permutation of the noise rows; the data keep their order.
    assert sorted(perm) == list(range(5))
    np.testing.assert_array_equal(coupled, x0[perm])


def test_cfm_loss_vanishes_for_the_exact_velocity_of_a_point_mass():
    # With a single datum x1 the marginal velocity of the OT path is the conditional one.
    x1 = jnp.array([[1.5, -0.5]] * 8)
    path = PATHS["ot"]

    def velocity(x, t):
        t = t[:, None]
        x0 = (x - t * x1) / (1 - 0.99 * t)  # invert x_t = (1 - 0.99 t) x0 + t x1
        return x1 - 0.99 * x0

    losses = quick_jit(lambda key: [fm.cfm_loss(velocity, path, key, x1, c) for c in fm.COUPLINGS])(jax.random.key(3))
    assert max(map(float, losses)) < 1e-8


def test_sampler_and_likelihood_of_a_linear_field_in_closed_form():
    # v = a x carries N(0, T^2 I) at t = 0 to N(0, T^2 e^{2a} I) at t = 1.
    a, temperature = 0.5, 0.8
    velocity = lambda x, t: a * x  # noqa: E731
    x1 = np.random.default_rng(4).standard_normal((5, 3)).astype(np.float32)

    @quick_jit
    def run(key, x1):
        samples, _ = fm.sample(velocity, key, (4000, 3), temperature=temperature, method="rk4", num_steps=10)
        return samples, fm.log_likelihood(velocity, x1, method="rk4", num_steps=10)[0]

    samples, log_p = run(jax.random.key(5), x1)
    np.testing.assert_allclose(np.std(samples), temperature * np.exp(a), rtol=0.03)
    var = np.exp(2 * a)
    want = -0.5 * np.sum(x1.astype(np.float64) ** 2 / var + np.log(2 * np.pi * var), axis=-1)
    np.testing.assert_allclose(log_p, want, rtol=1e-4)


def _make(config, info):
    """The flow-matching Method of `config`'s sections, checked as a run checks them."""
    return fm.make(config_lib.parse_sections(fm.Settings, config), info)


def toy_config(**flow_matching):
    config = ml_collections.ConfigDict()
    config.model = dict(hidden=(64, 64))
    config.flow_matching = {"solver": "rk4", "num_steps": 8, **flow_matching}
    return config


TOY_INFO = DatasetInfo("ring8", (2,), None, 8, 1000, 100)


def ring_batch(rng, n=128):
    angles = 2 * np.pi * rng.integers(8, size=n) / 8
    x = np.stack([2 * np.cos(angles), 2 * np.sin(angles)], 1) + 0.05 * rng.standard_normal((n, 2))
    return {"x": x.astype(np.float32), "label": np.zeros(n, np.int32)}


def test_toy_method_learns_samples_and_has_a_density():
    method = _make(toy_config(coupling="ot"), TOY_INFO)
    rng = np.random.default_rng(0)
    params = quick_jit(method.init)(jax.random.key(0), ring_batch(rng))
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)

    @quick_jit
    def step(params, opt_state, batch, key):
        (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(params, key, batch)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for i in range(200):
        params, opt_state, loss = step(params, opt_state, ring_batch(rng), jax.random.key(i))
        losses.append(float(loss))
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:10]), (losses[:10], losses[-20:])

    samples = quick_jit(method.sample, static_argnums=2)(params, jax.random.key(1), 500)
    assert samples.shape == (500, 2) and samples.dtype == jnp.float32
    radius = np.linalg.norm(np.asarray(samples), axis=1)
    assert np.median(np.abs(radius - 2)) < 0.5  # the samples found the ring
    log_prob = quick_jit(method.log_prob)
    log_p = log_prob(params, jax.random.key(2), ring_batch(rng, 64))
    far = log_prob(params, jax.random.key(2), {"x": np.zeros((64, 2), np.float32), "label": np.zeros(64, np.int32)})
    assert log_p.shape == (64,) and np.all(np.isfinite(log_p))
    assert float(jnp.mean(log_p)) > float(jnp.mean(far)) + 1  # the ring is likelier than its empty centre
    assert not method.log_prob_is_bound


def image_config(dropout=0.0):
    # One resolution level, as in test_diffusion: each extra level roughly doubles XLA's compile time.
    config = ml_collections.ConfigDict()
    config.model = dict(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=dropout,
                        class_conditional=True, dtype="float32")
    config.flow_matching = dict(solver="euler", num_steps=2)
    return config


def test_image_method_runs_under_jit_with_the_right_shapes():
    info = DatasetInfo("digits", (8, 8, 1), 4, 10, 100, 10)
    method = _make(image_config(), info)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(16, size=(4, 8, 8, 1)).astype(np.uint8),
             "label": rng.integers(10, size=4).astype(np.int32)}
    # init is traced, not compiled: XLA's CPU compilation of the UNet's random initialisers alone takes
    # longer than this whole file should. Random parameters of the traced shapes stand in for it.
    shapes = jax.eval_shape(method.init, jax.random.key(0), batch)
    assert shapes["conv_in"]["kernel"].shape == (3, 3, 1, 8)
    params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    loss, metrics = quick_jit(method.loss)(params, jax.random.key(1), batch)
    assert loss.shape == () and np.isfinite(float(loss)) and "loss" in metrics
    # Dropout's key reaches the network in training (traced only: compiling dropout's masks is slow).
    traced_loss, _ = jax.eval_shape(_make(image_config(dropout=0.1), info).loss, params, jax.random.key(1), batch)
    assert traced_loss.shape == ()
    samples = quick_jit(method.sample, static_argnums=2)(params, jax.random.key(2), 3)
    assert samples.shape == (3, 8, 8, 1) and samples.dtype == jnp.uint8 and int(samples.max()) <= 15
    log_p = quick_jit(method.log_prob)(params, jax.random.key(3), batch)
    assert log_p.shape == (4,) and np.all(np.isfinite(log_p))
    assert method.log_prob_is_bound


def test_linear_path_adds_constant_noise_and_its_velocity_is_the_difference():
    x0, x1, eps = np.random.default_rng(2).standard_normal((3, 4, 2)).astype(np.float32)
    path, t = fm.linear_path(sigma=0.1), np.float32(0.3)
    np.testing.assert_allclose(path.sample_xt(x0, x1, t, eps), 0.3 * x1 + 0.7 * x0 + 0.1 * eps, rtol=1e-6)
    np.testing.assert_allclose(path.target_velocity(x0, x1, t), x1 - x0, rtol=1e-6)


def test_cfm_loss_draws_the_source_from_the_given_sampler():
    # A source that is one point s: with the straight path from s, the exact velocity of a single
    # datum x1 is x1 - s everywhere, so the loss vanishes; from N(0, I) it would not.
    s, x1 = jnp.array([3.0, -1.0]), jnp.array([[1.5, -0.5]] * 8)
    source = lambda key, num: jnp.broadcast_to(s, (num, 2))  # noqa: E731
    velocity = lambda x, t: jnp.broadcast_to(x1[0] - s, x.shape)  # noqa: E731
    path = fm.linear_path(sigma=0.0)
    loss = quick_jit(lambda key: fm.cfm_loss(velocity, path, key, x1, "independent", source))(jax.random.key(0))
    assert float(loss) < 1e-12
    assert float(quick_jit(lambda key: fm.cfm_loss(velocity, path, key, x1))(jax.random.key(0))) > 1.0


def test_a_point_set_source_flows_to_the_target_and_has_no_likelihood():
    # eight_gaussians (radius 2, std 0.2) -> pacgan_ring (radius 1, std 0.01) with OT-CFM: the learned
    # map carries the source halfway to the ring's centre and sharpens it onto its modes.
    from gm import data as gm_data
    from gm.metrics.wasserstein import wasserstein2
    target, source = gm_data.load("pacgan_ring"), gm_data.load("eight_gaussians")
    method = _make(toy_config(path="linear", sigma_min=0.01, coupling="ot", source="eight_gaussians"), TOY_INFO)
    assert method.log_prob is None
    rng = np.random.default_rng(0)
    batch = lambda: {"x": target.train["x"][rng.integers(0, 100_000, 256)], "label": np.zeros(256, np.int32)}  # noqa: E731
    params = quick_jit(method.init)(jax.random.key(0), batch())
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    @quick_jit
    def step(params, opt_state, batch, key):
        grads = jax.grad(lambda p: method.loss(p, key, batch)[0])(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    for i in range(300):
        params, opt_state = step(params, opt_state, batch(), jax.random.key(i))
    samples = np.asarray(quick_jit(method.sample, static_argnums=2)(params, jax.random.key(1), 500))
    test = target.test["x"][:500]
    before, after = wasserstein2(source.test["x"][:500], test), wasserstein2(samples, test)
    assert after < 0.3 * before, (before, after)  # 1.05 -> 0.22 when written


def test_a_source_of_another_shape_is_one_sentence():
    with pytest.raises(ValueError, match=r"config.flow_matching.source='ring8' has points of shape \(2,\)"):
        _make(toy_config(source="ring8", path="linear"), DatasetInfo("digits", (8, 8, 1), 4, 10, 1000, 100))


@pytest.mark.parametrize("fields, match", [
    (dict(source="eight_gaussians"), r"source='eight_gaussians' needs config.flow_matching.path='linear'"),
    (dict(source="eight_gaussians", path="linear", temperature=0.5), "config.flow_matching.temperature")])
def test_a_point_set_source_refuses_gaussian_only_settings(fields, match):
    with pytest.raises(ValueError, match=match):
        _make(toy_config(**fields), TOY_INFO)


@pytest.mark.parametrize("field, value", [
    ("path", "cosine"), ("source", "moons"), ("coupling", "sinkhorn"), ("solver", "midpoint"), ("divergence", "trace"),
    ("num_steps", 0), ("num_steps", 2.5), ("sigma_min", 1.0), ("sigma_min", -0.1), ("rtol", 0.0),
    ("temperature", -1.0), ("probe", "uniform")])
def test_bad_config_values_raise_one_clear_error(field, value):
    with pytest.raises(ValueError, match=f"config.flow_matching.{field}"):
        _make(toy_config(**{field: value}), TOY_INFO)
