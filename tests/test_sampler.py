"""Sampler: greedy parity with transformers, exact log-probs, filters, stopping, buckets, sharding.

N prompts, G samples per prompt, P prompt bucket length, T new tokens, S cache length, V vocab.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import memory, sampler
from r1jax import sharding as sharding_lib
from r1jax.model import config as config_lib
from r1jax.model import hf_io
from r1jax.model import transformer as tf

V = 256
PROMPTS = [[5, 17, 3], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50], [9], [100, 7, 7, 30, 2]]


def _tiny_cfg(**kw):
    base = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8)
    return config_lib.ModelConfig(**{**base, "d_ff": 64, "qkv_bias": True, **kw})


@pytest.fixture(scope="module")
def model():
    cfg = _tiny_cfg()
    params = tf.init_params(cfg, jax.random.key(1))
    # Larger weights than the 0.02 init make the sampled distributions far from uniform.
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)
    return cfg, params


def _hf_model(arch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    base = dict(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="eager",
    )
    if arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(**base, tie_word_embeddings=True)
        )
    elif arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**base))
    elif arch == "qwen3":  # q/k norms; head_dim 32, not hidden / heads
        config = transformers.Qwen3Config(**base, head_dim=32, tie_word_embeddings=True)
        model = transformers.Qwen3ForCausalLM(config)
    else:  # "llama-yarn": YaRN RoPE (cos and sin scaled) over a short original context
        yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}
        config = transformers.LlamaConfig(**base, rope_parameters={**yarn, "rope_theta": 1e4})
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name else 0.0))
    return model.eval()


def _hf_greedy(model, prompts, t, eos):
    torch = pytest.importorskip("torch")
    p = max(map(len, prompts))
    ids = np.zeros((len(prompts), p), np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(prompts):
        ids[i, p - len(row) :], mask[i, p - len(row) :] = row, 1
    with torch.no_grad():
        out = model.generate(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=t,
            eos_token_id=eos,
            pad_token_id=0,
            use_cache=True,
        )
    new = out[:, p:].numpy()
    return np.pad(new, ((0, 0), (0, t - new.shape[1])))  # HF stops when all rows stopped


# t = 75 decodes in two attention segments (`sampler.attention_bounds`), t = 12 in one.
@pytest.mark.parametrize(
    "arch,t", [("qwen2", 12), ("llama", 12), ("qwen2", 75), ("llama-yarn", 12), ("qwen3", 12)]
)
def test_greedy_matches_transformers_generate(arch, t, tmp_path):
    model = _hf_model(arch)
    model.save_pretrained(tmp_path)
    cfg, params = hf_io.load_hf(tmp_path)
    free = _hf_greedy(model, PROMPTS, t, None)
    # An EOS id that row 0 emits mid-way, so at least one row stops early.
    eos = int(free[0, 4])
    out = sampler.generate(cfg, params, PROMPTS, max_new_tokens=t, temperature=0.0, eos_ids=[eos])
    np.testing.assert_array_equal(out.tokens, _hf_greedy(model, PROMPTS, t, eos))
    assert out.stopped[0] and out.lengths[0] == list(free[0]).index(eos) + 1
    assert not out.stopped.all() and (out.lengths == t).any()


def _forward_logp(cfg, params, prompts, out, num_samples, temperature):
    """log_softmax(forward logits / temperature) [B, T, V] at each generated position."""
    t = out.tokens.shape[1]
    rows = [prompts[r // num_samples] + list(out.tokens[r]) for r in range(len(out.tokens))]
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int32)
    seg = np.zeros_like(tokens)
    pos = np.zeros_like(tokens)
    for i, row in enumerate(rows):
        pad = width - len(row)
        tokens[i, pad:], seg[i, pad:], pos[i, pad:] = row, 1, np.arange(len(row))
    logits = tf.forward(
        cfg,
        params,
        jnp.asarray(tokens),
        positions_BxT=jnp.asarray(pos),
        segment_ids_BxT=jnp.asarray(seg),
    )
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64) / temperature, axis=-1)
    # The token at column width-t+j is predicted from position width-t+j-1.
    return np.asarray(logp)[:, width - t - 1 : width - 1]


# g = 1 keeps the prompt's K/V in the first new-token chunk instead of a shared prompt cache.
@pytest.mark.parametrize("t,g", [(10, 3), (70, 3), (40, 1)])
def test_sampled_logprobs_match_forward_and_respect_filters(model, t, g):
    cfg, params = model
    temp, top_k, top_p = 0.7, 20, 0.6
    out = sampler.generate(
        cfg, params, PROMPTS, max_new_tokens=t, temperature=temp, top_k=top_k, top_p=top_p,
        num_samples=g, seed=3,
    )  # fmt: skip
    assert out.tokens.shape == (len(PROMPTS) * g, t)
    logp_BxTxV = _forward_logp(cfg, params, PROMPTS, out, g, temp)
    chosen = np.take_along_axis(logp_BxTxV, out.tokens[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(out.logprobs, chosen, atol=1e-5, rtol=0)
    # Allowed set from the reference: top-k, then the smallest top-p prefix of the renormalised
    # top-k law. Every emitted token must be in it.
    sorted_desc = -np.sort(-logp_BxTxV, axis=-1)[..., :top_k]
    probs = np.exp(sorted_desc - sorted_desc.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    kept = np.maximum(((np.cumsum(probs, -1) - probs) < top_p).sum(-1), 1)
    threshold = np.take_along_axis(sorted_desc, kept[..., None] - 1, axis=-1)[..., 0]
    assert np.all(chosen >= threshold - 1e-5)
    assert np.mean(kept) < top_k - 2  # top-p really bites in this model
    # Samples of one prompt are different draws, not copies.
    assert len({tuple(r) for r in out.tokens}) == len(out.tokens)


def _reference_allowed(logp_V, top_p, top_k):
    """HF's warpers: top-k keeps every token tied with the k-th; top-p keeps the shortest
    descending prefix of the renormalised law whose mass reaches top_p (plus ties of its last)."""
    order = np.argsort(-logp_V, kind="stable")
    if top_k:
        order = order[logp_V[order] >= logp_V[order[top_k - 1]]]
    probs = np.exp(logp_V[order])
    probs /= probs.sum()
    kept = max(int(((np.cumsum(probs) - probs) < top_p).sum()), 1)
    kept = int(np.sum(logp_V[order] >= logp_V[order[kept - 1]]))
    return set(order[:kept].tolist()), probs[:kept] / probs[:kept].sum(), order[:kept]


@pytest.mark.parametrize("top_p,top_k", [(0.95, 0), (0.5, 0), (0.01, 0), (0.8, 7), (1.0, 3)])
def test_filter_mask_equals_the_sorted_prefix(top_p, top_k):
    # Peaked, flat and tied rows: the bisected threshold keeps the sort-based prefix (plus ties).
    rng = np.random.RandomState(1)
    logits = rng.randn(300, 96).astype(np.float32) * rng.choice([0.1, 1.0, 4.0], (300, 1))
    logits[:50, :10] = logits[:50, :1]  # ten-way ties at the top
    logits[50:100] = np.round(logits[50:100])  # many ties everywhere
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    mask = np.asarray(jax.jit(lambda x: sampler._filter_mask(x, top_p, top_k))(logp))
    for row, m in zip(logp, mask):
        _, _, order = _reference_allowed(row, top_p, top_k)
        expected = row >= row[order].min()  # the prefix and its ties
        assert np.array_equal(m, expected)


@pytest.mark.parametrize("top_p,top_k", [(0.7, 0), (1.0, 5), (0.9, 8)])
def test_filters_never_emit_outside_the_allowed_set(top_p, top_k):
    logits_V = np.random.RandomState(0).randn(64).astype(np.float32) * 2.0
    b = 20000
    sampling = sampler.SamplingConfig(temperature=1.0, top_p=top_p, top_k=top_k)
    fn = jax.jit(lambda lg, k: sampler.sample_logits(lg, k, sampling))
    tokens, _ = fn(jnp.broadcast_to(jnp.asarray(logits_V), (b, 64)), jax.random.key(0))
    tokens = np.asarray(tokens)
    logp_V = np.asarray(jax.nn.log_softmax(logits_V))
    allowed, probs, order = _reference_allowed(logp_V, top_p, top_k)
    assert set(tokens.tolist()) <= allowed
    # And within the set, frequencies follow the renormalised probabilities.
    freq = np.array([(tokens == i).mean() for i in order])
    assert np.all(np.abs(freq - probs) <= 4 * np.sqrt(probs * (1 - probs) / b) + 1e-3)


@pytest.mark.parametrize("v", [1000, 37])
def test_two_level_draw_follows_the_probabilities_and_skips_zero_mass(v):
    # V not a multiple of the block (padded tail), a whole block of zeros, zeros at block edges.
    rng = np.random.RandomState(2)
    probs_V = rng.gamma(0.3, size=v).astype(np.float32)
    probs_V[rng.rand(v) < 0.3] = 0.0
    probs_V[: 40 if v > 100 else 9] = 0.0  # covers the first block (32 or 8 tokens)
    probs_V[-1] = 0.5
    b = 40000
    pairs = lambda k, p: jax.random.uniform(k, (p.shape[0], 2))
    draw = jax.jit(lambda p, k: sampler._inverse_cdf_sample(p, pairs(k, p)))
    tokens = np.asarray(draw(jnp.broadcast_to(jnp.asarray(probs_V), (b, v)), jax.random.key(3)))
    assert probs_V[tokens].min() > 0
    p = probs_V / probs_V.sum()
    freq = np.bincount(tokens, minlength=v) / b
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / b) + 2e-4)
    # One token holding all the mass, first or last, is always the draw.
    for only in (0, v - 1):
        one_V = np.zeros(v, np.float32)
        one_V[only] = 3.0
        assert set(np.asarray(draw(jnp.asarray(one_V)[None].repeat(64, 0), jax.random.key(4)))) == {
            only
        }


_GRID = 1 << 23  # jax.random.uniform's float32 values in [0, 1): k * 2^-23, k < 2^23


def _targets(k, total):
    """The draw's float32 target (1 - u) * total for u = k * 2^-23, as `_inverse_cdf_sample`."""
    u = np.float32(1.0) - k.astype(np.float32) * np.float32(2.0**-23)
    return (u * np.float32(total)).astype(np.float32)


