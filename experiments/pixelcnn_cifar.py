"""PixelCNN++ on CIFAR-10 (Salimans et al. 2017) with the paper's hyper-parameters; PixelCNN, gated
PixelCNN and a causal transformer over sub-pixels through --config.model.name.

    python -m experiments.pixelcnn_cifar --workdir=runs/pixelcnn_pp
    python -m experiments.pixelcnn_cifar --workdir=runs/gated --config.model.name=gated_pixelcnn
    python -m experiments.pixelcnn_cifar --workdir=runs/smoke --config=experiments/pixelcnn_cifar.py:smoke
    python -m experiments.pixelcnn_cifar --workdir=runs/pixelcnn_pp --mode=eval

PixelCNN++ defaults (`gm.autoregressive.PixelCNNPPConfig`) follow the reference code: 5 gated resnets
per stage, 160 filters, a mixture of 10 discretized logistics, dropout 0.5; with Adam at 1e-3 decayed by
0.999995 per step, Polyak (EMA) 0.9995, batch 16 per GPU on 8 GPUs. The paper reports 2.92 bits/dim on
the test split. Weight normalisation and its data-dependent initialisation are not used.
"""
from gm import families
from gm.config import offline_smoke, variant
from gm.train import run


def get_config(arg=None):
    """CIFAR-10 with PixelCNN++; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits."""
    config = families.default_config("pixelcnn")
    config.data.update(name="cifar10")
    config.optim.update(learning_rate=1e-3, b1=0.95, b2=0.9995, lr_decay=0.999995, ema_decay=0.9995)
    config.train.update(num_steps=1_000_000, sample_every=50_000, num_samples=16)
    return variant(config, arg, "pixelcnn_cifar", smoke=smoke)


def smoke(config):
    offline_smoke(config)
    config.model.pixelcnn_pp.update(nr_resnet=1, nr_filters=16, nr_logistic_mix=3, dropout=0.1)
    config.model.pixelcnn.update(features=32, num_layers=2, out_hidden=64)
    config.model.gated_pixelcnn.update(features=12, num_layers=3, out_hidden=64)
    config.model.transformer.update(num_layers=2, num_heads=2, embed_dim=32, dropout=0.0)
    config.optim.update(learning_rate=2e-3, lr_decay=1.0)


if __name__ == "__main__":
    run.main(__file__)
