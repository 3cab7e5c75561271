"""CycleGAN (Zhu et al. 2017): unpaired translation between two image domains, A and B.

Two generators, a_to_b: A -> B and b_to_a: B -> A (`gm.nn.cyclegan.ResnetGenerator`), and two PatchGAN
discriminators, "a" judging real A against b_to_a's images and "b" real B against a_to_b's. One train
step, in the order of the authors' code (junyanz/pytorch-CycleGAN-and-pix2pix):

    generators      L_G = LS_G(D_b(G(a))) + LS_G(D_a(F(b)))                            (adversarial)
                          + lambda_cycle (|F(G(a)) - a|_1 + |G(F(b)) - b|_1)            (cycle)
                          + lambda_identity lambda_cycle (|G(b) - b|_1 + |F(a) - a|_1)  (identity)
    discriminators  L_D = LS_D(D_a(a), D_a(pool_a(F(b)))) + LS_D(D_b(b), D_b(pool_b(G(a))))

with G = a_to_b, F = b_to_a, the least-squares losses of `gm.gan_losses` (LS_D halves the sum of its two
terms, as the code divides D's loss by 2), |.|_1 the mean absolute error over every pixel, and the
generators' images of this step (computed before their update, no gradient to the generators) passed
through a history of `pool_size` images per discriminator (Shrivastava et al. 2017; `query_pool`). The
generators take one Adam step on L_G (config.optim), then the discriminators one on L_D (config.optim_d);
the paper's lambda_cycle = 10, lambda_identity = 0.5, Adam(2e-4, b1 = 0.5).

params = {'generators': {'a_to_b', 'b_to_a'}, 'discriminators': {'a', 'b'}}; the optimizer state holds one
optax state per group; the EMA follows the generators; `TrainState.extra` holds the two pools, so they
are checkpointed and a resumed run draws from the same history. Images are in [-1, 1].
"""
import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gm import distributions as dist
from gm import checks, gan_losses, optim
from gm.config import OptimConfig, interval, nonnegative, positive, setting
from gm.method import Method, Training
from gm.nn.cyclegan import PatchDiscriminator, ResnetGenerator, patch_grid

LOSS = "least_squares"


@dataclasses.dataclass(frozen=True)
class CycleGANModelConfig:
    """config.model: the generators' base width, residual blocks and halvings (the paper's 64 and 9 at
    256x256, 6 at 128x128), the discriminators' base width and stride-2 layers (3: 70x70 patches)."""
    g_features: int = setting(64, positive)
    g_blocks: int = setting(9, positive)
    g_down: int = setting(2, positive)
    d_features: int = setting(64, positive)
    d_layers: int = setting(3, positive)


@dataclasses.dataclass(frozen=True)
class CycleConfig:
    """config.cyclegan: the weights of the cycle-consistency and identity losses (the identity loss is
    lambda_identity x lambda_cycle x its L1), and the images each discriminator's history holds (0: none)."""
    lambda_cycle: float = setting(10.0, interval(0.0, None))
    lambda_identity: float = setting(0.5, interval(0.0, None))
    pool_size: int = setting(50, nonnegative)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The CycleGAN family's config sections (the generators' optimizer is config.optim)."""
    model: CycleGANModelConfig = CycleGANModelConfig()
    cyclegan: CycleConfig = CycleConfig()
    optim_d: OptimConfig = OptimConfig(learning_rate=2e-4, b1=0.5)


class Networks(NamedTuple):
    """One generator and one discriminator module, each applied with either direction's parameters."""
    generator: nn.Module
    discriminator: nn.Module

    def translate(self, params, x):
        return self.generator.apply({"params": params}, x)

    def judge(self, params, x):
        return self.discriminator.apply({"params": params}, x)


def networks(model: CycleGANModelConfig, channels: int) -> Networks:
    return Networks(ResnetGenerator(channels, model.g_features, model.g_blocks, model.g_down),
                    PatchDiscriminator(model.d_features, model.d_layers))


def init_params(nets: Networks, key: jax.Array, image_a: jax.Array) -> dict:
    """Both directions' generators and both discriminators, from one example image [1, H, W, C]."""
    keys = jax.random.split(key, 4)
    g = lambda k: nets.generator.init(k, image_a)["params"]
    d = lambda k: nets.discriminator.init(k, image_a)["params"]
    return {"generators": {"a_to_b": g(keys[0]), "b_to_a": g(keys[1])},
            "discriminators": {"a": d(keys[2]), "b": d(keys[3])}}


# ---------------------------------------------------------------------------------------------------
# The history of generated images.
# ---------------------------------------------------------------------------------------------------

