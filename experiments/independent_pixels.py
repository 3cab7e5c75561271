"""The independent-pixel baseline, p(x) = prod_d p_d(x_d), on the data of another experiment's config.

    python -m experiments.independent_pixels --config=experiments/pixelcnn_cifar.py:smoke   # 4-bit digits
    python -m experiments.independent_pixels --config=experiments/nade_mnist.py:smoke       # binarized digits
    python -m experiments.independent_pixels --config=experiments/vae_mnist.py:smoke        # the same

One categorical per sub-pixel, fitted by counting on the training split (one pseudo-count), then scored
on the test split through the same harness, key and batches as `--mode=eval` of that experiment; for
a NADE config (or a VAE with a Bernoulli decoder) the test images are binarized with the same evaluation key, so the two numbers are on
the same binary test set. Prints test bits/dim and writes nothing.
"""
import sys

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from gm import autoregressive as ar
from gm import data as gm_data
from gm.metrics.likelihood import evaluate_log_prob
from gm.train import loop, run

# Stochastically binarized training images are counted over this many independent binarizations.
NUM_TRAIN_BINARIZATIONS = 10


def binarize_mode(model):
    """The binarization the experiment's model applies to its data, or None for integer levels."""
    if model.get("name") == "nade":
        return model.nade.get("binarize", "stochastic")
    if model.get("likelihood") == "bernoulli":  # a VAE with a Bernoulli decoder
        return model.get("binarize", "stochastic")
    return None


def baseline(config):
    """Fit on the train split and evaluate on the test split; returns evaluate_log_prob's dict."""
    dataset = run.load_dataset(config)
    info = dataset.info
    mode = binarize_mode(config.model)
    train = dataset.train["image"]
    if mode is None:
        table = ar.fit_independent_pixels(train, info.num_levels)
    else:
        copies = NUM_TRAIN_BINARIZATIONS if mode == "stochastic" else 1
        keys = jax.random.split(jax.random.key(config.seed), copies)
        binary = jnp.concatenate([ar.binarize(k, train, info.num_bits, mode) for k in keys])
        table = ar.fit_independent_pixels(binary, 2)
    table = jnp.asarray(table, jnp.float32)

    def log_prob(table, key, batch):
        levels = batch["image"] if mode is None else ar.binarize(key, batch["image"], info.num_bits, mode)
        return ar.independent_pixels_log_prob(table, levels)

    limit = config.eval.get("num_examples") or None
    batches = gm_data.eval_batches(dataset, batch_size=config.eval.batch_size, split="test", limit=limit)
    return evaluate_log_prob(log_prob, table, loop.run_keys(config.seed)[3], batches, info.num_dims,
                             is_bound=False)


def main(argv):
    del argv
    config = flags.FLAGS.config
    try:
        result = baseline(config)
    except run.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    binarized = binarize_mode(config.model) is not None
    print(f"independent pixels on {config.data.name}{' (binarized)' if binarized else ''}: test "
          f"{result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/dim ({result['nll_nats']:.2f} nats per "
          f"example, {result['num_examples']} examples)")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "An experiment's config file[:variant].", lock_config=True)
    flags.mark_flag_as_required("config")
    app.run(main)
