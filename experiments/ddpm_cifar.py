"""DDPM on CIFAR-10 (Ho et al. 2020): the paper's UNet, schedule and optimizer.

    python -m experiments.ddpm_cifar --workdir=runs/ddpm_cifar
    python -m experiments.ddpm_cifar --workdir=runs/smoke --config=experiments/ddpm_cifar.py:smoke
    python -m experiments.ddpm_cifar --workdir=runs/ddpm_cifar --mode=sample --config.sample.num=50000
    python -m experiments.ddpm_cifar --workdir=runs/ddpm_cifar --mode=eval
"""
import ml_collections

from gm import diffusion, parallel
from gm.train import run
from gm.train.evaluators import eval_config


def get_config(arg=None):
    """The paper's CIFAR-10 setup; arg='smoke' is a tiny offline variant on the 8x8 digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = dict(name="cifar10", data_dir="", manual_dir="", random_flip=True)
    config.model = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                        class_conditional=False, dtype="float32")
    config.diffusion = dict(num_timesteps=1000, schedule="linear", beta_start=1e-4, beta_end=0.02,
                            var_type="fixedlarge", sampler="ancestral", ddim_steps=50, ddim_eta=0.0,
                            clip_denoised=True)
    config.optim = dict(learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0, b1=0.9, b2=0.999, eps=1e-8,
                        weight_decay=0.0, ema_decay=0.9999)
    config.train = dict(batch_size=128, num_steps=800_000, log_every=100, checkpoint_every=10_000,
                        keep_checkpoints=3, sample_every=20_000, num_samples=64, on_nonfinite="stop",
                        steps_per_call=1)
    config.eval = eval_config()
    config.sample = dict(num=50_000, batch_size=1000)
    config.parallel = parallel.parallel_config()
    if arg == "smoke":
        config.data.update(name="digits", random_flip=False)  # digits are not mirror-symmetric
        config.model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
        config.diffusion.update(num_timesteps=100)
        config.optim.update(learning_rate=1e-3, warmup_steps=20, ema_decay=0.99)
        config.train.update(batch_size=32, num_steps=200, log_every=25, checkpoint_every=100,
                            sample_every=150, num_samples=16)
        config.eval.update(batch_size=120)
        config.sample.update(num=64, batch_size=64)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r} for ddpm_cifar; use 'smoke' or nothing.")
    return config


if __name__ == "__main__":
    run.main(__file__, diffusion.make)