def init_pool(size: int, shape) -> dict:
    """An empty history of `size` images of `shape` (H, W, C): {'images': [size, H, W, C], 'count'}."""
    return {"images": jnp.zeros((size,) + tuple(shape), jnp.float32), "count": jnp.zeros((), jnp.int32)}


def query_pool(pool: dict, key: jax.Array, images: jax.Array):
    """What the discriminator sees of this step's generated `images` [B, H, W, C], one image at a time.

    While the history is not full an image is stored and returned itself; once it is, with probability
    1/2 a uniformly drawn stored image is returned and the new one takes its place, else the new one is
    returned and nothing is stored (the authors' ImagePool). Returns (the new pool, [B, H, W, C]).
    """
    size = pool["images"].shape[0]
    if size == 0:
        return pool, images

    def one(pool, inputs):
        image, k = inputs
        swap_key, index_key = jax.random.split(k)
        stored, count = pool["images"], pool["count"]
        filling = count < size
        swap = jax.random.uniform(swap_key) > 0.5
        index = jnp.where(filling, count, jax.random.randint(index_key, (), 0, size))
        old = stored[index]
        out = jnp.where(swap & ~filling, old, image)
        stored = stored.at[index].set(jnp.where(filling | swap, image, old))
        return {"images": stored, "count": jnp.minimum(count + 1, size)}, out

    keys = jax.random.split(key, images.shape[0])
    return jax.lax.scan(one, pool, (images.astype(jnp.float32), keys))


# ---------------------------------------------------------------------------------------------------
# The two objectives.
# ---------------------------------------------------------------------------------------------------

def l1(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(x - y))


def generator_objective(nets: Networks, cycle: CycleConfig, g_params, d_params, real_a, real_b):
    """L_G (module docstring) on real images [B, H, W, C] of each domain -> (loss, (fake_a, fake_b,
    metrics)): fake_a = F(b), fake_b = G(a)."""
    g_ab, g_ba = g_params["a_to_b"], g_params["b_to_a"]
    fake_b, fake_a = nets.translate(g_ab, real_a), nets.translate(g_ba, real_b)
    adversarial_b = gan_losses.generator_loss(LOSS, nets.judge(d_params["b"], fake_b))
    adversarial_a = gan_losses.generator_loss(LOSS, nets.judge(d_params["a"], fake_a))
    cycle_a = l1(nets.translate(g_ba, fake_b), real_a)
    cycle_b = l1(nets.translate(g_ab, fake_a), real_b)
    loss = adversarial_a + adversarial_b + cycle.lambda_cycle * (cycle_a + cycle_b)
    metrics = {"g_adversarial": adversarial_a + adversarial_b, "cycle_a": cycle_a, "cycle_b": cycle_b}
    if cycle.lambda_identity:
        identity = l1(nets.translate(g_ab, real_b), real_b) + l1(nets.translate(g_ba, real_a), real_a)
        loss = loss + cycle.lambda_identity * cycle.lambda_cycle * identity
        metrics["identity"] = identity
    return loss, (fake_a, fake_b, metrics)


def discriminator_objective(nets: Networks, d_params, real_a, real_b, fake_a, fake_b):
    """L_D (module docstring): each discriminator on its domain's real images against the generated ones
    it is shown (the pool's) -> (loss, metrics)."""
    d_a = gan_losses.discriminator_loss(LOSS, nets.judge(d_params["a"], real_a), nets.judge(d_params["a"], fake_a))
    d_b = gan_losses.discriminator_loss(LOSS, nets.judge(d_params["b"], real_b), nets.judge(d_params["b"], fake_b))
    return d_a + d_b, {"d_a": d_a, "d_b": d_b}


