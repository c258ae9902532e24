"""Tests for r1jax.model: config presets, the decoder, KV cache, packing, logical axes, heads."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.model import config as config_lib
from r1jax.model import heads
from r1jax.model import transformer as tf

CFG = config_lib.ModelConfig(
    vocab_size=128,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    d_ff=64,
    qkv_bias=True,
)
B, T, S = 2, 16, 12  # every full forward here is [B, T] and every cache [B, S]: few compiles


@functools.cache
def _params(cfg=CFG, seed=0):
    """Random params from numpy (init_params costs a compile): norms near 1, biases nonzero."""
    shapes = jax.eval_shape(functools.partial(tf.init_params, cfg), jax.random.key(0))
    rng = np.random.RandomState(seed)

    def draw(path, s):
        offset = 1.0 if "norm" in jax.tree_util.keystr(path) else 0.0
        return jnp.asarray(rng.normal(offset, 0.1, s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _tokens(shape, seed=0, vocab=CFG.vocab_size):
    return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, shape), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _forward_full(cfg, params, tokens, positions, segment_ids):
    return tf.forward(cfg, params, tokens, positions_BxT=positions, segment_ids_BxT=segment_ids)


def _forward(rows, cfg=CFG, params=None, segment_ids=None, positions=None):
    """Logits of up to B rows of up to T tokens, right-padded into one [B, T] batch."""
    tokens = np.zeros((B, T), np.int32)
    seg = np.zeros((B, T), np.int32) if segment_ids is None else np.asarray(segment_ids)
    pos = np.tile(np.arange(T), (B, 1)) if positions is None else np.asarray(positions)
    for b, row in enumerate(rows):
        tokens[b, : len(row)] = row
        if segment_ids is None:
            seg[b, : len(row)] = 1
    params = _params(cfg) if params is None else params
    return _forward_full(cfg, params, jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg))


# Two shapes are used in this file (T = 1 decode steps and a T = 5 prefill): more is a retrace.
@functools.partial(jax.jit, static_argnums=0)
@chex.assert_max_traces(n=2)
def _forward_cached(cfg, params, tokens, positions, cache, cache_index, kv_mask):
    return tf.forward_cached(
        cfg, params, tokens, positions, cache, cache_index=cache_index, kv_mask_BxS=kv_mask
    )


# --- config -----------------------------------------------------------------------------------

# Published parameter counts of the Hugging Face checkpoints.
PUBLISHED_PARAMS = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "llama3.2-1b": 1_235_814_400,
    "llama3.1-8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_param_counts_match_published(name):
    assert config_lib.num_params(config_lib.get_preset(name)) == PUBLISHED_PARAMS[name]


def test_num_params_matches_init_and_config_is_hashable():
    qwen3 = dataclasses.replace(CFG, qkv_bias=False, qk_norm=True, family="qwen3")
    for cfg in (
        config_lib.get_preset("tiny"),
        CFG,
        dataclasses.replace(CFG, qkv_bias=False),
        qwen3,
    ):
        params = jax.eval_shape(functools.partial(tf.init_params, cfg), jax.random.key(0))
        assert config_lib.num_params(cfg) == sum(x.size for x in jax.tree.leaves(params))
    scaled = config_lib.get_preset("llama3.1-8b")
    assert hash(scaled) == hash(dataclasses.replace(scaled))
    assert scaled.rope_scaling.factor == 8.0 and not scaled.tie_embeddings


def test_unknown_preset_lists_known_ones():
    with pytest.raises(KeyError, match="qwen2.5-1.5b"):
        config_lib.get_preset("gpt5")


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="n_kv_heads"):
        dataclasses.replace(CFG, n_kv_heads=3)
    with pytest.raises(ValueError, match="remat"):
        dataclasses.replace(CFG, remat="some")
    # q/k norms are Qwen3's: any other family would export a different computation.
    with pytest.raises(ValueError, match="qk_norm=True with family='qwen2'"):
        dataclasses.replace(CFG, qk_norm=True)
    with pytest.raises(ValueError, match="qk_norm=False with family='qwen3'"):
        dataclasses.replace(CFG, family="qwen3")
    # Token ids are int32: a larger vocabulary was a JAX OverflowError traceback at init.
    with pytest.raises(ValueError, match=r"vocab_size must be below 2\*\*31, got 8589934592"):
        dataclasses.replace(CFG, vocab_size=2**33)
    # d_ff = 0 was an MLP of empty matrices: a model that trained without its feed-forward.
    with pytest.raises(ValueError, match="d_ff must be positive, got 0"):
        dataclasses.replace(CFG, d_ff=0)


def test_flops_per_token_formula():
    cfg, t = CFG, 16
    layer = 2 * 32 * 4 * 8 + 2 * 32 * 2 * 8 + (4 + 2 * 2) * 8 + 3 * 32 * 64 + 2 * 32
    expected = 6 * (2 * layer + 32 * 128) + 12 * 2 * 4 * 8 * t
    assert config_lib.flops_per_token(cfg, t) == expected
    assert config_lib.forward_flops_per_token(cfg, t) == pytest.approx(expected / 3)


@pytest.mark.parametrize("tie", [False, True])
def test_decode_bytes_per_step_counts_weights_once_and_the_shared_prompt_once(tie):
    cfg = dataclasses.replace(CFG, tie_embeddings=tie)
    params = jax.eval_shape(functools.partial(tf.init_params, cfg), jax.random.key(0))
    # Every weight once, except the embedding table when untied: of it only the rows' own rows.
    weights = sum(x.size for x in jax.tree.leaves(params))
    if not tie:
        weights -= cfg.vocab_size * cfg.d_model
    cache = jax.eval_shape(lambda: tf.init_cache(cfg, 1, 1))
    per_slot = cache.k.size + cache.v.size  # one row, one slot, every layer
    rows, prompts, p, t = 12, 3, 20, 5.5  # 4 samples of each of 3 prompts
    want = 4 * (weights + rows * cfg.d_model) + 4 * per_slot * (prompts * p + rows * t)
    got = config_lib.decode_bytes_per_step(cfg, rows=rows, prompts=prompts, prompt_len=p, new_len=t)
    assert got == want
    bf16 = config_lib.decode_bytes_per_step(
        cfg, rows=rows, prompts=prompts, prompt_len=p, new_len=t, param_bytes=2, cache_bytes=2
    )
    assert bf16 == want / 2


# --- params and logical axes ------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_every_param_has_logical_axes_of_matching_rank(tie):
    cfg = dataclasses.replace(CFG, tie_embeddings=tie)
    params = jax.eval_shape(functools.partial(tf.init_params, cfg), jax.random.key(0))
    axes = tf.logical_axes(cfg)
    is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
    assert jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(params)
    leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, x), spec in zip(leaves_with_path, jax.tree.leaves(axes, is_leaf=is_spec)):
        assert len(spec) == x.ndim, path
        assert all(name is not None for name in spec), path
    assert axes["layers"]["attn"]["q_kernel"] == jax.sharding.PartitionSpec(
        "layers", "embed", "heads", "head_dim"
    )
    assert ("lm_head" in params) == (not tie)


# --- forward: causality, packing, dtypes, remat -----------------------------------------------


def test_init_params_statistics_and_determinism():
    params = tf.init_params(CFG, jax.random.key(0))
    again = tf.init_params(CFG, jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, params, again)
    np.testing.assert_array_equal(params["final_norm"]["scale"], 1.0)
    np.testing.assert_array_equal(params["layers"]["attn"]["q_bias"], 0.0)
    q = np.asarray(params["layers"]["attn"]["q_kernel"])
    assert q.shape == (2, 32, 4, 8) and 0.015 < q.std() < 0.025
    assert not np.allclose(q[0], q[1])  # scanned layers get different keys
    bf16 = jax.eval_shape(
        functools.partial(tf.init_params, dataclasses.replace(CFG, param_dtype="bfloat16")),
        jax.random.key(0),
    )
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))


def test_causality():
    tokens = np.asarray(_tokens((B, T)))
    changed = tokens.copy()
    changed[:, 10] = (changed[:, 10] + 1) % CFG.vocab_size
    a, b = _forward(tokens), _forward(changed)
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-3


def test_packed_segments_equal_separate_sequences():
    first, second = np.asarray(_tokens((7,), seed=1)), np.asarray(_tokens((5,), seed=2))
    packed = np.concatenate([first, second, np.zeros(4, np.int32)])
    segment_ids = [[1] * 7 + [2] * 5 + [0] * 4, [1] * 7 + [0] * 9]
    positions = [list(range(7)) + list(range(5)) + [0] * 4, list(range(T))]
    out = _forward([packed, first], segment_ids=segment_ids, positions=positions)
    alone = _forward([first, second])
    np.testing.assert_allclose(out[0, :7], alone[0, :7], atol=1e-5)
    np.testing.assert_allclose(out[0, 7:12], alone[1, :5], atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()


def test_bfloat16_compute_gives_float32_logits_close_to_float32():
    tokens = _tokens((B, T))
    out16 = _forward(tokens, cfg=dataclasses.replace(CFG, dtype="bfloat16"), params=_params())
    out32 = _forward(tokens)
    assert out16.dtype == jnp.float32
    assert 0 < np.abs(out16 - out32).max() < 0.05 * np.abs(out32).max()


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_logits_and_gradients(remat):
    params, tokens = _params(), _tokens((B, 8))
    loss = lambda cfg, p: jnp.mean(tf.forward(cfg, p, tokens) ** 2)
    ref_loss, ref_grad = _reference_value_and_grad()
    cfg = dataclasses.replace(CFG, remat=remat)
    val, grad = jax.jit(jax.value_and_grad(functools.partial(loss, cfg)))(params)
    np.testing.assert_allclose(val, ref_loss, rtol=1e-5)
    chex.assert_trees_all_close(grad, ref_grad, atol=1e-6)


@pytest.mark.parametrize("n_layers,unroll", [(2, 1), (3, 1), (3, 2)])
def test_layer_unroll_keeps_logits_and_gradients(n_layers, unroll):
    """Rolled, partly unrolled (with a remainder) and straight-line layer loops agree."""
    tokens = _tokens((B, 8))
    base = dataclasses.replace(CFG, n_layers=n_layers)
    params = _params(base)
    loss = lambda cfg, p: jnp.mean(tf.forward(cfg, p, tokens) ** 2)
    results = {}
    for k in (n_layers, unroll):  # straight-line reference first
        cfg = dataclasses.replace(base, unroll_layers=k)
        assert cfg.layer_unroll == k
        results[k] = jax.jit(jax.value_and_grad(functools.partial(loss, cfg)))(params)
    np.testing.assert_allclose(results[unroll][0], results[n_layers][0], rtol=1e-6)
    chex.assert_trees_all_close(results[unroll][1], results[n_layers][1], atol=1e-6)


def test_layer_unroll_auto_and_bounds():
    assert CFG.unroll_layers == 0 and CFG.layer_unroll == CFG.n_layers
    deep = dataclasses.replace(CFG, n_layers=config_lib.AUTO_UNROLL_MAX_LAYERS + 1)
    assert deep.layer_unroll == 1
    assert dataclasses.replace(deep, unroll_layers=100).layer_unroll == deep.n_layers
    with pytest.raises(ValueError, match="unroll_layers"):
        dataclasses.replace(CFG, unroll_layers=-1)


@pytest.mark.parametrize("chunk", [1, 5, 8])
def test_attention_in_chunks_keeps_logits_and_gradients(chunk):
    """Blocks of queries (5 does not divide T = 8: the last block is padded) give the logits
    and gradients of whole-sequence attention, also over packed segments."""
    params, tokens = _params(), _tokens((B, 8))
    segment_ids = jnp.asarray([[1] * 5 + [2] * 3, [1] * 6 + [0] * 2])
    positions = jnp.asarray([[0, 1, 2, 3, 4, 0, 1, 2], list(range(8))])

    def loss(cfg, p):
        logits = tf.forward(cfg, p, tokens, positions_BxT=positions, segment_ids_BxT=segment_ids)
        return jnp.mean(logits**2), logits

    run = lambda cfg: jax.jit(jax.value_and_grad(functools.partial(loss, cfg), has_aux=True))(
        params
    )
    (ref_val, ref_logits), ref_grad = run(CFG)
    (val, logits), grad = run(dataclasses.replace(CFG, attention_chunk=chunk))
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    np.testing.assert_allclose(val, ref_val, rtol=1e-6)
    chex.assert_trees_all_close(grad, ref_grad, atol=1e-6)


def test_options_together_keep_loss_and_gradients_of_qwen3_shapes():
    """remat, a partly unrolled layer loop and blocks of queries that do not divide T, all at
    once, on packed rows of a Qwen3 shape (q/k norms, one kv head, head_dim != D / H, YaRN,
    untied): the loss and every gradient (logical axes too) are those of the plain model."""
    yarn = config_lib.RopeScaling(4.0, rope_type="yarn", original_max_position=4)
    base = dataclasses.replace(
        CFG, n_layers=3, n_kv_heads=1, head_dim=16, family="qwen3", qk_norm=True,
        qkv_bias=False, rope_scaling=yarn,
    )  # fmt: skip
    params, tokens = _params(base), _tokens((B, 8))
    segment_ids = jnp.asarray([[1] * 3 + [2] * 4 + [0], [1] * 8])
    positions = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0], list(range(8))])

    def loss(cfg, p):
        logits = tf.forward(cfg, p, tokens, positions_BxT=positions, segment_ids_BxT=segment_ids)
        return jnp.mean(jnp.where(segment_ids[..., None] > 0, logits, 0.0) ** 2)

    run = lambda cfg: jax.jit(jax.value_and_grad(functools.partial(loss, cfg)))(params)
    ref_val, ref_grad = run(base)
    for options in [dict(remat="dots", unroll_layers=2, attention_chunk=3),
                    dict(remat="full", unroll_layers=1, attention_chunk=5)]:  # fmt: skip
        cfg = dataclasses.replace(base, **options)
        val, grad = run(cfg)
        np.testing.assert_allclose(val, ref_val, rtol=1e-6)
        chex.assert_trees_all_close(grad, ref_grad, atol=1e-6)
        is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
        axes = tf.logical_axes(cfg)
        assert jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(grad)
    assert axes["layers"]["attn"]["k_norm"] == jax.sharding.PartitionSpec("layers", "head_dim")


def test_attention_in_chunks_prefills_a_cache_like_one_block():
    params, tokens = _params(), _tokens((B, 10), seed=7)
    positions = jnp.broadcast_to(jnp.arange(10), (B, 10))
    kv_mask = jnp.asarray([[True] * S, [False] * 2 + [True] * (S - 2)])
    prefill = lambda cfg: tf.forward_cached(  # noqa: E731 - not _forward_cached: it counts traces
        cfg, params, tokens, positions, tf.init_cache(cfg, B, S), cache_index=0, kv_mask_BxS=kv_mask
    )
    outs = [prefill(cfg) for cfg in (CFG, dataclasses.replace(CFG, attention_chunk=4))]
    np.testing.assert_allclose(outs[1][0], outs[0][0], atol=1e-5)
    chex.assert_trees_all_close(outs[1][1], outs[0][1], atol=1e-6)


def test_attention_in_chunks_holds_a_fraction_of_the_scores():
    """The compiled gradient's temporaries: whole-sequence attention keeps [B, H, T, T] float32
    scores (and probabilities) per layer; blocks of 64 queries keep [B, H, 64, T]."""
    cfg = dataclasses.replace(CFG, max_seq_len=1024)
    abstract = jax.eval_shape(functools.partial(tf.init_params, cfg), jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((1, 1024), jnp.int32)

    def temp_bytes(chunk):
        c = dataclasses.replace(cfg, attention_chunk=chunk)
        grad = jax.grad(lambda p, t: jnp.mean(tf.forward(c, p, t) ** 2))
        return jax.jit(grad).lower(abstract, tokens).compile().memory_analysis().temp_size_in_bytes

    whole, blocks = temp_bytes(0), temp_bytes(64)
    scores = 1 * CFG.n_heads * 1024 * 1024 * 4  # one layer's [B, H, T, T] float32
    assert whole > 2 * scores, whole
    assert blocks < whole / 4 and blocks < scores, (blocks, whole)


def test_attention_in_chunks_holds_no_mask_of_the_whole_sequence():
    """A packed row's gradient in blocks of 32 queries: its temporaries grow with T, not T^2.
    The [B, T, S] boolean mask was built ahead of the layer loop, copied by chunk, and every
    block's [B, H, chunk, S] slice kept for the backward pass (1024 -> 2048 tokens: 8.1 ->
    27.6 MB; now 3.6 -> 7.2 MB)."""
    cfg = dataclasses.replace(CFG, n_layers=1, max_seq_len=2048, attention_chunk=32)
    abstract = jax.eval_shape(functools.partial(tf.init_params, cfg), jax.random.key(0))

    def temp_bytes(t):
        tokens = jax.ShapeDtypeStruct((1, t), jnp.int32)
        segments = jnp.asarray([1] * (t // 2) + [2] * (t // 4) + [0] * (t // 4))[None]
        hidden = lambda p, x: tf.hidden_states(cfg, p, x, segment_ids_BxT=segments)  # noqa: E731
        grad = jax.grad(lambda p, x: jnp.mean(hidden(p, x) ** 2))
        return jax.jit(grad).lower(abstract, tokens).compile().memory_analysis().temp_size_in_bytes

    short, long = temp_bytes(1024), temp_bytes(2048)
    assert long < 2.5 * short and long < 4 * 2048 * 2048, (short, long)


def test_attention_chunk_must_not_be_negative():
    with pytest.raises(ValueError, match="attention_chunk"):
        dataclasses.replace(CFG, attention_chunk=-1)


@functools.cache
def _reference_value_and_grad():
    tokens = _tokens((B, 8))
    loss = lambda p: jnp.mean(tf.forward(CFG, p, tokens) ** 2)
    return jax.jit(jax.value_and_grad(loss))(_params())


def test_forward_rejects_mismatched_positions():
    with pytest.raises(ValueError, match="positions_BxT"):
        tf.forward(CFG, _params(), _tokens((2, 8)), positions_BxT=jnp.zeros((2, 7), jnp.int32))


def test_tokens_that_are_not_a_batch_of_rows_are_named():
    # A 1-D sequence was an IndexError (forward, sequence_logprobs), "positions_BxT must have
    # shape (7,), got (7,)" with positions given, and an unpacking error in forward_cached.
    seq, positions = _tokens((7,)), jnp.arange(7, dtype=jnp.int32)
    match = r"tokens_BxT must be 2-D \[B, T\], got shape \(7,\)"
    with pytest.raises(ValueError, match=match):
        tf.forward(CFG, _params(), seq)
    with pytest.raises(ValueError, match=match):
        tf.forward(CFG, _params(), seq, positions_BxT=positions)
    with pytest.raises(ValueError, match=match):
        cache = tf.init_cache(CFG, 1, 8)
        tf.forward_cached(
            CFG, _params(), seq, positions, cache, cache_index=0, kv_mask_BxS=jnp.ones(8, bool)
        )


# --- KV cache ---------------------------------------------------------------------------------


def test_token_by_token_decoding_equals_full_forward():
    params, tokens = _params(), _tokens((B, 10))
    full = _forward(np.asarray(tokens))
    cache = tf.init_cache(CFG, B, S)
    assert cache.k.shape == (2, B, S, 2, 8) and cache.k.dtype == jnp.float32
    kv_mask = jnp.ones((B, S), bool)
    for t in range(10):
        positions = jnp.full((B, 1), t, jnp.int32)
        step, cache = _forward_cached(
            CFG, params, tokens[:, t : t + 1], positions, cache, jnp.int32(t), kv_mask
        )
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


def test_left_padded_prefill_then_decode_equals_full_forward():
    params = _params()
    prompts = [np.asarray(_tokens((5,), seed=3)), np.asarray(_tokens((3,), seed=4))]
    continuation = _tokens((B, 4), seed=5)
    bucket = 5
    pads = [bucket - len(p) for p in prompts]
    tokens = jnp.asarray(
        [np.concatenate([np.zeros(n, np.int32), p]) for n, p in zip(pads, prompts)]
    )
    positions = jnp.stack([jnp.maximum(jnp.arange(bucket) - n, 0) for n in pads])
    kv_mask = jnp.stack([jnp.arange(S) >= n for n in pads])
    cache = tf.init_cache(CFG, B, S)
    logits, cache = _forward_cached(CFG, params, tokens, positions, cache, jnp.int32(0), kv_mask)
    steps = [logits[:, -1]]
    for i in range(continuation.shape[1]):
        pos = jnp.asarray([[len(p) + i] for p in prompts], jnp.int32)
        step, cache = _forward_cached(
            CFG, params, continuation[:, i : i + 1], pos, cache, jnp.int32(bucket + i), kv_mask
        )
        steps.append(step[:, 0])
    full = _forward([np.concatenate([p, continuation[b]]) for b, p in enumerate(prompts)])
    for b, prompt in enumerate(prompts):
        np.testing.assert_allclose(logits[b, pads[b] :], full[b, : len(prompt)], atol=1e-5)
        decoded = jnp.stack([s[b] for s in steps])
        np.testing.assert_allclose(decoded, full[b, len(prompt) - 1 : len(prompt) + 4], atol=1e-5)


def test_forward_cached_rejects_bad_kv_mask():
    with pytest.raises(ValueError, match="kv_mask_BxS"):
        tf.forward_cached(
            CFG,
            _params(),
            _tokens((1, 2)),
            jnp.zeros((1, 2), jnp.int32),
            tf.init_cache(CFG, 1, 4),
            cache_index=0,
            kv_mask_BxS=jnp.ones((1, 5), bool),
        )


# --- heads ------------------------------------------------------------------------------------


def test_value_head_and_last_token_scores():
    head = heads.init_value_head(CFG, jax.random.key(0))
    axes = heads.value_head_logical_axes(CFG)
    assert axes["kernel"] == jax.sharding.PartitionSpec("embed", None)
    head = {"kernel": head["kernel"], "bias": head["bias"] + 0.5}  # a nonzero bias is checked too
    h = jnp.asarray(np.random.RandomState(0).normal(0, 1, (3, 6, CFG.d_model)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]], bool)
    run = jax.jit(lambda p, h, m: (heads.values(CFG, p, h), heads.last_token_scores(CFG, p, h, m)))
    v, scores = run(head, h, mask)
    assert v.shape == (3, 6) and v.dtype == jnp.float32
    expected = np.asarray(h) @ np.asarray(head["kernel"])[:, 0] + np.asarray(head["bias"])[0]
    np.testing.assert_allclose(v, expected, atol=1e-5)
    np.testing.assert_allclose(scores, [v[0, 2], v[1, 5], v[2, 3]], atol=1e-6)
    with pytest.raises(ValueError, match="mask_BxT"):
        heads.last_token_scores(CFG, head, h, mask[:, :5])
