"""Flow matching (Lipman et al. 2023) with minibatch optimal-transport coupling (Tong et al. 2023).

A network v(x, t) learns the velocity of a probability path that carries noise at t = 0 to data at
t = 1 (Lipman's convention: x0 ~ N(0, I) is the base, x1 is a datum). Each conditional path is a
Gaussian x_t = a(t) x1 + b(t) x0 whose velocity u_t = a'(t) x1 + b'(t) x0 is known in closed form, and
regressing v on u_t at random (t, x0, x1) (conditional flow matching) has the same gradients as
regressing on the intractable marginal velocity. Two paths:

* 'ot' (Lipman eq. 20-21): a = t, b = 1 - (1 - sigma_min) t, so u_t = x1 - (1 - sigma_min) x0.
* 'vp' (Lipman eq. 18-19): a = alpha_{1-t}, b = sqrt(1 - alpha_{1-t}^2), alpha_s = exp(-T(s) / 2) with
  T(s) = int_0^s beta, beta linear from beta_min = 0.1 to beta_max = 20. Its velocity blows up like
  (1 - t)^(-1/2) at t = 1, so the loss draws t below VP_T_MAX (as score_sde stops at t = 1e-5).

With coupling='ot' the noise of a batch is permuted to the exact optimal-transport assignment to the
data (squared Euclidean cost), which straightens the learned paths.

Samples integrate v from t = 0 to 1 with `gm.ode.solve`; log-likelihoods integrate back from t = 1 to 0
with the instantaneous change of variables (`gm.ode.change_of_variables`): log p(x) = log N(z; 0, I) +
int_1^0 div v dt. Images live in [-1, 1) as 2 y - 1 of the uniformly dequantized y (`gm.distributions`),
and their discrete log-likelihood is the usual dequantization bound.
"""
import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gm import data as gm_data
from gm import distributions as dist
from gm import ode
from gm.config import interval, nonnegative, positive, positive_entries, setting
from gm.method import Method
from gm.nn import convnets
from gm.nn.unet import UNetConfig, unet_from_config
from gm.optimal_transport import assignment, squared_distances

PATHS = ("ot", "linear", "vp")
COUPLINGS = ("independent", "ot")
DIVERGENCES = ("auto",) + ode.DIVERGENCES
TIME_SCALE = 1000.0  # t in [0, 1] reaches the networks as 1000 t, the range of DDPM's timesteps
EXACT_TRACE_MAX_DIMS = 16  # divergence='auto' takes the exact trace up to this many dimensions
VP_T_MAX = 1.0 - 1e-5


# ---------------------------------------------------------------------------------------------------
# Conditional probability paths.
# ---------------------------------------------------------------------------------------------------

def _per_example(t, x):
    """t as a scalar or [B] -> broadcastable against x [B, ...]."""
    t = jnp.asarray(t, jnp.float32)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) if t.ndim else t


class Path(NamedTuple):
    """A conditional path x_t = a(t) x1 + b(t) x0 + noise_std eps, from the source point x0 at t = 0 to
    the datum x1 at t = 1, eps ~ N(0, I) (Tong et al.'s constant sigma; 0 for Lipman's paths).

    coefficients: t -> (a, b, da/dt, db/dt), elementwise in t.
    t_max: the loss draws t ~ U[0, t_max].
    In both methods x0 and x1 are float [B, ...] and t is a float scalar or [B] in [0, 1]; the result
    has x's shape. A constant noise_std moves x_t but not its velocity.
    """
    coefficients: Callable
    t_max: float = 1.0
    noise_std: float = 0.0

    def sample_xt(self, x0, x1, t, eps=None):
        """x_t = a(t) x1 + b(t) x0 (+ noise_std eps): a draw from p_t(x | x0, x1)."""
        a, b, _, _ = self.coefficients(_per_example(t, x1))
        xt = a * x1 + b * x0
        if self.noise_std:
            xt = xt + self.noise_std * eps
        return xt

    def target_velocity(self, x0, x1, t):
        """u_t = d x_t / dt = a'(t) x1 + b'(t) x0, the conditional velocity at x_t."""
        _, _, da, db = self.coefficients(_per_example(t, x1))
        return da * x1 + db * x0