@functools.cache
def _every_one_minus_u():
    """1 - u for every u = k * 2^-23, ascending (k from 2^23 - 1 down to 0)."""
    return np.float32(1.0) - np.arange(_GRID)[::-1].astype(np.float32) * np.float32(2.0**-23)


def _first_at_least(cdf, mass, t):
    """Index of the first entry with cdf >= t and mass > 0, for each target t."""
    nz = np.flatnonzero(mass > 0)
    return nz[np.minimum(np.searchsorted(cdf[nz], t, side="left"), len(nz) - 1)]


def _level_odds(cdf, mass):
    """Each entry's exact chance at one level: the share of the 2^23 uniforms whose target
    lands in its part of the cdf (zero-mass entries get none)."""
    all_targets = _every_one_minus_u() * np.float32(cdf[-1])  # ascending, as `_targets`
    nz = np.flatnonzero(mass > 0)
    at_most = np.searchsorted(all_targets, cdf[nz], side="right")
    odds = np.zeros(len(cdf))
    odds[nz] = np.diff(at_most, prepend=0) / _GRID
    return odds


def test_draw_is_exact_to_a_part_in_2_pow_23_per_level_at_a_large_vocabulary():
    # With one float32 uniform (2^23 values) for both levels the draw was off by 5.2e-4 in total
    # variation here (2.5e-3 to 3.7e-3 at a 152k vocabulary, whatever the logits); with one
    # uniform a level, 7.0e-6 (7e-6 to 1.7e-5 at 152k). The chances below are exact: every
    # uniform of both levels, on the float32 cdfs the sampler builds; the sampler itself is
    # checked to choose as they say on 400 uniform pairs.
    v = 32768
    rng = np.random.default_rng(7)
    z_V = rng.normal(0, 3, v).astype(np.float32)
    z_V[rng.random(v) < 0.2] = -np.inf  # filtered tokens, and a whole block of them
    z_V[256:512] = -np.inf
    w_V = jnp.exp(jnp.asarray(z_V) - jnp.max(jnp.asarray(z_V)))
    c = 256  # the sampler's block for this V: a power of two >= sqrt(V)
    blocks_NxC = np.asarray(w_V).reshape(-1, c)
    mass_N = np.asarray(jnp.sum(w_V.reshape(1, -1, c), axis=-1))[0]
    cdf_N = np.asarray(jnp.cumsum(mass_N[None], axis=-1))[0]
    cdf_NxC = np.asarray(jnp.cumsum(jnp.asarray(blocks_NxC), axis=-1))
    block_odds = _level_odds(cdf_N, mass_N)
    q_V = np.concatenate(
        [
            block_odds[i] * _level_odds(cdf_NxC[i], blocks_NxC[i]) if block_odds[i] else np.zeros(c)
            for i in range(len(mass_N))
        ]
    )
    p_V = np.exp(z_V.astype(np.float64) - z_V.max())
    p_V /= p_V.sum()
    assert 0.5 * np.abs(q_V - p_V).sum() < 5e-5
    assert q_V[np.isinf(z_V)].sum() == 0

    k_Sx2 = rng.integers(0, _GRID, (400, 2))
    blocks_S = _first_at_least(cdf_N, mass_N, _targets(k_Sx2[:, 0], cdf_N[-1]))
    want_S = [
        b * c + _first_at_least(cdf_NxC[b], blocks_NxC[b], _targets(k[1:], cdf_NxC[b, -1]))[0]
        for b, k in zip(blocks_S, k_Sx2)
    ]
    uniform_Sx2 = jnp.asarray(k_Sx2.astype(np.float32) * np.float32(2.0**-23))
    got_S = jax.jit(sampler._inverse_cdf_sample)(jnp.broadcast_to(w_V, (400, v)), uniform_Sx2)
    np.testing.assert_array_equal(np.asarray(got_S), want_S)


