"""CycleGAN (Zhu et al. 2017): unpaired translation, horse2zebra by default, with the paper's settings.

    python -m experiments.cyclegan --workdir=runs/horse2zebra
    python -m experiments.cyclegan --workdir=runs/horse2zebra --mode=sample       # test translations
    python -m experiments.cyclegan --workdir=runs/horse2zebra --mode=eval         # cycle error, FID
    python -m experiments.cyclegan --workdir=runs/monet --config.data.name=cycle_gan/monet2photo
    python -m experiments.cyclegan --workdir=runs/strokes --config=experiments/cyclegan.py:digits
    python -m experiments.cyclegan --workdir=runs/smoke --config=experiments/cyclegan.py:smoke

The paper's choices (and the authors' code, junyanz/pytorch-CycleGAN-and-pix2pix, for what it leaves
out): 256x256 images, the ResNet generator with 9 residual blocks and the 70x70 PatchGAN
(`gm.nn.cyclegan`), the least-squares adversarial loss, lambda_cycle = 10 and an identity loss of 0.5 x 10,
a history of 50 generated images per discriminator, Adam(2e-4, beta1 = 0.5) for both players at batch 1,
200 epochs of the larger domain (horse2zebra: 1,334 zebras, so 266,800 steps), the rate held for the
first 100 epochs and taken linearly to zero over the last 100, random left-right flips, and no EMA (the
generators' own weights translate). Not reproduced: the code's random 286 -> 256 crops (gm's pipeline
flips but does not crop). The paper reports no number for horse2zebra (its tables are AMT studies and
FCN scores on cityscapes); --mode=eval reports the cycle error and the Inception FID of each direction
against that domain's training images, next to the FID of leaving the images untranslated.

The digits variant translates thin digits into thick ones and back (`gm.translation_datasets`:
digit_strokes, offline) and measures what the paper's tasks cannot: the share of thick test digits whose
translation to thin the digits' classifier assigns their own class (target >= 90%), with the classifier's
accuracy on the untranslated thick digits (58%) as what doing nothing scores. benchmarks/RESULTS.md has
the measured runs.
"""
from gm import families
from gm.config import variant
from gm.train import run

HORSE2ZEBRA_EPOCH = 1334  # steps per epoch at batch 1: the larger domain's training images


def get_config(arg=None):
    """horse2zebra (TFDS cycle_gan); arg='digits' for the offline digit strokes, 'smoke' for a minute's run."""
    config = families.default_config("cyclegan")
    config.data.update(name="cycle_gan/horse2zebra", random_flip=True)
    adam = dict(learning_rate=2e-4, b1=0.5, linear_decay_start=100 * HORSE2ZEBRA_EPOCH,
                linear_decay_steps=100 * HORSE2ZEBRA_EPOCH)
    config.optim.update(adam, ema_decay=0.0)
    config.optim_d.update(adam)
    config.train.update(batch_size=1, num_steps=200 * HORSE2ZEBRA_EPOCH, log_every=100,
                        checkpoint_every=10 * HORSE2ZEBRA_EPOCH, sample_every=5 * HORSE2ZEBRA_EPOCH, num_samples=8)
    config.eval.update(metrics=("translation",), batch_size=20)
    config.sample.update(num=200, batch_size=10)
    return variant(config, arg, "cyclegan", digits=digits, smoke=smoke)


def digits(config):
    """Thin <-> thick 8x8 digits: networks sized to 8x8 (one halving; 2x2 patches of a 1-layer PatchGAN)."""
    config.data.update(name="digit_strokes", random_flip=False)  # digits are not mirror-symmetric
    config.model.update(g_features=32, g_blocks=3, g_down=1, d_features=32, d_layers=1)
    epoch = 719 // 8  # the larger domain's training images at batch 8
    for section in (config.optim, config.optim_d):
        section.update(linear_decay_start=20 * epoch, linear_decay_steps=20 * epoch)
    config.train.update(batch_size=8, num_steps=40 * epoch, log_every=89, checkpoint_every=445, sample_every=445,
                        num_samples=16)
    config.eval.update(batch_size=120)
    config.sample.update(num=180, batch_size=90)


def smoke(config):
    digits(config)
    config.model.update(g_features=8, g_blocks=1, d_features=8)
    for section in (config.optim, config.optim_d):
        section.update(learning_rate=1e-3, linear_decay_start=20, linear_decay_steps=20)
    config.train.update(num_steps=40, log_every=10, checkpoint_every=20, sample_every=20)


if __name__ == "__main__":
    run.main(__file__)
