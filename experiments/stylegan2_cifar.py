"""StyleGAN2 (Karras et al. 2020) on CIFAR-10, as the StyleGAN2-ADA paper trains its StyleGAN2 baseline.

    python -m experiments.stylegan2_cifar --workdir=runs/stylegan2
    python -m experiments.stylegan2_cifar --workdir=runs/stylegan2 --mode=eval     # FID and IS, 50,000 samples
    python -m experiments.stylegan2_cifar --workdir=runs/stylegan2 --mode=sample --config.stylegan2.truncation_psi=0.7
    python -m experiments.stylegan2_cifar --workdir=runs/tuned --config=experiments/stylegan2_cifar.py:tuned
    python -m experiments.stylegan2_cifar --workdir=runs/paper --config=experiments/stylegan2_cifar.py:paper
    python -m experiments.stylegan2_cifar --workdir=runs/smoke --config=experiments/stylegan2_cifar.py:smoke

The StyleGAN2-ADA paper's CIFAR-10 table (Table 2) has three StyleGAN2 rows: the baseline (unconditional
FID 8.32 +- 0.09, IS 9.21 +- 0.09), + ADA, and + ADA with tuning (2.92 +- 0.05; with labels 2.42 +- 0.04,
the record its abstract cites). Its TensorFlow code (NVlabs/stylegan2-ada `train.py`) names their
configurations `cifarbaseline` and `cifar`; the PyTorch port keeps only `cifar`.

The default is `--cfg=cifarbaseline --aug=noaug`, the baseline row, aimed at FID 8.32 (to be measured
here when a GPU is available): StyleGAN2's networks and regularizers (a mapping network of 8 layers, the
residual discriminator, path-length regularization with weight 2 every 4 steps on half the batch, style
mixing with probability 0.9) at the CIFAR-10 settings: 512 channels at every resolution, z and w of 512,
minibatch-stddev groups of 32, R1 with gamma 0.01 every 16 steps, Adam at 0.0025 with betas (0, 0.99)
adjusted for the lazy regularization (`gm.stylegan2.lazy_adam`), batch 64 for 100M images (1,562,500
steps), FID against the 50,000 training images. Departures: the generator EMA decays at a constant
0.99991 per step (the reference's half-life of 500k images, reached after its ramp-up over the first 5% of
images seen); float32 throughout (the reference runs its 4 highest resolutions in float16 with
activations clamped at 256).

`tuned` is `--cfg=cifar` without ADA: the tuning row's networks (2 mapping layers, the discriminator
without residual skips, 'orig') and no path-length regularization or style mixing. The paper reports it
only with ADA, so it has no number of its own to aim at.

`paper` is the StyleGAN2 paper's config F as the ADA code's `--cfg=stylegan2` sets it: minibatch-stddev
groups of 4, R1 with gamma 10, Adam at 0.002 and batch 32 for 25M images, an EMA half-life of 10k
images. Sample grids use truncation psi = 0.7 only when asked (FID at psi = 1).
"""
from gm import families, optim, stylegan2
from gm.config import offline_smoke, variant
from gm.train import run

STEPS = 100_000_000 // 64


def get_config(arg=None):
    """CIFAR-10 at StyleGAN2-ADA's cifarbaseline settings; arg 'tuned' for its cifar networks, 'paper' for
    config F, 'smoke' offline."""
    config = families.default_config("stylegan2")
    config.data.update(name="cifar10", random_flip=False)
    config.model.update(mapping_layers=8, channel_base=32768, channel_max=512, mbstd_group_size=32,
                        d_architecture="resnet")
    config.stylegan2.update(r1_gamma=0.01, pl_weight=2.0, style_mixing_prob=0.9)
    config.optim.update(stylegan2.lazy_adam(0.0025, 0.99, 4), eps=1e-8,
                        ema_decay=optim.ema_decay_of_half_life(500_000, 64))
    config.optim_d.update(stylegan2.lazy_adam(0.0025, 0.99, 16), eps=1e-8)
    config.train.update(batch_size=64, num_steps=STEPS, log_every=1000, checkpoint_every=50_000,
                        sample_every=50_000)
    config.eval.update(metrics=("fid",))
    return variant(config, arg, "stylegan2_cifar", tuned=tuned, paper=paper, smoke=smoke)


def tuned(config):
    config.model.update(mapping_layers=2, d_architecture="orig")
    config.stylegan2.update(pl_weight=0.0, style_mixing_prob=0.0)


def paper(config):
    config.model.update(mbstd_group_size=4)
    config.stylegan2.update(r1_gamma=10.0)
    config.optim.update(stylegan2.lazy_adam(0.002, 0.99, 4), ema_decay=optim.ema_decay_of_half_life(10_000, 32))
    config.optim_d.update(stylegan2.lazy_adam(0.002, 0.99, 16))
    config.train.update(batch_size=32, num_steps=25_000_000 // 32)


def smoke(config):
    """The digits at 8x8 with every regularizer on, each lazy one every 2 steps so a short run takes both."""
    paper(config)
    offline_smoke(config)
    config.model.update(z_dim=32, w_dim=32, mapping_layers=2, channel_base=128, channel_max=32)
    config.stylegan2.update(r1_gamma=1.0, r1_every=2, pl_every=2)
    config.optim.update(stylegan2.lazy_adam(2e-3, 0.99, 2))
    config.optim_d.update(stylegan2.lazy_adam(2e-3, 0.99, 2))
    config.eval.update(num_samples=1000, sample_batch_size=250)


if __name__ == "__main__":
    run.main(__file__)
