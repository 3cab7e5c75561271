"""Diffusion as a `gm.method.Method`: DDPM and improved DDPM on the UNet, with classifier-free guidance.

The family's config sections are `Settings`: config.model (`gm.nn.unet.UNetConfig`, the UNet) and
config.diffusion (`DiffusionConfig`: the schedule, the objective and how to sample). Data are scaled to
[-1, 1]; `log_prob` is the variational bound over all T steps (nats per example, with the learned
variance when there is one).
"""
import dataclasses
import functools
from typing import Literal, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from gm import checks, ode, optim
from gm import distributions as dist
from gm.config import interval, positive, setting
from gm.diffusion import dpm_solver, losses, process, samplers, schedule as schedule_lib, sigma_sampling
from gm.diffusion.sigma_sampling import SolverConfig
from gm.method import Method, Training
from gm.nn.unet import UNetConfig, unet_from_config

SAMPLERS = ("ancestral", "ddim", "ode") + sigma_sampling.SAMPLERS


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """config.diffusion: the DDPM paper's settings by default.

    schedule, num_timesteps, beta_start, beta_end: the noise schedule ('linear' or 'cosine').
    var_type: 'fixedlarge' | 'fixedsmall' | 'learned_range' (the network also outputs v).
    loss: 'simple' (L_simple) | 'hybrid' (L_simple + lambda L_vlb; needs 'learned_range').
    timestep_sampling: 'uniform' | 'importance' (importance_history values per t, mixed with
      importance_uniform_prob of the uniform distribution).
    label_dropout: with config.model.class_conditional, the probability of training on the null class,
      which makes classifier-free guidance possible; guidance_weight: w in eps = (1 + w) eps(x, y) -
      w eps(x, null) at sampling.
    sampler: 'ancestral' (over all T steps, or a respaced chain of sample_steps: a count or a section
      string such as "10,20,30", or "ddimK", see `schedule.space_timesteps`) | 'ddim' (ddim_steps,
      ddim_eta) | 'ode' (the probability-flow ODE through `gm.ode`: ode_solver, ode_steps, ode_rtol, ode_atol)
      | 'heun' | 'euler' | 'dpm_solver++' (in EDM's sigma space over config.diffusion.solver: EDM's
      samplers and DPM-Solver++ on this network; schedule 'timesteps' visits solver.steps of the trained
      timesteps, spaced by timestep_spacing, as DPM-Solver's 'time_uniform' does).
    timestep_spacing: which K of the T timesteps DDIM and "ddimK" respacing visit: 'trailing' (from
      t = T-1 for every K; the default), 'leading' (the DDIM paper's 0, T//K, ...; starts below T-1
      when K does not divide T) or 'linspace' (see `schedule.spaced_timesteps`).
    clip_denoised: clip the predicted x_0 to [-1, 1] when sampling and in the bound.
    """
    num_timesteps: int = setting(1000, positive)
    schedule: Literal[schedule_lib.SCHEDULES] = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    var_type: Literal[process.VAR_TYPES] = "fixedlarge"
    loss: Literal[losses.LOSSES] = "simple"
    timestep_sampling: Literal[losses.TIMESTEP_SAMPLING] = "uniform"
    importance_history: int = setting(10, positive)
    importance_uniform_prob: float = setting(0.001, interval(0.0, 1.0, high_open=False))
    label_dropout: float = setting(0.0, interval(0.0, 1.0))
    guidance_weight: float = setting(0.0, interval(0.0, None))
    sampler: Literal[SAMPLERS] = "ancestral"
    sample_steps: Union[int, str] = 0
    ddim_steps: int = setting(50, positive)
    ddim_eta: float = setting(0.0, interval(0.0, 1.0, high_open=False))
    timestep_spacing: Literal[schedule_lib.SPACINGS] = "trailing"
    ode_solver: Literal[ode.METHODS] = "dopri5"
    ode_steps: int = setting(100, positive)
    ode_rtol: float = setting(1e-5, interval(0.0, None, low_open=True))
    ode_atol: float = setting(1e-5, interval(0.0, None, low_open=True))
    clip_denoised: bool = True
    solver: SolverConfig = SolverConfig(steps=20, schedule="timesteps")

    def check(self, name):
        if self.schedule == "linear":
            checks.number_in(self.beta_start, f"{name}.beta_start", 0.0, 1.0, low_open=True)
            checks.number_in(self.beta_end, f"{name}.beta_end", self.beta_start, 1.0)
        losses.check_loss(self.loss, self.var_type)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The diffusion family's config sections."""
    model: UNetConfig = UNetConfig()
    diffusion: DiffusionConfig = DiffusionConfig()

    def check(self):
        if self.diffusion.label_dropout and not self.model.class_conditional:
            raise ValueError("config.diffusion.label_dropout needs a class-conditional model: "
                             "set config.model.class_conditional=True.")


