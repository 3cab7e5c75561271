import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from gm import ode

# Compilation, not computation, dominates these tests: without XLA's backend optimisations their
# programs compile about twice as fast, and what they check does not depend on the optimisations.
quick_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


# dx/dt = A x: a decaying rotation, so every component of the error is exercised.
A = np.array([[-0.5, -1.0], [1.0, -0.3]], np.float32)
# Test data come from NumPy: every eager jax.random draw of a new shape costs a compilation.
X0 = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)


def linear_field(x, t):
    return x @ A.T


def closed_form(t0, t1):
    return np.asarray(X0, np.float64) @ scipy.linalg.expm(A.astype(np.float64) * (t1 - t0)).T


@pytest.mark.parametrize("method, order, steps", [("euler", 1, 64), ("heun", 2, 16), ("rk4", 4, 8)])
def test_fixed_step_solvers_converge_at_their_order(method, order, steps):
    # Halving the step divides the global error by 2^order.
    solve = quick_jit(lambda x, n: ode.solve(linear_field, x, 0.0, 2.0, method=method, num_steps=n),
                      static_argnums=1)
    errors = []
    for n in (steps, 2 * steps):
        x1, nfe = solve(X0, n)
        errors.append(np.abs(np.asarray(x1, np.float64) - closed_form(0.0, 2.0)).max())
        assert int(nfe) == ode.FIXED_STEP_SOLVERS[method][1] * n
    observed_order = math.log2(errors[0] / errors[1])
    assert abs(observed_order - order) < 0.25, (errors, observed_order)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_backward_integration_returns_to_the_start(method):
    @quick_jit
    def there_and_back(x):
        x1, _ = ode.solve(linear_field, x, 0.0, 1.0, method=method, num_steps=50)
        return x1, ode.solve(linear_field, x1, 1.0, 0.0, method=method, num_steps=50)[0]

    x1, x0 = there_and_back(X0)
    np.testing.assert_allclose(x1, closed_form(0.0, 1.0), atol=0.05)  # even Euler at 50 steps
    np.testing.assert_allclose(x0, X0, atol=0.1)


def test_dopri5_meets_its_tolerance_both_ways_and_counts_evaluations():
    calls = []

    def counted_field(x, t):
        jax.debug.callback(lambda: calls.append(1))  # one host call per evaluation actually executed
        return linear_field(x, t)

    # Times and tolerances are traced: one compilation serves every case.
    solve = quick_jit(lambda x, t0, t1, tol: ode.solve(counted_field, x, t0, t1, method="dopri5", rtol=tol, atol=tol))
    for t0, t1, tol in ((0.0, 2.0, 1e-3), (0.0, 2.0, 1e-6), (2.0, 0.0, 1e-6)):
        calls.clear()
        x0 = X0 if t0 == 0 else jnp.asarray(closed_form(0.0, 2.0), jnp.float32)
        x1, nfe = solve(x0, t0, t1, tol)
        jax.effects_barrier()  # every callback has run
        want = closed_form(0.0, 2.0) if t1 == 2 else np.asarray(X0)
        error = np.abs(np.asarray(x1, np.float64) - want).max()
        assert error < 10 * tol + 1e-5, (t0, t1, tol, error)
        assert int(nfe) == len(calls) and (int(nfe) - 1) % ode.DOPRI5_NFE_PER_STEP == 0
    assert int(nfe) > 1 + 2 * ode.DOPRI5_NFE_PER_STEP  # the tight tolerance took more than two steps


def test_solve_rejects_unknown_methods_and_bad_step_counts():
    with pytest.raises(ValueError, match="euler"):
        ode.solve(linear_field, X0, 0.0, 1.0, method="midpoint")
    with pytest.raises(ValueError, match="num_steps"):
        ode.solve(linear_field, X0, 0.0, 1.0, method="rk4", num_steps=0)


# A non-linear field whose Jacobian is neither diagonal nor symmetric.
W = np.random.default_rng(1).standard_normal((5, 5)).astype(np.float32) / 2


def nonlinear_field(x, t):
    return jnp.tanh(x @ W + t) * (1.0 + x[:, ::-1] ** 2) / 2


