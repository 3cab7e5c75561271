import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gm import autoregressive as ar
from gm import config as config_lib
from gm import data as gm_data
from gm import distributions as dist
from gm.nn import pixelcnn_pp_cache
from gm.nn.pixelcnn_pp import PixelCNNPP, concat_elu, pixelcnn_pp_params_from_unrolled
from gm.train import state as state_lib

# The checks below are structural (which gradients are exactly zero, which outputs change), so the
# programs are compiled with LLVM's optimisations off: several times faster to build on a 2-core CPU.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _compile(fn, *args):
    return jax.jit(fn, compiler_options=_FAST_COMPILE).lower(*args).compile()


def _uniform(seed, shape):
    # Host-side inputs: an eager jax.random call would compile its own program.
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


def _tiny(**kwargs):
    return PixelCNNPP(**{"nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2, "dropout": 0.5, **kwargs})


def _random_params(model, x, y=None, seed=0):
    """Parameters of `model` drawn on the host, scaled by 1 / sqrt(fan-in).

    `model.init` traces the same code (through `jax.eval_shape`), but running its ~100 random
    initialisers costs a minute of XLA compilation on a small CPU.
    """
    shapes = jax.eval_shape(lambda k: model.init(k, x, y, train=False), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(s):
        std = 1.0 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
        return jnp.asarray(std * rng.normal(size=s.shape), s.dtype)

    return jax.tree.map(draw, shapes)


def test_concat_elu_doubles_channels():
    x = jnp.array([[-1.0, 2.0]])
    np.testing.assert_allclose(concat_elu(x), [[np.expm1(-1.0), 2.0, 1.0, np.expm1(-2.0)]], rtol=1e-6)


def test_output_shape_dtype_and_a_finite_likelihood():
    # RGB, H != W, 4-bit data.
    model = _tiny(nr_logistic_mix=3)
    x = dist.levels_to_symmetric(jnp.asarray(np.random.default_rng(1).integers(0, 16, (2, 4, 8, 3))), 4)
    params = _random_params(model, x)

    def forward(params, x):
        out = model.apply(params, x, train=False)
        return out, dist.discretized_logistic_mixture_log_prob(x, out, 4)

    out, log_p = _compile(forward, params, x)(params, x)
    assert out.shape == (2, 4, 8, dist.dlm_num_params(3, 3)) == (2, 4, 8, 30)
    assert out.dtype == jnp.float32
    assert log_p.shape == (2, 4, 8)
    assert np.all(np.isfinite(log_p)) and np.all(log_p < 0)


@pytest.mark.parametrize("num_channels", [1, 3])
def test_output_depends_only_on_earlier_pixels(num_channels):
    height = width = 8
    n = height * width
    model = _tiny()
    x = _uniform(2, (1, height, width, num_channels))
    params = _random_params(model, x)
    num_params = dist.dlm_num_params(num_channels, model.nr_logistic_mix)
    # Example p of a batch of n copies of x picks out output pixel p with a random cotangent, so one
    # backward pass gives every pixel's gradient; a random direction cannot cancel a dependence.
    cotangent = jnp.asarray(np.random.default_rng(3).normal(size=(n, num_params)), jnp.float32)
    select = jax.nn.one_hot(jnp.arange(n), n).reshape(n, height, width, 1) * cotangent[:, None, None, :]
    xs = jnp.broadcast_to(x, (n, height, width, num_channels))

    def backward(params, xs, select):
        return jax.grad(lambda xs: jnp.sum(model.apply(params, xs, train=False) * select))(xs)

    grads = _compile(backward, params, xs, select)(params, xs, select)
    # depends[p, q]: output pixel p (raster order) reads input pixel q, any channel.
    depends = np.asarray(jnp.abs(grads).sum(axis=-1)).reshape(n, n) > 0
    not_before = np.triu(np.ones((n, n), bool))  # q >= p, including the pixel itself
    for p in range(n):
        assert not np.any(depends[p] & not_before[p]), f"output pixel {p} reads pixel(s) >= {p}"
    # Not vacuous: every pixel reads its left neighbour and the pixel above when they exist.
    for p in range(1, n):
        i, j = divmod(p, width)
        if j > 0:
            assert depends[p, p - 1], f"output pixel {p} ignores its left neighbour"
        if i > 0:
            assert depends[p, p - width], f"output pixel {p} ignores the pixel above"
    assert depends[n - 1].sum() > n // 2  # the last pixel sees most of the image


def test_dropout_is_active_only_in_training():
    model = _tiny()
    x = _uniform(4, (2, 8, 8, 1))
    params = _random_params(model, x)
    evaluate = _compile(lambda p, x: model.apply(p, x, train=False), params, x)
    key = jax.random.key(5)
    train = _compile(lambda p, x, k: model.apply(p, x, train=True, rngs={"dropout": k}), params, x, key)
    np.testing.assert_array_equal(evaluate(params, x), evaluate(params, x))
    a, b = train(params, x, jax.random.key(6)), train(params, x, jax.random.key(7))
    assert not np.allclose(a, b)
    assert not np.allclose(a, evaluate(params, x))
    np.testing.assert_array_equal(a, train(params, x, jax.random.key(6)))
    # With a rate of zero, training mode computes the evaluation output (same parameters).
    no_dropout = _tiny(dropout=0.0)
    out = _compile(lambda p, x, k: no_dropout.apply(p, x, train=True, rngs={"dropout": k}),
                   params, x, key)(params, x, key)
    np.testing.assert_allclose(out, evaluate(params, x), rtol=1e-6, atol=1e-6)


def test_class_conditioning():
    model = _tiny(num_classes=3)
    x = _uniform(8, (2, 8, 8, 1))
    y = jnp.array([0, 1])
    params = _random_params(model, x, y)
    assert params["params"]["down_0"]["u"]["class_embed"]["embedding"].shape == (1, 3, 16)  # one block per stage
    apply = _compile(lambda p, x, y: model.apply(p, x, y, train=False), params, x, y)
    out, other = apply(params, x, y), apply(params, x, jnp.array([2, 1]))
    assert not np.allclose(out[0], other[0])  # the changed label moves its example's output ...
    np.testing.assert_array_equal(out[1], other[1])  # ... and no other example's
    with pytest.raises(ValueError, match="pass labels y"):
        model.apply(params, x, train=False)
    with pytest.raises(ValueError, match="num_classes is None"):
        jax.eval_shape(lambda k: _tiny().init(k, x, y, train=False), jax.random.key(0))


@pytest.mark.parametrize("shape", [(1, 6, 8, 1), (1, 8, 10, 3)])
def test_rejects_sizes_not_divisible_by_four(shape):
    with pytest.raises(ValueError, match="divisible by 4"):
        jax.eval_shape(lambda k: _tiny().init(k, jnp.zeros(shape), train=False), jax.random.key(0))


def test_scanned_blocks_give_the_unrolled_numbers_after_conversion():
    x = _uniform(3, (2, 8, 8, 3))
    unrolled, scanned = _tiny(nr_resnet=2, dropout=0.0, scan=False), _tiny(nr_resnet=2, dropout=0.0)
    params = _random_params(unrolled, x)["params"]
    template = jax.eval_shape(lambda: scanned.init(jax.random.key(0), x, train=False))["params"]
    converted = pixelcnn_pp_params_from_unrolled(params, nr_resnet=2)
    assert jax.tree.map(lambda a: a.shape, converted) == jax.tree.map(lambda a: a.shape, template)
    assert converted["up_1"]["ul"]["conv1"]["kernel"].shape[0] == 3  # one more block at the upsampled levels
    np.testing.assert_allclose(scanned.apply({"params": converted}, x, train=False),
                               unrolled.apply({"params": params}, x, train=False), rtol=1e-4, atol=1e-5)


# --- the cached sampler -----------------------------------------------------------------------------

@pytest.mark.parametrize("scan, num_classes, shape", [(True, 3, (2, 8, 12, 3)), (False, None, (2, 8, 8, 1))])
def test_cached_steps_compute_the_networks_output_at_every_pixel(scan, num_classes, shape):
    """u_row then ul_pixel, row by row, give out[:, i, j] of the whole network. They are handed the
    whole image, later pixels included: reading one would change the numbers, the network being causal."""
    num, height, width, channels = shape
    model = _tiny(nr_resnet=2, dropout=0.0, scan=scan, num_classes=num_classes)
    levels = np.random.default_rng(11).integers(0, 256, shape)
    x = dist.levels_to_symmetric(jnp.asarray(levels), 8)
    y = None if num_classes is None else jnp.array([0, 2])
    params = _random_params(model, x, y)["params"]
    full = np.asarray(_compile(lambda p, x: model.apply({"params": p}, x, y, train=False), params, x)(params, x))

    tree = params if scan else pixelcnn_pp_params_from_unrolled(params, 2)
    _, caches = pixelcnn_pp_cache.init_caches(model, tree, shape)
    image = jnp.pad(jnp.concatenate([x, jnp.ones(shape[:3] + (1,))], axis=-1), ((0, 0), (1, 0), (1, 1), (0, 0)))
    row = jax.jit(lambda caches, i: pixelcnn_pp_cache.u_row(model, tree, image, caches, i, y))
    pixel = jax.jit(lambda caches, i, j: pixelcnn_pp_cache.ul_pixel(model, tree, image, caches, i, j, y))
    outs = np.zeros_like(full)
    for i in range(height):
        caches = row(caches, i)
        for j in range(width):
            out, caches = pixel(caches, i, j)
            outs[:, i, j] = out
    np.testing.assert_allclose(outs, full, rtol=1e-5, atol=1e-5)


def test_cached_sampler_draws_the_naive_samplers_images():
    info = gm_data.DatasetInfo("tiny", (8, 8, 3), 8, 10, 1, 1)

    def method(sampler):
        config = ml_collections.ConfigDict({"model": {
            "name": "pixelcnn_pp", "class_conditional": True, "dtype": "float32",
            "pixelcnn_pp": {"nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 3, "dropout": 0.0,
                            "sampler": sampler}}})
        return ar.make(config_lib.parse_sections(ar.Settings, config), info)

    cached, naive = method("cached"), method("naive")
    batch = {"image": jnp.zeros((1, 8, 8, 3), jnp.uint8), "label": jnp.zeros(1, jnp.int32)}
    params = state_lib.run_once(cached.init, jax.random.key(3), batch)
    params = jax.tree.map(lambda a: 2.0 * a, params)  # sharper conditionals than at init
    key = jax.random.key(1)
    draw = lambda m: _compile(lambda k: m.sample(params, k, 3), key)
    fast = draw(cached)
    images = np.asarray(fast(key))
    np.testing.assert_array_equal(images, np.asarray(draw(naive)(key)))
    assert len(np.unique(images)) > 20  # varied images, not a constant the two might share by accident
    assert not np.array_equal(images, np.asarray(fast(jax.random.key(2))))