@pytest.mark.parametrize(
    "p,t,layers,segments",
    [(16, 128, 4, 2), (16, 129, 4, 2), (16, 130, 4, 3), (16, 1024, 4, 8), (16, 128, 28, 1)]
    + [(64, 4096, 2, 16), (64, 4096, 40, 1), (3, 2, 2, 1), (16, 33, 1, 1)],
)
def test_attention_bounds_cover_the_cache_in_a_few_growing_segments(p, t, layers, segments):
    s = p + t - 1
    bounds = sampler.attention_bounds(p, s, layers)
    assert len(bounds) == segments <= max(1, sampler.SEGMENT_BUDGET // layers)
    sizes = np.diff((p, *bounds))
    # Equal segments of whole blocks, covering the cache with less than a block to spare.
    assert len(set(sizes)) == 1 and sizes[0] % sampler.SEGMENT_SLOTS == 0
    assert s <= bounds[-1] < s + sampler.SEGMENT_SLOTS
    # One new token (the prefill samples it): no new tokens' cache at all.
    assert sampler.attention_bounds(p, p, layers) == (p,)


def test_eos_stopping_padding_and_determinism(model):
    cfg, params = model
    eos = tuple(range(0, V, 3))  # about a third of the vocabulary ends a row
    kw = dict(max_new_tokens=16, num_samples=2, eos_ids=eos, pad_id=0)
    out = sampler.generate(cfg, params, PROMPTS, seed=7, **kw)
    again = sampler.generate(cfg, params, PROMPTS, seed=7, **kw)
    other = sampler.generate(cfg, params, PROMPTS, seed=8, **kw)
    np.testing.assert_array_equal(out.tokens, again.tokens)
    np.testing.assert_array_equal(out.logprobs, again.logprobs)
    assert not np.array_equal(out.tokens, other.tokens)
    assert out.stopped.any() and (out.lengths < 16).any()
    for row, n, stopped, lp in zip(out.tokens, out.lengths, out.stopped, out.logprobs):
        assert stopped == (row[n - 1] in eos)
        assert not any(tok in eos for tok in row[: n - 1])
        assert np.all(row[n:] == 0) and np.all(lp[n:] == 0) and np.all(lp[:n] < 0)
        assert stopped or n == 16


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(prompts=[[1, V]]), f"prompt 0: token id {V} is outside the model's vocabulary"),
        (dict(prompts=[[2], [3, -1]]), "prompt 1: token id -1 is outside"),
        (dict(prompts=[[1.5, 2.0]]), "token ids must be integers"),
        (dict(prompts=[[]]), "prompt 0 must be a non-empty list"),
        (dict(prompts=[]), "non-empty list"),
        (dict(prompts="abc"), "non-empty list"),
        (dict(temperature=-0.5), "temperature must be finite and >= 0"),
        (dict(temperature=float("nan")), "temperature must be finite"),
        # Flushed to 0 in float32: token 0 and NaN log-probs on every row.
        (dict(temperature=1e-39), "below float32's smallest normal number"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be >= 0"),
        (dict(eos_ids=[V]), f"below the model's vocab_size {V}"),
        (dict(pad_id=-1), "pad_id -1 must be >= 0"),
        (dict(max_new_tokens=0), r"max_new_tokens \(0\) and num_samples \(1\) must be >= 1"),
        (dict(top_k=2.7), "top_k must be a whole number, got 2.7"),
        (dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
        (dict(eos_ids=[1.5]), "eos_ids must be a whole number"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(model, kw, match):
    cfg, params = model
    kw = {"prompts": PROMPTS, "max_new_tokens": 4, **kw}
    with pytest.raises(ValueError, match=match):
        sampler.generate(cfg, params, **kw)


@pytest.mark.parametrize(
    "kw,error,match",
    [
        (dict(max_new_tokens="4"), TypeError, "max_new_tokens must be an integer, got '4'"),
        (dict(max_new_tokens=None), TypeError, "max_new_tokens must be an integer, got None"),
        (dict(temperature=None), TypeError, "temperature must be a number, got None"),
        (dict(top_p="0.9"), TypeError, "top_p must be a number, got '0.9'"),
        (dict(seed="a"), TypeError, "seed must be an integer"),
        (dict(seed=1.5), ValueError, "seed must be a whole number, got 1.5"),  # was seed 1's draws
        (dict(prompts=None), ValueError, "prompts must be a non-empty list"),
    ],
)
def test_arguments_of_the_wrong_type_are_refused_by_name(model, kw, error, match):
    cfg, params = model
    with pytest.raises(error, match=match):
        sampler.generate(cfg, params, **{"prompts": PROMPTS, "max_new_tokens": 4, **kw})


def test_seeds_past_32_bits_draw_differently_and_long_contexts_are_flagged(model, caplog):
    cfg, params = model
    kw = dict(max_new_tokens=6, temperature=1.0)
    draws = [sampler.generate(cfg, params, PROMPTS, seed=s, **kw).tokens for s in (0, 2**40, 7)]
    assert not np.array_equal(draws[0], draws[1])  # key() kept the low 32 bits: seed 0's draws
    np.testing.assert_array_equal(
        draws[2], sampler.generate(cfg, params, PROMPTS, seed=7, **kw).tokens
    )
    assert (
        jax.random.key_data(sampler.seed_key(7)).tolist()
        == jax.random.key_data(jax.random.key(7)).tolist()
    )
    short = dataclasses.replace(cfg, max_seq_len=16)  # 11-token prompt + 6 (2048 steps took 7 s)
    with caplog.at_level("WARNING"):
        sampler.generate(short, params, PROMPTS, **kw)
    assert "prompts of up to 11 tokens plus 6 new ones pass the model's max_seq_len" in caplog.text


def test_prompts_as_arrays_and_eos_ids_as_one_id_or_none(model):
    cfg, params = model
    kw = dict(max_new_tokens=6, temperature=0.0)
    ref = sampler.generate(cfg, params, PROMPTS, eos_ids=(3,), **kw)
    arrays = [np.asarray(p, np.int32) for p in PROMPTS]
    for prompts, eos in (
        (arrays, 3),
        (PROMPTS, np.int64(3)),
        (arrays, [3]),
        (PROMPTS, np.array(3)),  # 0-d arrays: 'iteration over a 0-d array'
        (arrays, jnp.int32(3)),
    ):
        out = sampler.generate(cfg, params, prompts, eos_ids=eos, **kw)
        np.testing.assert_array_equal(out.tokens, ref.tokens)
    free = sampler.generate(cfg, params, PROMPTS, eos_ids=None, **kw)
    np.testing.assert_array_equal(free.lengths, 6)
    with pytest.raises(TypeError, match="eos_ids must be a token id or a sequence"):
        sampler.generate(cfg, params, PROMPTS, eos_ids="3", **kw)


def test_whole_float_sample_counts_are_sample_counts(model):
    # num_samples=2.0 passed validation, sampled, then failed to slice the rows it had made.
    cfg, params = model
    kw = dict(max_new_tokens=3, temperature=0.0)
    out = sampler.generate(cfg, params, PROMPTS, num_samples=2.0, **kw)
    ref = sampler.generate(cfg, params, PROMPTS, num_samples=2, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    with pytest.raises(ValueError, match="num_samples must be a whole number, got 2.5"):
        sampler.generate(cfg, params, PROMPTS, num_samples=2.5, **kw)


@pytest.mark.parametrize("temperature", [0.01, 1e-4, 1e-8, 1e-20])
def test_logprobs_stay_exact_at_tiny_temperatures(temperature):
    # As T -> 0 the draw is the argmax with log-prob 0 (minus the others' vanishing mass).
    # Dividing the raw logits by T came out differently in XLA's fused copies of the division:
    # log-probs above 0 (+1.7e-5 at T 0.01, +26 at 1e-8), then other tokens and infinities.
    rng = np.random.default_rng(0)
    logits_BxV = jnp.asarray(rng.normal(0, 3, (8, 300)).astype(np.float32) + 40.0)
    uniform_Bx2 = jnp.asarray(rng.uniform(size=(8, 2)).astype(np.float32))
    sampling = sampler.SamplingConfig(temperature=temperature)
    token_B, logp_B = jax.jit(sampler.sample_with_uniforms, static_argnums=2)(
        logits_BxV, uniform_Bx2, sampling
    )
    np.testing.assert_array_equal(token_B, np.argmax(logits_BxV, axis=-1))
    z = np.asarray(logits_BxV, np.float64) / temperature
    want = z[np.arange(8), token_B] - (
        z.max(-1) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1))
    )
    np.testing.assert_allclose(logp_B, want, atol=1e-6)
    assert np.all(np.asarray(logp_B) <= 0)


def test_compilations_stay_bounded_across_prompt_lengths(model):
    cfg, params = model
    cfg = dataclasses.replace(cfg, max_seq_len=777)  # a fresh static key: counts start at zero
    before = sampler._generate_jit._cache_size()
    rs = np.random.RandomState(0)
    for lengths in ([3, 9, 1, 16], [17, 2, 30, 5], [4, 4, 4, 4], [12, 1, 7, 15], [20, 31, 18, 2]):
        prompts = [rs.randint(1, V, n).tolist() for n in lengths]
        sampler.generate(cfg, params, prompts, max_new_tokens=4, seed=1)
    assert sampler._generate_jit._cache_size() - before == 2  # buckets 16 and 32


def test_padding_rows_and_padded_entry(model):
    cfg, params = model
    tokens_NxP, lens_N = sampler.pad_prompts(PROMPTS, 16, 6, pad_id=0)  # rows 4, 5: padding
    out = sampler.generate_padded(
        cfg, params, jnp.asarray(tokens_NxP), jnp.asarray(lens_N), jax.random.key(0),
        max_new_tokens=5, num_samples=2, temperature=0.0,
    )  # fmt: skip
    # Same shapes, so the same program: padding rows must not change the real rows.
    more = PROMPTS + [[1, 2], [3]]
    ref = sampler.generate(cfg, params, more, max_new_tokens=5, num_samples=2, temperature=0)
    np.testing.assert_array_equal(np.asarray(out.tokens)[:8], ref.tokens[:8])
    assert np.all(np.asarray(out.lengths)[8:] == 0) and np.all(np.asarray(out.tokens)[8:] == 0)
    assert not np.asarray(out.stopped).any() and np.all(np.asarray(out.lengths)[:8] == 5)
    # Greedy samples of one prompt are identical: the shared prefill is reused for both.
    np.testing.assert_array_equal(ref.tokens[0::2], ref.tokens[1::2])


def test_samples_of_a_prompt_share_its_cache(model):
    cfg, params = model
    tokens_NxP, lens_N = sampler.pad_prompts(PROMPTS, 16, 4, pad_id=0)
    prefill = functools.partial(
        sampler.prefill, cfg, max_new_tokens=80, num_samples=5, sampling=sampler.SamplingConfig()
    )
    uniforms = lambda b: sampler.step_uniforms(jax.random.key(0), b, 80)
    state = jax.eval_shape(prefill, params, tokens_NxP, lens_N, uniforms(20))
    # The prompt's K/V once per prompt; only the new tokens' cache has a row per sample.
    kh, dh = cfg.n_kv_heads, cfg.head_dim
    assert [k.shape for k in state.prompt_k_layers] == [(4, kh, dh, 16)] * cfg.n_layers
    assert [v.shape for v in state.prompt_v_layers] == [(4, kh, 16, dh)] * cfg.n_layers
    assert len(state.k_layers[0]) > 1  # several chunks, each read with the shared prompt
    assert {c.shape[0] for c in state.k_layers[0]} == {20}
    assert [c.shape[3] for c in state.k_layers[0]] == [64, 64]  # 79 slots, in whole segments
    # One sample per prompt: nothing to share, the prompt's 16 slots head the first chunk.
    state = jax.eval_shape(
        functools.partial(prefill, num_samples=1), params, tokens_NxP, lens_N, uniforms(4)
    )
    assert state.prompt_k_layers == () and state.prompt_v_layers == ()
    assert [c.shape[:3] for c in state.k_layers[0]] == [(4, kh, dh)] * len(state.k_layers[0])
    assert [c.shape[3] for c in state.k_layers[0]] == [16 + 64, 64]
    assert [c.shape[2] for c in state.v_layers[-1]] == [16 + 64, 64]
    # Rows meet their own prompt: greedy samples of a group equal the one-sample greedy run.
    kw = dict(max_new_tokens=40, temperature=0.0)
    one = sampler.generate(cfg, params, PROMPTS, **kw)
    five = sampler.generate(cfg, params, PROMPTS, num_samples=5, **kw)
    np.testing.assert_array_equal(five.tokens, np.repeat(one.tokens, 5, axis=0))
    np.testing.assert_allclose(five.logprobs, np.repeat(one.logprobs, 5, axis=0), atol=1e-5)
    # T = 1: the prefill samples the only token; there is no new tokens' cache to decode with.
    first = sampler.generate(cfg, params, PROMPTS, max_new_tokens=1, num_samples=5, temperature=0)
    np.testing.assert_array_equal(first.tokens, five.tokens[:, :1])


@pytest.mark.parametrize(
    "t,mesh_sizes,g", [(6, (4, 2, 1), 2), (70, (2, 2, 2), 2), (40, (4, 1, 2), 1)]
)
def test_sharded_params_and_batch_match_single_device(model, t, mesh_sizes, g):
    cfg, params = model
    mesh = sharding_lib.make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh_sizes)))
    shardings = sharding_lib.param_shardings(tf.logical_axes(cfg), mesh)
    sharded = jax.device_put(params, shardings)
    prompts = [[i + 1] * (1 + i % 5) for i in range(8)]
    kw = dict(max_new_tokens=t, num_samples=g, temperature=0.9, eos_ids=(3,), seed=2)
    out = sampler.generate(cfg, sharded, prompts, mesh=mesh, **kw)
    ref = sampler.generate(cfg, params, prompts, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


def test_qk_norm_decoding_matches_forward_and_a_tensor_mesh():
    # Qwen3's q/k norms in the decode step's own layer code (`_decode_layer`): log-probs equal
    # the forward's, with a shared prompt cache (g 2) and on a mesh splitting heads and MLP.
    cfg = _tiny_cfg(qkv_bias=False, qk_norm=True, family="qwen3", head_dim=16)
    params = tf.init_params(cfg, jax.random.key(4))
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, params)
    norms = params["layers"]["attn"]
    for name in ("q_norm", "k_norm"):  # not all ones, so a missing norm scale would show
        norms[name] = norms[name] * jnp.linspace(0.8, 1.25, cfg.head_dim)[None]
    kw = dict(max_new_tokens=20, num_samples=2, temperature=0.8, seed=5)
    out = sampler.generate(cfg, params, PROMPTS, **kw)
    logp_BxTxV = _forward_logp(cfg, params, PROMPTS, out, 2, 0.8)
    chosen = np.take_along_axis(logp_BxTxV, out.tokens[..., None], axis=-1)[..., 0]
    # Within 1e-5 as users' runs compile; the suite's cheap compiles (conftest) round these
    # sharp (x4) logits differently, by up to 1.1e-5 here and 1.8e-5 on the mesh below (the
    # same token). A missing norm moves them by ~1.
    np.testing.assert_allclose(out.logprobs, chosen, atol=3e-5, rtol=0)
    mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = jax.device_put(params, sharding_lib.param_shardings(tf.logical_axes(cfg), mesh))
    on_mesh = sampler.generate(cfg, sharded, PROMPTS, mesh=mesh, **kw)
    np.testing.assert_array_equal(on_mesh.tokens, out.tokens)
    np.testing.assert_allclose(on_mesh.logprobs, out.logprobs, atol=3e-5, rtol=0)


