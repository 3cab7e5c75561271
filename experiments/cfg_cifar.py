"""Class-conditional diffusion on CIFAR-10 with classifier-free guidance (Ho & Salimans 2022).

The DDPM UNet with a class embedding, trained with the label replaced by a null class 10% of the time,
so one network is both the conditional and the unconditional model. Sampling (DDIM-50) mixes the two,
eps = (1 + w) eps(x, y) - w eps(x, null): w = 0 is the conditional model, a larger w trades diversity
(FID) for fidelity (IS). `:smoke` is the usual offline variant.

    python -m experiments.cfg_cifar --workdir=runs/cfg
    python -m experiments.cfg_cifar --workdir=runs/cfg --mode=sample --config.diffusion.guidance_weight=3.0
    python -m experiments.cfg_cifar --workdir=runs/cfg --mode=eval --config.eval.metrics=fid
"""
from experiments import ddpm_cifar
from gm.config import variant
from gm.train import run


def get_config(arg=None):
    """Conditional CIFAR-10 with guidance; arg='smoke' is a tiny offline variant on the 8x8 digits."""
    config = variant(ddpm_cifar.get_config(), arg, "cfg_cifar", smoke=ddpm_cifar.smoke)
    config.model.update(class_conditional=True)
    config.diffusion.update(label_dropout=0.1, guidance_weight=0.3, sampler="ddim")
    if arg == "smoke":
        config.diffusion.update(ddim_steps=20, guidance_weight=1.0)
    return config


if __name__ == "__main__":
    run.main(__file__)
