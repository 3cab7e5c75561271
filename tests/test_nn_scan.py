"""gm.nn.scan: repeated blocks traced once, and convolutions whose gradients XLA:CPU runs fast in loops."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from gm.nn import scan


class _Affine(nn.Module):
    features: int

    @nn.compact
    def __call__(self, h, x):
        return jnp.tanh(nn.Dense(self.features)(h) + x), jnp.sum(h)


def test_repeat_is_the_block_applied_in_order_with_each_slice_of_the_stacked_parameters():
    h = jax.random.normal(jax.random.key(0), (3, 4))
    xs = jax.random.normal(jax.random.key(1), (5, 3, 4))
    for reverse in (False, True):
        stack = scan.repeat(_Affine, 5, reverse=reverse)(4)
        params = stack.init(jax.random.key(2), h, xs)["params"]
        assert params["Dense_0"]["kernel"].shape == (5, 4, 4)
        out, ys = stack.apply({"params": params}, h, xs)
        expected, expected_ys = h, [None] * 5
        for i in (reversed(range(5)) if reverse else range(5)):
            block = scan.unstack_blocks(params)[i]
            expected_ys[i] = jnp.sum(expected)
            expected, _ = _Affine(4).apply({"params": block}, expected, xs[i])
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ys, jnp.stack(expected_ys), rtol=1e-6)


def test_stack_and_unstack_are_inverse():
    trees = [{"a": jnp.full((2,), float(i)), "b": {"c": jnp.full((3, 1), -float(i))}} for i in range(4)]
    stacked = scan.stack_blocks(trees)
    assert stacked["b"]["c"].shape == (4, 3, 1)
    for tree, back in zip(trees, scan.unstack_blocks(stacked)):
        jax.tree.map(np.testing.assert_array_equal, tree, back)


def _lax_conv(x, w, padding):
    spatial = "HW"[: x.ndim - 2] if x.ndim == 4 else "W"
    return lax.conv_general_dilated(x, w, (1,) * (x.ndim - 2), padding,
                                    dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))


CASES = {  # (input shape, kernel shape, padding)
    "2d_3x3_same": ((2, 6, 5, 3), (3, 3, 3, 4), "SAME"),
    "2d_1x1": ((2, 4, 4, 5), (1, 1, 5, 2), "SAME"),
    "2d_2x5_valid": ((3, 7, 8, 2), (2, 5, 2, 3), "VALID"),
    "2d_asymmetric": ((1, 5, 6, 2), (3, 2, 2, 2), ((0, 2), (1, 0))),
    "1d_causal": ((2, 9, 3), (4, 3, 5), ((3, 0),)),
}


def _case(case):
    """(x, w, loop_conv of them, lax's convolution of them) for one of CASES."""
    x_shape, w_shape, padding = CASES[case]
    x = jax.random.normal(jax.random.key(0), x_shape)
    w = jax.random.normal(jax.random.key(1), w_shape)
    spatial = "HW" if x.ndim == 4 else "W"
    numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    ours = lambda x, w: scan.loop_conv(x, w, (1,) * (x.ndim - 2), padding, dimension_numbers=numbers)  # noqa: E731
    return x, w, ours, lambda x, w: _lax_conv(x, w, padding)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loop_conv_has_lax_values_and_gradients(case):
    x, w, ours, theirs = _case(case)
    np.testing.assert_allclose(ours(x, w), theirs(x, w), rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(jax.random.key(2), theirs(x, w).shape)
    for got, want in zip(jax.vjp(ours, x, w)[1](cotangent), jax.vjp(theirs, x, w)[1](cotangent)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_loop_conv_falls_back_to_lax_for_strides_and_groups():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    numbers = ("NHWC", "HWIO", "NHWC")
    for strides, groups in (((2, 2), 1), ((1, 1), 2)):
        got = scan.loop_conv(x, w if groups == 2 else w.reshape(3, 3, 4, 2), strides, "SAME",
                             dimension_numbers=numbers, feature_group_count=groups)
        want = lax.conv_general_dilated(x, w if groups == 2 else w.reshape(3, 3, 4, 2), strides, "SAME",
                                        dimension_numbers=numbers, feature_group_count=groups)
        np.testing.assert_array_equal(got, want)


def _loop_conv_labels(conv, mode):
    """The dim_labels of every convolution XLA compiles for a 2-block lax.scan of `conv`, differentiated
    in reverse mode (the gradient) or forward mode (a Jacobian-vector product, as ODE likelihoods take)."""
    def loss(ws, x):
        out, _ = lax.scan(lambda h, w: (h + jnp.tanh(conv(h, w)), None), x, ws)
        return jnp.sum(out ** 2)

    ws = jnp.zeros((2, 3, 3, 4, 4))
    x = jnp.zeros((2, 6, 6, 4))
    if mode == "reverse":
        fn = jax.grad(loss)
    else:
        fn = lambda ws, x: jax.jvp(lambda x: loss(ws, x), (x,), (x,))  # noqa: E731
    text = jax.jit(fn).lower(ws, x).compile().as_text()
    return set(re.findall(r"convolution\(.*dim_labels=(\S+?),", text))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rewrite only matters (and only acts) on CPU")
@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_in_a_loop_every_derivative_convolution_is_in_the_layout_of_xlas_fast_kernels(mode):
    def flax_like(h, w):
        return scan.loop_conv(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def plain(h, w):
        return lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    assert _loop_conv_labels(flax_like, mode) == {"b01f_01io->b01f"}
    if mode == "reverse":
        assert _loop_conv_labels(plain, mode) != {"b01f_01io->b01f"}  # the reason `loop_conv` exists


def test_loop_conv_derivatives_batch_under_vmap():
    x = jax.random.normal(jax.random.key(0), (3, 2, 5, 5, 2))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    numbers = ("NHWC", "HWIO", "NHWC")

    def loss(conv, x, w):
        return jnp.sum(jnp.tanh(conv(x, w, (1, 1), "SAME", dimension_numbers=numbers)) ** 2)

    for transform in (jax.grad, jax.jacfwd, jax.jacrev):
        got = jax.vmap(transform(lambda x: loss(scan.loop_conv, x, w)))(x)
        want = jax.vmap(transform(lambda x: loss(lax.conv_general_dilated, x, w)))(x)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Second order: a Hessian-vector product through the kernel, both ways round.
    small_w = w[:, :, :, :2]
    hvp = [jax.jvp(jax.grad(lambda w: loss(conv, x[0], w)), (small_w,), (jnp.ones_like(small_w),))[1]
           for conv in (scan.loop_conv, lax.conv_general_dilated)]
    np.testing.assert_allclose(hvp[0], hvp[1], rtol=1e-3, atol=1e-4)


def test_scan_conv_is_flax_conv_with_the_same_parameters():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    ours, theirs = scan.Conv(4, (3, 3)), nn.Conv(4, (3, 3))
    params = theirs.init(jax.random.key(1), x)
    assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(params)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-6)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loop_conv_has_lax_forward_mode_derivatives(case):
    x, w, ours, theirs = _case(case)
    tx, tw = jax.random.normal(jax.random.key(2), x.shape), jax.random.normal(jax.random.key(3), w.shape)
    want = jax.jvp(theirs, (x, w), (tx, tw))[1]
    np.testing.assert_allclose(jax.jvp(ours, (x, w), (tx, tw))[1], want, rtol=1e-4, atol=1e-4)
    only_x = jax.jvp(lambda x: ours(x, w), (x,), (tx,))[1]  # the kernel's tangent is a symbolic zero
    want_x = jax.jvp(lambda x: theirs(x, w), (x,), (tx,))[1]
    np.testing.assert_allclose(only_x, want_x, rtol=1e-4, atol=1e-4)
