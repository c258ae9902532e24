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
    vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
    qkv_bias=True,
)  # fmt: skip


@functools.partial(jax.jit, static_argnums=(0, 1))
def _params(cfg, seed=0):
    """Init plus noise, so norms and biases are not trivially ones / zeros."""
    params = tf.init_params(cfg, jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def _tokens(shape, seed=0, vocab=CFG.vocab_size):
    return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, shape), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, tokens, positions=None, segment_ids=None):
    return tf.forward(cfg, params, tokens, positions_BxT=positions, segment_ids_BxT=segment_ids)


@functools.partial(jax.jit, static_argnums=0)
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
    for cfg in (config_lib.get_preset("tiny"), CFG, dataclasses.replace(CFG, qkv_bias=False)):
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


def test_flops_per_token_formula():
    cfg, t = CFG, 16
    layer = 2 * 32 * 4 * 8 + 2 * 32 * 2 * 8 + (4 + 2 * 2) * 8 + 3 * 32 * 64 + 2 * 32
    expected = 6 * (2 * layer + 32 * 128) + 12 * 2 * 4 * 8 * t
    assert config_lib.flops_per_token(cfg, t) == expected
    assert config_lib.forward_flops_per_token(cfg, t) == pytest.approx(expected / 3)


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


def test_causality():
    params = _params(CFG)
    tokens = _tokens((2, 16))
    changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % CFG.vocab_size)
    a, b = _forward(CFG, params, tokens), _forward(CFG, params, changed)
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-3


