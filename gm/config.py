"""Configs in layers, typed once at the boundary where a run starts.

A run's ConfigDict is built in layers, each stating only what it changes:

    base_config()                 seed, data, train, optim, sample, eval, parallel (the sections below)
    + a family's sections         `gm.families.default_config(name)`: its Settings dataclass's defaults
    + an experiment's get_config  the paper's deviations; `variant(config, arg, smoke=...)` for 'smoke'
                                  (most start from `offline_smoke`: the digits, tiny runs)
    + the command line            --config.a.b=value

When a run starts, `parse(cls, section, 'config.x')` checks every field of a section against its frozen
dataclass (type, range, choice, cross-field rules) and returns the typed object; a bad value is one
sentence naming its `config.` field. Library code takes those objects or plain arguments, never a
ConfigDict and never a field name to quote.

A section is a frozen dataclass whose fields carry their type (bool, int, float, str, Literal choices,
tuples, nested sections) and, through `setting(default, check)`, a range check from `gm.checks`; an
optional method `check(self, name)` adds rules that span fields. `to_config` turns the defaults back
into a ConfigDict, so every default is stated once, in the dataclass.
"""
import dataclasses
import functools
import numbers
import typing
from typing import Any, Callable, Literal, Optional, Tuple, Union

import ml_collections

from gm import checks, parallel

Check = Callable[[Any, str], Any]  # (value, 'config.a.b') -> the value (converted), or raise one sentence


def setting(default, check: Optional[Check] = None):
    """A dataclass field with its default and an extra check beyond its type (e.g. `checks.positive_int`)."""
    return dataclasses.field(default=default, metadata={"check": check} if check else {})


# --- the checks a field can carry -------------------------------------------------------------------------

def interval(low, high, *, low_open=False, high_open=True) -> Check:
    """A number between `low` and `high` (None: unbounded), by default [low, high)."""
    return functools.partial(_number_in, low=low, high=high, low_open=low_open, high_open=high_open)


def _number_in(value, field, *, low, high, low_open, high_open):
    return checks.number_in(value, field, low, high, low_open=low_open, high_open=high_open)


def at_least(low: int) -> Check:
    """An integer >= low."""
    def check(value, field):
        checks.require(checks.is_int(value) and value >= low, field, value, f"an integer >= {low}")
        return int(value)
    return check


def positive_entries(value, field):
    """A tuple of positive integers (network widths, channel multipliers)."""
    checks.require(all(checks.is_int(v) and v > 0 for v in value), field, tuple(value), "a tuple of positive integers")
    return tuple(int(v) for v in value)


positive = checks.positive_int
nonnegative = checks.nonnegative_int


# --- parsing a section ------------------------------------------------------------------------------------

def parse(cls, section, name: str):
    """A ConfigDict / dict section (None: every default) -> a checked instance of the dataclass `cls`.

    Every field is checked against its type and `setting` check, nested sections recursively, then
    `cls.check(self, name)` when defined. `name` is the section's full name, e.g. 'config.optim', so a
    message names the field to edit. An unknown field is an error (a typo must not pass silently).
    """
    if section is None:
        section = {}
    if isinstance(section, cls):  # a nested section's default
        section = dataclasses.asdict(section)
    if not hasattr(section, "items"):
        raise ValueError(f"{name} must be a section of fields, got {section!r}.")
    values = dict(section.items())
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{name} has no field {unknown[0]!r}; its fields are {', '.join(fields)}.")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in fields.values():
        full = f"{name}.{field.name}"
        value = values.get(field.name, _default(field))
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            kwargs[field.name] = parse(hint, value, full)
            continue
        value = _check_type(value, hint, full)
        check = field.metadata.get("check")
        kwargs[field.name] = check(value, full) if check else value
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(name)
    return obj


def _default(field):
    return field.default  # every config field has one (frozen sections are their own defaults)


