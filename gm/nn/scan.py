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
`Conv` states its derivatives in that layout itself: a `custom_jvp` whose two tangent terms are
`linear_call`s, each with its own transpose, so forward mode (an ODE likelihood's Jacobian-vector
products) and reverse mode (training) both run channels-last convolutions, and higher orders compose.
JAX has no vmap rule for `linear_call`; this module registers one (vmap the function and its transpose),
and where JAX's internals differ, `Conv` is plain `nn.Conv`.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero, linear_call


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


def _input_transpose(w, pads, ct):
    """The transpose of x -> conv(x, w) at ct: ct convolved with the spatially flipped kernel, its in and
    out features swapped (HWIO again, the layout of XLA:CPU's fast convolution)."""
    n = ct.ndim - 2
    flipped = jnp.flip(w, tuple(range(n))).swapaxes(-1, -2)
    return _forward(ct, flipped, tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(w.shape[:n], pads)))


def _kernel_transpose(x, pads, ct):
    """The transpose of w -> conv(x, w) at ct (the kernel gradient): a channels-last convolution whose
    batch is x's channels and whose features are the batch, the cotangent as its kernel."""
    n = x.ndim - 2
    spatial = tuple(range(1, n + 1))
    out = _forward(x.transpose((n + 1,) + spatial + (0,)), ct.transpose(spatial + (0, n + 1)), pads)
    return out.transpose(spatial + (0, n + 1))


def _batch_linear_call(args, dims, *, callee, transpose_thunk, num_callee_consts, num_res):
    """vmap of a `linear_call` (JAX has no rule for it): the same call on the batch, its function and its
    transpose vmapped, every argument with the batch axis first (unbatched ones broadcast)."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = [jnp.broadcast_to(a, (size,) + a.shape) if d is None else jnp.moveaxis(a, d, 0)
            for a, d in zip(args, dims)]
    residuals, linear = args[:num_callee_consts + num_res], args[num_callee_consts + num_res:]
    transpose, transpose_consts = transpose_thunk()
    call, call_transpose = jax_core.jaxpr_as_fun(callee), jax_core.jaxpr_as_fun(transpose)

    def fun(res, lin):
        return tuple(jax.vmap(call)(*res, *lin))

    def fun_transpose(res, cts):
        return tuple(jax.vmap(lambda *a: call_transpose(*transpose_consts, *a))(*res[num_callee_consts:], *cts))

    outs = linear_call(fun, fun_transpose, tuple(residuals), tuple(linear))
    return list(outs), [0] * len(outs)


try:  # the rule goes where JAX keeps batching rules; without it, loop_conv is lax's convolution
    from jax._src import core as jax_core
    from jax._src.custom_derivatives import linear_call_p
    from jax.interpreters import batching

    if linear_call_p not in batching.fancy_primitive_batchers:
        batching.primitive_batchers[linear_call_p] = _batch_linear_call
    _FAST_GRADIENTS = True
except (ImportError, AttributeError):  # pragma: no cover  (another JAX's internals)
    _FAST_GRADIENTS = False


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv(x, w, pads):
    return _forward(x, w, pads)


@functools.partial(_conv.defjvp, symbolic_zeros=True)
def _conv_jvp(pads, primals, tangents):
    # Each tangent term is linear with a transpose of our own (`linear_call`): forward mode evaluates the
    # channels-last convolution, reverse mode transposes into the channels-last gradient convolutions.
    x, w = primals
    tx, tw = tangents
    terms = []
    if not isinstance(tx, SymbolicZero):
        terms.append(linear_call(lambda w, t: _forward(t, w, pads), lambda w, ct: _input_transpose(w, pads, ct),
                                 w, tx))
    if not isinstance(tw, SymbolicZero):
        terms.append(linear_call(lambda x, t: _forward(x, t, pads), lambda x, ct: _kernel_transpose(x, pads, ct),
                                 x, tw))
    y = _forward(x, w, pads)
    return y, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)


def loop_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
              feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated` whose derivatives (both tangents, both transposes) are channels-last
    convolutions on CPU, for stride 1, no dilation, one feature group and channels-last data (what
    convolutions in gm's scanned blocks are); any other convolution, or another backend, is
    `lax.conv_general_dilated` itself. Same values and derivatives, to float rounding."""
    spatial = lhs.ndim - 2
    plain = (not _FAST_GRADIENTS or jax.default_backend() != "cpu" or tuple(window_strides) != (1,) * spatial
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


def conv_module(in_loop: bool):
    """The convolution module for a block: `Conv` inside a scanned block (`in_loop`), else `nn.Conv`, whose
    gradients XLA:CPU lays out well by itself outside loops (the unrolled UNet step was 12% slower through
    `loop_conv`). Both have the same parameters."""
    return Conv if in_loop else nn.Conv
