"""GAN-INT-CLS: the matching-aware discriminator loss and the interpolating generator loss against hand
computations, mismatched captions that never describe the image, a step that updates D and then G
with the updated D, and samples drawn for one prompt per class."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gm import captions, text_conditioning, text_gan
from gm import data as gm_data

softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731


class Tiny:
    """The digits' info, networks of width 4, a batch of 6 images with their captions."""

    def __init__(self, **objective):
        self.info = gm_data.load("digits").info
        self.model = text_gan.TextGANModelConfig(latent_dim=4, g_features=4, d_features=4, text_features=8,
                                                 compressed=4, text_len=24)
        self.t = text_gan.TextGANConfig(**objective)
        self.p = text_gan.Players(self.model, self.info.shape)
        rng = np.random.default_rng(0)
        self.batch = {"image": jnp.asarray(rng.integers(0, 16, (6, 8, 8, 1)), jnp.uint8),
                      "label": jnp.asarray([0, 1, 2, 3, 4, 5], jnp.int32)}
        self.real = (self.batch["image"].astype(jnp.float32) / 15.0) * 2 - 1
        self.right = text_conditioning.caption_sampler(self.info, 24)(self.batch, jax.random.key(1))
        self.wrong = text_conditioning.mismatched_caption_sampler(self.info, 24)(self.batch, jax.random.key(2))
        self.params = jax.jit(lambda k: self.p.init(k, self.real[:1], self.right[:1]))(jax.random.key(0))


def test_captions_describe_the_image_and_mismatched_ones_another_class():
    s = Tiny()
    names = [captions.decode(c) for c in s.right]
    for label, text in zip(np.asarray(s.batch["label"]), names):
        assert text in captions.captions("digits")[label]
    info = s.info
    wrong = text_conditioning.mismatched_caption_sampler(info, 24)
    labels = jnp.asarray(np.arange(200) % 10, jnp.int32)
    texts = [captions.decode(c) for c in jax.jit(wrong)({"label": labels}, jax.random.key(3))]
    phrasings = captions.captions("digits")
    owner = {text: k for k in range(10) for text in phrasings[k]}
    drawn = np.array([owner[text] for text in texts])
    assert np.all(drawn != np.asarray(labels))  # never the image's own class ...
    assert len(set(drawn.tolist())) == 10  # ... and every other class in turn


def test_discriminator_loss_is_gan_cls_by_hand():
    s = Tiny()
    g, d = s.params["generator"], s.params["discriminator"]
    key = jax.random.key(4)
    loss = jax.jit(lambda d: text_gan.discriminator_loss(s.p, s.t, d, g, key, s.real, s.right, s.wrong))(d)
    h, h_wrong = s.p.embed(d, s.right), s.p.embed(d, s.wrong)
    fake = s.p.generate(g, jax.random.normal(key, (6, 4)), h)
    score = lambda x, h: np.asarray(s.p.judge(d, x, h), np.float64)  # noqa: E731
    want = np.mean(softplus(-score(s.real, h))) + 0.5 * (np.mean(softplus(score(s.real, h_wrong)))
                                                          + np.mean(softplus(score(fake, h))))
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    plain = text_gan.TextGANConfig(matching_aware=False)
    loss = jax.jit(lambda d: text_gan.discriminator_loss(s.p, plain, d, g, key, s.real, s.right, s.wrong))(d)
    np.testing.assert_allclose(loss, np.mean(softplus(-score(s.real, h))) + np.mean(softplus(score(fake, h))),
                               rtol=1e-4)


