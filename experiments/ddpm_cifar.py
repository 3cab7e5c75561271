"""DDPM on CIFAR-10 (Ho et al. 2020): the paper's UNet, schedule and optimizer.

    python -m experiments.ddpm_cifar --workdir=runs/ddpm_cifar
    python -m experiments.ddpm_cifar --workdir=runs/smoke --config=experiments/ddpm_cifar.py:smoke
    python -m experiments.ddpm_cifar --workdir=runs/ddpm_cifar --mode=sample --config.sample.num=50000
    python -m experiments.ddpm_cifar --workdir=runs/ddpm_cifar --mode=eval

The family's defaults are the paper's model (`gm.nn.unet.UNetConfig`: 35.7M parameters, dropout 0.1)
and process (`gm.diffusion.DiffusionConfig`: T = 1000, linear betas 1e-4 to 0.02, fixed large
variances); this file states the rest of its CIFAR-10 setup.
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """The paper's CIFAR-10 setup; arg='smoke' is a tiny offline variant on the 8x8 digits."""
    config = families.default_config("ddpm")
    config.data.update(name="cifar10", random_flip=True)
    config.optim.update(learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0, ema_decay=0.9999)
    config.train.update(num_steps=800_000)  # batch 128: the base default
    config.sample.update(num=50_000, batch_size=1000)  # FID is over 50,000 samples
    return variant(config, arg, "ddpm_cifar", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    config.diffusion.update(num_timesteps=100)
    config.optim.update(learning_rate=1e-3, warmup_steps=20)
    config.train.update(sample_every=150)


if __name__ == "__main__":
    run.main(__file__)
