"""StyleGAN2: modulated convolutions against per-example weights and unit variance, the resampling
filters, minibatch stddev, R1 and the path-length penalty against finite differences, style mixing,
truncation, a train step that runs exactly the phases it claims, and the CIFAR-10 networks' parameter
counts against the reference's."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import stylegan2_cifar
from gm import data as gm_data
from gm import families, gan_losses, stylegan2
from gm.nn import stylegan2 as nets


def test_modulated_convolution_is_a_per_example_weight_and_keeps_unit_variance():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 24, 24, 16)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.float32)
    styles = jnp.asarray(rng.uniform(0.2, 3.0, size=(3, 16)), jnp.float32)
    y = nets.modulated_conv(x, weight, styles)
    for b in range(3):  # the reference's per-sample weight: scaled over the inputs, demodulated per output
        w = weight * styles[b][None, None, :, None]
        w = w / jnp.sqrt(jnp.sum(w ** 2, axis=(0, 1, 2), keepdims=True) + 1e-8)
        want = jax.lax.conv_general_dilated(x[b:b + 1], w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(y[b:b + 1], want, rtol=1e-4, atol=1e-5)
    # Unit-variance inputs give unit-variance outputs whatever the style (away from the zero padding).
    np.testing.assert_allclose(np.var(np.asarray(y[:, 1:-1, 1:-1]), axis=(0, 1, 2)), 1.0, atol=0.1)
    undemodulated = nets.modulated_conv(x, weight, styles, demodulate=False)
    assert np.var(np.asarray(undemodulated)) > 20  # the styles and the N(0, 1) weights' scale remain


def test_resampling_keeps_a_constant_image_and_halves_or_doubles_the_size():
    x = jnp.full((1, 8, 8, 2), 3.0)
    up, down = nets.upsample2x(x), nets.downsample2x(x)
    assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
    np.testing.assert_allclose(up[:, 2:-2, 2:-2], 3.0, rtol=1e-6)  # away from the zero border
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], 3.0, rtol=1e-6)


def test_minibatch_stddev_is_the_standard_deviation_over_each_group():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2, 3, 4)).astype(np.float32)
    out = np.asarray(nets.minibatch_stddev(jnp.asarray(x), 4))
    assert out.shape == (8, 2, 3, 5)
    np.testing.assert_array_equal(out[..., :4], x)
    for member in range(8):  # group g = examples g, g + 2, g + 4, g + 6 (the reference's reshape)
        group = x[member % 2::2]
        want = np.mean(np.sqrt(np.var(group, axis=0) + 1e-8))
        np.testing.assert_allclose(out[member, :, :, 4], want, rtol=1e-5)
    with pytest.raises(ValueError, match=r"config.model.mbstd_group_size=3 must divide the discriminator's batch of 8"):
        nets.minibatch_stddev(jnp.asarray(x), 3)


class Tiny:
    """8x8x1 images, w of 8 dimensions, widths of 8 and 4; random parameters."""

    def __init__(self, **objective):
        self.model = stylegan2.StyleGAN2ModelConfig(z_dim=8, w_dim=8, mapping_layers=2, channel_base=32,
                                                    channel_max=8, mbstd_group_size=2)
        self.s = stylegan2.StyleGAN2Config(**{"r1_gamma": 1.0, "r1_every": 2, "pl_every": 2, **objective})
        self.n = stylegan2.networks(self.model, (8, 8, 1))
        rng = np.random.default_rng(3)
        self.real = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
        self.params = jax.jit(lambda k: stylegan2.init_params(self.n, k, self.real[:1]))(jax.random.key(0))


def _directional(f, x, v, eps=1e-4):
    """(f(x + eps v) - f(x - eps v)) / (2 eps), in float64 (the networks run at their inputs' precision)."""
    with jax.enable_x64(True):
        x, v = np.asarray(x, np.float64), np.asarray(v, np.float64)
        return np.asarray((f(jnp.asarray(x + eps * v)) - f(jnp.asarray(x - eps * v))) / (2 * eps))


def _float64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def test_r1_is_the_squared_gradient_of_the_discriminator_at_the_real_images():
    # A critic with a known gradient: sum(a x^2) per example has gradient 2 a x.
    a = jnp.linspace(0.5, 2.0, 64).reshape(1, 8, 8, 1)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 8, 8, 1)), jnp.float32)
    critic = lambda x: jnp.sum(a * x ** 2, axis=(1, 2, 3))  # noqa: E731
    np.testing.assert_allclose(gan_losses.r1_penalty(critic, x), jnp.sum((2 * a * x) ** 2, axis=(1, 2, 3)), rtol=1e-5)
    # On the discriminator: the gradient it squares agrees with finite differences of D's outputs, and the
    # D-reg loss is gamma / 2 * r1_every times the batch mean of the penalty.
    s = Tiny(r1_gamma=3.0, r1_every=4)
    d = s.params["discriminator"]
    grads = jax.jit(jax.grad(lambda x: jnp.sum(s.n.judge(d, x))))(s.real)
    v = np.random.default_rng(5).normal(size=s.real.shape)
    judge = lambda x: jnp.sum(s.n.judge(_float64(d), x))  # noqa: E731
    np.testing.assert_allclose(jnp.sum(grads * v), _directional(judge, s.real, v), rtol=1e-3)
    penalty = jnp.sum(grads ** 2, axis=(1, 2, 3))
    loss = jax.jit(lambda d: stylegan2.r1_loss(s.n, s.s, d, s.real))(d)
    np.testing.assert_allclose(loss, 1.5 * 4 * jnp.mean(penalty), rtol=1e-5)