def test_tensor_split_mesh_with_shards_stopping_at_different_steps(model):
    # With the tensor axis split, decode steps hold collectives over it; on XLA:CPU these wait
    # for every device, so a batch shard whose rows all stopped early must keep stepping with
    # the others (before: a rendezvous timeout, then the process aborted).
    cfg, params = model
    mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = jax.device_put(params, sharding_lib.param_shardings(tf.logical_axes(cfg), mesh))
    kw = dict(max_new_tokens=16, temperature=1.0, seed=7)
    free = sampler.generate(cfg, params, PROMPTS[:3], **kw)
    kw["eos_ids"] = (int(free.tokens[0, 4]),)  # row 0 stops by step 5 (same draws)
    # 3 prompts on 4 row shards: the padding row's shard is done before the first step.
    ref = sampler.generate(cfg, params, PROMPTS[:3], **kw)
    assert ref.lengths[0] <= 5 and ref.lengths.max() == 16
    out = sampler.generate(cfg, sharded, PROMPTS[:3], mesh=mesh, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)


def test_step_uniforms_are_the_per_step_keys_draws():
    # Made once per call outside the decode loop; step s draws with fold_in(key, s).
    key = jax.random.key(5)
    u_BxTx2 = np.asarray(sampler.step_uniforms(key, 3, 4))
    for s in range(4):
        want = jax.random.uniform(jax.random.fold_in(key, s), (3, 2), jnp.float32)
        np.testing.assert_array_equal(u_BxTx2[:, s], np.asarray(want))


_COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")


def _ops_inside_loops(hlo_text, *, lines=False):
    """HLO op names in the computations a `while` runs (bodies, conditions and what they call),
    and in the whole program, from a compiled program's text (lines=True: the loops' lines)."""
    comps, name = {}, None
    for line in hlo_text.splitlines():
        head = line.removeprefix("ENTRY ")
        if line.endswith("{") and head.startswith("%"):
            name = head.split()[0].removeprefix("%")
            comps[name] = []
        elif name and line.startswith("  %"):
            comps[name].append(line)
    callees = lambda lines: {
        c
        for line in lines
        for c in re.findall(r"(?:body|condition|calls|to_apply)=%([\w.\-]+)", line)
    }
    ops = lambda lines: {m for line in lines for m in re.findall(r"= \S+ ([\w\-]+)\(", line)}
    todo = [c for lines in comps.values() for line in lines if " while(" in line
            for c in re.findall(r"(?:body|condition)=%([\w.\-]+)", line)]  # fmt: skip
    seen = set()
    while todo:
        c = todo.pop()
        if c not in seen:
            seen.add(c)
            todo.extend(callees(comps[c]))
    if lines:
        return [line for c in seen for line in comps[c]]
    return set().union(*(ops(comps[c]) for c in seen)), ops(sum(comps.values(), []))


