"""A text-conditional GAN: GAN-INT-CLS (Reed et al. 2016, "Generative adversarial text to image synthesis").

A generator G(z, phi(t)) and a matching-aware discriminator D(x, phi(t)) over a caption t's embedding phi
(`gm.nn.text_gan`; phi is a char-CNN trained with the discriminator, its output reaching G without a
gradient). One train step, one discriminator update and then one generator update:

    D (GAN-CLS)   E[softplus(-D(x, h))] + (E[softplus(D(x, h_wrong))] + E[softplus(D(G(z, h), h))]) / 2
    G             E[softplus(-D(G(z, h), h))] + E[softplus(-D(G(z', h_int), h_int))]         (GAN-INT)

with h = phi(the image's caption), h_wrong = phi(a caption of another class, or of another image for
captioned data: the "mismatched text" negatives that make D judge the match, not only realism), and
h_int = beta h + (1 - beta) h' for h' another caption's embedding in the batch (beta = 0.5 in the paper):
G must also draw convincing images for text between captions, which fills the text manifold.
`matching_aware=False` drops the mismatched term (the paper's plain GAN baseline: D sees real-right and
fake-right only); `interpolation=0` drops GAN-INT. The generator term is the non-saturating one, as in
the paper's code. Captions are drawn afresh each step from the image's class phrasings
(`gm.text_conditioning`), samples for "the digit k" prompts (or config.text_gan.prompts), so the
evaluation reports how often the digits' classifier sees the digit asked for.

params = {'generator', 'discriminator': {'encoder', 'critic'}}; one optax state per player; the EMA
follows the generator. Images are in [-1, 1].
"""
import dataclasses
from typing import Literal, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gm import captions, optim, text_conditioning
from gm import distributions as dist
from gm.config import OptimConfig, interval, positive, setting
from gm.method import Method, Training
from gm.nn import dcgan
from gm.nn.text_gan import CharCNNEncoder, MatchingDiscriminator, TextConditionalGenerator


@dataclasses.dataclass(frozen=True)
class TextGANModelConfig:
    """config.model: z's dimensions, the DCGAN widths and norm of both players, the caption embedding's
    dimensions (text_features; the paper's char-CNN-RNN gives 1,024), its compression inside each player
    (the paper's 128), and the caption bytes kept (text_len)."""
    latent_dim: int = setting(100, positive)
    g_features: int = setting(64, positive)
    d_features: int = setting(64, positive)
    norm: Literal[dcgan.NORMS] = "batch"
    text_features: int = setting(1024, positive)
    compressed: int = setting(128, positive)
    text_len: int = setting(32, positive)