def _check_type(value, hint, field):
    """`value` as the annotation `hint` says (bool, int, float, str, Literal, tuple, Union), or one sentence."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        entry = args[0] if len(args) == 2 and args[1] is ... else None  # Tuple[T, ...]: any length
        checks.require(isinstance(value, (tuple, list)) and (entry is not None or len(value) == len(args)), field,
                       value, "a tuple")
        entries = [entry] * len(value) if entry is not None else args
        try:
            return tuple(_check_type(v, a, field) for v, a in zip(value, entries))
        except ValueError:
            raise ValueError(f"{field} must be a tuple of {_type_name(entry, plural=True)}, got {value!r}.") from None
    if origin is Union:
        for option in args:
            try:
                return _check_type(value, option, field)
            except ValueError:
                continue
        checks.require(False, field, value, " or ".join(_type_name(a) for a in args))
    if origin is Literal:
        return checks.one_of(value, field, args)
    checks.require(_is_a(value, hint), field, value, _type_name(hint))
    return float(value) if hint is float else int(value) if hint is int else value


def _is_a(value, hint):
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return checks.is_int(value)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    return isinstance(value, hint)


def _type_name(hint, plural=False):
    if typing.get_origin(hint) is Literal:
        return f"{'values' if plural else 'a value'} in {typing.get_args(hint)}"
    names = {bool: ("True or False", "True or False values"), int: ("an integer", "integers"),
             float: ("a number", "numbers"), str: ("a string", "strings")}
    return names.get(hint, (str(hint), str(hint)))[plural]


def to_config(obj) -> ml_collections.ConfigDict:
    """A section dataclass instance -> the ConfigDict of its values (nested sections become sub-dicts)."""
    return ml_collections.ConfigDict(dataclasses.asdict(obj))


def parse_sections(cls, config):
    """The dataclass `cls` whose fields are whole config sections (e.g. a family's Settings: model,
    diffusion) -> its instance, each section parsed under its own name ('config.model', ...), then
    `cls.check(self)` when defined."""
    hints = typing.get_type_hints(cls)
    obj = cls(**{f.name: parse(hints[f.name], config.get(f.name, _default(f)), f"config.{f.name}")
                 for f in dataclasses.fields(cls)})
    if hasattr(obj, "check"):
        obj.check()  # rules across sections
    return obj



# --- the base sections ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DataConfig:
    """config.data. name: a dataset of `gm.data.DATASETS` (checked when it loads); data_dir: the TFDS
    folder; manual_dir: a folder holding the raw download (offline machines); random_flip: mirror
    training images left-right with probability 1/2; context and tokenizer ('bytes' or 'bpeN'): the
    tokens per example and how text becomes tokens (text datasets only)."""
    name: str = "digits"
    data_dir: str = ""
    manual_dir: str = ""
    random_flip: bool = False
    context: int = setting(256, positive)
    tokenizer: str = "bytes"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """config.train: the global batch (split over every device of every process), the loop's length and
    periods, what a non-finite update does, how many steps one compiled call runs, and micro_batches: each
    step's gradient averaged over that many slices of the batch, one slice in memory at a time (gradient
    accumulation: the batch's step at a fraction of its activation memory)."""
    batch_size: int = setting(128, positive)
    num_steps: int = setting(100_000, nonnegative)
    log_every: int = setting(100, positive)
    checkpoint_every: int = setting(10_000, positive)
    keep_checkpoints: int = setting(3, positive)
    sample_every: int = setting(20_000, positive)
    num_samples: int = setting(64, positive)  # images in each sample grid
    on_nonfinite: Literal["stop", "skip"] = "stop"
    steps_per_call: int = setting(1, positive)
    micro_batches: int = setting(1, positive)

    def check(self, name):
        parallel.check_batch_size(self.batch_size, f"{name}.batch_size")
        parallel.check_micro_batches(self.batch_size, self.micro_batches, f"{name}.micro_batches",
                                     f"{name}.batch_size")
        for field in ("log_every", "checkpoint_every", "sample_every"):
            check_multiple(getattr(self, field), f"{name}.{field}", self.steps_per_call, name)