@pytest.mark.parametrize("fsdp,tensor,bound", [(8, 1, 1.4), (4, 2, 0.85)])
def test_fsdp_sampling_holds_one_compute_dtype_copy_of_the_model(fsdp, tensor, bound):
    """Float32 params split over fsdp=8, bf16 compute: each device held the gathered float32
    params and the decode copy besides (temporaries 2.1x the float32 model). The prefill now
    runs laid out over the mesh and only the bf16 decode weights are gathered (~1.0x); a tensor
    axis splits them further (fsdp=4 x tensor=2: 1.2x before, ~0.55x; ~0.76x since the decode
    weights are split as the params are, with no per-step exchange: XLA:CPU's buffer
    assignment; at 7B widths in float32 the cost a layer is unchanged)."""
    cfg = config_lib.ModelConfig(
        vocab_size=2048, d_model=512, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=64,
        d_ff=2048, dtype="bfloat16", unroll_layers=1,
    )  # fmt: skip
    mesh = sharding_lib.make_mesh({"data": 1, "fsdp": fsdp, "tensor": tensor})
    abstract = jax.eval_shape(lambda k: tf.init_params(cfg, k), jax.random.key(0))
    where = sharding_lib.param_shardings(tf.logical_axes(cfg), mesh, shapes=abstract)
    params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, where
    )
    rows = lambda *shape: jax.ShapeDtypeStruct(
        shape, jnp.int32, sharding=sharding_lib.batch_sharding(mesh)
    )
    compiled = sampler._generate_jit.lower(
        cfg, params, rows(8, 16), rows(8), jax.random.key(0), max_new_tokens=16, num_samples=2,
        sampling=sampler.SamplingConfig(eos_ids=(1,)), layout=(mesh, sharding_lib.DEFAULT_RULES),
    ).compile()  # fmt: skip
    model_f32 = sum(a.size * 4 for a in jax.tree.leaves(abstract))
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < bound * model_f32, (temp, model_f32)