class Diffusion(NamedTuple):
    """A configured diffusion model: what `make`'s functions close over, usable on its own."""
    betas: np.ndarray          # float64 [T]
    sched: schedule_lib.Schedule
    net: object                # the UNet
    var_type: str
    num_bits: int
    shape: tuple               # one example, (H, W, C)
    num_classes: Optional[int]  # data classes when class-conditional, else None
    null_label: Optional[int]   # the "no class" label when trained with label dropout, else None

    def model_fn(self, params, labels=None, *, train=False, dropout_key=None):
        """(x_t, t) -> network output; labels [B] for a class-conditional model."""
        rngs = {"dropout": dropout_key} if train else {}
        y = labels if self.num_classes else None
        return lambda x, t: self.net.apply({"params": params}, x, t, y, train=train, rngs=rngs)


def build(settings: Settings, info) -> Diffusion:
    """Settings + dataset info -> Diffusion (the UNet checked against the data's shape)."""
    if not info.is_image:
        raise ValueError(f"Diffusion needs image data; config.data.name={info.name!r} is not an image dataset.")
    d, m = settings.diffusion, settings.model
    betas = schedule_lib.betas_from_name(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)
    num_classes = info.num_classes if m.class_conditional else None
    null_label = num_classes if d.label_dropout else None
    num_embeddings = None if num_classes is None else num_classes + (1 if d.label_dropout else 0)
    out_ch = process.output_channels(info.shape[-1], d.var_type)
    net = unet_from_config(m, num_embeddings, out_ch, info.shape)
    return Diffusion(betas, schedule_lib.make_schedule(betas), net, d.var_type, info.num_bits,
                     tuple(info.shape), num_classes, null_label)


def check_sampling(diff: Diffusion, s: DiffusionConfig) -> None:
    """The sampling fields of config.diffusion against the model: one sentence for a bad combination."""
    if s.guidance_weight and diff.null_label is None:
        raise ValueError("config.diffusion.guidance_weight needs a model trained for guidance: set "
                         "config.model.class_conditional=True and config.diffusion.label_dropout > 0.")
    if s.sampler == "ancestral" and s.sample_steps:
        try:
            schedule_lib.space_timesteps(len(diff.betas), s.sample_steps, s.timestep_spacing)
        except ValueError as e:
            raise ValueError(f"config.diffusion.sample_steps={s.sample_steps!r} does not respace the chain: "
                             f"{e}") from None
    if s.sampler == "ddim":
        samplers.ddim_timesteps(len(diff.betas), s.ddim_steps, s.timestep_spacing)
    if s.sampler in sigma_sampling.SAMPLERS:
        sigma_grid(diff, s)


def sigma_grid(diff: Diffusion, s: DiffusionConfig):
    """The noise levels config.diffusion.solver visits for this model (`sigma_sampling.sigma_grid`)."""
    num_timesteps = len(diff.betas)
    if not 1 <= s.solver.steps <= num_timesteps:
        raise ValueError(f"config.diffusion.solver.steps must be in [1, {num_timesteps}], got {s.solver.steps}.")
    ends = dpm_solver.schedule_sigmas(diff.sched, [0, num_timesteps - 1])  # [sigma_{T-1}, sigma_0, 0]
    timestep_sigmas = None
    if s.solver.schedule == "timesteps":
        timesteps = schedule_lib.spaced_timesteps(num_timesteps, s.solver.steps, s.timestep_spacing)
        timestep_sigmas = dpm_solver.schedule_sigmas(diff.sched, timesteps)
    return sigma_sampling.sigma_grid(s.solver, (ends[1], ends[0]), timestep_sigmas, field="config.diffusion.solver")


def sample(diff: Diffusion, s: DiffusionConfig, params, key, num: int, labels=None, guidance_weight=None):
    """`num` samples as uint8 levels [num, H, W, C] at the data's bit depth.

    s: how to sample (its sampler fields; `dataclasses.replace(s, sampler='ddim')` for another). labels int
    [num] for a class-conditional model (default: uniformly random classes).
    guidance_weight overrides s.guidance_weight and may be a traced scalar.
    """
    label_key, sample_key = jax.random.split(key)
    if diff.num_classes and labels is None:
        labels = jax.random.randint(label_key, (num,), 0, diff.num_classes)
    w = s.guidance_weight if guidance_weight is None else guidance_weight
    if diff.null_label is None and not (isinstance(w, (int, float)) and w == 0):
        raise ValueError("A guidance weight needs a model trained for guidance: set "
                         "config.model.class_conditional=True and config.diffusion.label_dropout > 0.")
    if diff.null_label is not None:
        # Two network passes per step (conditional and null halves of one batch), even at w = 0.
        model_fn = samplers.guided_model_fn(lambda x, t, y: diff.model_fn(params, y)(x, t), labels,
                                            diff.null_label, w)
    else:
        model_fn = diff.model_fn(params, labels)
    shape = (num,) + diff.shape
    if s.sampler == "ddim":
        x = samplers.ddim_sample(diff.sched, model_fn, sample_key, shape, s.ddim_steps, s.ddim_eta,
                                 s.clip_denoised, s.timestep_spacing)
    elif s.sampler in sigma_sampling.SAMPLERS:
        denoise = dpm_solver.denoiser_from_schedule(diff.sched, model_fn, diff.shape[-1], s.clip_denoised)
        x = sigma_sampling.sample(denoise, s.sampler, s.solver, sample_key, shape, sigma_grid(diff, s))
    elif s.sampler == "ode":
        x, _ = samplers.ode_sample(diff.sched, model_fn, sample_key, shape, s.ode_solver, s.ode_steps,
                                   s.ode_rtol, s.ode_atol, s.clip_denoised)
    elif s.sample_steps and s.sample_steps != len(diff.betas):
        respaced = schedule_lib.respace(diff.betas, s.sample_steps, s.timestep_spacing)
        x = samplers.ancestral_sample(respaced.schedule, samplers.respaced_model_fn(model_fn, respaced.timesteps),
                                      sample_key, shape, diff.var_type, s.clip_denoised)
    else:
        x = samplers.ancestral_sample(diff.sched, model_fn, sample_key, shape, diff.var_type, s.clip_denoised)
    return dist.symmetric_to_levels(x, diff.num_bits)


