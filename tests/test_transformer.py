"""The causal token transformer: shapes, causality, cached decoding, sampling, exact normalisation.

Compilation dominates on CPU, so the tests share a few jitted functions of one tiny model, called
with fixed shapes, and use parameters drawn with numpy on the shapes from ``jax.eval_shape``: at
initialisation every weight is N(0, 0.02), so the effect of one token or label would sit near
float32 rounding and tests of "X changes the output" would prove little.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gm.distributions import categorical_log_prob
from gm.nn import transformer
from gm.nn.transformer import CausalTransformer, init_cache, log_prob_tokens, sample_tokens

V, T, NUM_CLASSES = 7, 8, 3
B = 4
MODEL = CausalTransformer(vocab_size=V, seq_len=T, num_layers=2, num_heads=2, embed_dim=16,
                          dropout=0.1, num_classes=NUM_CLASSES)

_apply = jax.jit(MODEL.apply, static_argnames="train")
_init = jax.jit(lambda key, tokens, y: MODEL.init(key, tokens, y, train=False))
_sample = jax.jit(functools.partial(sample_tokens, MODEL), static_argnums=(2,))


def _key(seed):
    # A counter-based generator compiles several times faster than threefry on CPU; nothing tested
    # here depends on which generator is used.
    return jax.random.key(seed, impl="unsafe_rbg")


def _abstract_init(model, batch):
    tokens = jax.ShapeDtypeStruct((batch, model.seq_len), jnp.int32)
    y = None if model.num_classes is None else jax.ShapeDtypeStruct((batch,), jnp.int32)
    return jax.eval_shape(lambda t, y: model.init(jax.random.key(0), t, y, train=False), tokens, y)


def _random_params(model, seed=1):
    """Params shaped like ``model.init(...)["params"]``, every entry O(1) and random."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", None)
        if name == "kernel":
            value = rng.normal(size=leaf.shape) / math.sqrt(leaf.shape[0])
        elif name == "scale":
            value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        elif name == "bias":
            value = 0.1 * rng.normal(size=leaf.shape)
        else:  # embedding tables, positions, the start token
            value = rng.normal(size=leaf.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, _abstract_init(model, 1)["params"])


def _tokens(shape, seed=0, vocab=V):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def _labels(batch, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, NUM_CLASSES, (batch,)), jnp.int32)


def _logits(params, tokens, y):
    return _apply({"params": params}, tokens, y, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _teacher_forced_decode(model, params, tokens, y):
    """Logits [B, T, V] from `decode`, one position at a time, feeding the given tokens."""
    prev = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))

    def step(cache, i):
        logits, cache = model.apply({"params": params}, prev[:, i], i, cache, y, method="decode")
        return cache, logits

    _, logits = jax.lax.scan(step, init_cache(model, tokens.shape[0]), jnp.arange(model.seq_len))
    return jnp.swapaxes(logits, 0, 1)


@pytest.fixture(scope="module")
def params():
    return _random_params(MODEL)


def _max_abs(a):
    return float(jnp.max(jnp.abs(a)))


def test_shapes_dtypes_and_float32_params():
    shapes = _abstract_init(MODEL, B)
    assert set(shapes) == {"params"}
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    variables = _init(_key(0), _tokens((B, T)), _labels(B))
    assert jax.tree.structure(variables) == jax.tree.structure(shapes)
    logits = _apply(variables, _tokens((B, T)), _labels(B), train=False)
    assert logits.shape == (B, T, V) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    # A low-precision compute dtype keeps float32 params and float32 logits.
    half = CausalTransformer(vocab_size=V, seq_len=T, num_layers=2, num_heads=2, embed_dim=16,
                             dtype=jnp.bfloat16)
    half_shapes = _abstract_init(half, B)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(half_shapes))
    out = jax.eval_shape(lambda v: half.apply(v, _tokens((B, T)), train=False), half_shapes)
    assert out.shape == (B, T, V) and out.dtype == jnp.float32
    # The cache holds keys and values per layer in the compute dtype.
    cache = init_cache(half, B)
    assert len(cache) == 2 and cache[0]["k"].shape == (B, T, 2, 8)
    assert cache[0]["v"].dtype == jnp.bfloat16


