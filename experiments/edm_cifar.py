"""EDM on CIFAR-10 (Karras et al. 2022, "Elucidating the design space of diffusion-based generative
models"): preconditioning, log-normal noise levels, the Heun sampler over 18 Karras levels (35 NFE).

    python -m experiments.edm_cifar --workdir=runs/edm_cifar
    python -m experiments.edm_cifar --workdir=runs/smoke --config=experiments/edm_cifar.py:smoke
    python -m experiments.edm_cifar --workdir=runs/edm_cifar --mode=eval
    python -m experiments.edm_cifar --workdir=runs/edm_cifar --mode=eval --config.edm.sampler=dpm_solver++ \\
        --config.edm.solver.steps=20

The paper's CIFAR-10 numbers (its Table 2, 50,000 samples, best of three FID evaluations) and gm's
default run aimed at them:

| setting | FID (paper) | NFE | gm's config |
|---|---|---|---|
| unconditional, VP, DDPM++ (56M) | 1.97 | 35 | default |
| class-conditional, VP, DDPM++ | 1.79 | 35 | `--config.model.class_conditional=True` |

EDM trains with batch 512, Adam at 1e-3 (betas 0.9, 0.999, eps 1e-8) ramped up linearly over 10M images,
no weight decay or clipping, dropout 0.13, an EMA with a half-life of 500k images, for 200M images
(390k steps), on its DDPM++ network (`gm.nn.song_unet`: 128 channels, multipliers (2, 2, 2), 4 blocks
per resolution, attention at 16x16; 55.73M parameters, as in its Table 7). gm states them as:
learning_rate 1e-3 with 19,531 warm-up steps, EMA decay 0.99929 per step (0.5^(512/500,000); EDM also
ramps the half-life up early, gm does not), 390,625 steps. Where gm differs: EDM's non-leaking
augmentation (p = 0.12, with its 9-way augmentation label) is not implemented, so the default run is
EDM's without augmentation; its loss sums over pixels where gm averages (a constant factor under Adam).
"""
from gm import families, optim
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """EDM on CIFAR-10; arg='smoke' is a tiny offline variant on the 8x8 digits."""
    config = families.default_config("edm")
    config.data.update(name="cifar10", random_flip=True)
    config.model.update(architecture="ddpmpp", ch=128, ch_mult=(2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                        dropout=0.13)
    config.optim.update(learning_rate=1e-3, warmup_steps=19_531, ema_decay=optim.ema_decay_of_half_life(500_000, 512))
    config.train.update(batch_size=512, num_steps=390_625)
    config.sample.update(num=50_000, batch_size=1000)
    config.eval.update(metrics=("fid",))
    return variant(config, arg, "edm_cifar", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.update(architecture="ddpm", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                        dropout=0.0)
    config.optim.update(learning_rate=1e-3, warmup_steps=20)
    config.train.update(sample_every=150)


if __name__ == "__main__":
    run.main(__file__)
