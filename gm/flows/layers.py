"""Learned bijectors: affine coupling (RealNVP), ActNorm and the invertible 1x1 convolution (Glow), and
the planar flow (Rezende & Mohamed 2015). The contract is `gm.flows.bijectors.Bijector`.

Images are NHWC; a "channel" is the last axis. Vectors [B, D] (2-D densities) work wherever it makes
sense: coupling with an MLP conditioner, ActNorm, the planar flow.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gm.flows.bijectors import Bijector, sum_per_example
from gm.nn.scan import conv_module, repeat, stack_blocks

MASKS = ("checkerboard", "channel")
SCALES = ("tanh", "sigmoid")


def _num_positions(x):
    """Elements per example that share one channel's parameters (H*W for images, 1 for vectors)."""
    return x[0, ..., 0].size


# --- ActNorm -----------------------------------------------------------------------------------------

class ActNorm(Bijector):
    """Per-channel affine x = z * exp(log_scale) + bias (Glow section 3.1).

    Initialised in the inverse direction on data, it sets bias and scale so that its output (the base
    side) has zero mean and unit variance per channel on that batch: data-dependent initialisation.
    Initialised forward, it starts as the identity.
    """
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x, inverse=False):
        c = x.shape[-1]
        axes = tuple(range(x.ndim - 1))

        def data_init(stat):
            def init(_):
                if not inverse:
                    return jnp.zeros((c,), jnp.float32)
                return stat(x)
            return init

        bias = self.param("bias", data_init(lambda v: jnp.mean(v, axis=axes)))
        log_scale = self.param("log_scale", data_init(lambda v: jnp.log(jnp.std(v, axis=axes) + self.eps)))
        log_det = jnp.full((x.shape[0],), _num_positions(x) * jnp.sum(log_scale))
        if inverse:
            return (x - bias) * jnp.exp(-log_scale), -log_det
        return x * jnp.exp(log_scale) + bias, log_det


# --- Invertible 1x1 convolution with the LU parameterisation ------------------------------------------

def initial_lu(seed, c):
    """Glow's initialisation (section 3.2): a random rotation W0 = P L U from `seed`. Returns the fixed
    parts (P, sign(diag U)) and the initial trainable ones {'L', 'U', 'log_s'}, as float32 NumPy arrays.

    P and the signs never train, so they are recomputed from `seed` where they are used rather than
    stored as parameters, which an optimiser's weight decay or a checkpoint surgery could disturb. The
    computation is NumPy at trace time: the compiled step sees constants, not a QR and an LU per layer.
    """
    import scipy.linalg  # imported on first use; scipy is slow to load

    w0, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((c, c)))
    p, lower, upper = scipy.linalg.lu(w0)
    s = np.diag(upper)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return (f32(p), f32(np.sign(s))), {"L": f32(np.tril(lower, -1)), "U": f32(np.triu(upper, 1)),
                                       "log_s": f32(np.log(np.abs(s)))}


def lu_weight(fixed, lu):
    """The C x C weight W = P (L + I) (U + diag(sign_s exp(log_s)))."""
    p, sign_s = fixed
    c = lu["log_s"].shape[0]
    lower = jnp.tril(lu["L"], -1) + jnp.eye(c)
    upper = jnp.triu(lu["U"], 1) + jnp.diag(sign_s * jnp.exp(lu["log_s"]))
    return p @ lower @ upper


def stacked_initial_lu(seeds, c):
    """`initial_lu` for each of `seeds`, stacked on a leading axis: the per-step inputs of scanned steps."""
    fixed, initial = zip(*(initial_lu(seed, c) for seed in seeds))
    return (tuple(np.stack(parts) for parts in zip(*fixed)),
            {name: np.stack([lu[name] for lu in initial]) for name in initial[0]})


class Invertible1x1Conv(Bijector):
    """x = W z at every position (a 1x1 convolution), log|det| = H W sum(log|s|): O(C) not O(C^3).
    `seed` fixes the layer's initial rotation and with it the permutation P and the signs; inside a
    scan the caller passes them instead (`lu_init`: one step's slice of `stacked_initial_lu`)."""
    seed: int = 0

    @nn.compact
    def __call__(self, x, inverse=False, lu_init=None):
        fixed, initial = lu_init if lu_init is not None else initial_lu(self.seed, x.shape[-1])
        lu = {name: self.param(name, lambda _, v=value: jnp.asarray(v)) for name, value in initial.items()}
        w = lu_weight(fixed, lu)
        log_det = jnp.full((x.shape[0],), _num_positions(x) * jnp.sum(lu["log_s"]))
        if inverse:
            return x @ jnp.linalg.inv(w).T, -log_det
        return x @ w.T, log_det


# --- Affine coupling -----------------------------------------------------------------------------------

