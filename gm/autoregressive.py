"""The autoregressive family: p(x) = prod_i p(x_i | x_<i), an exact log-likelihood, sequential sampling.

Order: raster (row by row, left to right) and, inside a pixel, R -> G -> B, the order of
`image.reshape(B, -1)`. Models (config.model.name):

    nade            binary images (binarized from the data's levels), NADE       gm/nn/nade.py
    pixelcnn        softmax over the data's 2^n levels, masked convolutions      gm/nn/pixelcnn.py
    gated_pixelcnn  the same with vertical + horizontal gated stacks              gm/nn/pixelcnn.py
    pixelcnn_pp     discretized logistic mixture (PixelCNN++)                     gm/nn/pixelcnn_pp.py
    transformer     causal transformer over the sub-pixels as tokens              gm/nn/transformer.py

`log_prob` is exact, in nats per example, of the data's integer levels (or of the binarized image for
NADE), so bits/dim goes through `gm.distributions.bits_per_dim` like every other family. Sampling is
one compiled loop on device: a `fori_loop` over pixels (PixelCNN++, with every layer's activations
cached so a pixel costs one position per layer: `gm.nn.pixelcnn_pp_cache`) or sub-pixels (PixelCNN), a
`scan` over dimensions carrying NADE's hidden pre-activation, and a key/value-cached `scan` for the
transformer.
"""
import dataclasses
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gm import checks
from gm import distributions as dist
from gm.config import interval, nonnegative, positive, setting
from gm.distributions import BINARIZE, binarize  # noqa: F401  (re-exported: part of this family's API)
from gm.method import Method

MODELS = ("nade", "pixelcnn", "gated_pixelcnn", "pixelcnn_pp", "transformer")


# ---------------------------------------------------------------------------------------------------
# The config: one section per network, the one named by `name` is used.
# ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NADEConfig:
    """NADE (Larochelle & Murray 2011): hidden units; binarization of the data's levels ('stochastic': a
    fresh Bernoulli(level / top) draw every step, 'threshold': level > top / 2)."""
    num_hidden: int = setting(500, positive)
    binarize: Literal[BINARIZE] = "stochastic"


@dataclasses.dataclass(frozen=True)
class PixelCNNConfig:
    """PixelCNN (van den Oord et al. 2016a: h = 128, so 2h = 256 features, 15 residual blocks) and gated
    PixelCNN (2016b; its features pair channel k with k + F, so F is a multiple of the 3 colours)."""
    features: int = setting(256, positive)
    num_layers: int = setting(15, positive)
    first_kernel: int = setting(7, positive)
    kernel: int = setting(3, positive)
    out_hidden: int = setting(1024, positive)