def ot_coefficients(t, sigma_min):
    """The OT path's (a, b, a', b'): mu_t = t x1, sigma_t = 1 - (1 - sigma_min) t."""
    one = jnp.ones_like(t)
    return t, 1.0 - (1.0 - sigma_min) * t, one, -(1.0 - sigma_min) * one


def linear_coefficients(t):
    """The straight interpolant's (a, b, a', b'): x_t = t x1 + (1 - t) x0."""
    one = jnp.ones_like(t)
    return t, 1.0 - t, one, -one


def vp_log_alpha(s, beta_min=0.1, beta_max=20.0):
    """log alpha_s = -T(s) / 2 with T(s) = beta_min s + (beta_max - beta_min) s^2 / 2."""
    return -0.5 * (beta_min * s + 0.5 * (beta_max - beta_min) * s ** 2)


def vp_coefficients(t, beta_min=0.1, beta_max=20.0):
    """The VP path's (a, b, a', b'): a = alpha_{1-t}, b = sqrt(1 - alpha_{1-t}^2)."""
    s = 1.0 - t
    a = jnp.exp(vp_log_alpha(s, beta_min, beta_max))
    b = jnp.sqrt(-jnp.expm1(2.0 * vp_log_alpha(s, beta_min, beta_max)))  # accurate as a -> 1
    beta = beta_min + (beta_max - beta_min) * s
    da = 0.5 * beta * a  # d alpha_s / ds = -beta(s) alpha_s / 2, and ds/dt = -1
    return a, b, da, -a * da / b  # from a^2 + b^2 = 1


def ot_path(sigma_min=1e-4):
    """Lipman's OT path: x_t = (1 - (1 - sigma_min) t) x0 + t x1."""
    return Path(functools.partial(ot_coefficients, sigma_min=sigma_min))


def vp_path(beta_min=0.1, beta_max=20.0):
    """Lipman's VP diffusion path (eq. 18-19)."""
    return Path(functools.partial(vp_coefficients, beta_min=beta_min, beta_max=beta_max), VP_T_MAX)


def linear_path(sigma=0.1):
    """Tong et al.'s CFM path: x_t = t x1 + (1 - t) x0 + sigma eps, u_t = x1 - x0, for any source x0
    (I-CFM with independent pairs, OT-CFM with the minibatch OT coupling)."""
    return Path(linear_coefficients, noise_std=sigma)


def path_from_name(name, sigma_min=1e-4):
    """'ot', 'linear' (sigma_min is then its constant sigma) or 'vp' -> Path."""
    if name == "ot":
        return ot_path(sigma_min)
    if name == "linear":
        return linear_path(sigma_min)
    if name == "vp":
        return vp_path()
    raise ValueError(f"Unknown config.flow_matching.path {name!r}; use one of {PATHS}.")


# ---------------------------------------------------------------------------------------------------
# Minibatch OT coupling.
# ---------------------------------------------------------------------------------------------------

def _ot_assignment(x0, x1):
    """Host side: for flat x0, x1 [B, D], the row of x0 assigned to each row of x1, int32 [B]."""
    return assignment(squared_distances(x1, x0)).astype(np.int32)


def ot_permutation(x0, x1):
    """The permutation p, int32 [B], minimising sum_i ||x0[p[i]] - x1[i]||^2 (an exact OT plan).

    With equal batch sizes and uniform weights an optimal plan is a permutation matrix, so the
    discrete OT problem of Tong et al. is a linear assignment, solved exactly on the host
    (`gm.optimal_transport`) through `jax.pure_callback` (so it runs inside jit). x0, x1: float
    [B, ...]. Within a data-parallel step the assignment covers the whole global batch under
    gm.parallel's `sharded` strategy (the points are gathered for the host) and each device's slice
    under `pmap`. The [B, B] squared distances are computed on the host too, in float64: no
    reduced-precision matmul can reorder near-ties, and the device program around the callback stays
    small (a large matmul there, split over the threads that several CPU devices' collectives wait
    on, deadlocked XLA's CPU runtime at batch 512 on 8 devices).
    """
    n0, n1 = x0.reshape(x0.shape[0], -1), x1.reshape(x1.shape[0], -1)
    result = jax.ShapeDtypeStruct((x1.shape[0],), jnp.int32)
    return jax.pure_callback(_ot_assignment, result, jax.lax.stop_gradient(n0), jax.lax.stop_gradient(n1),
                             vmap_method="sequential")