def test_bad_inputs_raise(params):
    tokens, y = _tokens((B, T)), _labels(B)
    with pytest.raises(ValueError, match="needs labels"):
        MODEL.apply({"params": params}, tokens, None, train=False)
    with pytest.raises(ValueError, match=r"y must have shape"):
        MODEL.apply({"params": params}, tokens, y[:2], train=False)
    with pytest.raises(ValueError, match=r"tokens must have shape"):
        MODEL.apply({"params": params}, tokens[:, :-1], y, train=False)
    # Traced abstractly: the errors come before any computation.
    plain = CausalTransformer(vocab_size=V, seq_len=T, num_layers=1, num_heads=2, embed_dim=16)
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(lambda: plain.init(jax.random.key(0), tokens, y, train=False))
    odd = CausalTransformer(vocab_size=V, seq_len=T, num_heads=3, embed_dim=16)
    with pytest.raises(ValueError, match="divisible"):
        jax.eval_shape(lambda: odd.init(jax.random.key(0), tokens, train=False))


def test_causality_output_i_sees_exactly_the_tokens_before_i(params):
    # Two base sequences; for each position j, a copy with only token j changed, and for each i, a
    # copy with every token at positions >= i changed. All 2 * 2T = 32 sequences in one batch.
    base = _tokens((2, T), seed=3)
    shift = 1 + _tokens((2, T), seed=4, vocab=V - 1)  # in [1, V): a changed token is never equal
    changed = (base + shift) % V
    pos = jnp.arange(T)
    single = jnp.where(pos[:, None, None] == pos[None, None, :], changed[None], base[None])
    suffix = jnp.where(pos[None, None, :] >= pos[:, None, None], changed[None], base[None])
    batch = jnp.concatenate([single, suffix]).reshape(2 * T * 2, T)
    y = jnp.tile(jnp.array([0, 2], jnp.int32), 2 * T)
    out = _logits(params, batch, y).reshape(2, T, 2, T, V)  # [kind, perturbed pos, b, output i, V]
    ref = _logits(params, jnp.tile(base, (16, 1)), y)[:2]  # [b, output i, V], same compiled shape

    # diff[kind, j, i]: the largest change of output i when perturbing at (or from) position j.
    single_diff, suffix_diff = jnp.max(jnp.abs(out - ref[None, None]), axis=(2, 4))
    not_before = pos[:, None] >= pos[None, :]  # [j, i]: token j is at or after output i
    # Changing tokens at positions >= i leaves output i unchanged...
    np.testing.assert_allclose(np.asarray(jnp.where(not_before, single_diff, 0.0)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jnp.where(not_before, suffix_diff, 0.0)), 0.0, atol=1e-6)
    # ...while every earlier token does reach output i (so the check above is not vacuous).
    assert float(jnp.min(jnp.where(not_before, jnp.inf, single_diff))) > 1e-3
    assert float(jnp.min(jnp.where(not_before, jnp.inf, suffix_diff))) > 1e-3


def test_class_label_changes_every_output(params):
    tokens = _tokens((B, T), seed=5)
    a = _logits(params, tokens, jnp.zeros((B,), jnp.int32))
    b = _logits(params, tokens, jnp.full((B,), 2, jnp.int32))
    # Position 0 sees only the label; later positions see it through attention to position 0.
    assert float(jnp.min(jnp.max(jnp.abs(a - b), axis=(0, 2)))) > 1e-3
    # Different labels give different distributions, not just shifted logits.
    assert _max_abs(jax.nn.log_softmax(a) - jax.nn.log_softmax(b)) > 1e-2


def test_cached_decoding_matches_full_forward(params):
    tokens, y = _tokens((B, T), seed=6), _labels(B, seed=6)
    full = _logits(params, tokens, y)
    cached = _teacher_forced_decode(MODEL, params, tokens, y)
    assert cached.shape == (B, T, V) and cached.dtype == jnp.float32
    assert _max_abs(full) > 0.5  # logits are O(1), so the tolerance below is tight
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-5, atol=1e-5)


def _one_pass_attention(q, k, v):
    return transformer._attend(q, k, v, jnp.arange(q.shape[1]))


def _attention_grads(fn, q, k, v):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))), argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("block", [16, 25, 64])  # a remainder block, an exact split, one block
def test_blocked_attention_matches_one_pass_in_values_and_gradients(block):
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 50, 2, 4)) for i in range(3))
    blocked = functools.partial(transformer.causal_attention, block=block)
    np.testing.assert_allclose(np.asarray(jax.jit(blocked)(q, k, v)), np.asarray(_one_pass_attention(q, k, v)),
                               rtol=1e-5, atol=1e-6)
    for got, want in zip(_attention_grads(blocked, q, k, v), _attention_grads(_one_pass_attention, q, k, v)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_blocked_attention_keeps_one_blocks_scores_in_the_gradient():
    # T = 1024: one pass holds [heads, T, T] scores (8 MB each) for the backward pass; blocks of 128
    # keep one block's [heads, 128, T] at a time.
    x = jax.ShapeDtypeStruct((1, 1024, 2, 8), jnp.float32)

    def temp_bytes(fn):
        grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2)))
        return grad.lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

    full = temp_bytes(_one_pass_attention)
    blocked = temp_bytes(functools.partial(transformer.causal_attention, block=128))
    assert full > 2 * 1024 ** 2 * 4 and blocked < full / 4, (full, blocked)