@dataclasses.dataclass(frozen=True)
class PixelCNNPPConfig:
    """PixelCNN++ (Salimans et al. 2017), the reference code's CIFAR-10 defaults. scan: trace each
    resolution's gated blocks once (False: unrolled, the layout of checkpoints written before;
    `gm.nn.pixelcnn_pp.pixelcnn_pp_params_from_unrolled` converts). sampler: 'cached' computes each
    layer at one position per drawn pixel (`gm.nn.pixelcnn_pp_cache`); 'naive' re-runs the network on
    the whole image per pixel. Both draw the same images for the same key."""
    nr_resnet: int = setting(5, positive)
    nr_filters: int = setting(160, positive)
    nr_logistic_mix: int = setting(10, positive)
    dropout: float = setting(0.5, interval(0.0, 1.0))
    scan: bool = True
    sampler: Literal["cached", "naive"] = "cached"


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """A causal transformer over the sub-pixels as tokens; attention_block: queries attended at a time
    (memory O(block T) per layer, the same numbers); positions: 'learned' or 'rotary'; tie_embeddings:
    the output layer is the token embedding transposed."""
    num_layers: int = setting(8, positive)
    num_heads: int = setting(8, positive)
    embed_dim: int = setting(256, positive)
    mlp_ratio: int = setting(4, positive)
    dropout: float = setting(0.1, interval(0.0, 1.0))
    attention_block: int = setting(512, positive)
    positions: Literal["learned", "rotary"] = "learned"
    tie_embeddings: bool = False


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How a token model draws (`gm.nn.transformer.sample_tokens`): logits divided by temperature, then
    only the top_k most likely tokens (0: all) and the nucleus holding probability top_p (1: all)."""
    temperature: float = setting(1.0, interval(0.0, None, low_open=True))
    top_k: int = setting(0, nonnegative)
    top_p: float = setting(1.0, interval(0.0, 1.0, low_open=True, high_open=False))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """config.model: `name` picks the network, whose sizes are its own sub-section (config.model.NAME)."""
    name: Literal[MODELS] = "pixelcnn_pp"
    class_conditional: bool = False
    dtype: Literal[checks.DTYPES] = "float32"
    nade: NADEConfig = NADEConfig()
    pixelcnn: PixelCNNConfig = PixelCNNConfig()
    gated_pixelcnn: PixelCNNConfig = PixelCNNConfig(features=120)
    pixelcnn_pp: PixelCNNPPConfig = PixelCNNPPConfig()
    transformer: TransformerConfig = TransformerConfig()

    def check(self, name):
        if self.name == "nade" and self.class_conditional:
            raise ValueError(f"{name}.class_conditional is not supported for NADE; set it to False.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The autoregressive family's config section."""
    model: ModelConfig = ModelConfig()


# ---------------------------------------------------------------------------------------------------
# The independent-pixel baseline.
# ---------------------------------------------------------------------------------------------------

def fit_independent_pixels(images, num_levels, pseudo_count=1.0):
    """The independent-pixel baseline p(x) = prod_d p_d(x_d), fitted by counting.

    Args:
      images: integer levels [N, ...] (e.g. the training split).
      num_levels: L, values per sub-pixel.
      pseudo_count: added to every count (Laplace smoothing), so unseen test values have finite NLL.

    Returns:
      float64 log-probabilities [..., L] in nats, one categorical per sub-pixel: D (L - 1) free
      parameters, against L^D - 1 for the full joint.
    """
    images = np.asarray(images, np.int64)
    counts = np.apply_along_axis(np.bincount, 0, images, minlength=num_levels)  # [L, ...]
    counts = np.moveaxis(counts, 0, -1) + pseudo_count
    return np.log(counts / counts.sum(-1, keepdims=True))


def independent_pixels_log_prob(log_table, images):
    """log p(x) in nats per example [N] of integer `images` [N, ...] under `fit_independent_pixels`.

    NumPy or JAX arrays; jit-compatible."""
    images = jnp.asarray(images).astype(jnp.int32)
    per_dim = jnp.take_along_axis(jnp.asarray(log_table)[None], images[..., None], axis=-1)[..., 0]
    return per_dim.reshape(images.shape[0], -1).sum(-1)


# ---------------------------------------------------------------------------------------------------
# Sampling in raster order.
# ---------------------------------------------------------------------------------------------------

def sample_raster(draw, key, shape, per_pixel):
    """Fill int32 levels [N, H, W, C] one pixel (per_pixel) or one sub-pixel at a time, on device.

    Args:
      draw: (x, key, i, j) -> int32 [N, C], a draw of pixel (i, j)'s sub-pixels from their conditionals
        given the current x. Noise is drawn for that pixel only, not for every position.
      key: step s draws with fold_in(key, s).
      shape: (N, H, W, C).
      per_pixel: True when `draw` samples the C channels of a pixel jointly (PixelCNN++): H W network
        evaluations. False: H W C evaluations, keeping channel c of the draw at step (i, j, c), so
        channel c + 1 is drawn after the model has seen channel c.

    Returns:
      int32 [N, H, W, C].
    """
    _, _, w, c = shape

    def body(s, x):
        pixel, ch = (s, None) if per_pixel else jnp.divmod(s, c)
        i, j = jnp.divmod(pixel, w)
        values = draw(x, jax.random.fold_in(key, s), i, j)
        if per_pixel:
            return x.at[:, i, j, :].set(values)
        return x.at[:, i, j, ch].set(values[:, ch])

    steps = shape[1] * w * (1 if per_pixel else c)
    return jax.lax.fori_loop(0, steps, body, jnp.zeros(shape, jnp.int32))