def ot_couple_noise(x0, x1):
    """The noise x0 reordered to its OT assignment to the data x1 (which keeps its order), [B, ...]."""
    return x0[ot_permutation(x0, x1)]


# ---------------------------------------------------------------------------------------------------
# Loss, sampling and likelihood for any velocity field v(x, t) (t a scalar or float [B] in [0, 1]).
# ---------------------------------------------------------------------------------------------------

def cfm_loss(velocity_fn, path, key, x1, coupling="independent", source=None):
    """Conditional flow matching: E_{t ~ U[0, t_max], x0 ~ q0} ||v(x_t, t) - u_t||^2 / D.

    x1: data float [B, ...] in model space. source: (key, num) -> x0 float [num, ...], draws from the
    source q0 (None: N(0, I)). Returns a scalar: the squared velocity error averaged over dimensions and
    the batch, in (model-space units per unit time)^2.
    """
    t_key, noise_key = jax.random.split(key)
    if source is None:
        x0 = jax.random.normal(noise_key, x1.shape, jnp.float32)
    else:
        x0 = source(noise_key, x1.shape[0]).astype(jnp.float32)
    if coupling == "ot":
        x0 = ot_couple_noise(x0, x1)
    elif coupling != "independent":
        raise ValueError(f"Unknown config.flow_matching.coupling {coupling!r}; use one of {COUPLINGS}.")
    t = jax.random.uniform(t_key, (x1.shape[0],), jnp.float32, 0.0, path.t_max)
    eps = jax.random.normal(jax.random.fold_in(key, 2), x1.shape, jnp.float32) if path.noise_std else None
    v = velocity_fn(path.sample_xt(x0, x1, t, eps), t)
    return jnp.mean((v.astype(jnp.float32) - path.target_velocity(x0, x1, t)) ** 2)


def sample(velocity_fn, key, shape, *, temperature=1.0, source=None, **solver):
    """x0 ~ N(0, temperature^2 I) of `shape` (or `source(key, shape[0])`, see `cfm_loss`) carried from
    t = 0 to 1 -> (x1 float32, nfe).

    `solver` holds `gm.ode.solve`'s keywords (method, num_steps, rtol, atol).
    """
    if source is None:
        x0 = temperature * jax.random.normal(key, shape, jnp.float32)
    else:
        x0 = source(key, shape[0]).astype(jnp.float32)
    return ode.solve(velocity_fn, x0, 0.0, 1.0, **solver)


def log_likelihood(velocity_fn, x1, key=None, *, divergence="exact", probe="rademacher", **solver):
    """log p_1(x1) = log N(z; 0, I) + int_1^0 div v dt, by integrating from t = 1 back to t = 0.

    x1: float [B, ...] in model space. divergence: 'exact' or 'hutchinson' (one `probe` per example
    from `key`; the estimate is then unbiased). Returns (log-density in nats [B], nfe).
    """
    z, delta_logp, nfe = ode.change_of_variables(velocity_fn, x1, 1.0, 0.0, divergence=divergence,
                                                 key=key, probe=probe, **solver)
    return dist.standard_normal_log_prob(z) + delta_logp, nfe


# ---------------------------------------------------------------------------------------------------
# The Method.
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class VelocityConfig(UNetConfig):
    """config.model: the UNet's fields for images (t fed as 1000 t); for other data (the 2-D toys) a
    VelocityMLP of `hidden` widths and `activation`, seeing t and `time_features` sinusoidal features
    of it (0: t alone)."""
    hidden: Tuple[int, ...] = setting((256, 256, 256), positive_entries)
    activation: Literal[tuple(convnets.ACTIVATIONS)] = "swish"
    time_features: int = setting(32, nonnegative)


