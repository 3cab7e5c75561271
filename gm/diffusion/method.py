"""Diffusion as a `gm.method.Method`: DDPM and improved DDPM on the UNet, with classifier-free guidance.

config.diffusion fields (those after `clip_denoised` are optional, with the defaults shown):

  schedule, num_timesteps, beta_start, beta_end   the noise schedule ('linear' or 'cosine')
  var_type        'fixedlarge' | 'fixedsmall' | 'learned_range' (the network also outputs v)
  sampler         'ancestral' | 'ddim' | 'ode' (the probability-flow ODE)
  ddim_steps, ddim_eta, clip_denoised
  loss='simple'   'simple' (L_simple) | 'hybrid' (L_simple + lambda L_vlb; needs 'learned_range')
  timestep_sampling='uniform'   'uniform' | 'importance' (with importance_history=10 values per t and
                  importance_uniform_prob=0.001)
  sample_steps=0  ancestral sampling over a respaced chain of this many steps (0: all T); also a
                  section string such as "10,20,30" (see `schedule.space_timesteps`)
  ode_solver='dopri5', ode_steps=100, ode_rtol=1e-5, ode_atol=1e-5   the probability-flow ODE
  label_dropout=0.0   with config.model.class_conditional: the probability of training on the null
                  class, which makes classifier-free guidance possible
  guidance_weight=0.0 w in eps = (1 + w) eps(x, y) - w eps(x, null) (needs label_dropout > 0)

Data are scaled to [-1, 1]; `log_prob` is the variational bound over all T steps (nats per example,
with the learned variance when there is one).
"""
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gm import checks
from gm import distributions as dist
from gm.diffusion import losses, process, samplers, schedule as schedule_lib
from gm.method import Method
from gm.train import state as state_lib

SAMPLERS = ("ancestral", "ddim", "ode")


class Sampling(NamedTuple):
    """How to sample: the fields of config.diffusion that do not change training."""
    sampler: str = "ancestral"
    sample_steps: object = 0  # int (0: all T) or a section string, ancestral only
    ddim_steps: int = 50
    ddim_eta: float = 0.0
    ode_solver: str = "dopri5"
    ode_steps: int = 100
    ode_rtol: float = 1e-5
    ode_atol: float = 1e-5
    guidance_weight: float = 0.0
    clip_denoised: bool = True


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


def sampling_from_config(d):
    """config.diffusion -> Sampling, validated."""
    s = Sampling(**{f: d.get(f, default) for f, default in Sampling._field_defaults.items()})
    if s.sampler not in SAMPLERS:
        raise ValueError(f"Unknown config.diffusion.sampler {s.sampler!r}; use one of {SAMPLERS}.")
    return s


