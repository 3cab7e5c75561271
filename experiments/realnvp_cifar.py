"""RealNVP on CIFAR-10 (Dinh et al. 2017): the paper's multi-scale architecture and optimiser.

    python -m experiments.realnvp_cifar --workdir=runs/realnvp
    python -m experiments.realnvp_cifar --workdir=runs/smoke --config=experiments/realnvp_cifar.py:smoke
    python -m experiments.realnvp_cifar --workdir=runs/realnvp --mode=eval      # test bits/dim (a bound)
    python -m experiments.realnvp_cifar --workdir=runs/realnvp --mode=sample --config.flow.temperature=0.7

For CIFAR-10 the paper uses 8 residual blocks of 64 feature maps in every coupling's network and
downscales once (two scales), Adam at 1e-3, batch 64 and an L2 penalty of 5e-5 (here Adam's decoupled
weight decay); it reports 3.49 bits/dim on the test split. ActNorm takes the place of the paper's batch
normalisation. Data are uniformly dequantized, so bits/dim is the usual upper bound on the discrete
negative log-likelihood (`gm.distributions`).
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """CIFAR-10 RealNVP; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits."""
    config = families.default_config("realnvp")  # config.model: the paper's CIFAR-10 flow
    config.data.update(name="cifar10", random_flip=True)
    config.optim.update(learning_rate=1e-3, warmup_steps=200, grad_clip=100.0, weight_decay=5e-5)
    config.train.update(batch_size=64, num_steps=500_000)
    return variant(config, arg, "realnvp_cifar", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.update(hidden=16, num_blocks=0)
    config.optim.update(learning_rate=2e-3, warmup_steps=0)


if __name__ == "__main__":
    run.main(__file__)