@dataclasses.dataclass(frozen=True)
class FlowMatchingConfig:
    """config.flow_matching: Lipman et al.'s CIFAR-10 settings by default.

    path 'ot' | 'linear' | 'vp'; sigma_min in [0, 1) (the OT path's final noise, the linear path's
    constant sigma); coupling 'independent' | 'ot' (minibatch OT pairing of source and data points);
    source 'gaussian' (N(0, I)) or a 2-D point set of `gm.data` (Tong et al.: flow matching needs no
    Gaussian source; the loss draws x0 from its train split, sampling from its test split, and there is
    then no log-likelihood); solver 'euler' | 'heun' | 'rk4' | 'dopri5', num_steps
    (fixed-step solvers), rtol, atol (dopri5); divergence 'auto' | 'exact' | 'hutchinson' ('auto': the
    exact trace up to EXACT_TRACE_MAX_DIMS dimensions) with a 'rademacher' | 'gaussian' probe;
    temperature scales the sampler's Gaussian noise.
    """
    path: Literal[PATHS] = "ot"
    sigma_min: float = setting(1e-4, interval(0.0, 1.0))
    coupling: Literal[COUPLINGS] = "independent"
    source: Literal[("gaussian",) + gm_data.TOYS] = "gaussian"
    solver: Literal[ode.METHODS] = "dopri5"
    num_steps: int = setting(100, positive)
    rtol: float = setting(1e-5, interval(0.0, None, low_open=True))
    atol: float = setting(1e-5, interval(0.0, None, low_open=True))
    divergence: Literal[DIVERGENCES] = "auto"
    probe: Literal[ode.PROBES] = "rademacher"
    temperature: float = setting(1.0, interval(0.0, None))

    def check(self, name):
        if self.source != "gaussian" and self.path != "linear":
            raise ValueError(f"{name}.source={self.source!r} needs {name}.path='linear': the '{self.path}' "
                             f"path starts from N(0, I).")
        if self.source != "gaussian" and self.temperature != 1.0:
            raise ValueError(f"{name}.temperature scales Gaussian noise; leave it at 1 with {name}.source="
                             f"{self.source!r}.")

    def solver_options(self) -> dict:
        """`gm.ode.solve`'s keywords: method, num_steps, rtol, atol."""
        return dict(method=self.solver, num_steps=self.num_steps, rtol=self.rtol, atol=self.atol)

    def divergence_for(self, num_dims: int) -> str:
        """'exact' or 'hutchinson': 'auto' resolved for data of `num_dims` dimensions."""
        if self.divergence != "auto":
            return self.divergence
        return "exact" if num_dims <= EXACT_TRACE_MAX_DIMS else "hutchinson"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The flow-matching family's config sections."""
    model: VelocityConfig = VelocityConfig()
    flow_matching: FlowMatchingConfig = FlowMatchingConfig()


class VelocityField(NamedTuple):
    """A velocity network and how to call it: `bind(params, labels)` is the field (x, t) -> dx/dt that the
    sampler, the likelihood and the loss integrate or regress.

    x is float [B, ...] in model space and t a float scalar or [B] in [0, 1]. Image networks (the DDPM
    UNet) see 1000 t and, when class-conditional, the labels int [B]; vector networks see t themselves.
    """
    net: Any
    images: bool
    num_classes: Optional[int]

    def init(self, key, x, labels=None):
        t = jnp.zeros((x.shape[0],), jnp.float32)
        if self.images:
            return self.net.init({"params": key}, x, t, labels if self.num_classes else None, train=False)["params"]
        return self.net.init({"params": key}, x, t)["params"]

    def bind(self, params, labels=None, train=False, dropout_key=None):
        def velocity(x, t):
            t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
            if not self.images:
                return self.net.apply({"params": params}, x, t)  # VelocityMLP scales t itself
            rngs = {"dropout": dropout_key} if train else {}
            y = labels if self.num_classes else None
            return self.net.apply({"params": params}, x, TIME_SCALE * t, y, train=train, rngs=rngs)
        return velocity


def velocity_field(model: VelocityConfig, info) -> VelocityField:
    """The velocity network for `info`'s data (see `VelocityConfig`)."""
    images = info.num_bits is not None
    num_classes = info.num_classes if images and model.class_conditional else None
    if images:
        return VelocityField(unet_from_config(model, num_classes, image_shape=info.shape), True, num_classes)
    from gm.nn.velocity import VelocityMLP
    return VelocityField(VelocityMLP(hidden=model.hidden, time_features=model.time_features, time_scale=TIME_SCALE,
                                     activation=model.activation), False, None)