def test_each_device_decodes_its_own_rows_without_per_step_collectives(model):
    # On a mesh every device runs its own decode loops over its rows (shard_map over the batch
    # axes): no step waits on another device, and FSDP params are gathered once, before them.
    cfg, params = model
    mesh = sharding_lib.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    sharded = jax.device_put(params, sharding_lib.param_shardings(tf.logical_axes(cfg), mesh))
    tokens_NxP, lens_N = sharding_lib.put_batch(sampler.pad_prompts(PROMPTS * 2, 16, 8, 0), mesh)
    sampling = sampler.SamplingConfig(temperature=0.8, eos_ids=(3,))
    compiled = sampler._generate_jit.lower(
        cfg, sharded, tokens_NxP, lens_N, jax.random.key(0), max_new_tokens=70, num_samples=2,
        sampling=sampling, layout=(mesh, sharding_lib.DEFAULT_RULES),
    ).compile()  # fmt: skip
    in_loops, everywhere = _ops_inside_loops(compiled.as_text())
    assert {"while", "dot", "fusion"} & in_loops  # the parser sees the decode loops' ops
    assert "all-gather" in " ".join(everywhere)  # ... and the params' gather outside them
    assert not [op for op in in_loops if op.startswith(_COLLECTIVES)]


def test_tensor_parallel_decode_moves_no_activations_between_devices(model):
    # With heads and the MLP width split over tensor, a decode step needs only the reductions
    # of the split products (o, down; the vocab-split embedding and sampling). The fused q|k|v
    # and gate|up weights were concatenated whole, so each tensor shard's part of their output
    # held other shards' heads: 6 collective-permutes a layer, every step (~1.2x slower at
    # tensor=2 on CPU; per token on every accelerator).
    cfg, params = model
    mesh = sharding_lib.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
    sharded = jax.device_put(params, sharding_lib.param_shardings(tf.logical_axes(cfg), mesh))
    tokens_NxP, lens_N = sharding_lib.put_batch(sampler.pad_prompts(PROMPTS * 2, 16, 8, 0), mesh)
    compiled = sampler._generate_jit.lower(
        cfg, sharded, tokens_NxP, lens_N, jax.random.key(0), max_new_tokens=40, num_samples=2,
        sampling=sampler.SamplingConfig(temperature=0.8), layout=(mesh, sharding_lib.DEFAULT_RULES),
    ).compile()  # fmt: skip
    in_loops = _ops_inside_loops(compiled.as_text(), lines=True)
    ops = lambda name: [re.search(r"= (\S+) ", x)[1] for x in in_loops if f" {name}(" in x]
    assert ops("all-reduce")  # the parser sees the split products' reductions
    assert not ops("all-to-all")
    # Only sampling's scan over the vocab shards passes one number a row ([rows, 1]) on.
    moved = [shape for shape in ops("collective-permute") if not shape.endswith(",1]{1,0}")]
    assert not moved, moved


@pytest.mark.parametrize("g, temperature", [(1, 1.0), (4, 1.0), (3, 0.0)])
def test_sampling_bytes_counts_the_cache_and_row_buffers_a_call_holds(model, g, temperature):
    cfg, params = model
    n, p, t = 2, 16, 150  # t: three decode segments, the last one partly past the cache
    sampling = sampler.SamplingConfig(temperature=temperature)
    uniform = jax.ShapeDtypeStruct((n * g, t if temperature else 0, 2), jnp.float32)
    state = jax.eval_shape(
        functools.partial(sampler.prefill, cfg, max_new_tokens=t, num_samples=g, sampling=sampling),
        params,
        jax.ShapeDtypeStruct((n, p), jnp.int32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
        uniform,
    )
    held = [
        state.prompt_k_layers,
        state.prompt_v_layers,
        state.k_layers,
        state.v_layers,
        state.tokens_BxT,
        state.logprobs_BxT,
        state.uniform_BxTx2,
    ]
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(held))
    assert sampler.sampling_bytes(cfg, n, p, g, t, greedy=temperature == 0) == nbytes