# ---------------------------------------------------------------------------------------------------
# One likelihood per model: log P(x) in nats and a sampler, over integer levels.
# ---------------------------------------------------------------------------------------------------

class Model(NamedTuple):
    """init(key, levels, y) -> params; log_prob(params, levels, y, dropout_key) -> [B] nats (train mode
    when dropout_key is not None); sample(params, key, num, y) -> int levels [num, H, W, C]."""
    init: Callable
    log_prob: Callable
    sample: Callable


def _apply(net, params, inputs, y, dropout_key):
    train = dropout_key is not None
    rngs = {"dropout": dropout_key} if train else {}
    return net.apply({"params": params}, inputs, y, train=train, rngs=rngs)


def _conv_model(net, info, per_pixel, log_prob_fn, draw_fn, cached_sample=None):
    """A convolutional model on images in [-1, 1]: log_prob_fn(out, x_sym, levels) -> [B, ...] nats,
    draw_fn(key, out_ij) -> int levels [B, C] from the network's output at one pixel, out[:, i, j].
    cached_sample(params, key, shape, y, draw_fn, to_sym) -> levels, if given, replaces the sampler that
    re-runs the network per pixel."""
    to_sym = lambda levels: dist.levels_to_symmetric(levels, info.num_bits)

    def init(key, levels, y):
        return net.init({"params": key}, to_sym(levels), y, train=False)["params"]

    def log_prob(params, levels, y, dropout_key=None):
        out = _apply(net, params, to_sym(levels), y, dropout_key)
        return dist.sum_per_example(log_prob_fn(out, to_sym(levels), levels))

    def sample(params, key, num, y):
        shape = (num,) + tuple(info.shape)
        if cached_sample is not None:
            return cached_sample(params, key, shape, y, draw_fn, to_sym)
        draw = lambda x, k, i, j: draw_fn(k, _apply(net, params, to_sym(x), y, None)[:, i, j])
        return sample_raster(draw, key, shape, per_pixel)

    return Model(init, log_prob, sample)


def _categorical_model(net, info):
    return _conv_model(net, info, per_pixel=False,
                       log_prob_fn=lambda logits, _, levels: dist.categorical_log_prob(logits, levels),
                       draw_fn=jax.random.categorical)


def _mixture_model(net, info, cached):
    from gm.nn import pixelcnn_pp_cache

    num_bits = info.num_bits
    cached_sample = lambda params, *args: pixelcnn_pp_cache.sample(net, params, *args)
    return _conv_model(
        net, info, per_pixel=True,
        log_prob_fn=lambda out, x, _: dist.discretized_logistic_mixture_log_prob(x, out, num_bits),
        draw_fn=lambda key, out: dist.symmetric_to_levels(
            dist.sample_discretized_logistic_mixture(key, out[:, None, None], num_bits, info.shape[-1]),
            num_bits)[:, 0, 0].astype(jnp.int32),
        cached_sample=cached_sample if cached else None)


def _transformer_model(net, info):
    from gm.nn import transformer

    tokens = lambda levels: levels.reshape(levels.shape[0], -1).astype(jnp.int32)

    def init(key, levels, y):
        return net.init({"params": key}, tokens(levels), y, train=False)["params"]

    def log_prob(params, levels, y, dropout_key=None):
        logits = _apply(net, params, tokens(levels), y, dropout_key)
        return dist.sum_per_example(dist.categorical_log_prob(logits, tokens(levels)))

    def sample(params, key, num, y):
        seq = transformer.sample_tokens(net, params, key, num, y)
        return seq.reshape((num,) + tuple(info.shape))

    return Model(init, log_prob, sample)


