"""A text-conditional GAN (Reed et al. 2016, GAN-INT-CLS) on the digits: "the digit 7" in, a seven out.

    python -m experiments.text_gan_digits --workdir=runs/text_gan
    python -m experiments.text_gan_digits --workdir=runs/text_gan --mode=eval     # class accuracy, fid_digits
    python -m experiments.text_gan_digits --workdir=runs/text_gan --mode=sample \\
        --config.text_gan.prompts='("a handwritten three", "seven, written small")'
    python -m experiments.text_gan_digits --workdir=runs/cls --config.text_gan.interpolation=0   # GAN-CLS only
    python -m experiments.text_gan_digits --workdir=runs/smoke --config=experiments/text_gan_digits.py:smoke

The paper's choices kept: a DCGAN generator and discriminator, the caption's embedding compressed by a
dense layer with leaky ReLU (to 128 there) and concatenated to z in G and replicated over D's last grid,
the matching-aware discriminator with mismatched captions (GAN-CLS) and interpolated embeddings with
beta = 0.5 (GAN-INT), Adam at 2e-4 with beta1 = 0.5, batch 64. Changed for 1,437 8x8 digits: captions are
phrasings of the labels drawn each step (`gm.captions`: "a handwritten seven", "the digit 7", ...), and
the text encoder is a small char-CNN trained with the discriminator (the paper pretrains a char-CNN-RNN
on the birds' and flowers' descriptions); z of 32 dimensions, widths of 64, text embedding of 128
compressed to 32, 4,000 steps. `--mode=eval` reports fid_digits and class_accuracy_digits: the share of
samples drawn for "the digit k" that the digits' classifier reads as k. benchmarks/RESULTS.md has the
measured runs.
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run

REED_ADAM = dict(learning_rate=2e-4, b1=0.5)


def get_config(arg=None):
    """The digits; arg='smoke' for a run of a minute."""
    config = families.default_config("text_gan")
    config.data.update(name="digits", random_flip=False)  # digits are not mirror-symmetric
    config.model.update(latent_dim=32, g_features=64, d_features=64, text_features=128, compressed=32, text_len=24)
    config.optim.update(REED_ADAM, ema_decay=0.999)
    config.optim_d.update(REED_ADAM)
    config.train.update(batch_size=64, num_steps=4000, log_every=100, checkpoint_every=1000, sample_every=1000,
                        num_samples=50)
    config.eval.update(metrics=("fid",), batch_size=120, num_samples=1000, sample_batch_size=250)
    config.sample.update(num=100, batch_size=100)
    return variant(config, arg, "text_gan_digits", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.update(latent_dim=8, g_features=8, d_features=8, text_features=16, compressed=8)
    config.optim.update(learning_rate=1e-3)
    config.optim_d.update(learning_rate=1e-3)
    config.train.update(num_samples=20)
    config.eval.update(num_samples=200, sample_batch_size=200)
    config.sample.update(num=20, batch_size=20)


if __name__ == "__main__":
    run.main(__file__)