def test_a_call_beyond_memory_is_refused_before_compiling(model):
    cfg, params = model
    with pytest.raises(
        memory.OutOfMemory,
        match=r"sampling 4 prompts x 2 samples x 1099511627776 new tokens \(prompts padded to 16: "
        r"the KV cache and token buffers\) needs at least [0-9.]+ GiB, more than this host's "
        r"[0-9.]+ GiB of memory: sample fewer prompts per call",
    ):
        sampler.generate(cfg, params, PROMPTS, max_new_tokens=2**40, num_samples=2)
    mesh = sharding_lib.make_mesh({"data": 8})
    with pytest.raises(
        memory.OutOfMemory,
        match=r"sampling 8 prompts .* on each of 8 devices\), more than this host's",
    ):
        sampler.generate(cfg, params, PROMPTS, max_new_tokens=2**40, num_samples=2, mesh=mesh)


# Token i of the tiny vocabulary adds 1-3 letters to the text; EOS (255) adds nothing.
TOKEN_BYTES = [bytes([97 + i % 7]) * (1 + i % 3) for i in range(V - 1)] + [b""]


def _first_stop(tokens, length, stops):
    """The length a row has when it stops at the first token completing a stop string."""
    text = b""
    for j, token in enumerate(tokens[:length]):
        text += TOKEN_BYTES[token]
        if any(stop in text for stop in stops):
            return j + 1
    return None


@pytest.mark.parametrize(
    "g, temperature, mesh_sizes",
    [(1, 1.0, None), (3, 0.7, None), (1, 0.0, None), (2, 1.0, (2, 2, 2))],
)
def test_stop_strings_end_rows_where_their_text_first_holds_one(model, g, temperature, mesh_sizes):
    cfg, params = model
    mesh = (
        None
        if mesh_sizes is None
        else sharding_lib.make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh_sizes)))
    )
    run = dict(max_new_tokens=40, num_samples=g, temperature=temperature, eos_ids=(V - 1,))
    free = sampler.generate(cfg, params, PROMPTS, seed=3, mesh=mesh, **run)
    # Stops that the free rows' texts hold at various places: across tokens, inside one, 1 byte.
    stops = (b"cab", b"eee", b"gfgf", b"bbbcc")
    out = sampler.generate(
        cfg, params, PROMPTS, seed=3, mesh=mesh, stop_strings=stops, token_bytes=TOKEN_BYTES, **run
    )
    ended = 0
    for r in range(len(PROMPTS) * g):
        at = _first_stop(free.tokens[r], free.lengths[r], stops)
        n = free.lengths[r] if at is None else at
        ended += at is not None
        assert out.lengths[r] == n, r
        assert out.stopped[r] == (free.stopped[r] or at is not None), r
        np.testing.assert_array_equal(out.tokens[r, :n], free.tokens[r, :n])
        np.testing.assert_array_equal(out.tokens[r, n:], 0)
        np.testing.assert_allclose(out.logprobs[r, :n], free.logprobs[r, :n], atol=1e-5)
    assert ended >= len(PROMPTS) * g // 2, ended  # the stops did stop rows
    # One string is one stop string (not one per character).
    one = sampler.generate(cfg, params, PROMPTS, seed=3, mesh=mesh, stop_strings="gfgf",
                           token_bytes=TOKEN_BYTES, **run)  # fmt: skip
    for r in range(len(PROMPTS) * g):
        at = _first_stop(free.tokens[r], free.lengths[r], (b"gfgf",))
        assert one.lengths[r] == (free.lengths[r] if at is None else at), r


def test_stop_string_hits_match_a_search_of_the_text():
    # Tokens of 0-9 bytes over a 3-letter alphabet (so stops occur often): inside one token,
    # across two or three, at the text's start; tokens past token_bytes add nothing.
    rng = np.random.default_rng(0)
    pieces = [bytes(rng.choice(list(b"abc"), rng.integers(0, 10))) for _ in range(60)]
    stops = (b"abca", b"cc", b"b", b"aaaaaa")
    for chosen in ((b"abca", b"cc"), (b"aaaaaa",), (b"b",), stops):
        table = jnp.asarray(sampler.stop_table(pieces, chosen, 64))
        w = max(map(len, chosen)) - 1
        tokens = rng.integers(0, 64, (16, 30))
        tail = jnp.full((16, w), -1, jnp.int32)
        hits = []
        for j in range(30):
            hit, tail = sampler._stop_string_hits(tail, table[tokens[:, j]], chosen)
            hits.append(np.asarray(hit))
        for r in range(16):
            text = b""
            for j in range(30):
                before = text
                text += pieces[tokens[r, j]] if tokens[r, j] < len(pieces) else b""
                # A stop ends in token j: the text holds it now, and did not hold that
                # occurrence before (it ends past the old text's end).
                expected = any(text.find(s, max(0, len(before) - len(s) + 1)) >= 0 for s in chosen)
                assert hits[j][r] == expected, (chosen, r, j)


def test_stop_strings_that_cannot_work_are_clear_errors(model):
    cfg, params = model
    run = lambda **kw: sampler.generate(cfg, params, PROMPTS, max_new_tokens=4, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="non-empty strings"):
        run(stop_strings=("ab", ""), token_bytes=TOKEN_BYTES)  # "" would stop every row at once
    with pytest.raises(ValueError, match="non-empty strings, got \\['a'\\]"):
        run(stop_strings=(["a"],), token_bytes=TOKEN_BYTES)
    with pytest.raises(TypeError, match="a string or a sequence of them, got 5"):
        run(stop_strings=5, token_bytes=TOKEN_BYTES)
    with pytest.raises(ValueError, match="need token_bytes"):
        run(stop_strings="ab")
    with pytest.raises(TypeError, match="one bytes object per token id"):
        run(stop_strings="ab", token_bytes=[p.decode() for p in TOKEN_BYTES])
