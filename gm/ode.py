"""ODE solvers and the instantaneous change of variables, for continuous-time generative models.

One solver code path serves flow matching's sampler and likelihood (and a diffusion model's
probability-flow ODE). Conventions:

* A velocity field is `f(x, t) -> dx/dt`: x float [B, ...], t a float scalar (the field broadcasts it
  over the batch itself). The solvers also accept a pytree state, such as the augmented (x, log-det).
* `solve(f, x, t0, t1, method=...)` integrates from t0 to t1 (t1 < t0 integrates backwards) and
  returns (x(t1), nfe). Fixed-step Euler, Heun and RK4 are one `lax.scan` each; 'dopri5' is the
  adaptive Dormand-Prince 5(4) pair of diffrax. Everything runs inside jit: no Python loop over steps
  and no host round-trip.
* NFE, the number of evaluations of f, is the cost measure: Euler 1 per step, Heun 2, RK4 4; dopri5
  6 per attempted step (accepted or rejected; the 7th stage is reused as the next step's first) plus
  1 for the initial evaluation.

Likelihood (Chen et al. 2018; Grathwohl et al. 2019, FFJORD). Along a trajectory of dx/dt = f(x, t)
the density obeys

    d log p_t(x_t) / dt = -div f(x_t, t),

so integrating the augmented state [x, l] with dl/dt = +div f from the data time t_data (l = 0) to the
base time t_base gives z = x(t_base) and delta_logp = l(t_base) = int_{t_data}^{t_base} div f dt, and

    log p_data(x) = log p_base(z) + delta_logp        (nats).

The divergence is the exact trace of the per-example Jacobian (D forward-mode products; for small D)
or Hutchinson's unbiased estimate eps^T (df/dx) eps with one probe eps per example, drawn once per
solve and held fixed along the trajectory, as in FFJORD.
"""
import math
import numbers

import jax
import jax.numpy as jnp

from gm import distributions as dist

METHODS = ("euler", "heun", "rk4", "dopri5")
DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
DOPRI5_NFE_PER_STEP = 6


# ---------------------------------------------------------------------------------------------------
# Fixed-step solvers. Each step maps (f, x, t, dt) -> x(t + dt); x may be any pytree of arrays.
# ---------------------------------------------------------------------------------------------------

def _combine(x, dt, weights, slopes):
    """x + dt * sum_i weights[i] * slopes[i], leaf by leaf."""
    return jax.tree.map(lambda x_, *k: x_ + dt * sum(w * k_ for w, k_ in zip(weights, k)), x, *slopes)


def euler_step(f, x, t, dt):
    """One explicit Euler step (first order, 1 evaluation)."""
    return _combine(x, dt, (1.0,), (f(x, t),))


def heun_step(f, x, t, dt):
    """One step of Heun's method, the explicit trapezoidal rule (second order, 2 evaluations)."""
    k1 = f(x, t)
    k2 = f(_combine(x, dt, (1.0,), (k1,)), t + dt)
    return _combine(x, dt, (0.5, 0.5), (k1, k2))


def rk4_step(f, x, t, dt):
    """One step of the classical Runge-Kutta method (fourth order, 4 evaluations)."""
    k1 = f(x, t)
    k2 = f(_combine(x, dt, (0.5,), (k1,)), t + 0.5 * dt)
    k3 = f(_combine(x, dt, (0.5,), (k2,)), t + 0.5 * dt)
    k4 = f(_combine(x, dt, (1.0,), (k3,)), t + dt)
    return _combine(x, dt, (1 / 6, 1 / 3, 1 / 3, 1 / 6), (k1, k2, k3, k4))


# method -> (step function, evaluations per step)
FIXED_STEP_SOLVERS = {"euler": (euler_step, 1), "heun": (heun_step, 2), "rk4": (rk4_step, 4)}