def training(nets: Networks, cycle: CycleConfig, d_optimizer, shape, num_bits: int) -> Training:
    """The step of the module docstring as the family's `Training`, on batches {'image_a', 'image_b'} of
    integer levels [B, H, W, C] at `num_bits`; `extra` = {'pool_a', 'pool_b'} of images of `shape`."""

    def update(params, opt_state, extra, key, batch, *, optimizer, reduce_fn=lambda x: x):
        real_a = dist.levels_to_symmetric(batch["image_a"], num_bits)
        real_b = dist.levels_to_symmetric(batch["image_b"], num_bits)
        g_params, d_params = params["generators"], params["discriminators"]
        (g_loss, (fake_a, fake_b, g_metrics)), g_grads = jax.value_and_grad(generator_objective, argnums=2,
                                                                            has_aux=True)(
            nets, cycle, g_params, d_params, real_a, real_b)
        g_grads, g_loss, g_metrics = reduce_fn((g_grads, g_loss, g_metrics))
        updates, g_state = optimizer.update(g_grads, opt_state["generators"], g_params)

        key_a, key_b = jax.random.split(key)
        pool_a, shown_a = query_pool(extra["pool_a"], key_a, jax.lax.stop_gradient(fake_a))
        pool_b, shown_b = query_pool(extra["pool_b"], key_b, jax.lax.stop_gradient(fake_b))
        (d_loss, d_metrics), d_grads = jax.value_and_grad(discriminator_objective, argnums=1, has_aux=True)(
            nets, d_params, real_a, real_b, shown_a, shown_b)
        d_grads, d_loss, d_metrics = reduce_fn((d_grads, d_loss, d_metrics))
        d_updates, d_state = d_optimizer.update(d_grads, opt_state["discriminators"], d_params)

        new_params = {"generators": optax.apply_updates(g_params, updates),
                      "discriminators": optax.apply_updates(d_params, d_updates)}
        metrics = {"loss": g_loss, "g_loss": g_loss, "d_loss": d_loss, **g_metrics, **d_metrics}
        return (new_params, {"generators": g_state, "discriminators": d_state},
                {"pool_a": pool_a, "pool_b": pool_b}, metrics)

    def init_extra(params):
        return {"pool_a": init_pool(cycle.pool_size, shape), "pool_b": init_pool(cycle.pool_size, shape)}

    return optim.two_player_training(update, d_optimizer, init_extra, generator="generators",
                                     discriminator="discriminators")


# ---------------------------------------------------------------------------------------------------
# The family.
# ---------------------------------------------------------------------------------------------------

def check_data(info) -> None:
    """One sentence unless `info` is two image domains of one shape (`gm.data.DatasetInfo.domains`)."""
    if info.domains is None:
        raise ValueError(f"CycleGAN translates between two image domains; config.data.name={info.name!r} is "
                         f"{info.modality} data, use digit_strokes or a cycle_gan/NAME set.")


def check_sizes(model: CycleGANModelConfig, info) -> None:
    """One sentence when the images of `info` do not halve config.model.g_down times or leave the
    discriminator no patch."""
    h, w = info.shape[:2]
    step = 2 ** model.g_down
    checks.require(h % step == 0 and w % step == 0, "config.model.g_down", model.g_down,
                   f"small enough that 2^g_down divides the {h}x{w} images")
    checks.require(min(patch_grid(h, model.d_layers), patch_grid(w, model.d_layers)) >= 1, "config.model.d_layers",
                   model.d_layers, f"small enough to leave a patch of the {h}x{w} images")


def make(settings: Settings, info) -> Method:
    """CycleGAN for the two domains `info` describes -> Method with `translate` and its own `training`.

    `sample` is None: a translation needs an input. `loss` is L_G + L_D on a batch without the history
    (for monitoring); `translate` maps test images both ways and back (`gm.method.TranslateFn`).
    """
    check_data(info)
    check_sizes(settings.model, info)
    nets = networks(settings.model, info.shape[-1])
    num_bits = info.num_bits
    to_x = lambda levels: dist.levels_to_symmetric(levels, num_bits)  # noqa: E731
    to_levels = lambda x: dist.symmetric_to_levels(jnp.clip(x, -1.0, 1.0), num_bits).astype(jnp.uint8)  # noqa: E731

    def init(key, batch):
        return init_params(nets, key, to_x(batch["image_a"][:1]))

    def loss(params, key, batch):
        real_a, real_b = to_x(batch["image_a"]), to_x(batch["image_b"])
        g_loss, (fake_a, fake_b, metrics) = generator_objective(nets, settings.cyclegan, params["generators"],
                                                                params["discriminators"], real_a, real_b)
        d_loss, d_metrics = discriminator_objective(nets, params["discriminators"], real_a, real_b, fake_a, fake_b)
        return g_loss, {"g_loss": g_loss, "d_loss": d_loss, **metrics, **d_metrics}

    def translate(params, key, batch):
        g = params["generators"]
        fake_b = nets.translate(g["a_to_b"], to_x(batch["image_a"]))
        fake_a = nets.translate(g["b_to_a"], to_x(batch["image_b"]))
        return {"image_a": jnp.asarray(batch["image_a"], jnp.uint8), "fake_b": to_levels(fake_b),
                "cycle_a": to_levels(nets.translate(g["b_to_a"], fake_b)),
                "image_b": jnp.asarray(batch["image_b"], jnp.uint8), "fake_a": to_levels(fake_a),
                "cycle_b": to_levels(nets.translate(g["a_to_b"], fake_a))}

    d_optimizer = optim.make_optimizer(settings.optim_d)
    return Method(init=init, loss=loss, sample=None, translate=translate,
                  training=training(nets, settings.cyclegan, d_optimizer, tuple(info.shape), num_bits))
