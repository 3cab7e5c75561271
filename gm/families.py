"""The registry: every model family by name, how to make it, its default config and its experiment.

    family = families.get("ddpm")
    config = families.default_config("ddpm")        # the base sections + the family's, at their defaults
    setup = families.parse(config)                  # every field checked, typed (one sentence if not)
    method = families.make(config, dataset.info)    # the same, then the Method of its (first) stage

A `Family` names the dataclass of its config sections (`settings`: e.g. config.model and
config.diffusion) and its stages. Most families have one stage; the VQ-VAE has two, the VQ-VAE and
then a prior over its codes, each trained in its own folder with its own train and optim sections, the
second made from the first's trained parameters. The trainer's command line, the experiments,
`experiments.compare`, `benchmarks.family` and the contract test all read this table; a family added
here gets all of them.
"""
import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Tuple

import ml_collections

from gm import (autoregressive, cyclegan, dalle, diffusion, flow_matching, flows, gan, gpt, stylegan2, text_gan, vae,
                vqvae, wavenet)
from gm.diffusion import continuous, vdm
from gm import config as config_lib
from gm.config import RunConfig
from gm.method import Method


@dataclasses.dataclass(frozen=True)
class Stage:
    """One trained stage: `make(settings, info, previous)` -> Method, where `previous` is the stage
    before's trained (EMA) parameters (None for the first). It trains in WORKDIR/name ('' : WORKDIR
    itself) with the config sections named by `train` and `optim`."""
    name: str
    make: Callable[[Any, Any, Any], Method]
    train: str = "train"
    optim: str = "optim"


@dataclasses.dataclass(frozen=True)
class Family:
    """name: the registry key (config.family); label: a row name for tables; settings: the frozen
    dataclass whose fields are the family's config sections; stages: what is trained, in order;
    experiment: the module under experiments/ with its paper configuration; preset: (dotted field,
    value) pairs this entry sets on the sections' defaults (several entries share a module); tiny:
    (dotted field, value) pairs that shrink the experiment's smoke networks where compiling them dominates
    a test (`with_tiny_networks`); check(run, settings): rules that span the family's and the base
    sections; modality: what it models ('image', which the image families also fit to 2-D points,
    'audio', 'text' or 'domains': two unpaired image domains to translate between)."""
    name: str
    label: str
    settings: type
    stages: Tuple[Stage, ...]
    experiment: str
    preset: Tuple[Tuple[str, Any], ...] = ()
    tiny: Tuple[Tuple[str, Any], ...] = ()
    check: Optional[Callable[[RunConfig, Any], None]] = None
    modality: str = "image"


def _one_stage(make):
    return (Stage("", lambda settings, info, previous: make(settings, info)),)


def _check_gan_batch(run, settings):
    gan.check_batch_size(settings, run.train.batch_size, run.train.micro_batches)


# One resolution of 16 channels with attention: every layer type of the DDPM-style UNets, compiled fast.
_TINY_UNET = (("model.ch", 16), ("model.ch_mult", (1,)), ("model.attn_resolutions", (8,)))

FAMILIES = {f.name: f for f in (
    Family("nade", "NADE (binarized)", autoregressive.Settings, _one_stage(autoregressive.make), "nade_mnist",
           preset=(("model.name", "nade"),)),
    Family("pixelcnn", "PixelCNN++", autoregressive.Settings, _one_stage(autoregressive.make), "pixelcnn_cifar",
           tiny=(("model.pixelcnn_pp.nr_resnet", 1), ("model.pixelcnn_pp.nr_filters", 8))),
    Family("vae", "VAE", vae.Settings, _one_stage(vae.make), "vae_mnist"),
    Family("vqvae", "VQ-VAE + prior", vqvae.Settings,
           (Stage("vqvae", lambda settings, info, previous: vqvae.make(settings, info)),
            Stage("prior", vqvae.make_prior, train="prior_train", optim="prior_optim")), "vqvae_cifar"),
    Family("gan", "GAN", gan.Settings, _one_stage(gan.make), "gan_cifar", check=_check_gan_batch),
    Family("stylegan2", "StyleGAN2", stylegan2.Settings, _one_stage(stylegan2.make), "stylegan2_cifar",
           check=stylegan2.check_batch),
    Family("realnvp", "RealNVP", flows.Settings, _one_stage(flows.make), "realnvp_cifar",
           tiny=(("model.num_scales", 1),)),
    Family("glow", "Glow", flows.Settings, _one_stage(flows.make), "glow_cifar", preset=(("model.name", "glow"),),
           tiny=(("model.num_levels", 1), ("model.depth", 1))),
    Family("ddpm", "DDPM", diffusion.Settings, _one_stage(diffusion.make), "ddpm_cifar",
           tiny=_TINY_UNET + (("diffusion.num_timesteps", 50),)),
    Family("score_sde", "score SDE", continuous.SDESettings, _one_stage(continuous.make_score_sde), "score_sde_cifar",
           tiny=_TINY_UNET + (("sde.num_steps", 4), ("sde.ode_steps", 2))),
    Family("edm", "EDM", continuous.EDMSettings, _one_stage(continuous.make_edm), "edm_cifar",
           tiny=_TINY_UNET + (("edm.solver.steps", 3),)),
    Family("vdm", "VDM", vdm.Settings, _one_stage(vdm.make), "vdm_cifar",
           tiny=(("model.ch", 16), ("model.num_res_blocks", 1), ("vdm.num_features", 8), ("vdm.sample_steps", 3))),
    Family("flow_matching", "flow matching", flow_matching.Settings, _one_stage(flow_matching.make),
           "flow_matching_cifar", tiny=(("model.ch", 16), ("model.ch_mult", (1,)), ("flow_matching.num_steps", 4))),
    Family("wavenet", "WaveNet", wavenet.Settings, _one_stage(wavenet.make), "wavenet_sc09", modality="audio",
           tiny=(("model.max_dilation", 8),)),
    Family("dalle", "DALL-E (VQ-VAE + text-image transformer)", dalle.Settings,
           (Stage("vqvae", lambda settings, info, previous: vqvae.make(settings, info)),
            Stage("prior", dalle.make_prior, train="prior_train", optim="prior_optim")), "dalle_digits",
           check=dalle.check),
    Family("text_gan", "GAN-INT-CLS (text-conditional GAN)", text_gan.Settings, _one_stage(text_gan.make),
           "text_gan_digits", check=text_gan.check),
    Family("gpt", "GPT", gpt.Settings, _one_stage(gpt.make), "gpt_text", modality="text"),
    Family("cyclegan", "CycleGAN", cyclegan.Settings, _one_stage(cyclegan.make), "cyclegan", modality="domains"),
)}


