"""Sampling in EDM's sigma space, for every diffusion model in gm: one config section and one dispatch.

A model enters sigma space as a denoiser D(x, sigma) (`gm.diffusion.edm`): an EDM network directly, a
score-SDE network through `sde.denoiser_from_eps`, a DDPM network through
`dpm_solver.denoiser_from_schedule`. Then EDM's Heun and Euler samplers and DPM-Solver++ run over a grid
of noise levels: Karras et al.'s, uniform in log sigma (log-SNR), or a DDPM model's own timesteps.
"""
import dataclasses
import math
from typing import Literal, Optional, Tuple

import numpy as np

from gm import checks
from gm.config import interval, positive, setting
from gm.diffusion import dpm_solver, edm

SAMPLERS = ("heun", "euler", "dpm_solver++")
SCHEDULES = ("karras", "loglinear", "timesteps")


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Sigma-space sampling: EDM's CIFAR-10 setting by default (18 levels, Karras schedule, rho 7, sigma
    from 80 to 0.002: 35 evaluations with Heun).

    steps: noise levels before the final 0 (Heun: 2 steps - 1 evaluations; Euler and DPM-Solver++: steps).
    schedule: 'karras' (rho), 'loglinear' (uniform in log sigma, i.e. in log-SNR: DPM-Solver's 'logSNR'),
      or 'timesteps' (a DDPM model's own timesteps, spaced by config.diffusion.timestep_spacing).
    sigma_min, sigma_max: the range, clamped to the noise levels the model was trained on.
    order: DPM-Solver++'s (1 is DDIM, 2 is 2M, 3 is 3M).
    s_churn, s_tmin, s_tmax, s_noise: EDM's stochastic sampler (s_churn = 0: deterministic).
    """
    steps: int = setting(18, positive)
    schedule: Literal[SCHEDULES] = "karras"
    rho: float = setting(7.0, interval(0.0, None, low_open=True))
    sigma_min: float = setting(0.002, interval(0.0, None, low_open=True))
    sigma_max: float = setting(80.0, interval(0.0, None, low_open=True))
    order: int = setting(2, interval(1, 3, high_open=False))
    s_churn: float = setting(0.0, interval(0.0, None))
    s_tmin: float = setting(0.0, interval(0.0, None))
    s_tmax: float = setting(math.inf, interval(0.0, None, high_open=False))
    s_noise: float = setting(1.0, interval(0.0, None))

    def check(self, name):
        checks.require(self.sigma_min < self.sigma_max, f"{name}.sigma_min", self.sigma_min,
                       f"below {name}.sigma_max={self.sigma_max}")


def sigma_grid(solver: SolverConfig, model_range: Tuple[float, float], timestep_sigmas=None,
               field: str = "config.solver") -> np.ndarray:
    """The descending noise levels of `solver`, float64 [steps + 1] ending in 0.

    model_range: (lowest, highest) sigma the model was trained on; the solver's range is clamped to it
    (as EDM's generate.py clamps to a network's). timestep_sigmas: a DDPM model's grid for 'timesteps'.
    """
    if solver.schedule == "timesteps":
        if timestep_sigmas is None:
            raise ValueError(f"{field}.schedule='timesteps' needs a discrete-time (DDPM) model; use 'karras' or "
                             f"'loglinear'.")
        return np.asarray(timestep_sigmas, np.float64)
    low, high = max(solver.sigma_min, model_range[0]), min(solver.sigma_max, model_range[1])
    if not low < high:
        raise ValueError(f"{field}.sigma_min and sigma_max ({solver.sigma_min}, {solver.sigma_max}) miss the model's "
                         f"noise levels ({model_range[0]:.4g}, {model_range[1]:.4g}); widen them.")
    if solver.schedule == "karras":
        return edm.karras_sigmas(solver.steps, low, high, solver.rho)
    return edm.loglinear_sigmas(solver.steps, low, high)


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations of `sample` with `steps` noise levels before the final 0."""
    return steps if sampler == "dpm_solver++" else edm.sampler_nfe(sampler, steps)


def sample(denoise, sampler: str, solver: SolverConfig, key, shape, sigmas, x_init: Optional[object] = None):
    """`sampler` over the descending `sigmas` (from `sigma_grid`) -> float32 samples of `shape` at sigma 0."""
    if sampler == "dpm_solver++":
        return dpm_solver.sample(denoise, key, shape, sigmas, solver.order, x_init=x_init)
    if sampler in ("heun", "euler"):
        return edm.sample(denoise, key, shape, sigmas, sampler, solver.s_churn, solver.s_tmin, solver.s_tmax,
                          solver.s_noise, x_init=x_init)
    raise ValueError(f"Unknown sigma-space sampler {sampler!r}; use one of {SAMPLERS}.")
