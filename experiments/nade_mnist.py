"""NADE on binarized MNIST (Larochelle & Murray 2011): 500 hidden units, stochastic binarization.

    python -m experiments.nade_mnist --workdir=runs/nade_mnist
    python -m experiments.nade_mnist --workdir=runs/smoke --config=experiments/nade_mnist.py:smoke
    python -m experiments.nade_mnist --workdir=runs/nade_mnist --mode=eval

Training images are binarized afresh every step (x ~ Bernoulli(level / 255)); the test split is
binarized once with the run's evaluation key, so --mode=eval reports the exact test NLL of one fixed
binarization, in nats and bits per (binary) dimension. Papers report nats: NADE reaches about 88.
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """Binarized MNIST; arg='smoke' is a tiny offline variant on binarized 8x8 digits."""
    config = families.default_config("nade")  # config.model.nade: 500 hidden units, stochastic binarization
    config.data.update(name="mnist")
    config.optim.update(learning_rate=5e-4)
    config.train.update(batch_size=100, num_steps=300_000, sample_every=10_000)
    return variant(config, arg, "nade_mnist", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.nade.update(num_hidden=64)
    config.optim.update(learning_rate=3e-3)
    config.train.update(num_steps=300, log_every=50, checkpoint_every=150, sample_every=150)


if __name__ == "__main__":
    run.main(__file__)