def to_model_space(key, batch, info):
    """A batch -> float32 [B, ...]: images uniformly dequantized with `key` into [-1, 1), or the 2-D
    points as they are."""
    if info.num_bits is not None:
        return dist.symmetric_dequantize(key, batch["image"], info.num_bits)
    return batch["x"].astype(jnp.float32)


def data_log_prob(field, params, key, batch, info, fm: FlowMatchingConfig):
    """log P of a batch under the ODE model -> (nats [B], nfe of the likelihood solve).

    Images: the dequantization lower bound on the discrete log P(x) at info.num_bits (one dequantization
    draw; with Hutchinson, one probe per example). 2-D data: the continuous log-density. `fm` sets the
    solver and the divergence.
    """
    data_key, probe_key = jax.random.split(key)
    log_density, nfe = log_likelihood(field.bind(params, batch.get("label")), to_model_space(data_key, batch, info),
                                      probe_key, divergence=fm.divergence_for(info.num_dims), probe=fm.probe,
                                      **fm.solver_options())
    if field.images:
        log_density = dist.discrete_log_prob_from_continuous(log_density, info.num_dims, info.num_bits, scale=2.0)
    return log_density, nfe


def point_sampler(points):
    """(key, num) -> num rows of `points` [N, ...], float32: distinct rows in random order when num <= N
    (a batch of a shuffled set; every test point once when num = N), else drawn with replacement."""
    points = jnp.asarray(points, jnp.float32)
    n = points.shape[0]

    def draw(key, num):
        if num <= n:
            return points[jax.random.permutation(key, n)[:num]]
        return points[jax.random.randint(key, (num,), 0, n)]

    return draw


def source_samplers(source: str, info):
    """(train, test) samplers of config.flow_matching.source for `info`'s data; (None, None) for
    'gaussian' (N(0, I))."""
    if source == "gaussian":
        return None, None
    points = gm_data.load(source)
    if info.num_bits is not None or tuple(points.info.shape) != tuple(info.shape):
        raise ValueError(f"config.flow_matching.source={source!r} has points of shape {tuple(points.info.shape)}, "
                         f"not the data's {tuple(info.shape)}; use 'gaussian' or a point set of the data's shape.")
    return point_sampler(points.train["x"]), point_sampler(points.test["x"])


def make(settings: Settings, info) -> Method:
    """Flow matching on `info`'s data -> Method (see `VelocityConfig` and `FlowMatchingConfig`).

    `log_prob` is in nats per example: for images the dequantization lower bound on log P(x) at
    info.num_bits (noisy but unbiased with Hutchinson), for 2-D data the continuous log-density.
    """
    fm = settings.flow_matching
    train_source, test_source = source_samplers(fm.source, info)
    path = path_from_name(fm.path, fm.sigma_min)
    field = velocity_field(settings.model, info)
    images = field.images

    def init(key, batch):
        return field.init(key, to_model_space(key, batch, info), batch.get("label"))  # only the shapes matter

    def loss(params, key, batch):
        data_key, loss_key, dropout_key = jax.random.split(key, 3)
        velocity = field.bind(params, batch.get("label"), train=True, dropout_key=dropout_key)
        value = cfm_loss(velocity, path, loss_key, to_model_space(data_key, batch, info), fm.coupling, train_source)
        return value, {"loss": value}

    def sample_fn(params, key, num):
        label_key, noise_key = jax.random.split(key)
        labels = jax.random.randint(label_key, (num,), 0, info.num_classes)
        x, _ = sample(field.bind(params, labels), noise_key, (num,) + tuple(info.shape),
                      temperature=fm.temperature, source=test_source, **fm.solver_options())
        if images:
            return dist.dequantized_to_levels((x + 1.0) / 2.0, info.num_bits)  # model space is [-1, 1)
        return x

    def log_prob(params, key, batch):
        return data_log_prob(field, params, key, batch, info, fm)[0]

    return Method(init=init, loss=loss, sample=sample_fn, log_prob=log_prob if train_source is None else None,
                  log_prob_is_bound=images)