def test_the_attention_block_does_not_change_the_model(params):
    tokens, y = _tokens((B, T), seed=8), _labels(B, seed=8)
    blocked = CausalTransformer(vocab_size=V, seq_len=T, num_layers=2, num_heads=2, embed_dim=16, dropout=0.1,
                                num_classes=NUM_CLASSES, attention_block=3)
    np.testing.assert_allclose(np.asarray(blocked.apply({"params": params}, tokens, y, train=False)),
                               np.asarray(_logits(params, tokens, y)), rtol=1e-5, atol=1e-5)


def test_eval_is_deterministic_and_train_applies_dropout(params):
    tokens, y = _tokens((B, T), seed=7), _labels(B, seed=7)

    def run(seed, train):
        return _apply({"params": params}, tokens, y, train=train,
                      rngs={"dropout": _key(seed)})

    np.testing.assert_array_equal(np.asarray(run(0, False)), np.asarray(run(1, False)))
    assert _max_abs(run(0, True) - run(1, True)) > 1e-3
    assert _max_abs(run(0, True) - run(0, False)) > 1e-3
    np.testing.assert_array_equal(np.asarray(run(0, True)), np.asarray(run(0, True)))


def test_sample_tokens_shape_range_and_determinism(params):
    y = _labels(B, seed=8)
    x = _sample(params, _key(0), B, y, 1.0)
    assert x.shape == (B, T) and x.dtype == jnp.int32
    assert int(jnp.min(x)) >= 0 and int(jnp.max(x)) < V
    np.testing.assert_array_equal(np.asarray(x), np.asarray(_sample(params, _key(0), B, y, 1.0)))
    assert not np.array_equal(np.asarray(x), np.asarray(_sample(params, _key(1), B, y, 1.0)))


def test_low_temperature_sampling_is_greedy_decoding(params):
    y = _labels(B, seed=9)
    sampled = _sample(params, _key(2), B, y, 1e-6)
    # Greedy decoding by repeated full forward passes: position i is the argmax given the prefix.
    greedy = jnp.zeros((B, T), jnp.int32)
    for i in range(T):
        greedy = greedy.at[:, i].set(jnp.argmax(_logits(params, greedy, y)[:, i], axis=-1))
    np.testing.assert_array_equal(np.asarray(sampled), np.asarray(greedy))
    # The sampler is not trivially greedy at temperature 1 (many draws, so a mismatch is certain).
    assert not np.array_equal(np.asarray(_sample(params, _key(2), B, y, 1.0)),
                              np.asarray(greedy))


def test_log_prob_sums_to_one_over_all_sequences():
    vocab, length = 3, 4
    model = CausalTransformer(vocab_size=vocab, seq_len=length, num_layers=2, num_heads=2,
                              embed_dim=16, num_classes=NUM_CLASSES)
    params = _random_params(model, seed=10)
    grids = np.meshgrid(*[np.arange(vocab)] * length, indexing="ij")
    every = jnp.asarray(np.stack([g.ravel() for g in grids], axis=1), jnp.int32)  # [81, 4]
    n = every.shape[0]
    log_p = jax.jit(lambda y: log_prob_tokens(model, params, jnp.tile(every, (2, 1)), y))(
        jnp.repeat(jnp.array([0, 2], jnp.int32), n))
    assert log_p.shape == (2 * n,) and log_p.dtype == jnp.float32
    assert bool(jnp.all(log_p < 0.0))
    totals = jnp.sum(jnp.exp(log_p.reshape(2, n)), axis=1)
    np.testing.assert_allclose(np.asarray(totals), 1.0, atol=1e-5)
    # The model is far from uniform, so normalisation is not an accident of the init.
    assert float(jnp.max(log_p) - jnp.min(log_p)) > 1.0


