"""The WaveNet family: audio one sample at a time, p(x) = prod_t p(x_t | x_<t, label, features).

Output distributions (config.model.output):

    mu_law    a 256-way softmax over 8-bit mu-law levels (van den Oord et al. 2016); bits per sample over
              those 256 levels.
    mixture   a discretized logistic mixture over the 65,536 16-bit PCM levels (Parallel WaveNet's,
              through `gm.distributions`, the PixelCNN++ likelihood with one channel); bits per sample
              over 16-bit levels, a different quantity from the mu-law one.

Conditioning (config.model.condition): 'none'; 'label' (global: the clip's class, e.g. the spoken
digit, drawn uniformly when sampling); 'mel' (local: the clip's own log-mel spectrogram, upsampled to
the sample rate, so the model is a vocoder; sampling then vocodes the log-mels of the first test clips
of the dataset, loaded through `gm.data` from its default folder).

Batches are gm.data's audio: {'audio': int16 PCM [B, T], 'label'}. The loss is the exact negative
log-likelihood in bits per sample; `log_prob` is exact (nats per clip) and `Method.log_prob_per` makes
the evaluations report bits per sample. Sampling is fast generation (`generate`): one `lax.scan` over
time steps, each a cached `WaveNet.step` costing O(layers); `generate_naive` re-runs the whole network
per sample, for tests and the benchmark (`benchmarks.wavenet`).
"""
import dataclasses
import functools
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gm import audio, checks
from gm import distributions as dist
from gm.config import positive, setting
from gm.method import Method
from gm.nn.wavenet import WaveNet, dilation_cycles, init_queues, shift_right, upsample

OUTPUTS = ("mu_law", "mixture")
CONDITIONS = ("none", "label", "mel")
PCM_BITS = 16


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """config.model: the stack (num_cycles cycles of dilations 1, 2, ..., max_dilation), its widths, the
    output distribution, the conditioning and the log-mel features of condition='mel' (num_mels, hop,
    n_fft at the data's sample rate)."""
    residual_channels: int = setting(256, positive)
    dilation_channels: int = setting(256, positive)
    skip_channels: int = setting(256, positive)
    num_cycles: int = setting(3, positive)
    max_dilation: int = setting(512, positive)
    output: Literal[OUTPUTS] = "mu_law"
    num_mixtures: int = setting(10, positive)
    condition: Literal[CONDITIONS] = "none"
    num_mels: int = setting(80, positive)
    hop: int = setting(256, positive)
    n_fft: int = setting(1024, positive)
    dtype: Literal[checks.DTYPES] = "float32"

    def check(self, name):
        checks.require(self.max_dilation & (self.max_dilation - 1) == 0, f"{name}.max_dilation", self.max_dilation,
                       "a power of two")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The WaveNet family's config section."""
    model: ModelConfig = ModelConfig()


def network(m: ModelConfig, num_labels: int) -> WaveNet:
    """The WaveNet of config.model; `num_labels`: the dataset's classes (used when condition='label')."""
    out = 256 if m.output == "mu_law" else dist.dlm_num_params(1, m.num_mixtures)
    return WaveNet(out_features=out, input_levels=256 if m.output == "mu_law" else None,
                   residual_channels=m.residual_channels, dilation_channels=m.dilation_channels,
                   skip_channels=m.skip_channels, dilations=dilation_cycles(m.num_cycles, m.max_dilation),
                   num_labels=num_labels if m.condition == "label" else None,
                   feature_dim=m.num_mels if m.condition == "mel" else None, dtype=jnp.dtype(m.dtype))


# ---------------------------------------------------------------------------------------------------
# Targets and draws: what the network predicts and feeds back, per output distribution.
# ---------------------------------------------------------------------------------------------------

class Quantizer:
    """How waveforms become the model's discrete values and back: `values(pcm)` the targets, `start` the
    input before the clip (silence), `log_prob(out, values)` per sample in nats, `draw(key, out)` a value
    per row, `num_levels` the levels bits per sample counts over (`to_pcm` maps values back)."""

    def __init__(self, m: ModelConfig):
        self.mu_law = m.output == "mu_law"
        self.num_levels = 256 if self.mu_law else 2 ** PCM_BITS
        self.start = int(audio.mu_law_encode(0.0)) if self.mu_law else 0.0

    def values(self, pcm):
        """int16 PCM [..., T] -> int32 mu-law levels, or float PCM level centres in [-1, 1]."""
        if self.mu_law:
            return audio.mu_law_encode(audio.pcm_to_float(pcm))
        return dist.levels_to_symmetric(pcm.astype(jnp.int32) + 32768, PCM_BITS)

    def log_prob(self, out, values):
        if self.mu_law:  # the softmax in float32 whatever the network computes in
            return dist.categorical_log_prob(out.astype(jnp.float32), values)
        return dist.discretized_logistic_mixture_log_prob(values[..., None], out, PCM_BITS)

    def draw(self, key, out):
        if self.mu_law:
            return dist.sample_categorical(key, out)
        return dist.sample_discretized_logistic_mixture(key, out.astype(jnp.float32), PCM_BITS, 1)[..., 0]


# ---------------------------------------------------------------------------------------------------
# Conditioning inputs.
# ---------------------------------------------------------------------------------------------------

def mel_features(m: ModelConfig, pcm, sample_rate: int):
    """int16 PCM [B, T] -> the log-mel features of condition='mel', upsampled to [B, T, num_mels]."""
    mel = audio.log_mel_spectrogram(audio.pcm_to_float(pcm), sample_rate, m.n_fft, m.hop, m.num_mels)
    return upsample(mel, pcm.shape[-1])