def test_path_lengths_match_finite_differences_of_the_generator():
    s = Tiny()
    g = s.params["generator"]
    # Give the noise a strength, so the lengths are taken with the noise of `key`, as in training.
    g = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 if "noise_strength" in jax.tree_util.keystr(path) else x, g)
    ws = jnp.asarray(np.random.default_rng(6).normal(size=(2, s.n.num_ws, 8)), jnp.float32)
    key = jax.random.key(7)
    lengths = jax.jit(lambda g, ws: stylegan2.path_lengths(s.n, g, ws, key))(g, ws)
    noise_key, y_key = jax.random.split(key)
    y = np.asarray(jax.random.normal(y_key, (2, 8, 8, 1))) / 8.0
    g64 = _float64(g)
    # One y . image per example (the noise is drawn in float32 and added at the images' precision).
    f = jax.jit(lambda ws: jnp.sum(s.n.synthesize(g64, ws, noise_key) * y, axis=(1, 2, 3)))
    grads = np.zeros(ws.shape)
    for i in range(s.n.num_ws):
        for j in range(8):
            v = np.zeros(ws.shape)
            v[:, i, j] = 1.0
            grads[:, i, j] = _directional(f, ws, v)
    want = np.sqrt(np.mean(np.sum(grads ** 2, axis=2), axis=1))
    np.testing.assert_allclose(lengths, want, rtol=1e-3)
    # The G-reg loss: the running mean moves towards the batch mean first, then the squared deviations,
    # times pl_weight (2) and pl_every (2).
    loss, new_mean = jax.jit(lambda g: stylegan2.path_length_penalty(s.n, s.s, g, jnp.float32(0.5), key, 2))(g)
    ws_key, pl_key = jax.random.split(key)
    lengths = jax.jit(lambda g: stylegan2.path_lengths(s.n, g, stylegan2.mixed_ws(s.n, g, ws_key, 2, 0.9),
                                                       pl_key))(g)
    want_mean = 0.5 + 0.01 * (np.mean(lengths) - 0.5)
    np.testing.assert_allclose(new_mean, want_mean, rtol=1e-5)
    np.testing.assert_allclose(loss, 4 * np.mean((np.asarray(lengths) - want_mean) ** 2), rtol=1e-4)


def test_style_mixing_switches_to_the_second_w_from_one_cutoff_on():
    s = Tiny()
    g = s.params["generator"]
    ws = jax.jit(lambda k: stylegan2.mixed_ws(s.n, g, k, 3, 1.0))(jax.random.key(8))
    z_key, z2_key, _, c_key = jax.random.split(jax.random.key(8), 4)
    w1 = s.n.mapping.apply({"params": g["mapping"]}, jax.random.normal(z_key, (3, 8)))
    w2 = s.n.mapping.apply({"params": g["mapping"]}, jax.random.normal(z2_key, (3, 8)))
    cutoff = int(jax.random.randint(c_key, (), 1, s.n.num_ws))
    np.testing.assert_allclose(ws[:, :cutoff], jnp.broadcast_to(w1[:, None], (3, cutoff, 8)), rtol=1e-5)
    np.testing.assert_allclose(ws[:, cutoff:], jnp.broadcast_to(w2[:, None], (3, s.n.num_ws - cutoff, 8)), rtol=1e-5)
    unmixed = jax.jit(lambda k: stylegan2.mixed_ws(s.n, g, k, 3, 0.0))(jax.random.key(8))
    np.testing.assert_allclose(unmixed, jnp.broadcast_to(w1[:, None], unmixed.shape), rtol=1e-5)


