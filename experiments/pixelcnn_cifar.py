"""PixelCNN++ on CIFAR-10 (Salimans et al. 2017) with the paper's hyper-parameters; PixelCNN, gated
PixelCNN and a causal transformer over sub-pixels through --config.model.name.

    python -m experiments.pixelcnn_cifar --workdir=runs/pixelcnn_pp
    python -m experiments.pixelcnn_cifar --workdir=runs/gated --config.model.name=gated_pixelcnn
    python -m experiments.pixelcnn_cifar --workdir=runs/smoke --config=experiments/pixelcnn_cifar.py:smoke
    python -m experiments.pixelcnn_cifar --workdir=runs/pixelcnn_pp --mode=eval

PixelCNN++ defaults follow the reference code: 5 gated resnets per stage, 160 filters, a mixture of 10
discretized logistics, dropout 0.5, Adam at 1e-3 decayed by 0.999995 per step, Polyak (EMA) 0.9995,
batch 16 per GPU on 8 GPUs. The paper reports 2.92 bits/dim on the test split. Weight normalisation
and its data-dependent initialisation are not used.
"""
import ml_collections

from gm import autoregressive, parallel
from gm.train import run
from gm.train.evaluators import eval_config


def get_config(arg=None):
    """CIFAR-10 with PixelCNN++; arg='smoke' is a tiny offline variant on the 4-bit 8x8 digits."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = dict(name="cifar10", data_dir="", manual_dir="", random_flip=False)
    config.model = dict(
        name="pixelcnn_pp", class_conditional=False, dtype="float32",
        pixelcnn_pp=dict(nr_resnet=5, nr_filters=160, nr_logistic_mix=10, dropout=0.5),
        # van den Oord et al. 2016a: h = 128 (2h = 256 features), 15 residual blocks.
        pixelcnn=dict(features=256, num_layers=15, first_kernel=7, kernel=3, out_hidden=1024),
        # Gated features pair up channel k with k + F, so F is a multiple of the 3 colours.
        gated_pixelcnn=dict(features=120, num_layers=15, first_kernel=7, kernel=3, out_hidden=1024),
        # attention_block: queries attended at a time (memory O(block T) per layer, the same numbers).
        transformer=dict(num_layers=8, num_heads=8, embed_dim=256, mlp_ratio=4, dropout=0.1, attention_block=512),
    )
    config.optim = dict(learning_rate=1e-3, warmup_steps=0, grad_clip=0.0, b1=0.95, b2=0.9995, eps=1e-8,
                        weight_decay=0.0, lr_decay=0.999995, ema_decay=0.9995)
    config.train = dict(batch_size=128, num_steps=1_000_000, log_every=100, checkpoint_every=10_000,
                        keep_checkpoints=3, sample_every=50_000, num_samples=16, on_nonfinite="stop",
                        steps_per_call=1)
    config.eval = eval_config()
    config.sample = dict(num=64, batch_size=64)
    config.parallel = parallel.parallel_config()
    if arg == "smoke":
        config.data.update(name="digits")
        config.model.pixelcnn_pp.update(nr_resnet=1, nr_filters=16, nr_logistic_mix=3, dropout=0.1)
        config.model.pixelcnn.update(features=32, num_layers=2, out_hidden=64)
        config.model.gated_pixelcnn.update(features=12, num_layers=3, out_hidden=64)
        config.model.transformer.update(num_layers=2, num_heads=2, embed_dim=32, dropout=0.0)
        config.optim.update(learning_rate=2e-3, lr_decay=1.0, ema_decay=0.99)
        config.train.update(batch_size=32, num_steps=200, log_every=25, checkpoint_every=100,
                            sample_every=100, num_samples=16)
        config.eval.update(batch_size=120)
        config.sample.update(num=64, batch_size=64)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r} for pixelcnn_cifar; use 'smoke' or nothing.")
    return config


if __name__ == "__main__":
    run.main(__file__, autoregressive.make)
