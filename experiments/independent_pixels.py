"""The independent-pixel baseline, p(x) = prod_d p_d(x_d), on the data of another experiment's config.

    python -m experiments.independent_pixels --config=experiments/pixelcnn_cifar.py:smoke   # 4-bit digits
    python -m experiments.independent_pixels --config=experiments/nade_mnist.py:smoke       # binarized digits
    python -m experiments.independent_pixels --config=experiments/vae_mnist.py:smoke        # the same
    python -m experiments.independent_pixels --config=experiments/wavenet_sc09.py:smoke     # audio: notes
    python -m experiments.independent_pixels --config=experiments/gpt_text.py:smoke         # text: pydoc

One categorical per sub-pixel, fitted by counting on the training split (one pseudo-count), then scored
on the test split through the same harness, key and batches as `--mode=eval` of that experiment; for
a NADE config (or a VAE with a Bernoulli decoder) the test images are binarized with the same evaluation key, so the two numbers are on
the same binary test set. For audio (a WaveNet config) the baseline is the unigram: one histogram of
the model's values (its 256 mu-law levels, or 16-bit PCM) over every training sample, each sample of a
clip independent, in bits per sample. For text (a GPT config) there are two: the unigram and the bigram of
the training stream's tokens (`gm.gpt.fit_ngram`), in bits per byte of the same test windows. Prints the
test numbers and writes nothing.
"""
import jax
import jax.numpy as jnp

from gm import autoregressive as ar
from gm import data as gm_data
from gm import families
from gm.metrics.likelihood import evaluate_log_prob
from gm.train import loop, run

# Stochastically binarized training images are counted over this many independent binarizations.
NUM_TRAIN_BINARIZATIONS = 10


def binarize_mode(setup):
    """The binarization the experiment's model applies to its data, or None for integer levels."""
    model = setup.settings.model
    if getattr(model, "name", None) == "nade":
        return model.nade.binarize
    if getattr(model, "likelihood", None) == "bernoulli":  # a VAE with a Bernoulli decoder
        return model.binarize
    return None


def _audio_baseline(setup, dataset):
    """The unigram of the WaveNet config's values: (log_prob(table, key, batch) -> [B] nats, table)."""
    from gm import wavenet

    quantizer = wavenet.Quantizer(setup.settings.model)
    table = jnp.asarray(wavenet.fit_unigram(dataset.train["audio"], quantizer), jnp.float32)
    return (lambda table, key, batch: wavenet.unigram_log_prob(table, batch["audio"], quantizer)), table


def _text_baselines(dataset, key, batches):
    """{'unigram': result, 'bigram': result} of evaluate_log_prob in bits per byte, as the GPT reports."""
    from gm import gpt

    info = dataset.info
    stream = gpt.stream_of(dataset.train["tokens"])
    unigram = jnp.asarray(gpt.fit_ngram(stream, info.vocab_size, 1), jnp.float32)
    bigram = jnp.asarray(gpt.fit_ngram(stream, info.vocab_size, 2), jnp.float32)
    per_window = info.shape[0] * info.bytes_per_token
    tables = {"unigram": (unigram, None), "bigram": (unigram, bigram)}
    log_prob = lambda tables, key, batch: gpt.ngram_log_prob(*tables, batch["tokens"])
    return {name: evaluate_log_prob(log_prob, t, key, batches(), per_window, is_bound=False)
            for name, t in tables.items()}


def baseline(config):
    """Fit on the train split and evaluate on the test split; returns evaluate_log_prob's dict and the
    binarization (None for integer levels, 'audio' for clips), or for text {n-gram: dict} and 'text'."""
    setup = families.parse(config)
    dataset = run.load_dataset(setup.run)
    info = dataset.info
    e = setup.run.eval
    batches = lambda: gm_data.eval_batches(dataset, batch_size=e.batch_size, split="test",
                                           limit=e.num_examples or None)
    key = loop.run_keys(setup.run.seed)[3]
    if info.is_text:
        return _text_baselines(dataset, key, batches), "text"
    if info.is_audio:
        log_prob, table = _audio_baseline(setup, dataset)
        return evaluate_log_prob(log_prob, table, key, batches(), info.num_dims, is_bound=False), "audio"
    mode = binarize_mode(setup)
    train = dataset.train["image"]
    if mode is None:
        table = ar.fit_independent_pixels(train, info.num_levels)
    else:
        copies = NUM_TRAIN_BINARIZATIONS if mode == "stochastic" else 1
        keys = jax.random.split(jax.random.key(setup.run.seed), copies)
        binary = jnp.concatenate([ar.binarize(k, train, info.num_bits, mode) for k in keys])
        table = ar.fit_independent_pixels(binary, 2)
    table = jnp.asarray(table, jnp.float32)

    def log_prob(table, key, batch):
        levels = batch["image"] if mode is None else ar.binarize(key, batch["image"], info.num_bits, mode)
        return ar.independent_pixels_log_prob(table, levels)

    result = evaluate_log_prob(log_prob, table, key, batches(), info.num_dims, is_bound=False)
    return result, mode


def report(config, workdir=None, mode="eval"):
    """Print the baseline's test bits/dim (the command line's runner; it writes nothing)."""
    result, binarization = baseline(config)
    if binarization == "text":
        for name, r in result.items():
            print(f"{name} on {config.data.name} ({config.data.tokenizer}): test {r['bpd']:.4f} ± "
                  f"{r['bpd_stderr']:.4f} bits/byte ({r['nll_nats']:.2f} nats per window, {r['num_examples']} windows)")
        return
    name, per = (("independent samples (unigram)", "sample") if binarization == "audio" else
                 ("independent pixels" + (" (binarized)" if binarization else ""), "dim"))
    print(f"{name} on {config.data.name}: test {result['bpd']:.4f} ± {result['bpd_stderr']:.4f} bits/{per} "
          f"({result['nll_nats']:.2f} nats per example, {result['num_examples']} examples)")


if __name__ == "__main__":
    run.main(None, runner=report)
