"""Repeated blocks traced once: `nn.scan` over parameters stacked on a leading axis.

A network that repeats a block K times (Glow's steps of flow, a coupling network's residual blocks,
PixelCNN++'s resnets, a transformer's layers) unrolled is K copies of the block in the compiled
program, so XLA's compile time grows with K. Scanned, the block is traced and compiled once and run K
times by a loop: the compile time stays flat in K and the numbers are the same (the parameters of block
k are slice k of each stacked array).

A block for `repeat` is a Flax module called as `block(carry, xs) -> (carry, ys)`; `xs` holds per-block
inputs stacked on axis 0 (or None). With `remat`, each block's activations are recomputed in the backward
pass instead of being kept: memory O(1) blocks instead of O(K), at one more forward pass.

Checkpoints written with the unrolled layout hold one parameter tree per block; `stack_blocks` turns K of
them into the stacked tree, `unstack_blocks` goes back.

Convolutions inside a loop body need `Conv` (below) on CPU: XLA:CPU rewrites a convolution into the
layout its fast kernels take (batch-major input, HWIO kernel) only outside loops, so the two gradient
convolutions of a scanned block ran through its generic emitter, 8x slower (a paper-size Glow step 19x).
`Conv` states its gradients in that layout itself.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero


def repeat(block: type, length: int, *, remat: bool = False, reverse: bool = False, in_axes=0):
    """`block` (a module class) run `length` times in sequence with stacked parameters [length, ...].

    Returns a module class taking the block's own attributes; call it as `(carry, xs, *rest) -> (carry, ys)`.
    in_axes: one per argument after the carry, 0 (stacked per block) or `nn.broadcast` (the same for every
    block, e.g. a time embedding). reverse runs block length-1 first (and reads xs from the end), for a
    bijector's other direction. Each block draws its own parameter and dropout randomness.
    """
    target = nn.remat(block, prevent_cse=False) if remat else block
    return nn.scan(target, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=in_axes, length=length, reverse=reverse)


def uniform_runs(signatures: Sequence[Any], width: int, enabled: bool = True) -> list:
    """[start, stop) ranges covering a sequence of blocks, in order. `signatures[j]` describes block j's
    input (a tuple whose first entry is the carried map's channels, then e.g. a skip map's channels and
    whether attention follows); `width` is every block's output channels. Two or more consecutive blocks
    with equal signatures whose carried map is already `width` wide form one range, to be scanned; every
    other block is a range of one, to be unrolled (all of them when not `enabled`)."""
    runs = []
    for j, signature in enumerate(signatures):
        scannable = enabled and signature[0] == width
        if runs and scannable and runs[-1][2] == signature:
            runs[-1][1] = j + 1
        else:
            runs.append([j, j + 1, signature if scannable else None])
    return [(start, stop) for start, stop, _ in runs]


def stack_blocks(trees: Sequence[Any]) -> Any:
    """K parameter trees of one block's shape (the unrolled layout) -> one tree with [K, ...] leaves."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack_blocks(tree: Any) -> list:
    """The inverse of `stack_blocks`: one tree with [K, ...] leaves -> K trees."""
    length = jax.tree.leaves(tree)[0].shape[0]
    return [jax.tree.map(lambda leaf, i=i: leaf[i], tree) for i in range(length)]


# --- Convolutions whose gradients XLA:CPU runs fast inside loops ------------------------------------------

def _channels_last(ndim):
    """lax's dimension numbers of an N-d channels-last convolution (NHWC input and output, HWIO kernel)."""
    spatial = tuple(range(1, ndim - 1))
    kernel_spatial = tuple(range(ndim - 2))
    return lax.ConvDimensionNumbers(lhs_spec=(0, ndim - 1) + spatial, rhs_spec=(ndim - 1, ndim - 2) + kernel_spatial,
                                    out_spec=(0, ndim - 1) + spatial)


def _forward(x, w, pads):
    return lax.conv_general_dilated(x, w, (1,) * (x.ndim - 2), pads, dimension_numbers=_channels_last(x.ndim))


def _tangent_in_x(tx, w, pads):
    """conv(tx, w), with the kernel handed over as [..., O, I]: the transpose JAX derives from it (the
    input gradient) then takes the kernel as HWIO, the layout of XLA:CPU's fast convolution."""
    n = tx.ndim - 2
    spatial = tuple(range(n))
    numbers = lax.ConvDimensionNumbers(lhs_spec=(0, n + 1) + tuple(range(1, n + 1)), rhs_spec=(n, n + 1) + spatial,
                                       out_spec=(0, n + 1) + tuple(range(1, n + 1)))
    return lax.conv_general_dilated(tx, w.swapaxes(-1, -2), (1,) * n, pads, dimension_numbers=numbers)


def _tangent_in_w(x, tw, pads):
    """conv(x, tw) as a convolution of x laid out [C, spatial..., B] with tw laid out [I, spatial..., O]
    into [spatial..., B, O]: the transpose JAX derives from it (the kernel gradient) is then a
    channels-last convolution of x's channels (as its batch) with the cotangent (as its kernel)."""
    n = x.ndim - 2
    inner = tuple(range(1, n + 1))
    numbers = lax.ConvDimensionNumbers(lhs_spec=(n + 1, 0) + inner, rhs_spec=(n + 1, 0) + inner,
                                       out_spec=(n, n + 1) + tuple(range(n)))
    lhs, rhs = x.transpose((n + 1,) + inner + (0,)), tw.transpose((n,) + tuple(range(n)) + (n + 1,))
    out = lax.conv_general_dilated(lhs, rhs, (1,) * n, pads, dimension_numbers=numbers)
    return out.transpose((n,) + tuple(range(n)) + (n + 1,))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(x, w, pads):
    return _forward(x, w, pads)


@functools.partial(_conv.defjvp, symbolic_zeros=True)
def _conv_jvp(pads, primals, tangents):
    x, w = primals
    tx, tw = tangents
    terms = ([] if isinstance(tx, SymbolicZero) else [_tangent_in_x(tx, w, pads)]) + (
        [] if isinstance(tw, SymbolicZero) else [_tangent_in_w(x, tw, pads)])
    y = _forward(x, w, pads)
    return y, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)


def loop_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
              feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated` with both gradients stated as channels-last convolutions on CPU, for
    stride 1, no dilation, one feature group and channels-last data (what convolutions in gm's scanned
    blocks are); any other convolution, or another backend, is `lax.conv_general_dilated` itself."""
    spatial = lhs.ndim - 2
    plain = (jax.default_backend() != "cpu" or tuple(window_strides) != (1,) * spatial
             or any(d is not None and tuple(d) != (1,) * spatial for d in (lhs_dilation, rhs_dilation))
             or feature_group_count != 1 or batch_group_count != 1 or precision is not None
             or preferred_element_type is not None
             or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _channels_last(lhs.ndim))
    if plain:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:-2], (1,) * spatial, padding)
    return _conv(lhs, rhs, tuple((int(lo), int(hi)) for lo, hi in padding))


Conv = functools.partial(nn.Conv, conv_general_dilated=loop_conv)
Conv.__doc__ = "`flax.linen.Conv` through `loop_conv`: for convolutions inside scanned blocks (same parameters)."
