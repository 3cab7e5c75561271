"""CycleGAN: the reference networks' sizes and patches, the history pool's probabilities, the losses
against hand computations, and a train step that does exactly the updates it claims."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gm import cyclegan, gan_losses
from gm import data as gm_data
from gm import distributions as dist
from gm.metrics import sample_quality
from gm.metrics.translation import evaluate_translation
from gm.nn.cyclegan import PatchDiscriminator, ResnetGenerator, instance_norm, patch_grid, reflect_pad


def _count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_full_size_networks_have_the_reference_parameter_counts_and_patches():
    # pytorch-CycleGAN-and-pix2pix prints 11.378 M for resnet_9blocks and 2.765 M for the basic PatchGAN,
    # counting the biases of the convolutions before an instance norm, which gm leaves out (they have no
    # effect): 64 + 128 + 256 + 9 x 2 x 256 + 128 + 64 of the generator's, 128 + 256 + 512 of the PatchGAN's.
    x = jnp.zeros((1, 256, 256, 3))
    g = jax.eval_shape(lambda: ResnetGenerator(3).init(jax.random.key(0), x))
    d = PatchDiscriminator()
    d_params = jax.eval_shape(lambda: d.init(jax.random.key(0), x))
    assert _count(g) == 11_378_179 - 5_248 and _count(d_params) == 2_764_737 - 896
    assert jax.eval_shape(lambda p: ResnetGenerator(3).apply(p, x), g).shape == (1, 256, 256, 3)
    # 30 x 30 logits at 256 x 256: the 70 x 70 patches at a stride of 8 (the reference's output size).
    assert jax.eval_shape(lambda p: d.apply(p, x), d_params).shape == (1, 30, 30) and patch_grid(256, 3) == 30
    small = jax.eval_shape(lambda: PatchDiscriminator(4, 1).init_with_output(jax.random.key(0), x[:, :8, :8]))[0]
    assert small.shape == (1, 2, 2) and patch_grid(8, 1) == 2 and patch_grid(8, 2) == 0


def test_generator_keeps_the_shape_and_range_and_refuses_odd_sizes():
    g = ResnetGenerator(3, features=4, num_blocks=2)
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 16, 12, 1)), jnp.float32)
    params = g.init(jax.random.key(0), x)
    y = g.apply(params, x)
    assert y.shape == (2, 16, 12, 3) and float(jnp.abs(y).max()) <= 1.0
    assert params["params"]["blocks"]["Conv_0"]["kernel"].shape == (2, 3, 3, 16, 16)  # the blocks are scanned
    with pytest.raises(ValueError, match="divisible by 4"):
        g.init(jax.random.key(0), jnp.zeros((1, 10, 12, 1)))


def test_instance_norm_and_reflection_padding():
    x = jnp.asarray(np.random.default_rng(2).normal(3.0, 2.0, (2, 5, 6, 4)), jnp.float32)
    y = instance_norm().apply({}, x)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(1, 2)), 1.0, rtol=1e-3)
    row = jnp.arange(4.0).reshape(1, 1, 4, 1)
    np.testing.assert_array_equal(reflect_pad(jnp.broadcast_to(row, (1, 4, 4, 1)), 2)[0, 0, :, 0],
                                  [2, 1, 0, 1, 2, 3, 2, 1])


def test_pool_fills_then_swaps_half_the_time_with_a_uniform_stored_image():
    size = 4
    pool = cyclegan.init_pool(size, (1, 1, 1))
    first = jnp.arange(4.0).reshape(4, 1, 1, 1)
    pool, out = cyclegan.query_pool(pool, jax.random.key(0), first)
    np.testing.assert_array_equal(out, first)  # filling: every image is stored and returned
    np.testing.assert_array_equal(pool["images"], first)
    assert int(pool["count"]) == size

    # Full: query one new image (value 100 + t) many times from the same full pool.
    keys = jax.random.split(jax.random.key(1), 20000)
    new = jnp.full((1, 1, 1, 1), 100.0)
    pools, outs = jax.vmap(lambda k: cyclegan.query_pool(pool, k, new))(keys)
    outs = np.asarray(outs).ravel()
    returned_new = outs == 100.0
    assert abs(returned_new.mean() - 0.5) < 0.015  # 4.5 standard deviations
    counts = np.bincount(outs[~returned_new].astype(int), minlength=size)
    np.testing.assert_allclose(counts / counts.sum(), 1 / size, atol=0.02)  # uniform over the stored four
    stored = np.asarray(pools["images"]).reshape(len(keys), size)
    # The new image replaces exactly the one returned, and is not stored when it is returned itself.
    for t in range(50):
        if returned_new[t]:
            np.testing.assert_array_equal(stored[t], np.arange(4.0))
        else:
            assert (stored[t] == 100.0).sum() == 1 and stored[t][int(outs[t])] == 100.0
    # A pool of size 0 passes the images through.
    empty = cyclegan.init_pool(0, (1, 1, 1))
    np.testing.assert_array_equal(cyclegan.query_pool(empty, jax.random.key(2), first)[1], first)


class Tiny:
    """Two 8x8x1 domains, networks of width 4, one residual block and 1 halving; random parameters."""

    def __init__(self, lambda_identity=0.5, pool_size=3):
        self.model = cyclegan.CycleGANModelConfig(g_features=4, g_blocks=1, g_down=1, d_features=4, d_layers=1)
        self.cycle = cyclegan.CycleConfig(lambda_cycle=10.0, lambda_identity=lambda_identity, pool_size=pool_size)
        self.nets = cyclegan.networks(self.model, 1)
        rng = np.random.default_rng(3)
        self.batch = {"image_a": jnp.asarray(rng.integers(0, 16, (2, 8, 8, 1)), jnp.uint8),
                      "image_b": jnp.asarray(rng.integers(0, 16, (2, 8, 8, 1)), jnp.uint8)}
        self.a = dist.levels_to_symmetric(self.batch["image_a"], 4)
        self.b = dist.levels_to_symmetric(self.batch["image_b"], 4)
        # Compiled as one program: eagerly, each of the networks' small ops would compile on its own.
        self.params = jax.jit(lambda k, x: cyclegan.init_params(self.nets, k, x))(jax.random.key(0), self.a[:1])


def test_generator_loss_is_the_sum_of_its_terms_by_hand():
    s = Tiny()
    g, d = s.params["generators"], s.params["discriminators"]
    objective = jax.jit(lambda cycle, g, d: cyclegan.generator_objective(s.nets, cycle, g, d, s.a, s.b),
                        static_argnums=0)
    loss, (fake_a, fake_b, metrics) = objective(s.cycle, g, d)
    translate, judge = jax.jit(s.nets.translate), jax.jit(s.nets.judge)
    G, F = (lambda x: translate(g["a_to_b"], x)), (lambda x: translate(g["b_to_a"], x))  # noqa: E731
    D_a, D_b = (lambda x: judge(d["a"], x)), (lambda x: judge(d["b"], x))  # noqa: E731
    mae = lambda x, y: np.mean(np.abs(np.asarray(x) - np.asarray(y)))  # noqa: E731
    adversarial = np.mean((np.asarray(D_b(G(s.a))) - 1) ** 2) + np.mean((np.asarray(D_a(F(s.b))) - 1) ** 2)
    cycle = mae(F(G(s.a)), s.a) + mae(G(F(s.b)), s.b)
    identity = mae(G(s.b), s.b) + mae(F(s.a), s.a)
    np.testing.assert_allclose(loss, adversarial + 10 * cycle + 5 * identity, rtol=1e-5)
    np.testing.assert_allclose(metrics["cycle_a"] + metrics["cycle_b"], cycle, rtol=1e-5)
    np.testing.assert_allclose(fake_b, G(s.a), rtol=1e-6)
    np.testing.assert_allclose(fake_a, F(s.b), rtol=1e-6)
    no_identity = objective(Tiny(lambda_identity=0.0).cycle, g, d)[0]
    np.testing.assert_allclose(no_identity, adversarial + 10 * cycle, rtol=1e-5)


def test_discriminator_loss_is_half_the_least_squares_terms_per_domain():
    s = Tiny()
    d = s.params["discriminators"]
    fake_a, fake_b = -s.a, -s.b
    loss, _ = cyclegan.discriminator_objective(s.nets, d, s.a, s.b, fake_a, fake_b)
    judge = lambda name, x: np.asarray(jax.jit(s.nets.judge)(d[name], x))  # noqa: E731
    want = sum(0.5 * (np.mean((judge(n, real) - 1) ** 2) + np.mean(judge(n, fake) ** 2))
               for n, real, fake in (("a", s.a, fake_a), ("b", s.b, fake_b)))
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert gan_losses.discriminator_loss("least_squares", jnp.ones(3), jnp.zeros(3)) == 0.0


def test_one_step_updates_the_generators_then_the_discriminators_on_pooled_images():
    s = Tiny(pool_size=3)
    # Plain SGD: Adam's first step is lr x sign(grad), ill-conditioned where a gradient is ~0, while SGD's
    # step is the gradient itself.
    g_opt, d_opt = optax.sgd(0.1, momentum=0.5), optax.sgd(0.2, momentum=0.5)
    training = cyclegan.training(s.nets, s.cycle, d_opt, (8, 8, 1), 4)
    opt_state = training.init_opt_state(s.params, g_opt)
    extra = training.init_extra(s.params)
    key = jax.random.key(7)
    params, new_state, new_extra, metrics = jax.jit(
        lambda p, o, e, k, b: training.update(p, o, e, k, b, optimizer=g_opt))(s.params, opt_state, extra, key, s.batch)

    # By hand: the generators' step on L_G with the discriminators as they were. The steps are 1e-3 or more,
    # the compiled and the eager float32 gradients differ by 1e-6.
    g, d = s.params["generators"], s.params["discriminators"]
    (g_loss, (fake_a, fake_b, _)), g_grads = jax.jit(jax.value_and_grad(
        lambda g: cyclegan.generator_objective(s.nets, s.cycle, g, d, s.a, s.b), has_aux=True))(g)
    updates, _ = g_opt.update(g_grads, opt_state["generators"], g)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                 params["generators"], optax.apply_updates(g, updates))
    # The pools were empty with room for 3: both of this step's images are stored and shown as they are.
    for pool, fake in ((new_extra["pool_a"], fake_a), (new_extra["pool_b"], fake_b)):
        assert int(pool["count"]) == 2
        np.testing.assert_allclose(pool["images"][:2], fake, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(pool["images"][2], 0.0)
    # The discriminators' step on L_D against those images (no gradient reaches the generators).
    (d_loss, _), d_grads = jax.jit(jax.value_and_grad(
        lambda d: cyclegan.discriminator_objective(s.nets, d, s.a, s.b, fake_a, fake_b), has_aux=True))(d)
    d_updates, _ = d_opt.update(d_grads, opt_state["discriminators"], d)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                 params["discriminators"], optax.apply_updates(d, d_updates))
    np.testing.assert_allclose(metrics["g_loss"], g_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["d_loss"], d_loss, rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                 new_state["generators"][0].trace, g_grads)  # momentum's trace after one step: the gradient
    # The EMA follows the generators; the discriminators' entry is the current one.
    ema = training.average(s.params, params, 0.5)
    np.testing.assert_allclose(ema["generators"]["a_to_b"]["Conv_2"]["bias"],
                               0.5 * (g["a_to_b"]["Conv_2"]["bias"] + params["generators"]["a_to_b"]["Conv_2"]["bias"]),
                               rtol=1e-6)
    assert ema["discriminators"] is params["discriminators"]


def test_translate_maps_each_domain_across_and_back_at_the_datas_levels():
    s = Tiny()
    info = gm_data.load("digit_strokes").info
    method = cyclegan.make(cyclegan.Settings(model=s.model, cyclegan=s.cycle), info)
    assert method.sample is None
    out = jax.jit(method.translate)(s.params, jax.random.key(0), s.batch)
    g = s.params["generators"]
    to_levels = lambda x: np.asarray(dist.symmetric_to_levels(jnp.clip(x, -1, 1), 4))  # noqa: E731
    translate = jax.jit(s.nets.translate)
    fake_b, fake_a = translate(g["a_to_b"], s.a), translate(g["b_to_a"], s.b)
    want = {"image_a": s.batch["image_a"], "fake_b": to_levels(fake_b),
            "cycle_a": to_levels(translate(g["b_to_a"], fake_b)), "image_b": s.batch["image_b"],
            "fake_a": to_levels(fake_a), "cycle_b": to_levels(translate(g["a_to_b"], fake_a))}
    assert sorted(out) == sorted(want)
    for name, value in want.items():
        assert out[name].dtype == jnp.uint8 and out[name].shape == (2, 8, 8, 1)
        # Rounding to a level may land one level off where the compiled and eager floats straddle a boundary.
        assert np.abs(np.asarray(out[name], int) - np.asarray(value, int)).max() <= 1, name
    with pytest.raises(ValueError, match=r"^CycleGAN translates between two image domains; "
                                         r"config.data.name='digits' is image data, use digit_strokes"):
        cyclegan.make(cyclegan.Settings(), gm_data.load("digits").info)


def test_translation_scores_of_doing_nothing_are_the_untranslated_ones():
    # A translation that returns its input: no cycle error, each direction's FID equals the FID of the
    # untranslated images, and the class kept is the classifier's accuracy on the other domain's images.
    dataset = gm_data.load("digit_strokes")
    extractor = sample_quality.make_extractor("auto", dataset)
    references = {}
    for d in ("a", "b"):
        features, _ = sample_quality.dataset_features(extractor, dataset, "train", 120, field=f"image_{d}")
        references[d] = sample_quality.Reference(*sample_quality.moments(features[dataset.train[f"first_{d}"]]),
                                                 None, d)

    def unchanged(params, key, batch):
        a, b = batch["image_a"], batch["image_b"]
        return {"image_a": a, "fake_b": a, "cycle_a": a, "image_b": b, "fake_a": b, "cycle_b": b}

    batches = gm_data.eval_batches(dataset, batch_size=64, split="test")
    result = evaluate_translation(unchanged, {}, jax.random.key(0), batches, extractor, references, 4, labelled=True)
    n = len(dataset.test["label"])
    assert result["num_examples_a"] == int(dataset.test["first_a"].sum()) and result["num_examples_b"] <= n
    assert result["cycle_l1_a"] == 0.0 and result["cycle_l1_b"] == 0.0
    for d in ("a", "b"):
        assert result[f"fid_digits_{d}"] == result[f"fid_digits_{d}_untranslated"] > 50
    assert result["class_kept_b_to_a"] == result["class_accuracy_real_b"]
    assert result["class_kept_a_to_b"] == result["class_accuracy_real_a"] > 0.9
    # The digits' classifier never saw thick strokes: that is what the B -> A translation has to fix.
    assert result["class_accuracy_real_b"] < 0.8
    # A cycle one level off everywhere: an L1 of 2 / 15 in [-1, 1] units.
    off = lambda params, key, batch: dict(unchanged(params, key, batch), cycle_a=batch["image_a"] ^ 1)  # noqa: E731
    batches = gm_data.eval_batches(dataset, batch_size=64, split="test")
    result = evaluate_translation(off, {}, jax.random.key(0), batches, extractor, references, 4)
    np.testing.assert_allclose(result["cycle_l1_a"], 2 / 15, rtol=1e-6)
    assert "class_kept_b_to_a" not in result