def _nade_model(net, info):
    from gm.nn.nade import NADE

    flat = lambda x: x.reshape(x.shape[0], -1)
    top = info.num_levels - 1

    def init(key, binary, y):
        return net.init({"params": key}, flat(binary))["params"]

    def log_prob(params, binary, y, dropout_key=None):
        logits = net.apply({"params": params}, flat(binary))
        return jnp.sum(dist.bernoulli_log_prob(logits, flat(binary)), axis=-1)

    def sample(params, key, num, y):
        binary = net.apply({"params": params}, key, num, method=NADE.sample)
        return binary.reshape((num,) + tuple(info.shape)) * top  # 1 -> the brightest level, for display

    return Model(init, log_prob, sample)


def model_from_config(model: ModelConfig, info) -> Model:
    """The Model of `model.name` with its sub-section's sizes, for data described by `info`."""
    from gm.nn.nade import NADE
    from gm.nn.pixelcnn import GatedPixelCNN, PixelCNN

    name = model.name
    fields = dataclasses.asdict(getattr(model, name))
    num_classes = info.num_classes if model.class_conditional else None
    dtype = jnp.dtype(model.dtype)
    if name == "nade":
        return _nade_model(NADE(info.num_dims, fields["num_hidden"]), info)
    if name == "transformer":
        from gm.nn.transformer import CausalTransformer

        net = CausalTransformer(vocab_size=info.num_levels, seq_len=info.num_dims, num_classes=num_classes,
                                dtype=dtype, **fields)
        return _transformer_model(net, info)
    if name == "pixelcnn_pp":
        from gm.nn.pixelcnn_pp import PixelCNNPP

        cached = fields.pop("sampler") == "cached"
        return _mixture_model(PixelCNNPP(num_classes=num_classes, dtype=dtype, **fields), info, cached)
    cls = PixelCNN if name == "pixelcnn" else GatedPixelCNN
    return _categorical_model(cls(info.num_levels, num_classes=num_classes, dtype=dtype, **fields), info)


# ---------------------------------------------------------------------------------------------------
# The Method.
# ---------------------------------------------------------------------------------------------------

def make(settings: Settings, info) -> Method:
    """An autoregressive model of images of `info.shape` at `info.num_bits` -> Method.

    The loss is the negative log-likelihood in bits/dim (metrics also give nats per example); `log_prob`
    is exact. For NADE the data are binarized first (config.model.nade.binarize): stochastically with a
    fresh key in training, and with the key `log_prob` is given when evaluating (fixed by the run's seed,
    so a test set is binarized once).
    """
    if not info.is_image:
        raise ValueError(f"Autoregressive models need image data; config.data.name={info.name!r} is not one.")
    m = settings.model
    model = model_from_config(m, info)
    conditional = m.class_conditional
    mode = m.nade.binarize if m.name == "nade" else None
    num_dims = info.num_dims

    def data(key, batch):
        levels = batch["image"]
        if mode is not None:
            levels = binarize(key, levels, info.num_bits, mode)
        return levels, (batch["label"] if conditional else None)

    def init(key, batch):
        levels, y = data(jax.random.key(0), batch)
        return model.init(key, levels, y)

    def loss(params, key, batch):
        data_key, dropout_key = jax.random.split(key)
        levels, y = data(data_key, batch)
        nll = -model.log_prob(params, levels, y, dropout_key)
        bpd = dist.bits_per_dim(jnp.mean(nll), num_dims)
        return bpd, {"loss": bpd, "nll_nats": jnp.mean(nll)}

    def sample(params, key, num):
        label_key, sample_key = jax.random.split(key)
        y = jax.random.randint(label_key, (num,), 0, info.num_classes) if conditional else None
        return model.sample(params, sample_key, num, y).astype(jnp.uint8)

    def log_prob(params, key, batch):
        levels, y = data(key, batch)
        return model.log_prob(params, levels, y)

    return Method(init=init, loss=loss, sample=sample, log_prob=log_prob, log_prob_is_bound=False)
