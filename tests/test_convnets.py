"""gm.nn.convnets: the stride-2 transposed convolution as four phase convolutions."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gm.nn import dcgan, pixelcnn_pp
from gm.nn.convnets import ConvDecoder, UpConv2x, conv_transpose_2x


@pytest.mark.parametrize("shape", [(2, 4, 4, 8), (2, 7, 7, 3), (1, 8, 6, 4), (3, 1, 1, 2)])
def test_conv_transpose_2x_is_flaxs_transposed_convolution_in_values_and_gradients(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    reference, ours = nn.ConvTranspose(5, (4, 4), strides=(2, 2)), UpConv2x(5)
    params = reference.init(jax.random.key(1), x)
    # The same parameters, drawn the same way: a checkpoint of either restores into the other.
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(1), x), params)
    want = reference.apply(params, x)
    assert want.shape == (shape[0], 2 * shape[1], 2 * shape[2], 5)
    np.testing.assert_allclose(np.asarray(ours.apply(params, x)), np.asarray(want), rtol=1e-5, atol=1e-5)

    def grads(module):
        return jax.grad(lambda p, x: jnp.sum(jnp.sin(module.apply(p, x))), argnums=(0, 1))(params, x)

    for got, expected in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(reference))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("kernel", [(2, 2), (2, 3), (3, 4), (5, 2)])
@pytest.mark.parametrize("size", [(1, 3), (4, 4), (7, 8)])
def test_conv_transpose_2x_is_lax_conv_transpose_for_any_kernel(padding, kernel, size):
    x = jax.random.normal(jax.random.key(2), (2, *size, 3))
    k = jax.random.normal(jax.random.key(3), (*kernel, 3, 4))
    want = jax.lax.conv_transpose(x, k, (2, 2), padding)
    got = conv_transpose_2x(x, k, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_conv_transpose_2x_needs_two_taps_per_axis():
    with pytest.raises(ValueError, match="at least 2 kernel taps per axis"):
        conv_transpose_2x(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 2, 2)))


@pytest.mark.parametrize("shift", ["down", "down_right"])
def test_pixelcnn_pp_upsampling_is_the_cropped_transposed_convolution(shift):
    x = jax.random.normal(jax.random.key(4), (2, 4, 4, 6))
    layer = pixelcnn_pp.ShiftedConvTranspose(5, shift)
    params = layer.init(jax.random.key(5), x)
    inner = params["params"]["ConvTranspose_0"]
    kh, kw = inner["kernel"].shape[:2]
    full = jax.lax.conv_transpose(x, inner["kernel"], (2, 2), "VALID") + inner["bias"]
    left = (kw - 1) // 2 if shift == "down" else 0
    np.testing.assert_allclose(np.asarray(layer.apply(params, x)), np.asarray(full[:, :8, left:left + 8]),
                               rtol=1e-5, atol=1e-5)


def test_generator_and_decoder_keep_their_parameter_paths():
    # The names nn.ConvTranspose gave these layers, so checkpoints written before still restore.
    g = dcgan.DCGANGenerator((32, 32, 3), features=8)
    params = jax.eval_shape(g.init, jax.random.key(0), jnp.zeros((2, 16)))["params"]
    assert {k: v["kernel"].shape for k, v in params.items() if k.startswith("ConvTranspose")} == {
        "ConvTranspose_0": (4, 4, 32, 16), "ConvTranspose_1": (4, 4, 16, 8), "ConvTranspose_2": (4, 4, 8, 3)}
    dec = ConvDecoder(channels=(16, 32), num_res_blocks=1, res_hidden=8, out_features=3)
    params = jax.eval_shape(dec.init, jax.random.key(0), jnp.zeros((2, 8, 8, 4)))["params"]
    assert {k: v["kernel"].shape for k, v in params.items() if k.startswith("ConvTranspose")} == {
        "ConvTranspose_0": (4, 4, 32, 16), "ConvTranspose_1": (4, 4, 16, 3)}