# The data each modality of family fits (`gm.data.DatasetInfo.modality`).
DATA_MODALITIES = {"image": ("image", "points"), "audio": ("audio",), "text": ("text",), "domains": ("domains",)}


def check_data(family: Family, info) -> None:
    """One sentence when `family` cannot model the data `info` describes (e.g. an image family on audio)."""
    if info.modality not in DATA_MODALITIES[family.modality]:
        raise ValueError(f"{family.label} does not model {info.modality}; config.data.name={info.name!r} is "
                         f"{info.modality} data, use a dataset of {' or '.join(DATA_MODALITIES[family.modality])}.")


def get(name: str) -> Family:
    """The registered family `name`; one sentence for an unknown one."""
    if name not in FAMILIES:
        raise ValueError(f"Unknown config.family {name!r}; use one of {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def default_config(name: str) -> ml_collections.ConfigDict:
    """The base sections, then the family's sections at their defaults and the entry's preset, with
    config.family = name: the layers an experiment's get_config starts from."""
    family = get(name)
    config = config_lib.base_config()
    config.family = name
    for section, fields in config_lib.to_config(family.settings()).items():
        config[section] = fields
    return set_fields(config, family.preset)


def set_fields(config: ml_collections.ConfigDict, pairs) -> ml_collections.ConfigDict:
    """config with each (dotted field, value) of `pairs` set, in place."""
    for path, value in pairs:
        *parents, leaf = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def with_tiny_networks(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """config (an experiment's smoke config) with its family's `tiny` fields set, in place: networks
    small enough that XLA compiles their train steps in seconds, for the contract tests and
    `experiments.compare`'s smoke table, whose time is otherwise almost all compiling."""
    return set_fields(config, get(config.family).tiny)


class Setup(NamedTuple):
    """A run's config, checked and typed: the family, the base sections and the family's sections."""
    family: Family
    run: RunConfig
    settings: Any

    def stage_run(self, stage: Stage) -> RunConfig:
        """The base sections as `stage` trains with them (its own train and optim sections)."""
        return dataclasses.replace(self.run, train=getattr(self.settings, stage.train, self.run.train),
                                   optim=getattr(self.settings, stage.optim, self.run.optim))

    def stage(self, name: str = "") -> Stage:
        """The stage called `name` ('' : the first); one sentence for an unknown one."""
        stages = self.family.stages
        if not name:
            return stages[0]
        for stage in stages:
            if stage.name == name:
                return stage
        names = tuple(s.name for s in stages if s.name)
        raise ValueError(f"--stage={name!r} is not a stage of {self.family.name}; "
                         + (f"use one of {names}." if names else "it has one stage, so leave --stage out."))


def parse(config) -> Setup:
    """Check every field of a run's config and type it: the base sections (`gm.config.RunConfig`), the
    family's sections and every stage's train and optim sections. The first bad value is one sentence
    naming its `config.` field; nothing is built."""
    family = get(config.get("family", ""))
    run = config_lib.parse_run(config)
    settings = config_lib.parse_sections(family.settings, config)
    setup = Setup(family, run, settings)
    for stage in family.stages:
        if stage.train != "train":
            config_lib.check_eval_period(setup.stage_run(stage), f"config.{stage.train}")
    if family.check is not None:
        family.check(run, settings)
    return setup


def make(config, info, stage: str = "", previous=None) -> Method:
    """The Method of `stage` (default: the first) for data described by `info`, from a run's config;
    `previous`: the trained parameters of the stage before, for a later stage."""
    setup = parse(config)
    check_data(setup.family, info)
    return setup.stage(stage).make(setup.settings, info, previous)