def solve_fixed_step(f, x, t0, t1, step, num_steps):
    """Integrate with `num_steps` equal steps of `step` (e.g. `rk4_step`) as one lax.scan -> x(t1)."""
    dt = (jnp.asarray(t1, jnp.float32) - t0) / num_steps

    def body(x, i):
        return step(f, x, t0 + i * dt, dt), None

    x, _ = jax.lax.scan(body, x, jnp.arange(num_steps, dtype=jnp.float32))
    return x


# ---------------------------------------------------------------------------------------------------
# The adaptive solver.
# ---------------------------------------------------------------------------------------------------

def solve_dopri5(f, x, t0, t1, rtol=1e-5, atol=1e-5, max_steps=4096):
    """Dormand-Prince 5(4) with a PID step-size controller -> (x(t1), nfe).

    diffrax does the work: its step-size control (error norm, step rejection, the initial step) is
    well tested, which a hand-written controller would not be. The error norm is the RMS over the
    whole state, so the batch shares one step size (as torchdiffeq does). More than `max_steps`
    attempted steps is a runtime error naming max_steps.
    """
    import diffrax  # imported here so the fixed-step solvers load without it

    term = diffrax.ODETerm(lambda t, y, args: f(y, t))
    sol = diffrax.diffeqsolve(
        term, diffrax.Dopri5(), t0, t1, dt0=None, y0=x,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
    x1 = jax.tree.map(lambda y: y[0], sol.ys)  # SaveAt(t1=True) keeps a leading axis of length 1
    return x1, DOPRI5_NFE_PER_STEP * sol.stats["num_steps"] + 1


def solve(f, x, t0, t1, *, method="euler", num_steps=100, rtol=1e-5, atol=1e-5, max_steps=4096):
    """Integrate dx/dt = f(x, t) from t0 to t1 (t1 < t0 integrates backwards).

    Args:
      f: velocity field (x, t) -> dx/dt, t a float scalar.
      x: the state at t0: float [B, ...] or a pytree of arrays.
      t0, t1: start and end times (floats or float scalars).
      method: one of METHODS; 'euler', 'heun' and 'rk4' take `num_steps` equal steps, 'dopri5' adapts
        its steps to the tolerances `rtol` and `atol` (at most `max_steps` of them).

    Returns:
      (x(t1) with the structure of x, nfe as an int32 scalar: the evaluations of f).
    """
    if method in FIXED_STEP_SOLVERS:
        if not (isinstance(num_steps, numbers.Integral) and num_steps >= 1):
            raise ValueError(f"num_steps must be a positive integer for method {method!r}, got {num_steps!r}.")
        step, evals_per_step = FIXED_STEP_SOLVERS[method]
        return solve_fixed_step(f, x, t0, t1, step, num_steps), jnp.int32(evals_per_step * num_steps)
    if method == "dopri5":
        x1, nfe = solve_dopri5(f, x, t0, t1, rtol, atol, max_steps)
        return x1, nfe.astype(jnp.int32)
    raise ValueError(f"Unknown ODE method {method!r}; use one of {METHODS}.")


# ---------------------------------------------------------------------------------------------------
# Divergences and the augmented ODE.
# ---------------------------------------------------------------------------------------------------

def velocity_and_exact_divergence(f, x, t):
    """(f(x, t), tr(d f_b / d x_b) per example [B]) with D = prod(x.shape[1:]) forward-mode products.

    The tangent e_d, set in coordinate d of every example at once, gives column d of each example's
    Jacobian (examples do not interact in f, as in any per-example network at evaluation time), so
    D products of the batched f give every example's diagonal. Cost grows with D: for small data.
    """
    num_dims = math.prod(x.shape[1:])
    basis = jnp.eye(num_dims, dtype=x.dtype).reshape((num_dims, 1) + x.shape[1:])
    basis = jnp.broadcast_to(basis, (num_dims,) + x.shape)
    jvp = lambda e: jax.jvp(lambda y: f(y, t), (x,), (e,))  # noqa: E731
    # The velocity does not depend on the tangent, so vmap computes it once (out_axes=None).
    v, columns = jax.vmap(jvp, out_axes=(None, 0))(basis)
    columns = columns.reshape(num_dims, x.shape[0], num_dims)  # [d, b, i] = d f_b,i / d x_b,d
    return v, jnp.trace(columns, axis1=0, axis2=2)


def velocity_and_hutchinson_divergence(f, x, t, eps):
    """(f(x, t), eps_b^T (d f_b / d x_b) eps_b per example [B]) from one jvp; eps has x's shape."""
    v, jac_eps = jax.jvp(lambda y: f(y, t), (x,), (eps,))
    return v, dist.sum_per_example(eps * jac_eps)


def divergence_exact(f, x, t):
    """div_x f(x, t) per example, float [B]: the trace of each example's Jacobian (see above)."""
    return velocity_and_exact_divergence(f, x, t)[1]


def divergence_hutchinson(f, x, t, eps):
    """Hutchinson's estimate of div_x f(x, t) per example, float [B].

    eps: a probe of x's shape with E[eps eps^T] = I per example (Rademacher or standard Gaussian);
    eps^T J eps is then unbiased for tr J. Rademacher probes have the lower variance and are exact for
    a diagonal Jacobian.
    """
    return velocity_and_hutchinson_divergence(f, x, t, eps)[1]


def sample_probe(key, shape, probe="rademacher"):
    """A Hutchinson probe of `shape`: 'rademacher' (+-1 with equal odds) or 'gaussian', float32."""
    if probe == "rademacher":
        return jax.random.rademacher(key, shape, jnp.float32)
    if probe == "gaussian":
        return jax.random.normal(key, shape, jnp.float32)
    raise ValueError(f"Unknown Hutchinson probe {probe!r}; use one of {PROBES}.")


def augmented_dynamics(f, divergence="exact", eps=None):
    """The dynamics of the state (x, l), dl/dt = +div f(x, t), for integrating towards the base time."""
    if divergence == "exact":
        velocity_and_div = velocity_and_exact_divergence
    elif divergence == "hutchinson":
        if eps is None:
            raise ValueError("divergence='hutchinson' needs a probe eps (see sample_probe).")
        velocity_and_div = lambda f_, x, t: velocity_and_hutchinson_divergence(f_, x, t, eps)  # noqa: E731
    else:
        raise ValueError(f"Unknown divergence {divergence!r}; use one of {DIVERGENCES}.")

    def dynamics(state, t):
        x, _ = state
        return velocity_and_div(f, x, t)  # (dx/dt, dl/dt): the same structure as the state

    return dynamics


def change_of_variables(f, x, t_data, t_base, *, divergence="exact", key=None, probe="rademacher",
                        method="euler", num_steps=100, rtol=1e-5, atol=1e-5, max_steps=4096):
    """Integrate [x, l] from t_data to t_base: the base point and the log-density change.

    With d log p_t(x_t)/dt = -div f(x_t, t) (module docstring),

        log p_{t_data}(x) = log p_{t_base}(z) + delta_logp,   delta_logp = int_{t_data}^{t_base} div f dt.

    Args:
      f: velocity field (x, t) -> dx/dt.
      x: data at t_data, float [B, ...].
      t_data, t_base: the data and base times (flow matching: 1 and 0).
      divergence: 'exact' (small D) or 'hutchinson' (then `key` draws one probe per example of type
        `probe`, fixed for the whole solve).
      method, num_steps, rtol, atol, max_steps: as in `solve`.

    Returns:
      (z float [B, ...], delta_logp float32 [B] in nats, nfe int32: evaluations of the augmented
      dynamics; each costs one forward-mode product with Hutchinson, D with the exact trace).
    """
    eps = None
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("divergence='hutchinson' needs a PRNG key for its probe.")
        eps = sample_probe(key, x.shape, probe)
    dynamics = augmented_dynamics(f, divergence, eps)
    state = (x, jnp.zeros((x.shape[0],), jnp.float32))
    (z, delta_logp), nfe = solve(dynamics, state, t_data, t_base, method=method, num_steps=num_steps,
                                 rtol=rtol, atol=atol, max_steps=max_steps)
    return z, delta_logp, nfe