def coupling_mask(shape, kind, parity):
    """float32 mask of `shape` (one example: (H, W, C) or (D,)); 1 marks the half that passes through
    unchanged and conditions the other. 'checkerboard' alternates pixels (or vector entries), 'channel'
    takes the first (parity 0) or second half of the channels."""
    if kind not in MASKS:
        raise ValueError(f"The coupling mask must be one of {MASKS}, got {kind!r}.")
    if kind == "checkerboard":
        grid = jnp.indices(shape[:-1] if len(shape) == 3 else shape).sum(0) % 2
        mask = grid == parity
        if len(shape) == 3:
            mask = jnp.broadcast_to(mask[..., None], shape)
    else:
        c = shape[-1]
        if c < 2:
            raise ValueError(f"A channel mask needs at least 2 channels, got {c}; squeeze first.")
        first = jnp.arange(c) < c // 2
        mask = jnp.broadcast_to(first if parity == 0 else ~first, shape)
    return mask.astype(jnp.float32)


def _residual(h, hidden, in_loop=False):
    """h + conv1x1(relu(conv3x3(LayerNorm(h)))), its layers created in the calling module; in a scanned
    block (`in_loop`) through `gm.nn.scan.Conv` (`gm.nn.scan.conv_module`)."""
    conv = conv_module(in_loop)
    r = nn.relu(conv(hidden, (3, 3))(nn.LayerNorm()(h)))
    return h + conv(hidden, (1, 1))(r)


class ResidualBlock(nn.Module):
    """`_residual` as a scan body: (h, None) -> (h, None)."""
    hidden: int

    @nn.compact
    def __call__(self, h, _=None):
        return _residual(h, self.hidden, in_loop=True), None


class ConvConditioner(nn.Module):
    """[B, H, W, C_in] -> [B, H, W, out_features]: 3x3 conv, residual blocks, 1x1 conv, ReLUs, and a
    zero-initialised 3x3 output conv so the coupling starts as the identity (Glow's choice).

    scan: the residual blocks are one `gm.nn.scan.repeat` (parameters under 'blocks', stacked);
    otherwise unrolled, the layout of checkpoints written before scanning. in_loop: the conditioner
    itself runs inside a scan (Glow's steps)."""
    hidden: int
    num_blocks: int
    scan: bool = True
    in_loop: bool = False

    @nn.compact
    def __call__(self, h, out_features):
        conv = conv_module(self.in_loop)
        h = nn.relu(conv(self.hidden, (3, 3))(h))
        if self.scan and self.num_blocks:
            h, _ = repeat(ResidualBlock, self.num_blocks)(self.hidden, name="blocks")(h, None)
        else:
            for _ in range(self.num_blocks):
                h = _residual(h, self.hidden, self.in_loop)
        h = nn.relu(conv(self.hidden, (1, 1))(h))
        return conv(out_features, (3, 3), kernel_init=nn.initializers.zeros)(h)


def conditioner_params_from_unrolled(tree, num_blocks: int):
    """A `ConvConditioner(scan=False)`'s parameters -> the scanned layout: the blocks' LayerNorm_b,
    Conv_{2b+1}, Conv_{2b+2} stacked under 'blocks', the convs before and after renumbered."""
    if not num_blocks:
        return tree
    blocks = [{"LayerNorm_0": tree[f"LayerNorm_{b}"], "Conv_0": tree[f"Conv_{2 * b + 1}"],
               "Conv_1": tree[f"Conv_{2 * b + 2}"]} for b in range(num_blocks)]
    return {"Conv_0": tree["Conv_0"], "blocks": stack_blocks(blocks),
            "Conv_1": tree[f"Conv_{2 * num_blocks + 1}"], "Conv_2": tree[f"Conv_{2 * num_blocks + 2}"]}


def conditioners_from_unrolled(params, num_blocks: int):
    """Every ConvConditioner in `params` (any flow's tree) moved to the scanned layout: RealNVP's
    checkpoints written before the residual blocks were scanned."""
    if not isinstance(params, dict):
        return params
    return {name: conditioner_params_from_unrolled(value, num_blocks) if name.startswith("ConvConditioner_")
            else conditioners_from_unrolled(value, num_blocks) for name, value in params.items()}


class MLPConditioner(nn.Module):
    """[B, D_in] -> [B, out_features]: ReLU MLP with `num_blocks` + 1 hidden layers, zero-initialised output."""
    hidden: int
    num_blocks: int

    @nn.compact
    def __call__(self, h, out_features):
        for _ in range(self.num_blocks + 1):
            h = nn.relu(nn.Dense(self.hidden)(h))
        return nn.Dense(out_features, kernel_init=nn.initializers.zeros)(h)


