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
import ml_collections

from gm import flows, parallel
from gm.train import run
from gm.train.evaluators import eval_config


def get_config(arg=None):
    """CIFAR-10 Glow; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = dict(name="cifar10", data_dir="", manual_dir="", random_flip=True)
    config.model = dict(name="glow", num_levels=3, depth=32, hidden=512, num_blocks=0)
    config.flow = dict(temperature=1.0)
    config.optim = dict(learning_rate=1e-3, warmup_steps=5000, grad_clip=100.0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, ema_decay=0.999)
    config.train = dict(batch_size=64, num_steps=500_000, log_every=100, checkpoint_every=10_000,
                        keep_checkpoints=3, sample_every=20_000, num_samples=64, on_nonfinite="stop",
                        steps_per_call=1)
    config.eval = eval_config()
    config.sample = dict(num=64, batch_size=64)
    config.parallel = parallel.parallel_config()
    if arg == "smoke":
        config.data.update(name="digits", random_flip=False)  # digits are not mirror-symmetric
        config.model.update(num_levels=2, depth=2, hidden=16)
        config.optim.update(learning_rate=2e-3, warmup_steps=20, ema_decay=0.99)
        config.train.update(batch_size=32, num_steps=200, log_every=25, checkpoint_every=100,
                            sample_every=100, num_samples=16)
        config.eval.update(batch_size=120)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r} for glow_cifar; use 'smoke' or nothing.")
    return config


if __name__ == "__main__":
    run.main(__file__, flows.make)