def training_loss(diff, loss_name, label_dropout, params, key, batch, probs=None):
    """(scalar loss, metrics, per-example losses [B], timesteps [B]) on a batch.

    probs [T]: importance-sampling probabilities of the timesteps (None: uniform).
    """
    x0 = dist.levels_to_symmetric(batch["image"], diff.num_bits)
    num, num_timesteps = x0.shape[0], diff.sched.num_timesteps
    t_key, noise_key, drop_key, dropout_key = jax.random.split(key, 4)
    if probs is None:
        t, weights = jax.random.randint(t_key, (num,), 0, num_timesteps), jnp.ones((num,))
    else:
        t, weights = losses.sample_timesteps(t_key, probs, num)
    labels = batch["label"]
    if diff.null_label is not None:
        labels = jnp.where(jax.random.uniform(drop_key, (num,)) < label_dropout, diff.null_label, labels)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    xt = process.q_sample(diff.sched, x0, t, noise)
    out = diff.model_fn(params, labels, train=True, dropout_key=dropout_key)(xt, t)
    terms = losses.per_example_losses(diff.sched, out, noise, x0, xt, t, diff.num_bits, diff.var_type)
    value = jnp.mean(weights * terms["loss"])
    metrics = {"loss": value, "mse": jnp.mean(terms["mse"])}
    if loss_name == "hybrid":
        metrics["vb"] = jnp.mean(terms["vb"])
    return value, metrics, terms["loss"], t


def importance_training(diff, loss_name, label_dropout, history, uniform_prob):
    """Training that samples timesteps by importance and keeps each timestep's loss history in
    `TrainState.extra['loss_history']` (a `losses.LossHistory` as a dict), updated after each step from
    the step's per-timestep loss sums (averaged over devices like the gradients)."""
    num_timesteps = diff.sched.num_timesteps

    def loss_fn(params, extra, key, batch):
        probs = losses.importance_probs(losses.LossHistory(**extra["loss_history"]), uniform_prob)
        value, metrics, per_example, t = training_loss(diff, loss_name, label_dropout, params, key, batch, probs)
        return value, metrics, losses.timestep_loss_sums(t, per_example, num_timesteps)

    def after(params, extra, sums_and_counts):
        history = losses.update_loss_history(losses.LossHistory(**extra["loss_history"]), *sums_and_counts)
        return params, {"loss_history": history._asdict()}

    def init_extra(params):
        return {"loss_history": losses.init_loss_history(num_timesteps, history)._asdict()}

    return Training(update=optim.gradient_update(loss_fn, after), init_extra=init_extra)


def make(settings: Settings, info) -> Method:
    """Diffusion on images of `info.shape` at `info.num_bits` -> Method (see the module docstring)."""
    d = settings.diffusion
    diff = build(settings, info)
    check_sampling(diff, d)

    def init(key, batch):
        x = dist.levels_to_symmetric(batch["image"], diff.num_bits)
        y = batch["label"] if diff.num_classes else None
        return diff.net.init({"params": key}, x, jnp.zeros(x.shape[0], jnp.int32), y, train=False)["params"]

    def loss(params, key, batch):
        value, metrics, _, _ = training_loss(diff, d.loss, d.label_dropout, params, key, batch)
        return value, metrics

    def log_prob(params, key, batch):
        # A class-conditional model's bound is on log p(x | y) with the batch's labels; guidance has none.
        x0 = dist.levels_to_symmetric(batch["image"], diff.num_bits)
        model_fn = diff.model_fn(params, batch["label"])
        return -process.vlb(diff.sched, model_fn, key, x0, diff.num_bits, diff.var_type, d.clip_denoised)

    training = None
    if d.timestep_sampling == "importance":
        training = importance_training(diff, d.loss, d.label_dropout, d.importance_history,
                                       d.importance_uniform_prob)
    return Method(init=init, loss=loss, sample=functools.partial(sample, diff, d), log_prob=log_prob,
                  log_prob_is_bound=True, training=training)
