"""The DDPM UNet: paper parameter count, shapes, conditioning, dropout, init.

Compilation dominates on CPU, so the tests share a few jitted functions of a
tiny network, and most of them use parameters drawn with numpy on the shapes
from ``jax.eval_shape`` instead of compiling the random initialisers again.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm.nn import UNet, timestep_embedding
from gm.nn.layers import num_groups
from gm.nn.unet import unet_params_from_unrolled

# Ho et al. 2020, CIFAR-10 model (diffusion_tf: ch=128, ch_mult=(1,2,2,2), 2 blocks, attn at 16).
PAPER_CIFAR10_PARAMS = 35_746_307

TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
B, H, W, C = 3, 8, 8, 1

MODEL = UNet(**TINY)  # dropout 0.1, as in the paper
_apply_tiny = jax.jit(MODEL.apply, static_argnames="train")


def _key(seed):
    # A counter-based generator compiles several times faster than threefry on
    # CPU; nothing tested here depends on which generator is used.
    return jax.random.key(seed, impl="unsafe_rbg")


def run_tiny(variables, x, t, *, train=False, seed=0):
    """The tiny model, always called with the same signature to reuse its compilation."""
    return _apply_tiny(variables, x, t, train=train, rngs={"dropout": _key(seed)})


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(-1.0, 1.0, (B, H, W, C)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 1000, (B,)), jnp.int32)
    return x, t


def _abstract_init(model, *args):
    return jax.eval_shape(
        lambda *a: model.init({"params": jax.random.key(0)}, *a, train=False), *args)


def _random_variables(model, *args, seed=1):
    """Variables shaped like ``model.init(...)``, every entry O(1) and random.

    At init the residual branches and the output conv are ~1e-5 in scale, so
    effects of labels, timesteps or dropout would sit near float32 rounding;
    a "trained-like" network makes those tests meaningful.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", None)
        if name == "kernel":
            value = rng.normal(size=leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))
        elif name == "scale":
            value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        else:  # biases and embedding tables
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, _abstract_init(model, *args))


def _max_abs(a):
    return float(jnp.max(jnp.abs(a)))


@pytest.fixture(scope="module")
def tiny_random():
    x, t = _inputs()
    return _random_variables(MODEL, x, t), x, t


@pytest.mark.parametrize("scan", [True, False])
def test_paper_config_parameter_count(scan):
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    shapes = _abstract_init(UNet(scan=scan), x, t)
    n = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes["params"]))
    print(f"UNet paper config: {n:,} parameters (reference {PAPER_CIFAR10_PARAMS:,})")
    assert abs(n - PAPER_CIFAR10_PARAMS) <= 100_000
    assert n == PAPER_CIFAR10_PARAMS
    assert set(shapes) == {"params"}  # no batch stats or other state


def test_num_groups():
    # The paper's widths all use 32 groups, like the reference.
    assert [num_groups(c) for c in (64, 128, 256, 512)] == [32] * 4
    # Narrow layers keep >= 2 channels per group so conditioning survives the norm.
    assert num_groups(16) == 8 and num_groups(32) == 16 and num_groups(48) == 24