def test_exact_divergence_is_the_trace_of_each_examples_jacobian():
    x = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    jac = quick_jit(jax.vmap(jax.jacfwd(lambda xi: nonlinear_field(xi[None], 0.3)[0])))(x)
    divergence = quick_jit(ode.divergence_exact, static_argnums=0)
    np.testing.assert_allclose(divergence(nonlinear_field, x, 0.3), jnp.trace(jac, axis1=1, axis2=2),
                               rtol=1e-5, atol=1e-5)
    # Also for examples with more than one axis (images): a field acting on [B, 2, 2].
    field = lambda y, t: nonlinear_field(y.reshape(-1, 4) @ jnp.eye(4, 5), t)[:, :4].reshape(y.shape)  # noqa
    y = x[:, :4].reshape(4, 2, 2)
    jac = quick_jit(jax.vmap(jax.jacfwd(lambda yi: field(yi[None], 0.3)[0])))(y).reshape(4, 4, 4)
    np.testing.assert_allclose(divergence(field, y, 0.3), jnp.trace(jac, axis1=1, axis2=2), atol=1e-5)


@pytest.mark.parametrize("probe", ode.PROBES)
def test_hutchinson_is_unbiased(probe):
    x = np.random.default_rng(3).standard_normal((1, 5)).astype(np.float32)

    @quick_jit
    def exact_and_estimates(x, key):
        eps = ode.sample_probe(key, (20_000, 1, 5), probe)
        return (ode.divergence_exact(nonlinear_field, x, 0.3)[0],
                jax.vmap(lambda e: ode.divergence_hutchinson(nonlinear_field, x, 0.3, e)[0])(eps))

    exact, estimates = map(np.asarray, exact_and_estimates(x, jax.random.key(4)))
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert estimates.std() > 0.05  # the field is not diagonal: single probes really are noisy
    assert abs(estimates.mean() - exact) < 4 * standard_error, (estimates.mean(), exact, standard_error)


def gaussian_log_density(x, var):
    return -0.5 * np.sum(x ** 2 / var + np.log(2 * math.pi * var), axis=-1)


@pytest.mark.parametrize("method, divergence", [("rk4", "exact"), ("rk4", "hutchinson"), ("dopri5", "hutchinson")])
def test_change_of_variables_matches_a_gaussian_in_closed_form(method, divergence):
    # v = a x carries N(0, I) at t = 0 to N(0, e^{2a} I) at t = 1. Rademacher probes see a multiple of
    # the identity exactly (eps^T (a I) eps = a D), so Hutchinson must match too.
    a, dims = 0.7, 3
    x = 2 * np.random.default_rng(5).standard_normal((6, dims)).astype(np.float32)
    z, delta, nfe = quick_jit(lambda x: ode.change_of_variables(
        lambda y, t: a * y, x, 1.0, 0.0, divergence=divergence, key=jax.random.key(6), method=method,
        num_steps=20))(x)
    got = gaussian_log_density(np.asarray(z, np.float64), 1.0) + np.asarray(delta)
    want = gaussian_log_density(np.asarray(x, np.float64), math.exp(2 * a))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(z, x * math.exp(-a), rtol=1e-4, atol=1e-5)
    assert int(nfe) == 80 if method == "rk4" else int(nfe) > 1


def test_change_of_variables_with_gaussian_probes_is_right_on_average():
    a, dims, n = 0.7, 3, 4000
    x = jnp.broadcast_to(jnp.array([0.5, -1.0, 2.0]), (n, dims))  # one point, a fresh probe per row
    z, delta, _ = quick_jit(lambda x: ode.change_of_variables(
        lambda y, t: a * y, x, 1.0, 0.0, divergence="hutchinson", key=jax.random.key(7), probe="gaussian",
        method="rk4", num_steps=10))(x)
    delta = np.asarray(delta)
    np.testing.assert_allclose(z[0], x[0] * math.exp(-a), rtol=1e-4)
    assert delta.std() > 0.1  # Gaussian probes are noisy on the identity...
    assert abs(delta.mean() + a * dims) < 4 * delta.std() / math.sqrt(n)  # ...but unbiased


def test_change_of_variables_rejects_a_missing_probe_key_and_unknown_divergence():
    with pytest.raises(ValueError, match="key"):
        ode.change_of_variables(linear_field, X0, 1.0, 0.0, divergence="hutchinson")
    with pytest.raises(ValueError, match="exact"):
        ode.change_of_variables(linear_field, X0, 1.0, 0.0, divergence="trace")
