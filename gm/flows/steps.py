"""Glow's K steps of flow as one scanned bijector, and the conversion from the unrolled layout.

Unrolled, a level of K steps is 3K layers of a `Chain`, each traced and compiled on its own: at the
paper's K = 32 and three levels the train step compiled for minutes. `GlowSteps` traces one step and
scans it over parameters stacked on a leading axis of size K (`gm.nn.scan`), in order from the data
side in the inverse direction and in reverse order in the forward direction, with the same numbers.
"""
import flax.linen as nn
import jax.numpy as jnp

from gm.flows.bijectors import Bijector
from gm.flows.layers import (ActNorm, AffineCoupling, Invertible1x1Conv, conditioners_from_unrolled,
                             stacked_initial_lu)
from gm.nn.scan import repeat, stack_blocks

STEP_LAYERS = ("ActNorm_0", "Invertible1x1Conv_0", "AffineCoupling_0")  # one step, from the data side


class GlowStep(nn.Module):
    """One step of flow, ActNorm then the invertible 1x1 convolution then the affine coupling (from the
    data side), as a scan body: carry (x, log_det [B]); xs this step's `lu_init`."""
    hidden: int
    num_blocks: int
    inverse: bool

    @nn.compact
    def __call__(self, carry, lu_init):
        x, log_det = carry
        norm, conv = ActNorm(), Invertible1x1Conv()
        coupling = AffineCoupling("channel", 0, self.hidden, self.num_blocks, "sigmoid", in_loop=True)
        layers = ((norm, {}), (conv, {"lu_init": lu_init}), (coupling, {}))
        for layer, extra in (layers if self.inverse else reversed(layers)):
            x, ld = layer(x, inverse=self.inverse, **extra)
            log_det = log_det + ld
        return (x, log_det), None


class GlowSteps(Bijector):
    """`depth` steps of flow traced once. Step j's invertible convolution starts from the rotation of
    seed `first_seed + j`, as the unrolled layer `Invertible1x1Conv(seed=first_seed + j)` does.
    remat recomputes each step's activations in the backward pass (memory for one step, not K)."""
    depth: int
    hidden: int
    num_blocks: int = 0
    first_seed: int = 0
    remat: bool = False

    @nn.compact
    def __call__(self, x, inverse=False):
        lu_init = stacked_initial_lu(range(self.first_seed, self.first_seed + self.depth), x.shape[-1])
        steps = repeat(GlowStep, self.depth, remat=self.remat, reverse=not inverse)
        carry = (x, jnp.zeros((x.shape[0],), jnp.float32))
        (x, log_det), _ = steps(self.hidden, self.num_blocks, inverse, name="steps")(carry, lu_init)
        return x, log_det


def glow_params_from_unrolled(params, num_levels: int, depth: int, num_blocks: int = 0):
    """Parameters of `models.glow(..., scan=False)` (checkpoints written before steps were scanned) ->
    those of the scanned Glow of the same sizes: each level's 3K layers stacked into its `GlowSteps`
    (and each coupling network's residual blocks, if it has any).
    A level's chain holds Squeeze, the steps' layers, then the factored-out inner level (no parameters
    in Squeeze, Shift or Unsqueeze)."""
    def level(chain, i):
        def step(j):
            return {name: chain[f"layers_{1 + 3 * j + k}"] for k, name in enumerate(STEP_LAYERS)}

        steps = [conditioners_from_unrolled(step(j), num_blocks) for j in range(depth)]
        out = {"layers_1": {"steps": stack_blocks(steps)}}
        if i < num_levels - 1:
            out["layers_2"] = {"inner": level(chain[f"layers_{1 + 3 * depth}"]["inner"], i + 1)}
        return out

    return {"layers_1": level(params["layers_1"], 0)}
