"""DALL-E on the digits: the joint transformer's causality across the text / image boundary, its cache,
the modality softmax, captions, re-ranking, row-labelled grids and the experiment through its commands."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CHILD_ENV
from experiments import dalle_digits
from gm import captions, dalle, families
from gm import data as gm_data
from gm.nn.text_image import TextImageTransformer
from gm.nn.transformer import init_cache
from gm.train.logging import captioned_grid, save_captioned_grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L, GRID, K = 5, (2, 3), 6
T = L + GRID[0] * GRID[1]
NET = TextImageTransformer(vocab_size=captions.TEXT_VOCAB + K, seq_len=T, num_layers=2, num_heads=2, embed_dim=16,
                           text_len=L, image_grid=GRID)


@pytest.fixture(scope="module")
def params():
    # Unit-variance weights (not the N(0, 0.02) of initialisation), so every dependence is far above rounding.
    shapes = jax.eval_shape(lambda: NET.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32), train=False))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(max(s.shape[-1], 1)), s.dtype),
                        shapes)["params"]


def _sequences(n, seed=0):
    rng = np.random.default_rng(seed)
    text = rng.integers(0, captions.TEXT_VOCAB, (n, L))
    codes = rng.integers(0, K, (n,) + GRID)
    return np.asarray(dalle.sequence(text, codes))


def _logits(params, seq):
    return np.asarray(jax.jit(lambda p, s: NET.apply({"params": p}, s, train=False))(params, jnp.asarray(seq)))


def test_text_never_sees_image_codes_and_code_i_never_sees_codes_from_i_on(params):
    seq = _sequences(2)
    base = _logits(params, seq)
    for i in range(GRID[0] * GRID[1]):
        changed = seq.copy()
        changed[:, L + i:] = captions.TEXT_VOCAB + (changed[:, L + i:] - captions.TEXT_VOCAB + 1) % K
        out = _logits(params, changed)
        # Position L + i predicts code i: it and everything before it are unchanged ...
        np.testing.assert_array_equal(out[:, :L + i + 1], base[:, :L + i + 1])
        # ... and the next position does see code i.
        if L + i + 1 < T:
            assert np.abs(out[:, L + i + 1] - base[:, L + i + 1]).max() > 1e-3
    # Every code sees the whole caption: changing its first token moves every image position.
    changed = seq.copy()
    changed[:, 0] = (changed[:, 0] + 1) % captions.TEXT_VOCAB
    assert (np.abs(_logits(params, changed)[:, L:] - base[:, L:]).max(-1) > 1e-3).all()


def test_cached_decoding_matches_the_full_pass_across_the_boundary(params):
    seq = jnp.asarray(_sequences(3, seed=1))
    full = _logits(params, seq)
    decode = jax.jit(lambda p, prev, i, cache: NET.apply({"params": p}, prev, i, cache, method="decode"))
    cache, prev = init_cache(NET, 3), jnp.zeros((3,), jnp.int32)
    for i in range(T):
        logits, cache = decode(params, prev, i, cache)
        np.testing.assert_allclose(np.asarray(logits), full[:, i], rtol=2e-4, atol=2e-5)
        prev = seq[:, i]


def test_modality_positions_are_separate_tables(params):
    positions = jnp.arange(T)
    emb = NET.apply({"params": params}, positions, method=TextImageTransformer._position_embedding)
    np.testing.assert_allclose(emb[:L], params["text_pos"])
    # Code (r, c) gets row r's plus column c's embedding.
    np.testing.assert_allclose(emb[L + 4], params["row_pos"][1] + params["col_pos"][1], rtol=1e-6)


def test_each_position_normalises_over_its_own_modality():
    logits = jax.random.normal(jax.random.key(0), (2, T, captions.TEXT_VOCAB + K))
    lp = np.asarray(dalle.modality_log_probs(logits, L))
    np.testing.assert_allclose(np.exp(lp[:, :L, :captions.TEXT_VOCAB]).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.exp(lp[:, L:, captions.TEXT_VOCAB:]).sum(-1), 1.0, rtol=1e-5)
    assert np.isneginf(lp[:, :L, captions.TEXT_VOCAB:]).all() and np.isneginf(lp[:, L:, :captions.TEXT_VOCAB]).all()


def test_captions_round_trip_pad_and_refuse_what_does_not_fit():
    table = captions.caption_table("digits", 24)
    assert table.shape == (10, len(captions.DIGIT_TEMPLATES), 24)
    assert captions.decode(table[7, 0]) == "a handwritten seven" and captions.decode(table[7, 1]) == "the digit 7"
    assert (table[7, 0, len("a handwritten seven"):] == captions.PAD).all()
    with pytest.raises(ValueError, match="longer than config.prior.text_len=8"):
        captions.encode(["a handwritten seven"], 8)
    with pytest.raises(ValueError, match="config.data.name='ring8' has no class names"):
        captions.class_names("ring8")


def test_reranking_keeps_each_samples_best_candidate():
    seq = jnp.arange(6)[:, None] * jnp.ones((1, 4), jnp.int32)  # rows 0..5: 3 candidates of 2 samples
    scores = jnp.array([0.0, 5.0, 2.0, 1.0, 1.0, 9.0])  # sample 0: rows 0, 2, 4; sample 1: rows 1, 3, 5
    np.testing.assert_array_equal(dalle.best_candidates(seq, scores, 3)[:, 0], [2, 5])


def test_the_method_weights_text_and_image_and_samples_per_prompt():
    config = dalle_digits.get_config("smoke")
    dataset = gm_data.load("digits")
    setup = families.parse(config)
    vq_method = families.make(config, dataset.info)
    batch = gm_data.train_batch(dataset, step=0, batch_size=8, seed=0)
    vq_params = jax.jit(vq_method.init)(jax.random.key(0), batch)
    method = setup.stage("prior").make(setup.settings, dataset.info, vq_params)
    params = jax.jit(method.init)(jax.random.key(1), batch)
    loss, metrics = jax.jit(method.loss)(params, jax.random.key(2), batch)
    w = setup.settings.prior.text_loss_weight
    expected = w * metrics["text_nats"] + (1 - w) * metrics["image_bits_per_code"] * np.log(2)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    assert method.log_prob_per == (16, "code")
    images = np.asarray(jax.jit(method.sample, static_argnums=2)(params, jax.random.key(3), 12))
    assert images.shape == (12, 8, 8, 1) and images.dtype == np.uint8 and images.max() <= 15
    prompts = method.sample_prompts(12)
    assert prompts[:2] == ("the digit 0", "the digit 1") and prompts[10] == "the digit 0"
    np.testing.assert_array_equal(method.sample_labels(12), np.arange(12) % 10)
    config.prior.prompts = ("seven, written small",)
    free = families.parse(config)
    method = free.stage("prior").make(free.settings, dataset.info, vq_params)
    assert method.sample_labels is None and method.sample_prompts(2) == ("seven, written small",) * 2


def test_captioned_grid_has_a_row_per_prompt(tmp_path):
    images = np.zeros((6, 8, 8, 1), np.uint8)
    prompts = ["a", "bb", "a", "bb", "a", "ccc"]
    grid = captioned_grid(images, prompts, min_cell=8)
    assert grid.shape[0] == 3 * (8 + 2) and grid.shape[2] == 3  # rows of one padded cell each
    save_captioned_grid(str(tmp_path / "g.png"), images, prompts)
    assert open(tmp_path / "g.txt").read().splitlines() == prompts


def _dalle(workdir, *args):
    cmd = [sys.executable, "-m", "experiments.dalle_digits", f"--workdir={workdir}",
           "--config=experiments/dalle_digits.py:smoke", "--config.train.num_steps=4", "--config.train.log_every=2",
           "--config.train.checkpoint_every=2", "--config.train.sample_every=4", "--config.prior_train.log_every=2",
           "--config.prior_train.checkpoint_every=2", "--config.prior_train.sample_every=4", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_experiment_trains_both_stages_resumes_evaluates_and_samples_for_prompts(tmp_path):
    _dalle(tmp_path, "--config.prior_train.num_steps=4")
    assert "Restored step 4" in _dalle(tmp_path, "--config.prior_train.num_steps=6", "--stage=prior").stderr
    assert os.path.exists(tmp_path / "prior" / "samples" / "step_00000004.png")
    assert open(tmp_path / "prior" / "samples" / "step_00000004.txt").read().startswith("the digit 0\nthe digit 1\n")
    _dalle(tmp_path, "--config.prior_train.num_steps=6", "--mode=eval", "--stage=prior",
           "--config.prior.candidates=2", "--config.eval.num_samples=40", "--config.eval.sample_batch_size=40")
    quality = json.load(open(tmp_path / "prior" / "eval_step_6_fid.json"))
    assert quality["num_samples"] == 40 and 0 <= quality["class_accuracy_digits"] <= 1 and quality["fid_digits"] > 0
    assert json.load(open(tmp_path / "prior" / "eval_step_6.json"))["per"] == "code"
    _dalle(tmp_path, "--config.prior_train.num_steps=6", "--mode=sample", "--config.sample.num=4",
           "--config.prior.prompts=('a handwritten three', 'seven, written small')")
    samples = tmp_path / "prior" / "samples"
    assert np.load(samples / "samples_step_6_n4.npz")["levels"].shape == (4, 8, 8, 1)
    assert open(samples / "samples_step_6_n4_prompts.txt").read().splitlines() == [
        "a handwritten three", "seven, written small"] * 2
    assert os.path.exists(samples / "samples_step_6_n4.png")


def test_on_captioned_images_the_prior_reads_the_datasets_own_captions(coco_captions):
    config = dalle_digits.get_config("smoke")
    config.data.name = "coco_captions"
    config.model.channels = (16, 16)  # an 8x8 grid of the 32x32 images
    config.prior.text_len = 48  # the default prompts are COCO-length captions
    setup = families.parse(config)
    info = coco_captions.info
    batch = {k: v[:4] for k, v in coco_captions.train.items()}
    vq_params = jax.jit(setup.stage("vqvae").make(setup.settings, info, None).init)(jax.random.key(0), batch)
    method = setup.stage("prior").make(setup.settings, info, vq_params)
    params = jax.jit(method.init)(jax.random.key(1), batch)
    log_prob = jax.jit(method.log_prob)
    before = np.asarray(log_prob(params, jax.random.key(2), batch))
    assert before.shape == (4,) and np.isfinite(before).all() and method.log_prob_per == (64, "code")
    # Every caption of the batch replaced: the images' likelihood given their captions moves.
    other = dict(batch, captions=np.where(batch["captions"] == captions.PAD, captions.PAD, 97).astype(np.int16))
    assert np.abs(np.asarray(log_prob(params, jax.random.key(2), other)) - before).max() > 1e-4
    images = np.asarray(jax.jit(method.sample, static_argnums=2)(params, jax.random.key(3), 3))
    assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
    assert method.sample_prompts(3) == captions.CAPTION_PROMPTS[:3] and method.sample_labels is None
