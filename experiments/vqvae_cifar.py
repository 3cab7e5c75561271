"""VQ-VAE on CIFAR-10 (van den Oord et al. 2017) in two stages, then a causal transformer prior over codes.

    python -m experiments.vqvae_cifar --workdir=runs/vqvae                   # stage 1, then stage 2
    python -m experiments.vqvae_cifar --workdir=runs/vqvae --stage=prior     # only the prior
    python -m experiments.vqvae_cifar --workdir=runs/smoke --config=experiments/vqvae_cifar.py:smoke
    python -m experiments.vqvae_cifar --workdir=runs/vqvae --mode=eval
    python -m experiments.vqvae_cifar --workdir=runs/vqvae --mode=sample     # prior -> codes -> decoder

Stage 1 trains the VQ-VAE in WORKDIR/vqvae (config.model, config.optim, config.train) and writes test
reconstructions next to its samples; stage 2 loads stage 1's newest checkpoint and trains the prior in
WORKDIR/prior (config.prior, config.prior_optim, config.prior_train). Each stage checkpoints and
resumes on its own; a plain run trains whichever stages are not finished (`gm.families`: the stages).

The family's defaults are the paper's CIFAR-10 model (`gm.vqvae.VQVAEConfig`): two stride-2 4x4
convolutions and two residual blocks of 256 channels each way, an 8x8 grid of K = 512 codes of
dimension 64, commitment 0.25; the codebook follows EMAs (decay 0.99) and dead codes restart. It trains
with Adam at 2e-4, batch 128, 250k steps, the decoder with squared error on images in [-1, 1].
--mode=eval reports the test reconstruction error, PSNR and the codebook's perplexity over the test
codes (stage 1) and the prior's test NLL in bits per code (stage 2).
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """CIFAR-10; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits (a 4x4 grid of 16 codes)."""
    config = families.default_config("vqvae")  # config.prior: a causal transformer of 8 layers, width 256
    config.data.update(name="cifar10")
    # The paper averages no parameters (the codebook, itself an average, is never averaged again).
    config.optim.update(learning_rate=2e-4, ema_decay=0.0)
    config.train.update(num_steps=250_000, sample_every=25_000)
    config.prior_optim.update(learning_rate=3e-4, warmup_steps=1000, grad_clip=1.0, b2=0.99)
    config.prior_train.update(num_steps=200_000, sample_every=25_000)
    config.eval.update(metrics=("bpd", "recon"))
    return variant(config, arg, "vqvae_cifar", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.update(num_codes=16, code_dim=8, channels=(32,), num_res_blocks=1, res_hidden=16)
    config.optim.update(learning_rate=2e-3, ema_decay=0.0)
    steps = dict(num_steps=300, log_every=50, checkpoint_every=150, sample_every=150)
    config.train.update(steps)
    config.prior.transformer.update(num_layers=2, num_heads=2, embed_dim=32, dropout=0.0)
    config.prior.gated_pixelcnn.update(features=12, num_layers=3, out_hidden=64)
    config.prior.pixelcnn.update(features=32, num_layers=2, out_hidden=64)
    config.prior_optim.update(learning_rate=2e-3, warmup_steps=0, ema_decay=0.99)
    config.prior_train.update(batch_size=32, num_samples=16, **steps)


if __name__ == "__main__":
    run.main(__file__)