def check_multiple(period, field, steps_per_call, train_name):
    """A period of the loop must be a multiple of the steps one compiled call runs."""
    checks.require(period % steps_per_call == 0, field, period,
                   f"a multiple of {train_name}.steps_per_call={steps_per_call} (steps run {steps_per_call} at a time)")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """config.optim: global-norm clipping (grad_clip, 0: none) -> Adam(W) or RMSProp (decay b2) on a
    learning rate warmed up linearly over warmup_steps, then times lr_decay every step, or (cosine_steps
    > 0) cosine-decayed over cosine_steps to learning_rate * final_lr_fraction and held there, or
    (linear_decay_steps > 0) held until step linear_decay_start, then decayed linearly to learning_rate *
    final_lr_fraction over linear_decay_steps (CycleGAN's 100 + 100 epochs); eps_root > 0
    keeps Adam's square root differentiable at 0 (needed to differentiate through updates); weight_decay
    (AdamW, decoupled) applies to every parameter or (weight_decay_on='matrices', GPT-2's choice) to
    those of two or more dimensions only; ema_decay:
    the parameter EMA that samples and evaluations use (0: the parameters themselves)."""
    name: Literal["adam", "rmsprop"] = "adam"
    learning_rate: float = setting(1e-3, interval(0.0, None, low_open=True))
    warmup_steps: int = setting(0, nonnegative)
    lr_decay: float = setting(1.0, interval(0.0, 1.0, low_open=True, high_open=False))
    cosine_steps: int = setting(0, nonnegative)
    linear_decay_start: int = setting(0, nonnegative)
    linear_decay_steps: int = setting(0, nonnegative)
    final_lr_fraction: float = setting(0.0, interval(0.0, 1.0, high_open=False))
    grad_clip: float = setting(0.0, interval(0.0, None))
    b1: float = setting(0.9, interval(0.0, 1.0))
    b2: float = setting(0.999, interval(0.0, 1.0))
    eps: float = setting(1e-8, interval(0.0, None))
    eps_root: float = setting(0.0, interval(0.0, None))
    weight_decay: float = setting(0.0, interval(0.0, None))
    weight_decay_on: Literal["all", "matrices"] = "all"
    ema_decay: float = setting(0.999, interval(0.0, 1.0))

    def check(self, name):
        if self.cosine_steps and self.lr_decay != 1.0:
            raise ValueError(f"{name}.lr_decay={self.lr_decay} and {name}.cosine_steps={self.cosine_steps} are two "
                             f"decays; set {name}.lr_decay=1.0 for the cosine one or {name}.cosine_steps=0.")
        if self.linear_decay_steps and (self.cosine_steps or self.lr_decay != 1.0):
            raise ValueError(f"{name}.linear_decay_steps={self.linear_decay_steps} is a decay of its own; set "
                             f"{name}.cosine_steps=0 and {name}.lr_decay=1.0 with it.")
        if self.linear_decay_start and not self.linear_decay_steps:
            raise ValueError(f"{name}.linear_decay_start={self.linear_decay_start} starts no decay; set "
                             f"{name}.linear_decay_steps > 0 or leave the start at 0.")
        if self.linear_decay_steps and self.linear_decay_start < self.warmup_steps:
            raise ValueError(f"{name}.linear_decay_start={self.linear_decay_start} falls in the warm-up; set it to "
                             f"at least {name}.warmup_steps={self.warmup_steps}.")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """config.sample: --mode=sample draws `num` samples, `batch_size` per compiled call."""
    num: int = setting(64, positive)
    batch_size: int = setting(64, positive)


