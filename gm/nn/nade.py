"""NADE: the neural autoregressive distribution estimator for binary vectors (Larochelle & Murray 2011).

    p(x) = prod_d p(x_d | x_<d),   p(x_d = 1 | x_<d) = sigmoid(b_d + V_d . h_d),
    h_d = sigmoid(a_d),            a_d = c + sum_{j<d} x_j W_j.

All D hidden vectors share W, so they are one exclusive cumulative sum over d: O(D H) per example
instead of the O(D^2 H) of D separate networks. Sampling walks d = 0 .. D-1 carrying a_d, also O(D H).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp


class NADE(nn.Module):
    """Binary vectors x in {0, 1}^D (any order the caller flattens to; gm uses raster order).

    num_dims: D. num_hidden: H.
    """
    num_dims: int
    num_hidden: int

    def setup(self):
        d, h = self.num_dims, self.num_hidden
        self.W = self.param("W", nn.initializers.normal(1.0 / jnp.sqrt(d)), (d, h))
        self.c = self.param("c", nn.initializers.zeros, (h,))
        self.V = self.param("V", nn.initializers.normal(1.0 / jnp.sqrt(h)), (d, h))
        self.b = self.param("b", nn.initializers.zeros, (d,))

    def __call__(self, x):
        """Logits of p(x_d = 1 | x_<d): x float or int [B, D] in {0, 1} -> float32 [B, D].

        Output d depends only on x_0 .. x_{d-1}.
        """
        contributions = x.astype(jnp.float32)[:, :, None] * self.W  # [B, D, H]: x_j W_j
        # Exclusive cumsum by shifting first, so output d has no x_d term at all (not one that cancels).
        shifted = jnp.pad(contributions[:, :-1], ((0, 0), (1, 0), (0, 0)))
        hidden = jax.nn.sigmoid(self.c + jnp.cumsum(shifted, axis=1))
        return self.b + jnp.einsum("bdh,dh->bd", hidden, self.V)

    def sample(self, key, num):
        """num binary vectors, int32 [num, D], drawn d by d in one lax.scan."""
        def step(a, inputs):
            d, w, v, b = inputs
            logit = b + jax.nn.sigmoid(a) @ v
            x_d = jax.random.bernoulli(jax.random.fold_in(key, d), jax.nn.sigmoid(logit)).astype(jnp.float32)
            return a + x_d[:, None] * w, x_d

        a0 = jnp.broadcast_to(self.c, (num, self.num_hidden))
        _, xs = jax.lax.scan(step, a0, (jnp.arange(self.num_dims), self.W, self.V, self.b))
        return xs.T.astype(jnp.int32)
