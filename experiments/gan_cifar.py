"""DCGAN on CIFAR-10 (Radford et al. 2016) with the non-saturating loss and the paper's hyper-parameters.

    python -m experiments.gan_cifar --workdir=runs/dcgan
    python -m experiments.gan_cifar --workdir=runs/smoke --config=experiments/gan_cifar.py:smoke
    python -m experiments.gan_cifar --workdir=runs/wgan_gp --config.gan.loss=wasserstein \\
        --config.gan.gradient_penalty=10 --config.gan.d_steps=5 --config.model.d_norm=layer
    python -m experiments.gan_cifar --workdir=runs/dcgan --mode=sample --config.sample.num=50000

Defaults: z ~ N(0, I) of 100 dimensions, a generator from a 4x4x512 grid through stride-2 4x4
transposed convolutions with batch norm and ReLU to tanh, a discriminator of stride-2 4x4 convolutions
with batch norm and leaky ReLU 0.2, Adam at 2e-4 with beta1 = 0.5 for both players, batch 128, one
discriminator step per generator step (config.gan.d_steps = k). Samples come from an EMA of the
generator (config.optim.ema_decay). There is no likelihood, so there is no --mode=eval.
"""
import ml_collections

from gm import gan, parallel
from gm.train import run
from gm.train.evaluators import eval_config


def get_config(arg=None):
    """CIFAR-10; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = dict(name="cifar10", data_dir="", manual_dir="", random_flip=False)
    config.model = dict(name="gan", arch="dcgan", latent_dim=100, g_features=64, d_features=64, g_norm="batch",
                        d_norm="batch", hidden=(128, 128), class_conditional=False)
    # loss: minimax | non_saturating | wasserstein | hinge; d_steps: k discriminator updates per
    # generator update; clip: WGAN's weight clip (0 = off); unrolled_steps: Metz et al.'s K (0 = off).
    config.gan = dict(loss="non_saturating", d_steps=1, gradient_penalty=0.0, clip=0.0, unrolled_steps=0)
    config.optim = dict(learning_rate=2e-4, warmup_steps=0, grad_clip=0.0, b1=0.5, b2=0.999, eps=1e-8,
                        weight_decay=0.0, lr_decay=1.0, ema_decay=0.999, name="adam", eps_root=0.0)
    config.optim_d = dict(learning_rate=2e-4, warmup_steps=0, grad_clip=0.0, b1=0.5, b2=0.999, eps=1e-8,
                          weight_decay=0.0, lr_decay=1.0, name="adam", eps_root=0.0)
    config.train = dict(batch_size=128, num_steps=100_000, log_every=100, checkpoint_every=5_000,
                        keep_checkpoints=3, sample_every=5_000, num_samples=64, on_nonfinite="stop",
                        steps_per_call=1)
    config.eval = eval_config(metrics=("fid",))
    config.sample = dict(num=64, batch_size=64)
    config.parallel = parallel.parallel_config()
    if arg == "smoke":
        config.data.update(name="digits")
        config.model.update(latent_dim=16, g_features=16, d_features=16)
        config.optim.update(learning_rate=1e-3, ema_decay=0.99)
        config.optim_d.update(learning_rate=1e-3)
        config.train.update(batch_size=32, num_steps=300, log_every=50, checkpoint_every=150,
                            sample_every=150, num_samples=16)
        config.eval.update(batch_size=120, num_samples=1000, sample_batch_size=256)  # fid_digits
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r} for gan_cifar; use 'smoke' or nothing.")
    return config


if __name__ == "__main__":
    run.main(__file__, gan.make)
