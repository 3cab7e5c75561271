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
import ml_collections

from gm import flows, parallel
from gm.train import run
from gm.train.evaluators import eval_config


def get_config(arg=None):
    """CIFAR-10 RealNVP; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = dict(name="cifar10", data_dir="", manual_dir="", random_flip=True)
    config.model = dict(name="realnvp", num_scales=2, hidden=64, num_blocks=8, alpha=0.05)
    config.flow = dict(temperature=1.0)
    config.optim = dict(learning_rate=1e-3, warmup_steps=200, grad_clip=100.0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=5e-5, ema_decay=0.999)
    config.train = dict(batch_size=64, num_steps=500_000, log_every=100, checkpoint_every=10_000,
                        keep_checkpoints=3, sample_every=20_000, num_samples=64, on_nonfinite="stop",
                        steps_per_call=1)
    config.eval = eval_config()
    config.sample = dict(num=64, batch_size=64)
    config.parallel = parallel.parallel_config()
    if arg == "smoke":
        config.data.update(name="digits", random_flip=False)  # digits are not mirror-symmetric
        config.model.update(hidden=16, num_blocks=0)
        config.optim.update(learning_rate=2e-3, warmup_steps=0, ema_decay=0.99)
        config.train.update(batch_size=32, num_steps=200, log_every=25, checkpoint_every=100,
                            sample_every=100, num_samples=16)
        config.eval.update(batch_size=120)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r} for realnvp_cifar; use 'smoke' or nothing.")
    return config


if __name__ == "__main__":
    run.main(__file__, flows.make)