@dataclasses.dataclass(frozen=True)
class TextGANConfig:
    """config.text_gan: the mismatched-text term (GAN-CLS), the interpolation beta (GAN-INT; 0: off), and
    what samples are drawn for: free prompts, or prompt_template for every class ('' : 'the digit
    {numeral}' on the digits)."""
    matching_aware: bool = True
    interpolation: float = setting(0.5, interval(0.0, 1.0, high_open=False))
    prompts: Tuple[str, ...] = ()
    prompt_template: str = ""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The text GAN's config sections (the generator's optimizer is config.optim)."""
    model: TextGANModelConfig = TextGANModelConfig()
    text_gan: TextGANConfig = TextGANConfig()
    optim_d: OptimConfig = OptimConfig(learning_rate=2e-4, b1=0.5)


def check(run, settings: Settings) -> None:
    """Before anything trains (`gm.families.Family.check`): every caption and prompt fits text_len."""
    t = settings.text_gan
    text_conditioning.check_captions(run.data.name, settings.model.text_len, t.prompts, t.prompt_template,
                                     "config.model.text_len", "config.text_gan.prompts")


class Players:
    """The three networks and how the step applies them (batch norm on batch statistics throughout)."""

    def __init__(self, model: TextGANModelConfig, shape):
        self.model = model
        self.encoder = CharCNNEncoder(model.text_features, captions.TEXT_VOCAB, captions.PAD)
        self.generator = TextConditionalGenerator(tuple(shape), model.g_features, model.compressed, model.norm)
        self.critic = MatchingDiscriminator(model.d_features, model.compressed, model.norm)

    def embed(self, d_params, tokens):
        return self.encoder.apply({"params": d_params["encoder"]}, tokens)

    def generate(self, g_params, z, h):
        return dcgan.apply_discarding_batch_stats(self.generator, g_params, z, h)

    def judge(self, d_params, x, h):
        return dcgan.apply_discarding_batch_stats(self.critic, d_params["critic"], x, h)

    def init(self, key, image, tokens):
        e_key, g_key, d_key = jax.random.split(key, 3)
        encoder = self.encoder.init(e_key, tokens)["params"]
        h = jnp.zeros((image.shape[0], self.model.text_features))
        z = jnp.zeros((image.shape[0], self.model.latent_dim))
        return {"generator": self.generator.init(g_key, z, h)["params"],
                "discriminator": {"encoder": encoder, "critic": self.critic.init(d_key, image, h)["params"]}}


def discriminator_loss(p: Players, t: TextGANConfig, d_params, g_params, key, real, right, wrong):
    """GAN-CLS's D loss (module docstring) on real images [B, ...] with their captions `right` and
    mismatched ones `wrong` (tokens [B, L]), against B fresh samples for the right captions."""
    h = p.embed(d_params, right)
    z = jax.random.normal(key, (real.shape[0], p.model.latent_dim))
    fake = jax.lax.stop_gradient(p.generate(g_params, z, jax.lax.stop_gradient(h)))
    real_right = jnp.mean(jax.nn.softplus(-p.judge(d_params, real, h)))
    fake_right = jnp.mean(jax.nn.softplus(p.judge(d_params, fake, h)))
    if not t.matching_aware:
        return real_right + fake_right
    real_wrong = jnp.mean(jax.nn.softplus(p.judge(d_params, real, p.embed(d_params, wrong))))
    return real_right + 0.5 * (real_wrong + fake_right)


def generator_loss(p: Players, t: TextGANConfig, g_params, d_params, key, right):
    """G's loss (module docstring) for captions `right` [B, L]; the interpolated captions pair each with
    the next one in the batch."""
    h = jax.lax.stop_gradient(p.embed(d_params, right))
    z_key, int_key = jax.random.split(key)
    z = jax.random.normal(z_key, (h.shape[0], p.model.latent_dim))
    loss = jnp.mean(jax.nn.softplus(-p.judge(d_params, p.generate(g_params, z, h), h)))
    if t.interpolation:
        beta = t.interpolation
        h_int = beta * h + (1.0 - beta) * jnp.roll(h, 1, axis=0)
        z_int = jax.random.normal(int_key, z.shape)
        loss = loss + jnp.mean(jax.nn.softplus(-p.judge(d_params, p.generate(g_params, z_int, h_int), h_int)))
    return loss


def training(p: Players, t: TextGANConfig, d_optimizer, to_data, right_captions, wrong_captions) -> Training:
    """One discriminator update, then one generator update with the updated discriminator."""

    def update(params, opt_state, extra, key, batch, *, optimizer, reduce_fn=lambda x: x):
        right_key, wrong_key, d_key, g_key = jax.random.split(key, 4)
        real = to_data(batch)
        right, wrong = right_captions(batch, right_key), wrong_captions(batch, wrong_key)
        g, d = params["generator"], params["discriminator"]
        d_loss, d_grads = jax.value_and_grad(discriminator_loss, argnums=2)(p, t, d, g, d_key, real, right, wrong)
        d_grads, d_loss = reduce_fn((d_grads, d_loss))
        updates, d_state = d_optimizer.update(d_grads, opt_state["discriminator"], d)
        d = optax.apply_updates(d, updates)
        g_loss, g_grads = jax.value_and_grad(generator_loss, argnums=2)(p, t, g, d, g_key, right)
        g_grads, g_loss = reduce_fn((g_grads, g_loss))
        updates, g_state = optimizer.update(g_grads, opt_state["generator"], g)
        g = optax.apply_updates(g, updates)
        metrics = {"loss": d_loss, "d_loss": d_loss, "g_loss": g_loss}
        return {"generator": g, "discriminator": d}, {"generator": g_state, "discriminator": d_state}, extra, metrics

    return optim.two_player_training(update, d_optimizer)


def make(settings: Settings, info) -> Method:
    """GAN-INT-CLS for `info`'s labelled (or captioned) images -> Method with its own `training`;
    `sample` draws for the prompts (`sample_prompts`, and `sample_labels` for class prompts)."""
    if not info.is_image:
        raise ValueError(f"The text GAN models images; config.data.name={info.name!r} is {info.modality} data.")
    model, t = settings.model, settings.text_gan
    p = Players(model, info.shape)
    right_captions = text_conditioning.caption_sampler(info, model.text_len)
    wrong_captions = text_conditioning.mismatched_caption_sampler(info, model.text_len)
    texts, labels = text_conditioning.prompt_texts(info.name, t.prompts, t.prompt_template)
    prompts = jnp.asarray(captions.encode(texts, model.text_len, "config.text_gan.prompts", "config.model.text_len"))
    to_data = lambda batch: dist.levels_to_symmetric(batch["image"], info.num_bits)  # noqa: E731
    d_optimizer = optim.make_optimizer(settings.optim_d)

    def init(key, batch):
        return p.init(key, to_data(batch)[:1], prompts[:1])

    def loss(params, key, batch):
        right_key, wrong_key, d_key, g_key = jax.random.split(key, 4)
        right, wrong = right_captions(batch, right_key), wrong_captions(batch, wrong_key)
        g, d = params["generator"], params["discriminator"]
        d_loss = discriminator_loss(p, t, d, g, d_key, to_data(batch), right, wrong)
        g_loss = generator_loss(p, t, g, d, g_key, right)
        return d_loss, {"d_loss": d_loss, "g_loss": g_loss}

    def sample(params, key, num):
        h = p.embed(params["discriminator"], prompts[jnp.arange(num) % len(texts)])
        x = p.generate(params["generator"], jax.random.normal(key, (num, model.latent_dim)), h)
        return dist.symmetric_to_levels(jnp.clip(x, -1.0, 1.0), info.num_bits).astype(jnp.uint8)

    return Method(init=init, loss=loss, sample=sample,
                  training=training(p, t, d_optimizer, to_data, right_captions, wrong_captions),
                  sample_prompts=lambda num: tuple(texts[i % len(texts)] for i in range(num)),
                  sample_labels=None if labels is None else (lambda num: labels[np.arange(num) % len(labels)]))
