"""score_sde's DDPM++ and NCSN++ networks (EDM's SongUNet): sizes against the papers, resampling, shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm.nn import song_unet
from gm.nn.unet import UNetConfig, unet_from_config


def _num_params(config, shape=(32, 32, 3), num_classes=None):
    net = unet_from_config(config, num_classes, None, shape)
    y = None if num_classes is None else jnp.zeros((1,), jnp.int32)
    params = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1,) + shape), jnp.zeros((1,)), y,
                                             train=False))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("scan", [True, False])
def test_parameter_counts_are_the_papers(scan):
    # EDM's DDPM++ for CIFAR-10 (its Table 7: 55.73M) and score_sde's DDPM++ cont. (61.8M), either layout.
    edm = UNetConfig(architecture="ddpmpp", ch=128, ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                     scan=scan)
    assert _num_params(edm) == 55_732_739
    score_sde = UNetConfig(architecture="ddpmpp", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
                           attn_resolutions=(16,))
    assert round(_num_params(score_sde) / 1e6, 1) == 61.8
    # NCSN++ adds the input's residual path and a twice-wider noise embedding (its random Fourier
    # frequencies are a parameter here, a buffer in EDM).
    ncsnpp = UNetConfig(architecture="ncsnpp", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,))
    assert round(_num_params(ncsnpp) / 1e6, 1) == 62.8


@pytest.mark.parametrize("taps", [(1, 1), (1, 3, 3, 1)])
def test_resampling_keeps_constants_and_the_box_filter_is_pooling_and_nearest(taps):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    constant = jnp.full((1, 8, 8, 2), 0.7)
    # Away from the zero-padded border a normalised filter keeps a constant image constant.
    np.testing.assert_allclose(song_unet.downsample(constant, taps)[:, 1:-1, 1:-1], 0.7, rtol=1e-6)
    np.testing.assert_allclose(song_unet.upsample(constant, taps)[:, 2:-2, 2:-2], 0.7, rtol=1e-6)
    assert song_unet.downsample(x, taps).shape == (2, 4, 4, 3) and song_unet.upsample(x, taps).shape == (2, 16, 16, 3)
    if taps == (1, 1):
        pooled = x.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
        np.testing.assert_allclose(song_unet.downsample(x, taps), pooled, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(song_unet.upsample(x, taps), jnp.repeat(jnp.repeat(x, 2, 1), 2, 2), rtol=1e-6)


@pytest.mark.parametrize("architecture", ["ddpmpp", "ncsnpp"])
def test_a_small_network_runs_class_conditional_and_starts_near_zero(architecture):
    config = UNetConfig(architecture=architecture, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                        class_conditional=True)
    net = unet_from_config(config, 10, None, (8, 8, 1))
    x, t, y = jax.random.normal(jax.random.key(1), (4, 8, 8, 1)), jnp.linspace(0.0, 999.0, 4), jnp.arange(4)
    params = net.init(jax.random.key(2), x, t, y, train=False)
    out = net.apply(params, x, t, y, train=True, rngs={"dropout": jax.random.key(3)})
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out))) < 1e-3  # the last convolution starts at 1e-5 of Xavier's scale
    with pytest.raises(ValueError, match="config.model.num_heads"):
        UNetConfig(architecture=architecture, num_heads=4).check("config.model")


@pytest.mark.parametrize("architecture", ["ddpmpp", "ncsnpp"])
def test_scanned_blocks_give_the_unrolled_numbers_after_conversion(architecture):
    fields = dict(architecture=architecture, ch=8, ch_mult=(1, 2), num_res_blocks=3, attn_resolutions=(4,))
    unrolled = unet_from_config(UNetConfig(**fields, scan=False), None, None, (8, 8, 1))
    scanned = unet_from_config(UNetConfig(**fields), None, None, (8, 8, 1))
    x, t = jax.random.normal(jax.random.key(1), (2, 8, 8, 1)), jnp.array([3.0, 700.0])
    params = unrolled.init(jax.random.key(2), x, t, train=False)["params"]
    leaves, tree = jax.tree.flatten(params)  # away from the near-zero init, so every block matters
    params = jax.tree.unflatten(tree, [p + 0.1 * jax.random.normal(jax.random.key(i), p.shape)
                                       for i, p in enumerate(leaves)])
    template = jax.eval_shape(lambda: scanned.init(jax.random.key(2), x, t, train=False))["params"]
    assert {k for k in template if "_blocks" in k} == {"enc_8_blocks0_to_2", "enc_4_blocks1_to_2",
                                                       "dec_4_blocks0_to_2", "dec_8_blocks1_to_3"}
    converted = song_unet.song_unet_params_from_unrolled(params, template)
    assert jax.tree.map(lambda a: a.shape, converted) == jax.tree.map(lambda a: a.shape, template)
    np.testing.assert_allclose(scanned.apply({"params": converted}, x, t, train=False),
                               unrolled.apply({"params": params}, x, t, train=False), rtol=1e-4, atol=1e-5)