def test_generator_loss_adds_the_interpolated_captions_term():
    s = Tiny(interpolation=0.3)
    g, d = s.params["generator"], s.params["discriminator"]
    key = jax.random.key(5)
    loss = jax.jit(lambda g: text_gan.generator_loss(s.p, s.t, g, d, key, s.right))(g)
    z_key, int_key = jax.random.split(key)
    h = s.p.embed(d, s.right)
    h_int = 0.3 * h + 0.7 * jnp.roll(h, 1, axis=0)  # each caption with the one before it in the batch
    score = lambda z, h: np.asarray(s.p.judge(d, s.p.generate(g, z, h), h), np.float64)  # noqa: E731
    want = (np.mean(softplus(-score(jax.random.normal(z_key, (6, 4)), h)))
            + np.mean(softplus(-score(jax.random.normal(int_key, (6, 4)), h_int))))
    np.testing.assert_allclose(loss, want, rtol=1e-4)
    no_int = text_gan.TextGANConfig(interpolation=0.0)
    loss = jax.jit(lambda g: text_gan.generator_loss(s.p, no_int, g, d, key, s.right))(g)
    np.testing.assert_allclose(loss, np.mean(softplus(-score(jax.random.normal(z_key, (6, 4)), h))), rtol=1e-4)


def test_one_step_updates_the_discriminator_then_the_generator_against_it():
    s = Tiny()
    g_opt, d_opt = optax.sgd(0.1), optax.sgd(0.2)
    to_data = lambda batch: (batch["image"].astype(jnp.float32) / 15.0) * 2 - 1  # noqa: E731
    right = text_conditioning.caption_sampler(s.info, 24)
    wrong = text_conditioning.mismatched_caption_sampler(s.info, 24)
    training = text_gan.training(s.p, s.t, d_opt, to_data, right, wrong)
    opt_state = training.init_opt_state(s.params, g_opt)
    key = jax.random.key(6)
    params, _, _, metrics = jax.jit(lambda p, o: training.update(p, o, {}, key, s.batch, optimizer=g_opt))(
        s.params, opt_state)
    right_key, wrong_key, d_key, g_key = jax.random.split(key, 4)
    r, w = right(s.batch, right_key), wrong(s.batch, wrong_key)
    g, d = s.params["generator"], s.params["discriminator"]

    @jax.jit
    def by_hand():
        d_grads = jax.grad(lambda d: text_gan.discriminator_loss(s.p, s.t, d, g, d_key, s.real, r, w))(d)
        new_d = jax.tree.map(lambda x, y: x - 0.2 * y, d, d_grads)
        g_grads = jax.grad(lambda g: text_gan.generator_loss(s.p, s.t, g, new_d, g_key, r))(g)
        return {"generator": jax.tree.map(lambda x, y: x - 0.1 * y, g, g_grads), "discriminator": new_d}

    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), params, by_hand())
    # The encoder learns from the discriminator's loss only.
    assert not np.allclose(params["discriminator"]["encoder"]["Dense_0"]["kernel"],
                           s.params["discriminator"]["encoder"]["Dense_0"]["kernel"])
    assert np.isfinite(float(metrics["d_loss"])) and np.isfinite(float(metrics["g_loss"]))


def test_samples_are_drawn_for_one_prompt_per_class_and_long_prompts_are_refused():
    s = Tiny()
    settings = text_gan.Settings(model=s.model)
    method = text_gan.make(settings, s.info)
    params = jax.jit(method.init)(jax.random.key(0), s.batch)
    images = jax.jit(method.sample, static_argnums=2)(params, jax.random.key(1), 12)
    assert images.dtype == jnp.uint8 and images.shape == (12, 8, 8, 1) and int(images.max()) <= 15
    assert method.sample_prompts(3) == ("the digit 0", "the digit 1", "the digit 2")
    np.testing.assert_array_equal(method.sample_labels(12), np.arange(12) % 10)
    long = text_gan.Settings(model=s.model, text_gan=text_gan.TextGANConfig(prompts=("a digit " * 5,)))
    with pytest.raises(ValueError, match=r"config.text_gan.prompts 'a digit .*' is 40 bytes, longer than "
                                         r"config.model.text_len=24; shorten it or raise config.model.text_len."):
        text_gan.make(long, s.info)
