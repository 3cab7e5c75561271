"""Score SDEs on CIFAR-10 (Song et al. 2021, "Score-based generative modeling through stochastic
differential equations"): the VP SDE by default, VE and sub-VP as variants.

    python -m experiments.score_sde_cifar --workdir=runs/score_sde_vp
    python -m experiments.score_sde_cifar --workdir=runs/score_sde_ve --config=experiments/score_sde_cifar.py:ve
    python -m experiments.score_sde_cifar --workdir=runs/smoke --config=experiments/score_sde_cifar.py:smoke
    python -m experiments.score_sde_cifar --workdir=runs/score_sde_vp --mode=eval    # bits/dim by the ODE
    python -m experiments.score_sde_cifar --workdir=runs/score_sde_vp --mode=eval --config.eval.metrics="('fid',)" \\
        --config.sde.sampler=heun

What the paper reports on CIFAR-10 (its Tables 2 and 3; score_sde's checkpoint table) and what gm's
defaults aim at:

| SDE | network (parameters) | FID (PC sampler) | FID (ODE) | bits/dim | gm's config |
|---|---|---|---|---|---|
| VP | DDPM++ cont. (61.8M) | 2.55 | 3.93 | 3.16 | default |
| sub-VP | DDPM++ cont. | 2.61 | 3.16 | 3.02 | `:subvp` |
| VE | NCSN++ cont. (62.8M) | 2.38 | - | - | `:ve` |
| sub-VP, deep | DDPM++ cont., 8 blocks | 2.41 | 2.92 | 2.99 | `:subvp --config.model.num_res_blocks=8` |
| VE, deep | NCSN++ cont., 8 blocks | 2.20 | - | - | `:ve --config.model.num_res_blocks=8` |

score_sde's training: batch 128, Adam at 2e-4 with 5,000 warm-up steps, gradient clipping at 1, EMA
0.9999 (VP, sub-VP) or 0.999 (VE), 1.3M steps, t ~ U[1e-5, 1], the loss averaged over dimensions; VP
samples with 1,000 Euler-Maruyama steps down to t = 1e-3, VE with reverse diffusion + one Langevin
corrector step (snr 0.16) down to 1e-5; likelihoods integrate the ODE with RK45 at rtol = atol = 1e-5
and Hutchinson's estimator on uniformly dequantized data. The networks are score_sde's DDPM++ (VP,
sub-VP) and NCSN++ (VE) at 128 channels, multipliers (1, 2, 2, 2), 4 blocks per resolution, attention
at 16x16, dropout 0.1 (`gm.nn.song_unet`, EDM's re-implementation), fed 999 t (VP, sub-VP) or log
sigma (VE). Where gm differs: the networks predict the noise (NCSN++'s output divided by sigma is the
same parameterization up to sign), and the likelihood's solver is dopri5 (RK45's sibling) at the same
tolerances. FID here uses 50,000 samples against the train split, as the paper.
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """The VP SDE on CIFAR-10; arg: 've', 'subvp', or 'smoke' (a tiny offline VP run on the 8x8 digits)."""
    config = families.default_config("score_sde")
    config.data.update(name="cifar10", random_flip=True)
    config.optim.update(learning_rate=2e-4, warmup_steps=5000, grad_clip=1.0, ema_decay=0.9999)
    config.train.update(num_steps=1_300_000)  # batch 128: the base default
    config.sample.update(num=50_000, batch_size=1000)
    config.model.update(architecture="ddpmpp", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
                        dropout=0.1)
    config.eval.update(metrics=("bpd", "fid"))
    return variant(config, arg, "score_sde_cifar", ve=ve, subvp=subvp, smoke=smoke)


def ve(config):
    config.sde.update(name="ve", predictor="reverse_diffusion", corrector="langevin", snr=0.16)
    config.model.update(architecture="ncsnpp")
    config.optim.update(ema_decay=0.999)


def subvp(config):
    config.sde.update(name="subvp")


def smoke(config):
    offline_smoke(config)
    config.model.update(architecture="ddpm", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    config.sde.update(num_steps=100, ode_solver="rk4", ode_steps=20)
    config.optim.update(learning_rate=1e-3, warmup_steps=20)
    config.eval.update(metrics=("bpd",))
    config.train.update(sample_every=150)


if __name__ == "__main__":
    run.main(__file__)