def test_timestep_embedding_matches_formula():
    t = np.array([0, 1, 7, 999], dtype=np.int32)
    dim = 10
    half = dim // 2
    freqs = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
    args = t.astype(np.float64)[:, None] * freqs[None, :]
    want = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    got = timestep_embedding(jnp.asarray(t), dim)
    assert got.shape == (4, dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
    # Float timesteps are accepted and agree with integer ones.
    np.testing.assert_allclose(
        np.asarray(timestep_embedding(jnp.asarray(t, jnp.float32), dim)), np.asarray(got))
    # Odd widths get a zero column.
    odd = timestep_embedding(jnp.asarray(t), dim + 1)
    assert odd.shape == (4, dim + 1)
    np.testing.assert_array_equal(np.asarray(odd[:, -1]), 0.0)


def test_init_output_shape_dtype_and_near_zero():
    x, t = _inputs()
    variables = jax.jit(lambda x, t: MODEL.init({"params": _key(0)}, x, t, train=False))(x, t)
    out = run_tiny(variables, x, t)
    assert out.shape == (B, H, W, C) and out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    # The near-zero output conv makes the untrained model predict ~0.
    assert bool(jnp.all(jnp.isfinite(out)))
    assert _max_abs(out) < 1e-3


def test_attention_placed_at_feature_map_resolution():
    x, t = _inputs()
    attn = sorted(k for k in _abstract_init(UNet(**TINY, scan=False), x, t)["params"] if "attn" in k)
    # 8x8 input, ch_mult=(1, 2): level 0 is 8x8, level 1 is 4x4.
    assert attn == ["down_1_attn_0", "mid_attn_1", "up_1_attn_0", "up_1_attn_1"]


def test_timestep_changes_output(tiny_random):
    variables, x, t = tiny_random
    out_a = run_tiny(variables, x, t)
    out_b = run_tiny(variables, x, t + 100)
    assert _max_abs(out_a - out_b) > 1e-3


def test_out_ch_and_class_labels():
    model = UNet(**TINY, num_classes=10, out_ch=2)
    x, t = _inputs()
    y0 = jnp.zeros((B,), jnp.int32)
    variables = _random_variables(model, x, t, y0)
    assert variables["params"]["class_embed"]["embedding"].shape == (10, 4 * TINY["ch"])
    apply = jax.jit(lambda y: model.apply(variables, x, t, y, train=False))
    out_a, out_b = apply(y0), apply(jnp.full((B,), 7, jnp.int32))
    assert out_a.shape == (B, H, W, 2) and out_a.dtype == jnp.float32
    assert _max_abs(out_a - out_b) > 1e-3
    with pytest.raises(ValueError):
        model.apply(variables, x, t, None, train=False)
    with pytest.raises(ValueError):
        MODEL.apply(variables, x, t, y0, train=False)


def test_eval_deterministic_train_dropout_varies(tiny_random):
    variables, x, t = tiny_random
    e1 = run_tiny(variables, x, t, seed=3)
    e2 = run_tiny(variables, x, t, seed=4)
    np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
    d1 = run_tiny(variables, x, t, train=True, seed=3)
    d2 = run_tiny(variables, x, t, train=True, seed=4)
    assert _max_abs(d1 - d2) > 1e-3
    assert _max_abs(d1 - e1) > 1e-3
    d1_again = run_tiny(variables, x, t, train=True, seed=3)
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(d1_again))


def test_batch_elements_are_independent(tiny_random):
    variables, x, t = tiny_random
    base = run_tiny(variables, x, t)
    noise = jnp.asarray(np.random.default_rng(5).normal(size=x[1:].shape), jnp.float32)
    moved = run_tiny(variables, x.at[1:].add(noise), t)
    assert _max_abs(moved[1:] - base[1:]) > 1e-3  # the perturbation does reach the output
    np.testing.assert_allclose(np.asarray(moved[0]), np.asarray(base[0]), rtol=0, atol=1e-6)


def test_bfloat16_compute(tiny_random):
    variables, x, t = tiny_random
    model = UNet(**TINY, dtype=jnp.bfloat16)
    shapes = _abstract_init(model, x, t)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))  # params stay f32
    out = jax.jit(lambda v: model.apply(v, x, t, train=False))(variables)
    assert out.shape == (B, H, W, C) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    ref = run_tiny(variables, x, t)
    # bfloat16 keeps ~3 significant digits; the two agree loosely.
    assert _max_abs(out - ref) < 0.1 * _max_abs(ref) + 1e-2