def test_truncation_pulls_every_sample_to_the_mean_w():
    info = gm_data.load("digits").info
    s = Tiny()
    settings = stylegan2.Settings(model=s.model, stylegan2=stylegan2.StyleGAN2Config(truncation_psi=0.0))
    method = stylegan2.make(settings, info)
    params = jax.jit(method.init)(jax.random.key(0), {"image": jnp.zeros((1, 8, 8, 1), jnp.uint8)})
    images = jax.jit(method.sample, static_argnums=2)(params, jax.random.key(1), 6)
    assert images.dtype == jnp.uint8 and images.shape == (6, 8, 8, 1) and int(images.max()) <= 15
    # psi = 0: every sample is synthesized from w_avg, and the noise strengths start at zero.
    np.testing.assert_array_equal(images, jnp.broadcast_to(images[:1], images.shape))
    w = np.asarray(stylegan2.truncate(jnp.ones((2, 4, 8)), jnp.zeros(8), 0.7))
    np.testing.assert_allclose(w, 0.7)
    with pytest.raises(ValueError, match=r"^StyleGAN2 needs square images with a power-of-two side of at least 4; "
                                         r"config.data.name='digits' has 6x6.$"):
        stylegan2.make(settings, dataclasses.replace(info, shape=(6, 6, 1)))


def test_one_step_runs_each_phase_it_claims_in_order():
    s = Tiny(style_mixing_prob=0.5)
    g_opt, d_opt = optax.sgd(0.05), optax.sgd(0.1)
    to_data = lambda batch: batch["image"]  # noqa: E731  (already in [-1, 1] here)
    training = stylegan2.training(s.n, s.s, d_opt, to_data)
    opt_state = training.init_opt_state(s.params, g_opt)
    extra = training.init_extra(s.params)
    key = jax.random.key(9)
    g_key, pl_key, d_key = jax.random.split(key, 3)
    update = jax.jit(lambda p, o, e: training.update(p, o, e, key, {"image": s.real}, optimizer=g_opt))
    sgd = lambda p, grads, lr: jax.tree.map(lambda x, y: x - lr * y, p, grads)  # noqa: E731

    def by_hand(step):
        g, d = s.params["generator"], s.params["discriminator"]
        g = sgd(g, jax.grad(lambda p: stylegan2.generator_loss(s.n, s.s, p, d, g_key, 4))(g), 0.05)
        pl_mean = 0.0
        if step % 2 == 0:
            grads, pl_mean = jax.grad(lambda p: stylegan2.path_length_penalty(s.n, s.s, p, 0.0, pl_key, 2),
                                      has_aux=True)(g)
            g = sgd(g, grads, 0.05)
        d = sgd(d, jax.grad(lambda p: stylegan2.discriminator_loss(s.n, s.s, p, g, d_key, s.real))(d), 0.1)
        if step % 2 == 0:
            d = sgd(d, jax.grad(lambda p: stylegan2.r1_loss(s.n, s.s, p, s.real))(d), 0.1)
        return {"generator": g, "discriminator": d}, pl_mean

    for step in (0, 1):  # step 0 runs both regularizers (every 2 steps), step 1 neither
        params, _, new_extra, metrics = update(s.params, opt_state, dict(extra, step=jnp.int32(step)))
        want, pl_mean = jax.jit(lambda: by_hand(step))()
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), params, want)
        assert int(new_extra["step"]) == step + 1
        np.testing.assert_allclose(new_extra["pl_mean"], pl_mean, rtol=1e-5)
        assert np.isfinite(float(metrics["g_loss"])) and np.isfinite(float(metrics["d_loss"]))


def _reference_counts(mapping_layers: int, d_architecture: str):
    """stylegan2-ada-pytorch's parameter counts at 32x32x3 with 512 channels at every resolution, z = w = 512.
    A synthesis layer is its affine (w -> 512 styles, with bias), 3x3 weight, bias and noise strength; ToRGB
    its affine, 1x1 weight and bias. A discriminator conv is 3x3 with bias; the resnet blocks add a 1x1
    skip without bias; the epilogue sees the 1 minibatch-stddev channel, then FC 512*4*4 -> 512 -> 1."""
    fc, conv = 512 * 512 + 512, 512 * 512 * 9 + 512
    layer, to_rgb = fc + conv + 1, fc + 3 * 512 + 3
    mapping = mapping_layers * fc
    synthesis = 512 * 4 * 4 + layer + to_rgb + 3 * (2 * layer + to_rgb)
    skips = 3 * 512 * 512 if d_architecture == "resnet" else 0
    discriminator = (3 * 512 + 512) + 3 * 2 * conv + skips + (513 * 512 * 9 + 512) + (512 * 16 * 512 + 512) + 513
    return mapping, synthesis, discriminator


@pytest.mark.parametrize("variant", [None, "tuned"])
def test_cifar_networks_have_the_reference_parameter_counts(variant):
    model = families.parse(stylegan2_cifar.get_config(variant)).settings.model
    n = stylegan2.networks(model, (32, 32, 3))
    shapes = jax.eval_shape(lambda key: stylegan2.init_params(n, key, jnp.zeros((1, 32, 32, 3))), jax.random.key(0))
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    got = count(shapes["generator"]["mapping"]), count(shapes["generator"]["synthesis"]), count(shapes["discriminator"])
    want = _reference_counts(model.mapping_layers, model.d_architecture)
    assert got == want  # (2,101,248, 19,422,227, 21,507,073) for the baseline; 2 layers and 'orig' when tuned
