"""Improved DDPM on CIFAR-10 (Nichol & Dhariwal 2021): learned variances, L_hybrid, the cosine schedule.

The paper's CIFAR-10 model: T = 4000 cosine steps, a UNet with 3 residual blocks per level, attention
at 16x16 and 8x8 with 4 heads, scale-shift conditioning, dropout 0.3; Adam at 1e-4, batch 128, EMA
0.9999, 500K steps. Sampling uses every step by default; `--config.diffusion.sample_steps=100` samples
a respaced 100-step chain, which learned variances keep close in quality (the paper's section 4).

    python -m experiments.improved_ddpm_cifar --workdir=runs/iddpm
    python -m experiments.improved_ddpm_cifar --workdir=runs/iddpm --mode=sample --config.diffusion.sample_steps=100
    python -m experiments.improved_ddpm_cifar --workdir=runs/iddpm --mode=eval    # bits/dim with the learned variance
    python -m experiments.improved_ddpm_cifar --workdir=runs/smoke --config=experiments/improved_ddpm_cifar.py:smoke
    python -m experiments.improved_ddpm_cifar --workdir=runs/iddpm --config.diffusion.timestep_sampling=importance
"""
from experiments import ddpm_cifar
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """DDPM's CIFAR-10 setup with the paper's changes; arg='smoke' is a tiny offline variant."""
    config = ddpm_cifar.get_config()
    config.diffusion.update(num_timesteps=4000, schedule="cosine", var_type="learned_range", loss="hybrid")
    config.model.update(num_res_blocks=3, attn_resolutions=(16, 8), num_heads=4, scale_shift_norm=True,
                        dropout=0.3)
    config.optim.update(learning_rate=1e-4, warmup_steps=0, grad_clip=0.0)
    config.train.update(num_steps=500_000)
    return variant(config, arg, "improved_ddpm_cifar", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.diffusion.update(num_timesteps=100, sample_steps=25)
    config.model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=2, dropout=0.1)
    config.optim.update(learning_rate=1e-3, warmup_steps=20)


if __name__ == "__main__":
    run.main(__file__)