def test_packed_segments_equal_separate_sequences():
    params = _params(CFG)
    first, second = _tokens((1, 7), seed=1), _tokens((1, 5), seed=2)
    packed = jnp.concatenate([first, second, jnp.zeros((1, 4), jnp.int32)], axis=1)
    segment_ids = jnp.asarray([[1] * 7 + [2] * 5 + [0] * 4])
    positions = jnp.asarray([list(range(7)) + list(range(5)) + [0] * 4])
    out = _forward(CFG, params, packed, positions, segment_ids)
    np.testing.assert_allclose(out[:, :7], _forward(CFG, params, first), atol=1e-5)
    np.testing.assert_allclose(out[:, 7:12], _forward(CFG, params, second), atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()


def test_bfloat16_compute_gives_float32_logits_close_to_float32():
    params = _params(CFG)
    tokens = _tokens((2, 12))
    cfg16 = dataclasses.replace(CFG, dtype="bfloat16")
    out16, out32 = _forward(cfg16, params, tokens), _forward(CFG, params, tokens)
    assert out16.dtype == jnp.float32
    assert np.abs(out16 - out32).max() < 0.1 * np.abs(out32).max()


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_logits_and_gradients(remat):
    params = _params(CFG)
    tokens = _tokens((2, 8))
    loss = lambda cfg, p: jnp.mean(tf.forward(cfg, p, tokens) ** 2)
    ref_loss, ref_grad = jax.jit(jax.value_and_grad(functools.partial(loss, CFG)))(params)
    cfg = dataclasses.replace(CFG, remat=remat)
    val, grad = jax.jit(jax.value_and_grad(functools.partial(loss, cfg)))(params)
    np.testing.assert_allclose(val, ref_loss, rtol=1e-5)
    chex.assert_trees_all_close(grad, ref_grad, atol=1e-5)


def test_forward_rejects_mismatched_positions():
    with pytest.raises(ValueError, match="positions_BxT"):
        tf.forward(CFG, _params(CFG), _tokens((2, 8)), positions_BxT=jnp.zeros((2, 7), jnp.int32))


# --- KV cache ---------------------------------------------------------------------------------


def test_token_by_token_decoding_equals_full_forward():
    params = _params(CFG)
    tokens = _tokens((2, 10))
    full = _forward(CFG, params, tokens)
    cache = tf.init_cache(CFG, 2, 12)
    assert cache.k.shape == (2, 2, 12, 2, 8) and cache.k.dtype == jnp.float32
    kv_mask = jnp.ones((2, 12), bool)
    for t in range(10):
        positions = jnp.full((2, 1), t, jnp.int32)
        step, cache = _forward_cached(
            CFG, params, tokens[:, t : t + 1], positions, cache, jnp.int32(t), kv_mask
        )
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


def test_left_padded_prefill_then_decode_equals_full_forward():
    params = _params(CFG)
    prompts = [_tokens((5,), seed=3), _tokens((3,), seed=4)]
    continuation = _tokens((2, 4), seed=5)
    bucket, length = 5, 12
    pads = [bucket - len(p) for p in prompts]
    tokens = jnp.stack(
        [jnp.concatenate([jnp.zeros(n, jnp.int32), p]) for n, p in zip(pads, prompts)]
    )
    positions = jnp.stack([jnp.maximum(jnp.arange(bucket) - n, 0) for n in pads])
    kv_mask = jnp.stack([jnp.arange(length) >= n for n in pads])
    cache = tf.init_cache(CFG, 2, length)
    logits, cache = _forward_cached(CFG, params, tokens, positions, cache, jnp.int32(0), kv_mask)
    steps = [logits[:, -1]]
    for i in range(continuation.shape[1]):
        pos = jnp.asarray([[len(p) + i] for p in prompts], jnp.int32)
        step, cache = _forward_cached(
            CFG, params, continuation[:, i : i + 1], pos, cache, jnp.int32(bucket + i), kv_mask
        )
        steps.append(step[:, 0])
    for b, prompt in enumerate(prompts):
        full = _forward(CFG, params, jnp.concatenate([prompt, continuation[b]])[None])[0]
        np.testing.assert_allclose(logits[b, pads[b] :], full[: len(prompt)], atol=1e-5)
        decoded = jnp.stack([s[b] for s in steps])
        np.testing.assert_allclose(decoded, full[len(prompt) - 1 :], atol=1e-5)


def test_forward_cached_does_not_retrace_per_step():
    params = _params(CFG)
    fn = chex.assert_max_traces(n=1)(tf.forward_cached)
    step = jax.jit(
        lambda p, tok, pos, c, i, m: fn(CFG, p, tok, pos, c, cache_index=i, kv_mask_BxS=m)
    )
    cache, mask = tf.init_cache(CFG, 1, 4), jnp.ones((1, 4), bool)
    for t in range(3):
        _, cache = step(
            params, _tokens((1, 1), seed=t), jnp.full((1, 1), t), cache, jnp.int32(t), mask
        )


def test_forward_cached_rejects_bad_kv_mask():
    with pytest.raises(ValueError, match="kv_mask_BxS"):
        tf.forward_cached(
            CFG, _params(CFG), _tokens((1, 2)), jnp.zeros((1, 2), jnp.int32),
            tf.init_cache(CFG, 1, 4), cache_index=0, kv_mask_BxS=jnp.ones((1, 5), bool),
        )  # fmt: skip


# --- heads ------------------------------------------------------------------------------------


def test_value_head_and_last_token_scores():
    head = heads.init_value_head(CFG, jax.random.key(0))
    axes = heads.value_head_logical_axes(CFG)
    assert axes["kernel"] == jax.sharding.PartitionSpec("embed", None)
    h = jax.random.normal(jax.random.key(1), (3, 6, CFG.d_model))
    v = heads.values(CFG, head, h)
    assert v.shape == (3, 6) and v.dtype == jnp.float32
    expected = np.asarray(h) @ np.asarray(head["kernel"])[:, 0] + np.asarray(head["bias"])[0]
    np.testing.assert_allclose(v, expected, atol=1e-5)
    mask = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]], bool)
    scores = heads.last_token_scores(CFG, head, h, mask)
    np.testing.assert_allclose(scores, [v[0, 2], v[1, 5], v[2, 3]], atol=1e-6)
    with pytest.raises(ValueError, match="mask_BxT"):
        heads.last_token_scores(CFG, head, h, mask[:, :5])
