"""The GPT family: bits per byte through the harness, the n-gram baselines, prompts and filters in the
compiled sampler, and the experiment through its commands."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CHILD_ENV
from experiments import gpt_text
from gm import data as gm_data
from gm import families, gpt
from gm.nn import transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def smoke():
    config = gpt_text.get_config("smoke")
    config.data.context = 32
    dataset = gm_data.load("pydoc", context=32)
    method = families.make(config, dataset.info)
    batch = {k: v[:8] for k, v in dataset.test.items()}
    params = jax.jit(method.init)(jax.random.key(0), batch)
    return config, dataset, method, batch, params


def test_log_prob_is_exact_and_evaluations_report_bits_per_byte(smoke):
    config, dataset, method, batch, params = smoke
    info = dataset.info
    count, per = method.log_prob_per
    assert per == "byte" and count == pytest.approx(32 * info.bytes_per_token)
    log_p = np.asarray(jax.jit(method.log_prob)(params, jax.random.key(1), batch))
    # The window's log-likelihood is the sum of the next-token log-softmax over its positions.
    net = gpt.network(families.parse(config).settings.model, info.vocab_size, 32)
    logits = net.apply({"params": params}, jnp.asarray(batch["tokens"]), train=False)
    expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), batch["tokens"][..., None], -1).sum((1, 2))
    np.testing.assert_allclose(log_p, expected, rtol=1e-5)
    # The loss is nats per token; without dropout (the smoke model has none) it is the same number.
    loss, metrics = jax.jit(method.loss)(params, jax.random.key(2), batch)
    np.testing.assert_allclose(float(loss), -log_p.mean() / 32, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["bits_per_token"]), float(loss) / math.log(2), rtol=1e-6)


def test_bigram_is_a_normalised_count_and_scores_windows_like_a_loop():
    stream = np.array([0, 1, 1, 2, 0, 1, 2, 2, 1, 0])
    unigram, bigram = gpt.fit_ngram(stream, 3, 1), gpt.fit_ngram(stream, 3, 2)
    np.testing.assert_allclose(np.exp(unigram).sum(), 1.0)
    np.testing.assert_allclose(np.exp(bigram).sum(-1), 1.0)
    # After token 1 the stream has 1, 2, 2, 0 -> add-one counts (2, 2, 3) / 7.
    np.testing.assert_allclose(np.exp(bigram[1]), [2 / 7, 2 / 7, 3 / 7])
    windows = np.array([[1, 2, 2, 0], [0, 0, 1, 2]])
    expected = [unigram[w[0]] + sum(bigram[a, b] for a, b in zip(w[:-1], w[1:])) for w in windows]
    np.testing.assert_allclose(gpt.ngram_log_prob(unigram, bigram, windows), expected, rtol=1e-6)
    np.testing.assert_allclose(gpt.ngram_log_prob(unigram, None, windows), unigram[windows].sum(-1), rtol=1e-6)
    # The stream is recovered from its stride-1 windows.
    np.testing.assert_array_equal(gpt.stream_of(np.lib.stride_tricks.sliding_window_view(stream, 4)), stream)


def test_samples_continue_the_prompt_and_obey_the_filters(smoke):
    config, dataset, _, batch, params = smoke
    tokenizer = dataset.info.tokenizer
    config.sampling.update(prompt="The class", top_k=3)
    method = families.make(config, dataset.info)
    tokens = np.asarray(jax.jit(method.sample, static_argnums=2)(params, jax.random.key(3), 4))
    assert tokens.shape == (4, 32) and tokens.dtype == np.int32
    assert all(tokenizer.decode(row).startswith("The class") for row in tokens)
    # Every drawn token is among the 3 most likely given what came before.
    net = gpt.network(families.parse(config).settings.model, dataset.info.vocab_size, 32)
    logits = np.asarray(net.apply({"params": params}, jnp.asarray(tokens), train=False))
    rank = (logits > np.take_along_axis(logits, tokens[..., None], -1)).sum(-1)
    assert rank[:, len("The class"):].max() < 3
    with pytest.raises(ValueError, match="config.sampling.prompt"):
        config.sampling.prompt = "x" * 40
        families.make(config, dataset.info)


def test_allowed_restricts_the_drawn_tokens_and_prefix_sits_at_the_start():
    model = transformer.CausalTransformer(vocab_size=12, seq_len=6, num_layers=1, num_heads=2, embed_dim=8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32), train=False)["params"]
    prefix = jnp.array([[1, 2], [3, 4], [5, 6]])
    x = np.asarray(transformer.sample_tokens(model, params, jax.random.key(1), 3, prefix=prefix, allowed=(8, 12)))
    np.testing.assert_array_equal(x[:, :2], prefix)
    assert (x[:, 2:] >= 8).all() and (x[:, 2:] < 12).all()


def test_gpt_refuses_images_and_images_refuse_text():
    with pytest.raises(ValueError, match="GPT does not model image"):
        families.check_data(families.get("gpt"), gm_data.load("digits").info)
    with pytest.raises(ValueError, match="does not model text"):
        families.check_data(families.get("pixelcnn"), gm_data.load("pydoc", context=32).info)


def _gpt(workdir, *args):
    cmd = [sys.executable, "-m", "experiments.gpt_text", f"--workdir={workdir}",
           "--config=experiments/gpt_text.py:smoke",
           "--config.data.context=32", "--config.train.log_every=2", "--config.train.checkpoint_every=2",
           "--config.train.sample_every=4", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_experiment_trains_resumes_evaluates_and_samples_text(tmp_path):
    _gpt(tmp_path, "--config.train.num_steps=4", "--config.train.micro_batches=2")
    assert "Restored step 4" in _gpt(tmp_path, "--config.train.num_steps=6", "--config.train.micro_batches=2").stderr
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6] and all(np.isfinite(r["loss"]) for r in records)
    assert open(tmp_path / "samples" / "step_00000004.txt").read().startswith("=== sample 0 ===\n")
    proc = _gpt(tmp_path, "--config.train.num_steps=6", "--mode=eval", "--config.eval.num_examples=40",
                "--config.eval.batch_size=40")
    result = json.load(open(tmp_path / "eval_step_6.json"))
    # Exact; after 6 steps still near a uniform model over 256 bytes (8 bits per byte).
    assert result["kind"] == "exact" and result["per"] == "byte" and 5 < result["bpd"] < 8.5
    assert "bits/byte" in proc.stdout
    _gpt(tmp_path, "--config.train.num_steps=6", "--mode=sample", "--config.sample.num=3",
         "--config.sampling.prompt=Hello", "--config.sampling.top_p=0.9")
    text = open(tmp_path / "samples" / "samples_step_6_n3.txt").read()
    assert text.count("=== sample") == 3 and text.count("\nHello") == 3


def test_ngram_baselines_command():
    proc = subprocess.run([sys.executable, "-m", "experiments.independent_pixels",
                           "--config=experiments/gpt_text.py:smoke", "--config.eval.num_examples=100"],
                          cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bits = {line.split()[0]: float(line.split("test ")[1].split()[0]) for line in proc.stdout.strip().splitlines()}
    # Context helps: the bigram beats the unigram, which beats a uniform byte (8 bits).
    assert bits["bigram"] < bits["unigram"] < 8 and "100 windows" in proc.stdout