@functools.lru_cache(maxsize=2)
def _test_clips(name: str, num: int):
    """The first `num` test clips of dataset `name` (repeated when it has fewer), int16 [num, T]."""
    from gm import data as gm_data  # the data layer only when a vocoder samples

    clips = gm_data.load(name).test["audio"]
    return np.asarray(clips[np.arange(num) % len(clips)])


# ---------------------------------------------------------------------------------------------------
# Generation.
# ---------------------------------------------------------------------------------------------------

def generate(net: WaveNet, params, quantizer: Quantizer, key, num: int, length: int, label=None, features=None):
    """Fast generation: `num` clips of `length` values, one cached `WaveNet.step` per sample inside one
    `lax.scan`. Sample t is drawn with fold_in(key, t). Returns the values (mu-law levels int32, or
    float PCM level centres) [num, length]."""
    apply_step = lambda queues, t, x, f: net.apply({"params": params}, queues, t, x, label, f, method=WaveNet.step)

    def body(carry, t):
        queues, previous = carry
        f = None if features is None else jax.lax.dynamic_index_in_dim(features, t, axis=1, keepdims=False)
        queues, out = apply_step(queues, t, previous, f)
        value = quantizer.draw(jax.random.fold_in(key, t), out)
        return (queues, value), value

    first = jnp.full((num,), quantizer.start, jnp.int32 if quantizer.mu_law else jnp.float32)
    _, values = jax.lax.scan(body, (init_queues(net, num, jnp.dtype(net.dtype)), first), jnp.arange(length))
    return values.T


def generate_naive(net: WaveNet, params, quantizer: Quantizer, key, num: int, length: int, label=None,
                   features=None):
    """The same draws as `generate`, re-running the whole network on the sequence so far for every
    sample (O(length) passes): the reference fast generation is tested against, and its benchmark."""
    dtype = jnp.int32 if quantizer.mu_law else jnp.float32

    def body(t, values):
        out = net.apply({"params": params}, shift_right(values, quantizer.start), label, features)
        value = quantizer.draw(jax.random.fold_in(key, t), out[:, t])
        return values.at[:, t].set(value)

    return jax.lax.fori_loop(0, length, body, jnp.zeros((num, length), dtype))


# ---------------------------------------------------------------------------------------------------
# The Method.
# ---------------------------------------------------------------------------------------------------

def make(settings: Settings, info) -> Method:
    """A WaveNet of clips of `info.shape` = (T,) at `info.sample_rate` -> Method (exact likelihood)."""
    if not info.is_audio:
        raise ValueError(f"WaveNet models audio; config.data.name={info.name!r} is not an audio dataset "
                         "(use notes or sc09).")
    m = settings.model
    net = network(m, info.num_classes)
    quantizer = Quantizer(m)
    length = info.shape[0]

    def inputs(batch):
        pcm = batch["audio"]
        values = quantizer.values(pcm)
        label = batch["label"] if m.condition == "label" else None
        features = mel_features(m, pcm, info.sample_rate) if m.condition == "mel" else None
        return values, label, features

    def log_prob_of(params, batch):
        values, label, features = inputs(batch)
        out = net.apply({"params": params}, shift_right(values, quantizer.start), label, features)
        return dist.sum_per_example(quantizer.log_prob(out, values))

    def init(key, batch):
        values, label, features = inputs(batch)
        return net.init(key, shift_right(values, quantizer.start), label, features)["params"]

    def loss(params, key, batch):
        nll = -log_prob_of(params, batch)
        bits = dist.bits_per_dim(jnp.mean(nll), length)
        return bits, {"loss": bits, "nll_nats": jnp.mean(nll)}

    def sample(params, key, num):
        label_key, sample_key = jax.random.split(key)
        label = jax.random.randint(label_key, (num,), 0, info.num_classes) if m.condition == "label" else None
        features = (mel_features(m, jnp.asarray(_test_clips(info.name, num)), info.sample_rate)
                    if m.condition == "mel" else None)
        values = generate(net, params, quantizer, sample_key, num, length, label, features)
        return to_pcm(quantizer, values)

    def log_prob(params, key, batch):
        return log_prob_of(params, batch)

    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=False,
                  log_prob_per=(length, "sample"))


def to_pcm(quantizer: Quantizer, values):
    """The model's values [..., T] -> int16 PCM, on device (jit-compatible)."""
    if quantizer.mu_law:
        return audio.float_to_pcm(audio.mu_law_decode(values))
    top = 2 ** PCM_BITS - 1
    return (jnp.round((values + 1.0) * (top / 2.0)) - 32768).astype(jnp.int16)


def fit_unigram(pcm, quantizer: Quantizer, pseudo_count: float = 1.0):
    """The independent-sample baseline: one histogram of the model's values over every training sample,
    log-probabilities float64 [num_levels] in nats (Laplace-smoothed)."""
    values = np.asarray(_as_levels(quantizer, pcm)).ravel()
    counts = np.bincount(values, minlength=quantizer.num_levels) + pseudo_count
    return np.log(counts / counts.sum())


def unigram_log_prob(log_table, pcm, quantizer: Quantizer):
    """log p(clip) in nats [N] of int16 PCM [N, T] under `fit_unigram`'s histogram (each sample
    independent): what the likelihood harness compares WaveNet with."""
    values = _as_levels(quantizer, pcm)
    return jnp.asarray(log_table)[values].sum(-1)


def _as_levels(quantizer, pcm):
    pcm = jnp.asarray(pcm)
    return quantizer.values(pcm) if quantizer.mu_law else pcm.astype(jnp.int32) + 32768
