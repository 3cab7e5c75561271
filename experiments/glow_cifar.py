"""Glow on CIFAR-10 (Kingma & Dhariwal 2018): 3 levels of 32 steps, 512-channel coupling networks.

    python -m experiments.glow_cifar --workdir=runs/glow
    python -m experiments.glow_cifar --workdir=runs/smoke --config=experiments/glow_cifar.py:smoke
    python -m experiments.glow_cifar --workdir=runs/glow --mode=eval            # test bits/dim (a bound)
    python -m experiments.glow_cifar --workdir=runs/glow --mode=sample --config.flow.temperature=0.7

Each step is ActNorm (data-dependent initialisation on the first batch), an invertible 1x1 convolution
in the LU parameterisation and an affine coupling whose network is conv3x3-ReLU-conv1x1-ReLU-zero conv3x3
with 512 channels; Adam at 1e-3 with a linear warm-up. The paper reports 3.35 bits/dim with affine
coupling and a learned prior at each split; here the factored-out halves go to the standard normal base.
Data are uniformly dequantized: bits/dim is the usual bound (`gm.distributions`).
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """CIFAR-10 Glow; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits."""
    config = families.default_config("glow")
    config.data.update(name="cifar10", random_flip=True)
    config.model.update(hidden=512, num_blocks=0)  # L = 3, K = 32: the family defaults
    config.optim.update(learning_rate=1e-3, warmup_steps=5000, grad_clip=100.0)
    config.train.update(batch_size=64, num_steps=500_000)
    return variant(config, arg, "glow_cifar", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.update(num_levels=2, depth=2, hidden=16)
    config.optim.update(learning_rate=2e-3, warmup_steps=20)


if __name__ == "__main__":
    run.main(__file__)
