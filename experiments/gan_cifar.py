"""DCGAN on CIFAR-10 (Radford et al. 2016) with the non-saturating loss and the paper's hyper-parameters.

    python -m experiments.gan_cifar --workdir=runs/dcgan
    python -m experiments.gan_cifar --workdir=runs/smoke --config=experiments/gan_cifar.py:smoke
    python -m experiments.gan_cifar --workdir=runs/wgan_gp --config.gan.loss=wasserstein \\
        --config.gan.gradient_penalty=10 --config.gan.d_steps=5 --config.model.d_norm=layer \\
        --config.train.batch_size=320 --config.optim.learning_rate=1e-4 --config.optim.b1=0 \\
        --config.optim.b2=0.9 --config.optim_d.learning_rate=1e-4 --config.optim_d.b1=0 --config.optim_d.b2=0.9
    python -m experiments.gan_cifar --workdir=runs/dcgan --mode=sample --config.sample.num=50000
    python -m experiments.gan_cifar --workdir=runs/dcgan --mode=eval      # FID, IS

The family's defaults are the paper's networks (`gm.gan.GANModelConfig`: z ~ N(0, I) of 100
dimensions, a generator from a 4x4x512 grid through stride-2 4x4 transposed convolutions with batch
norm and ReLU to tanh, a discriminator of stride-2 4x4 convolutions with batch norm and leaky ReLU 0.2)
and one discriminator step per generator step (config.gan.d_steps = k). Both players use Adam at 2e-4
with beta1 = 0.5, batch 128. Samples come from an EMA of the generator (config.optim.ema_decay).
The k critic updates of a step split the batch in k slices (`gm.gan.strided_slices`), so WGAN-GP's
batch of 64 per critic update with n_critic = 5 (Gulrajani et al. 2017, Algorithm 1, with Adam at 1e-4,
beta1 = 0, beta2 = 0.9) is config.train.batch_size = 5 x 64 = 320, as in the command above.
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run

DCGAN_ADAM = dict(learning_rate=2e-4, b1=0.5)


def get_config(arg=None):
    """CIFAR-10; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits."""
    config = families.default_config("gan")
    config.data.update(name="cifar10")
    config.optim.update(DCGAN_ADAM)
    config.optim_d.update(DCGAN_ADAM)
    config.train.update(num_steps=100_000, checkpoint_every=5_000, sample_every=5_000)
    config.eval.update(metrics=("fid",))
    return variant(config, arg, "gan_cifar", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.update(latent_dim=16, g_features=16, d_features=16)
    config.optim.update(learning_rate=1e-3)
    config.optim_d.update(learning_rate=1e-3)
    config.train.update(num_steps=300, log_every=50, checkpoint_every=150, sample_every=150)
    config.eval.update(num_samples=1000, sample_batch_size=256)  # fid_digits


if __name__ == "__main__":
    run.main(__file__)
