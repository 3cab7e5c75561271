"""NADE on binarized MNIST (Larochelle & Murray 2011): 500 hidden units, stochastic binarization.

    python -m experiments.nade_mnist --workdir=runs/nade_mnist
    python -m experiments.nade_mnist --workdir=runs/smoke --config=experiments/nade_mnist.py:smoke
    python -m experiments.nade_mnist --workdir=runs/nade_mnist --mode=eval

Training images are binarized afresh every step (x ~ Bernoulli(level / 255)); the test split is
binarized once with the run's evaluation key, so --mode=eval reports the exact test NLL of one fixed
binarization, in nats and bits per (binary) dimension. Papers report nats: NADE reaches about 88.
"""
import ml_collections

from gm import autoregressive, parallel
from gm.train import run
from gm.train.evaluators import eval_config


def get_config(arg=None):
    """Binarized MNIST; arg='smoke' is a tiny offline variant on binarized 8x8 digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = dict(name="mnist", data_dir="", manual_dir="", random_flip=False)
    config.model = dict(name="nade", class_conditional=False, dtype="float32",
                        nade=dict(num_hidden=500, binarize="stochastic"))
    config.optim = dict(learning_rate=5e-4, warmup_steps=0, grad_clip=0.0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, lr_decay=1.0, ema_decay=0.999)
    config.train = dict(batch_size=100, num_steps=300_000, log_every=100, checkpoint_every=10_000,
                        keep_checkpoints=3, sample_every=10_000, num_samples=64, on_nonfinite="stop",
                        steps_per_call=1)
    config.eval = eval_config()
    config.sample = dict(num=64, batch_size=64)
    config.parallel = parallel.parallel_config()
    if arg == "smoke":
        config.data.update(name="digits")
        config.model.nade.update(num_hidden=64)
        config.optim.update(learning_rate=3e-3, ema_decay=0.99)
        config.train.update(batch_size=32, num_steps=300, log_every=50, checkpoint_every=150,
                            sample_every=150, num_samples=16)
        config.eval.update(batch_size=120)
        config.sample.update(num=64, batch_size=64)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r} for nade_mnist; use 'smoke' or nothing.")
    return config


if __name__ == "__main__":
    run.main(__file__, autoregressive.make)
