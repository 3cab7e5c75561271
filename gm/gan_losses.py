"""GAN objectives as functions of the discriminator's raw outputs (logits or critic values).

With D(x) = sigmoid(logit(x)) and G the generator (Goodfellow et al. 2014):

    V(D, G) = E_data[log D(x)] + E_z[log(1 - D(G(z)))]

    discriminator (all sigmoid losses)   -V = E[softplus(-logit(x))] + E[softplus(logit(G(z)))]
    generator, minimax (saturating)      E[log(1 - D(G(z)))] = -E[softplus(logit(G(z)))]
    generator, non-saturating            -E[log D(G(z))]     =  E[softplus(-logit(G(z)))]
    Wasserstein critic (Arjovsky 2017)   E[f(G(z))] - E[f(x)];  generator -E[f(G(z))]
    hinge (Lim & Ye 2017; Miyato 2018)   E[relu(1 - f(x))] + E[relu(1 + f(G(z)))];  generator -E[f(G(z))]
    least squares (Mao et al. 2017)      (E[(f(x) - 1)^2] + E[f(G(z))^2]) / 2;  generator E[(f(G(z)) - 1)^2]
                                         (CycleGAN's scaling; Mao et al. also halve the generator's)

Every loss is a scalar to minimise, in nats where it is a log-likelihood. The optimal discriminator for
fixed G is D* = p_data / (p_data + p_g), where V = 2 JSD(p_data || p_g) - log 4 (`value_at_optimum`).
"""
import jax
import jax.numpy as jnp

LOSSES = ("minimax", "non_saturating", "wasserstein", "hinge", "least_squares")


def discriminator_loss(loss, real, fake):
    """The discriminator's (critic's) loss from its outputs on real [B] and generated [B'] examples."""
    if loss in ("minimax", "non_saturating"):
        return jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake))
    if loss == "wasserstein":
        return jnp.mean(fake) - jnp.mean(real)
    if loss == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))
    if loss == "least_squares":
        return 0.5 * (jnp.mean((real - 1.0) ** 2) + jnp.mean(fake ** 2))
    raise ValueError(f"config.gan.loss must be one of {LOSSES}, got {loss!r}.")


def generator_loss(loss, fake):
    """The generator's loss from the discriminator's outputs on generated examples [B']."""
    if loss == "minimax":
        return -jnp.mean(jax.nn.softplus(fake))
    if loss == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake))
    if loss in ("wasserstein", "hinge"):
        return -jnp.mean(fake)
    if loss == "least_squares":
        return jnp.mean((fake - 1.0) ** 2)
    raise ValueError(f"config.gan.loss must be one of {LOSSES}, got {loss!r}.")


def gradient_penalty(critic, key, real, fake):
    """Gulrajani et al. 2017: E[(||grad_x critic(x_hat)||_2 - 1)^2] at x_hat = e x + (1 - e) G(z), with
    e ~ U[0, 1] per example; `critic` maps a batch [B, ...] to [B]."""
    eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    interpolates = eps * real + (1.0 - eps) * fake
    grads = jax.grad(lambda x: jnp.sum(critic(x)))(interpolates)
    norms = jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=-1) + 1e-12)
    return jnp.mean((norms - 1.0) ** 2)


def r1_penalty(critic, real):
    """Mescheder et al. 2018's R1 per example: ||grad_x critic(x)||^2 at the real examples x [B, ...] -> [B]
    (StyleGAN2 adds gamma / 2 times its mean); `critic` maps a batch to [B] and must treat examples
    separately for the gradient of the sum to be each example's own (minibatch statistics couple them,
    as in the reference)."""
    grads = jax.grad(lambda x: jnp.sum(critic(x)))(real)
    return jnp.sum(jnp.square(grads).reshape(grads.shape[0], -1), axis=-1)


def value(p_data, p_g, d):
    """V(D, G) for discrete distributions p_data, p_g [N] and a discriminator d in (0, 1) [N], in nats."""
    return jnp.sum(p_data * jnp.log(d)) + jnp.sum(p_g * jnp.log1p(-d))


def optimal_discriminator(p_data, p_g):
    """D*(x) = p_data(x) / (p_data(x) + p_g(x))."""
    return p_data / (p_data + p_g)


def jensen_shannon(p, q):
    """JSD(p || q) in nats for discrete distributions [N] (terms with zero mass contribute zero)."""
    m = 0.5 * (p + q)
    kl = lambda a: jnp.sum(jnp.where(a > 0, a * jnp.log(jnp.where(a > 0, a, 1.0) / m), 0.0))
    return 0.5 * kl(p) + 0.5 * kl(q)


def value_at_optimum(p_data, p_g):
    """2 JSD(p_data || p_g) - log 4: V(D*, G) in closed form."""
    return 2.0 * jensen_shannon(p_data, p_g) - jnp.log(4.0)