class AffineCoupling(Bijector):
    """Affine coupling (Dinh et al. 2017): one half x_a of the input passes through and conditions the
    other half x_b,

        inverse (data -> base):  z_b = x_b exp(log_s) + t,   (log_s, t) = NN(x_a)
        forward (base -> data):  x_b = (z_b - t) exp(-log_s)

    so log|det| = +-sum(log_s), and both directions cost one network evaluation.
    mask='channel' splits the channels (parity 0: the first half passes through), and the network sees
    x_a only and predicts for x_b only, as in Glow. mask='checkerboard' alternates positions, which no
    split can express: the network sees (m x, m) with all channels and its output is masked by 1 - m,
    as in RealNVP. `scale='tanh'` is RealNVP's log_s = a tanh(.) with a learned per-channel a; 'sigmoid'
    is Glow's log_s = log sigmoid(. + 2). The conditioner is convolutional for images (its residual
    blocks scanned unless scan=False; in_loop: the coupling runs inside a scan), an MLP for vectors.
    """
    mask: str = "checkerboard"
    parity: int = 0
    hidden: int = 64
    num_blocks: int = 2
    scale: str = "tanh"
    scan: bool = True
    in_loop: bool = False

    @nn.compact
    def __call__(self, x, inverse=False):
        if self.scale not in SCALES:
            raise ValueError(f"The coupling scale must be one of {SCALES}, got {self.scale!r}.")
        net = (ConvConditioner(self.hidden, self.num_blocks, self.scan, self.in_loop) if x.ndim == 4
               else MLPConditioner(self.hidden, self.num_blocks))
        if self.mask == "channel":
            coupling_mask(x.shape[1:], self.mask, self.parity)  # checks the channel count
            half = x.shape[-1] // 2
            first, second = x[..., :half], x[..., half:]
            x_a, x_b = (first, second) if self.parity == 0 else (second, first)
            log_s, t = self._scale_and_shift(net(x_a, 2 * x_b.shape[-1]))
            y_b = x_b * jnp.exp(log_s) + t if inverse else (x_b - t) * jnp.exp(-log_s)
            y = jnp.concatenate([x_a, y_b] if self.parity == 0 else [y_b, x_a], axis=-1)
        else:
            m = coupling_mask(x.shape[1:], self.mask, self.parity)
            log_s, t = self._scale_and_shift(net(jnp.concatenate([x * m, jnp.broadcast_to(m, x.shape)], -1),
                                                 2 * x.shape[-1]))
            log_s, t = (1.0 - m) * log_s, (1.0 - m) * t
            y = x * jnp.exp(log_s) + t if inverse else (x - t) * jnp.exp(-log_s)
        log_det = sum_per_example(log_s)
        return y, (log_det if inverse else -log_det)

    def _scale_and_shift(self, out):
        raw_s, t = jnp.split(out, 2, axis=-1)
        if self.scale == "tanh":
            return self.param("scale", nn.initializers.ones, (raw_s.shape[-1],)) * jnp.tanh(raw_s), t
        return jax.nn.log_sigmoid(raw_s + 2.0), t


# --- Planar flow ---------------------------------------------------------------------------------------

def planar_w_dot_u_hat(u, w):
    """m(w.u) = -1 + softplus(w.u) >= -1: the value w.u_hat takes after the reparameterisation."""
    return -1.0 + jax.nn.softplus(jnp.dot(w, u))


def planar_u_hat(u, w):
    """Rezende & Mohamed (2015), appendix A.1: u_hat = u + (m(w.u) - w.u) w / |w|^2 with
    m(a) = -1 + softplus(a), so w.u_hat = m(w.u) >= -1 and f is invertible for any raw u, w."""
    return u + (planar_w_dot_u_hat(u, w) - jnp.dot(w, u)) * w / jnp.sum(w ** 2)


class Planar(Bijector):
    """f(z) = z + u_hat tanh(w.z + b) on vectors [B, D], log|det J_f| = log|1 + u_hat . psi(z)|,
    psi(z) = (1 - tanh^2(w.z + b)) w.

    Invertible, but without a closed-form inverse: a planar flow gives the density of the points it
    generates (sampling and density from the base side), which is what variational inference and
    reverse-KL fitting need; it cannot score given data.
    """
    init_scale: float = 0.1

    @nn.compact
    def __call__(self, z, inverse=False):
        if inverse:
            raise NotImplementedError("A planar flow has no closed-form inverse: it can only push base samples "
                                      "forward (sample, and log q of its own samples), not score data.")
        d = z.shape[-1]
        u = self.param("u", nn.initializers.normal(self.init_scale), (d,))
        w = self.param("w", nn.initializers.normal(self.init_scale), (d,))
        b = self.param("b", nn.initializers.zeros, ())
        u_hat = planar_u_hat(u, w)
        a = jnp.tanh(z @ w + b)  # [B]
        # w.u_hat from its closed form: the dot product of the corrected vector can round below -1.
        psi_dot_u = (1.0 - a ** 2) * planar_w_dot_u_hat(u, w)
        return z + a[:, None] * u_hat, jnp.log(jnp.abs(1.0 + psi_dot_u))