def check_unet_config(model, image_shape):
    """Every UNet field of config.model against images of `image_shape` [H, W, C]; one sentence each."""
    checks.sizes(model, "config.model", positive=("ch", "ch_mult", "num_heads"), nonnegative=("num_res_blocks",))
    checks.require(model.ch >= 4, "config.model.ch", model.ch, "at least 4 (the timestep embedding's width)")
    checks.require(len(model.ch_mult) > 0, "config.model.ch_mult", model.ch_mult, "a non-empty tuple")
    checks.number_in(model.dropout, "config.model.dropout", 0.0, 1.0)
    checks.dtype(model.get("dtype", "float32"), "config.model.dtype")
    height, width = image_shape[:2]
    factor = 2 ** (len(model.ch_mult) - 1)
    checks.require(height % factor == 0 and width % factor == 0, "config.model.ch_mult", model.ch_mult,
                   f"short enough for {height}x{width} images (each level but the last halves them, so "
                   f"2 ** (levels - 1) must divide both)")
    resolutions = [height // 2 ** i for i in range(len(model.ch_mult))]
    checks.require(set(model.attn_resolutions) <= set(resolutions), "config.model.attn_resolutions",
                   tuple(model.attn_resolutions), f"some of this UNet's resolutions {tuple(resolutions)}")
    heads = model.get("num_heads", 1)
    widths = [model.ch * m for r, m in zip(resolutions, model.ch_mult) if r in model.attn_resolutions]
    checks.require(all(w % heads == 0 for w in widths + [model.ch * model.ch_mult[-1]]), "config.model.num_heads",
                   heads, "a divisor of the width of every attention block")


def unet_from_config(model, num_embeddings=None, out_ch=None, image_shape=None):
    """config.model (ch, ch_mult, num_res_blocks, attn_resolutions, dropout, dtype; optional num_heads,
    scale_shift_norm) -> the UNet, with `num_embeddings` class embeddings and `out_ch` outputs. With
    `image_shape` the fields are checked against it first (`check_unet_config`)."""
    from gm.nn.unet import UNet  # imported here so the schedule math loads without Flax modules

    if image_shape is not None:
        check_unet_config(model, image_shape)

    return UNet(ch=model.ch, ch_mult=tuple(model.ch_mult), num_res_blocks=model.num_res_blocks,
                attn_resolutions=tuple(model.attn_resolutions), dropout=model.dropout,
                num_heads=model.get("num_heads", 1), scale_shift_norm=model.get("scale_shift_norm", False),
                num_classes=num_embeddings, out_ch=out_ch, dtype=jnp.dtype(model.get("dtype", "float32")))


def build(config, info):
    """config + dataset info -> Diffusion (validates every diffusion field before any training)."""
    if info.num_bits is None:
        raise ValueError(f"Diffusion needs image data; config.data.name={info.name!r} is not an image dataset.")
    d, m = config.diffusion, config.model
    checks.positive_int(d.num_timesteps, "config.diffusion.num_timesteps")
    if d.schedule == "linear":
        checks.number_in(d.beta_start, "config.diffusion.beta_start", 0.0, 1.0, low_open=True)
        checks.number_in(d.beta_end, "config.diffusion.beta_end", d.beta_start, 1.0)
    checks.number_in(d.get("ddim_eta", 0.0), "config.diffusion.ddim_eta", 0.0, 1.0, high_open=False)
    checks.positive_int(d.get("ddim_steps", 1), "config.diffusion.ddim_steps")
    checks.positive_int(d.get("importance_history", 1), "config.diffusion.importance_history")
    checks.number_in(d.get("importance_uniform_prob", 0.0), "config.diffusion.importance_uniform_prob", 0.0, 1.0,
                     high_open=False)
    betas = schedule_lib.betas_from_name(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)
    losses.check_loss(d.get("loss", "hybrid" if d.var_type == "learned_range" else "simple"), d.var_type)
    label_dropout = float(d.get("label_dropout", 0.0))
    if not 0.0 <= label_dropout < 1.0:
        raise ValueError(f"config.diffusion.label_dropout must be in [0, 1), got {label_dropout}.")
    num_classes = info.num_classes if m.class_conditional else None
    if label_dropout and not num_classes:
        raise ValueError("config.diffusion.label_dropout needs a class-conditional model: "
                         "set config.model.class_conditional=True.")
    null_label = num_classes if label_dropout else None
    num_embeddings = None if num_classes is None else num_classes + (1 if label_dropout else 0)
    out_ch = process.output_channels(info.shape[-1], d.var_type)
    net = unet_from_config(m, num_embeddings, out_ch, info.shape)
    return Diffusion(betas, schedule_lib.make_schedule(betas), net, d.var_type, info.num_bits,
                     tuple(info.shape), num_classes, null_label)


def _check_sampling(diff, s):
    if s.guidance_weight and diff.null_label is None:
        raise ValueError("config.diffusion.guidance_weight needs a model trained for guidance: set "
                         "config.model.class_conditional=True and config.diffusion.label_dropout > 0.")
    if s.sampler == "ancestral" and s.sample_steps:
        try:
            schedule_lib.space_timesteps(len(diff.betas), s.sample_steps)
        except ValueError as e:
            raise ValueError(f"config.diffusion.sample_steps={s.sample_steps!r} does not respace the chain: "
                             f"{e}") from None
    if s.sampler == "ddim":
        samplers.ddim_timesteps(len(diff.betas), s.ddim_steps)


def sample(diff, s, params, key, num, labels=None, guidance_weight=None):
    """`num` samples as uint8 levels [num, H, W, C] at the data's bit depth.

    s: Sampling. labels int [num] for a class-conditional model (default: uniformly random classes).
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
                                 s.clip_denoised)
    elif s.sampler == "ode":
        x, _ = samplers.ode_sample(diff.sched, model_fn, sample_key, shape, s.ode_solver, s.ode_steps,
                                   s.ode_rtol, s.ode_atol, s.clip_denoised)
    elif s.sample_steps and s.sample_steps != len(diff.betas):
        respaced = schedule_lib.respace(diff.betas, s.sample_steps)
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


def importance_train_step(diff, loss_name, label_dropout, uniform_prob):
    """A `gm.train.state.train_step` that samples timesteps by importance and keeps each timestep's
    loss history in `state.extra['loss_history']` (a `losses.LossHistory` as a dict)."""
    num_timesteps = diff.sched.num_timesteps

    def loss_with_sums(params, key, batch, probs):
        value, metrics, per_example, t = training_loss(diff, loss_name, label_dropout, params, key, batch, probs)
        sums, counts = losses.timestep_loss_sums(t, per_example, num_timesteps)
        return value, {**metrics, "t_loss_sums": sums, "t_counts": counts}

    def train_step(state, batch, key, *, optimizer, ema_decay, **strategy):
        history = losses.LossHistory(**state.extra["loss_history"])
        probs = losses.importance_probs(history, uniform_prob)
        new, metrics = state_lib.train_step(state, batch, key, loss_fn=functools.partial(loss_with_sums, probs=probs),
                                            optimizer=optimizer, ema_decay=ema_decay, **strategy)
        sums, counts = metrics.pop("t_loss_sums"), metrics.pop("t_counts")
        updated = losses.update_loss_history(history, sums, counts)
        # A skipped (non-finite) step leaves the history as it was, like the parameters.
        updated = jax.tree.map(lambda a, b: jnp.where(metrics["finite"] > 0, a, b), updated, history)
        return new.replace(extra={"loss_history": updated._asdict()}), metrics

    return train_step


def make(config, info):
    """Diffusion on images of `info.shape` at `info.num_bits` -> Method (see the module docstring)."""
    d = config.diffusion
    diff = build(config, info)
    s = sampling_from_config(d)
    _check_sampling(diff, s)
    loss_name = d.get("loss", "hybrid" if d.var_type == "learned_range" else "simple")
    label_dropout = float(d.get("label_dropout", 0.0))
    timestep_sampling = d.get("timestep_sampling", "uniform")
    if timestep_sampling not in losses.TIMESTEP_SAMPLING:
        raise ValueError(f"Unknown config.diffusion.timestep_sampling {timestep_sampling!r}; "
                         f"use one of {losses.TIMESTEP_SAMPLING}.")

    def init(key, batch):
        x = dist.levels_to_symmetric(batch["image"], diff.num_bits)
        y = batch["label"] if diff.num_classes else None
        return diff.net.init({"params": key}, x, jnp.zeros(x.shape[0], jnp.int32), y, train=False)["params"]

    def loss(params, key, batch):
        value, metrics, _, _ = training_loss(diff, loss_name, label_dropout, params, key, batch)
        return value, metrics

    def log_prob(params, key, batch):
        # A class-conditional model's bound is on log p(x | y) with the batch's labels; guidance has none.
        x0 = dist.levels_to_symmetric(batch["image"], diff.num_bits)
        model_fn = diff.model_fn(params, batch["label"])
        return -process.vlb(diff.sched, model_fn, key, x0, diff.num_bits, diff.var_type, s.clip_denoised)

    train_step, init_extra = None, None
    if timestep_sampling == "importance":
        history = int(d.get("importance_history", 10))
        train_step = importance_train_step(diff, loss_name, label_dropout,
                                           float(d.get("importance_uniform_prob", 0.001)))
        init_extra = lambda: {"loss_history": losses.init_loss_history(len(diff.betas), history)._asdict()}  # noqa: E731
    return Method(init=init, loss=loss, sample=functools.partial(sample, diff, s), log_prob=log_prob,
                  log_prob_is_bound=True, train_step=train_step, init_extra=init_extra)