def test_improved_ddpm_options_scale_shift_and_heads_change_only_what_they_should():
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    base = _abstract_init(UNet(num_res_blocks=3, attn_resolutions=(16, 8)), x, t)["params"]
    heads = _abstract_init(UNet(num_res_blocks=3, attn_resolutions=(16, 8), num_heads=4), x, t)["params"]
    assert jax.tree.map(lambda a: a.shape, base) == jax.tree.map(lambda a: a.shape, heads)
    film = _abstract_init(UNet(num_res_blocks=3, attn_resolutions=(16, 8), num_heads=4, scale_shift_norm=True,
                               out_ch=6, scan=False), x, t)["params"]
    blocks = [name for name in film if "temb_proj" in film[name]]
    assert len(blocks) == 4 * 3 + 4 * 4 + 2  # down, up (one more per level) and the two middle blocks
    for name in blocks:  # the embedding now gives a scale and a shift per channel
        width = film[name]["norm2"]["scale"].shape[0]
        assert film[name]["temb_proj"]["kernel"].shape == (512, 2 * width)
    n = sum(math.prod(a.shape) for a in jax.tree.leaves(film))
    print(f"improved-DDPM CIFAR-10 UNet (learned variances): {n:,} parameters")


def test_multi_head_attention_against_a_direct_computation():
    from gm.nn.layers import AttnBlock
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 3, 8)), jnp.float32)
    block = AttnBlock(num_heads=2)
    # O(1) random weights (at init proj_out is ~0 and the block is the identity).
    variables = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape) / 2, jnp.float32),
                             block.init(jax.random.key(0), x))
    p = jax.tree.map(np.asarray, variables["params"])
    h = np.asarray(_group_norm(p["norm"], x))
    q, k, v = (h.reshape(2, 9, 8) @ p[n]["kernel"] + p[n]["bias"] for n in ("q", "k", "v"))
    out = np.zeros((2, 9, 8))
    for head in range(2):
        sl = slice(4 * head, 4 * head + 4)
        logits = np.einsum("bqc,bkc->bqk", q[..., sl], k[..., sl]) / 2.0
        w = np.exp(logits - logits.max(-1, keepdims=True))
        out[..., sl] = (w / w.sum(-1, keepdims=True)) @ v[..., sl]
    want = np.asarray(x) + (out @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]).reshape(2, 3, 3, 8)
    np.testing.assert_allclose(block.apply(variables, x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="num_heads=3"):
        AttnBlock(num_heads=3).init(jax.random.key(0), x)


def _group_norm(params, x):
    """The block's GroupNorm (4 groups of 2 channels for 8 channels, eps 1e-6) in numpy."""
    x = np.asarray(x, np.float64)
    g = x.reshape(x.shape[:-1] + (num_groups(x.shape[-1]), -1))
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    normed = ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape)
    return normed * params["scale"] + params["bias"]


SCANNED = {  # UNet fields -> the scanned stages it must have
    "two_levels_with_attention": (dict(ch=8, ch_mult=(1, 2), num_res_blocks=3, attn_resolutions=(4,)),
                                  {"down_0_blocks_0_to_2", "down_1_blocks_1_to_2", "up_0_blocks_1_to_3",
                                   "up_1_blocks_0_to_2"}),
    "vdm_like_one_level": (dict(ch=8, ch_mult=(1,), num_res_blocks=5, attn_resolutions=()),
                           {"down_0_blocks_0_to_4", "up_0_blocks_0_to_5"}),
}


@pytest.mark.parametrize("name", sorted(SCANNED))
def test_scanned_blocks_give_the_unrolled_numbers_after_conversion(name):
    fields, stages = SCANNED[name]
    x, t = _inputs()
    unrolled, scanned = UNet(**fields, scan=False), UNet(**fields)
    params = _random_variables(unrolled, x, t)["params"]
    template = _abstract_init(scanned, x, t)["params"]
    assert {k for k in template if "_blocks_" in k} == stages
    converted = unet_params_from_unrolled(params, template)
    assert jax.tree.map(lambda a: a.shape, converted) == jax.tree.map(lambda a: a.shape, template)
    np.testing.assert_allclose(scanned.apply({"params": converted}, x, t, train=False),
                               unrolled.apply({"params": params}, x, t, train=False), rtol=2e-5, atol=2e-5)
    # Dropout draws differ per block, so training mode differs in values, not in what it depends on.
    out = scanned.apply({"params": converted}, x, t, train=True, rngs={"dropout": _key(3)})
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