def test_adam_steps_reduce_nll():
    # A fixed tiny dataset with structure: each sequence counts up mod V from a label-dependent start.
    y = jnp.arange(B, dtype=jnp.int32) % NUM_CLASSES
    data = (y[:, None] * 2 + jnp.arange(T)[None, :]) % V
    params = _init(_key(0), data, y)["params"]
    opt = optax.adam(1e-2)

    def loss(params, key):
        logits = MODEL.apply({"params": params}, data, y, train=True, rngs={"dropout": key})
        return -jnp.mean(jnp.sum(categorical_log_prob(logits, data), axis=-1))

    # A Python loop over one jitted step compiles faster here than a scan over steps.
    @jax.jit
    def step(params, opt_state, i):
        grads = jax.grad(loss)(params, jax.random.fold_in(_key(1), i))
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def nll(params):  # evaluation: exact, no dropout, through the shared compiled forward pass
        return float(-jnp.mean(jnp.sum(categorical_log_prob(_logits(params, data, y), data), -1)))

    before = nll(params)
    opt_state = opt.init(params)
    for i in range(30):
        params, opt_state = step(params, opt_state, i)
    after = nll(params)
    print(f"NLL {before:.3f} -> {after:.3f} nats (uniform: {T * math.log(V):.3f})")
    assert abs(before - T * math.log(V)) < 0.5  # a small init predicts ~uniform
    assert after < 0.5 * before


def test_top_k_one_is_greedy_and_top_k_never_emits_an_excluded_token(params):
    y = _labels(B, seed=9)
    greedy = _sample(params, _key(2), B, y, 1e-6)
    top1 = jax.jit(functools.partial(sample_tokens, MODEL, num=B, top_k=1))(params, _key(3), y=y)
    np.testing.assert_array_equal(np.asarray(top1), np.asarray(greedy))
    # Each drawn token is among the 2 most likely given the drawn prefix (one full pass checks them all).
    x = jax.jit(functools.partial(sample_tokens, MODEL, num=B, top_k=2))(params, _key(4), y=y)
    logits = _logits(params, x, y)
    rank = jnp.sum(logits > jnp.take_along_axis(logits, x[..., None], -1), axis=-1)
    assert int(rank.max()) <= 1


def test_rotary_scores_depend_only_on_the_offset():
    q = jax.random.normal(_key(10), (1, 1, 2, 8))
    k = jax.random.normal(_key(11), (1, 1, 2, 8))
    rot = transformer.rotary
    score = lambda p, s: float(jnp.sum(rot(q, jnp.array([p])) * rot(k, jnp.array([s]))))
    assert score(5, 2) == pytest.approx(score(105, 102), abs=1e-4) == pytest.approx(score(3, 0), abs=1e-4)
    assert abs(score(5, 2) - score(5, 4)) > 1e-3  # not position-blind
    np.testing.assert_allclose(transformer.rotary(q, jnp.array([0])), q, atol=1e-7)  # position 0: identity
    with pytest.raises(ValueError, match="even head_dim"):
        transformer.rotary(jnp.zeros((1, 1, 1, 3)), jnp.array([0]))


def test_rotary_positions_and_tied_embeddings_keep_causality_and_the_cache():
    model = CausalTransformer(vocab_size=V, seq_len=T, num_layers=2, num_heads=2, embed_dim=16,
                              positions="rotary", tie_embeddings=True)
    params = _random_params(model)
    assert "pos_embed" not in params and "head" not in params  # no position or output parameters
    tokens = _tokens((B, T), seed=12)
    full = model.apply({"params": params}, tokens, train=False)
    # The output layer is the token embedding, transposed: zeroing token 6's row (never an input here)
    # zeroes its logit everywhere and nothing else.
    zeros = jnp.zeros((B, T), jnp.int32)
    table = params["token_embed"]["embedding"]
    cut = dict(params, token_embed={"embedding": table.at[6].set(0.0)})
    a = model.apply({"params": params}, zeros, train=False)
    b = model.apply({"params": cut}, zeros, train=False)
    np.testing.assert_array_equal(np.asarray(b[..., 6]), 0.0)
    np.testing.assert_allclose(np.asarray(b[..., :6]), np.asarray(a[..., :6]), rtol=1e-6, atol=1e-6)
    assert _max_abs(a[..., 6]) > 1e-3
    cached = _teacher_forced_decode(model, params, tokens, None)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=1e-5, atol=1e-5)
    changed = tokens.at[:, 5:].set((tokens[:, 5:] + 1) % V)
    after = model.apply({"params": params}, changed, train=False)
    np.testing.assert_array_equal(np.asarray(after[:, :6]), np.asarray(full[:, :6]))
    assert _max_abs(after[:, 6:] - full[:, 6:]) > 1e-4
    # Rotary attention sees positions: the same token twice gives different outputs at different places.
    same = model.apply({"params": params}, jnp.full((1, T), 3, jnp.int32), train=False)[0]
    assert _max_abs(same[2] - same[5]) > 1e-4