METRICS = ("bpd", "fid", "recon", "translation")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """config.eval: what --mode=eval and the in-training evaluations (every `every` steps, 0: none) measure.

    metrics: any of 'bpd' (test negative log-likelihood through `gm.metrics.likelihood`), 'fid' (FID / IS
      / KID of samples, `gm.metrics.sample_quality`), 'recon' (test reconstruction error) and
      'translation' (a translation family's test translations: cycle error, FID of each direction,
      class kept; `gm.metrics.translation`); a model that cannot provide one skips it.
    batch_size, num_examples: test batches (a multiple of the device count) and how many examples (0: all).
    features: 'auto' (Inception for CIFAR-10, the domain classifier for the digits, MNIST and the audio
      sets), 'inception', 'digits', 'mnist', 'notes' or 'sc09'; num_samples, sample_batch_size: samples
      for FID / IS (50,000: the image papers').
    reference: 'train' or 'test' (that split's statistics) or an .npz of `gm.metrics.reference_stats`.
    inception_weights: the FID Inception weights file (else $GM_INCEPTION_WEIGHTS); kid: also report KID.
    """
    metrics: Tuple[Literal[METRICS], ...] = ("bpd",)
    every: int = setting(0, nonnegative)
    batch_size: int = setting(500, positive)
    num_examples: int = setting(0, nonnegative)
    features: Literal["auto", "inception", "digits", "mnist", "notes", "sc09"] = "auto"
    num_samples: int = setting(50_000, positive)
    sample_batch_size: int = setting(512, positive)
    reference: str = "train"
    inception_weights: str = ""
    kid: bool = False


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """config.parallel. strategy: 'sharded' (jit over a mesh of every device) or 'pmap'; distributed:
    start multi-process JAX (or set GM_DISTRIBUTED=1); coordinator_address ('host:port' of process 0),
    num_processes and process_id for clusters JAX cannot detect by itself ('' and -1: left to JAX)."""
    strategy: Literal[parallel.STRATEGIES] = "sharded"
    distributed: bool = False
    coordinator_address: str = ""
    num_processes: int = setting(-1, at_least(-1))
    process_id: int = setting(-1, at_least(-1))

    def check(self, name):
        if self.num_processes >= 0:
            checks.require(0 <= max(self.process_id, 0) < self.num_processes, f"{name}.process_id", self.process_id,
                           f"in [0, {self.num_processes}) for {name}.num_processes={self.num_processes}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The sections every run has, typed: what the trainer reads. `family` names the registry entry
    (`gm.families`) whose sections the rest of the config holds."""
    family: str = ""
    seed: int = setting(0, nonnegative)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    optim: OptimConfig = OptimConfig()
    sample: SampleConfig = SampleConfig()
    eval: EvalConfig = EvalConfig()
    parallel: ParallelConfig = ParallelConfig()

    def check(self, name):
        check_eval_period(self, "config.train")


def check_eval_period(run: RunConfig, train_name: str):
    """config.eval.every, like the loop's own periods, must be a multiple of the steps per call."""
    if run.eval.every:
        check_multiple(run.eval.every, "config.eval.every", run.train.steps_per_call, train_name)


BASE_SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig))


def base_config() -> ml_collections.ConfigDict:
    """Every base section at its defaults: the first layer of every run's config."""
    return to_config(RunConfig())


def parse_run(config) -> RunConfig:
    """The base sections of a run's config, checked; other top-level fields are the family's or the
    experiment's own and are left to them."""
    return parse(RunConfig, {k: config[k] for k in BASE_SECTIONS if k in config}, "config")


# --- variants ----------------------------------------------------------------------------------------------

def offline_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The layer most experiments' 'smoke' variants start from: the bundled 4-bit 8x8 digits, a batch of
    32, 200 steps with frequent logs and checkpoints, a faster EMA, small evaluation batches."""
    config.data.update(name="digits", random_flip=False)  # digits are not mirror-symmetric
    config.train.update(batch_size=32, num_steps=200, log_every=25, checkpoint_every=100, sample_every=100,
                        num_samples=16)
    config.optim.update(ema_decay=0.99)
    config.eval.update(batch_size=120)
    config.sample.update(num=64, batch_size=64)
    return config


def variant(config: ml_collections.ConfigDict, arg, experiment: str, **variants) -> ml_collections.ConfigDict:
    """`config` for `get_config(arg)`: unchanged for no arg, else changed in place by `variants[arg]`
    (e.g. smoke=fn); an unknown name is one sentence naming the ones `experiment` has."""
    if not arg:
        return config
    if arg not in variants:
        names = " or ".join(repr(v) for v in variants) or "no variant"
        raise ValueError(f"Unknown config variant {arg!r} for {experiment}; use {names} or nothing.")
    variants[arg](config)
    return config
