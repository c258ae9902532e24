"""Jitted sampling with a KV cache: prefill, `lax.while_loop` decode, group sampling, log-probs.

N prompts, G samples per prompt, B = N*G rows, P prompt bucket length, T new tokens,
S cache length, V vocab.

Log-probs are those of the chosen token under the temperature-scaled distribution BEFORE
top-p / top-k filtering (log_softmax(logits / temperature)), the quantity the RL losses compare
with the trainer's log-probs. Greedy decoding (temperature 0) reports the unscaled log-probs.

Prompts are left-padded, so every row writes its new tokens at the same cache slot and a single
scalar `cache_index` drives the whole batch; a row with prompt length 0 is a padding row that is
done from the start (length 0, pad tokens).

The cache has two parts. The prompt's K/V, [N, .., P], is written once by the prefill and shared
by the G samples of its prompt: decoding attends to it with the queries of all G samples in one
product, so the prompt is neither copied G times nor read G times per step. The new tokens' K/V,
[B, .., T - 1] rounded up to whole chunks, is per row, split into chunks (`attention_bounds`).
With one sample per prompt there is nothing to share, and the prompt's K/V is the head of the
first chunk instead (one product fewer per layer and step).
"""

import dataclasses
import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from r1jax import memory
from r1jax import sharding as sharding_lib
from r1jax.model import config as config_lib
from r1jax.model import transformer

# Prompt lengths are padded up to one of these, so a run compiles a handful of programs.
PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
# Decoding attends over a growing cache prefix (`attention_bounds`), growing by a multiple of
# SEGMENT_SLOTS slots: XLA:CPU vectorises the softmax's exp along the slots in whole blocks of
# 64 (AVX-512) and runs the rest element by element (an exp over [.., 32] slots took 8x longer
# per element than over [.., 64]). Each segment is its own decode loop (`decode`), compiled with
# the whole step, so compilation grows with the segments: n_layers * segments <= SEGMENT_BUDGET
# bounds it (benchmarks' tiny model, 4 layers, T 1024: 8 segments; T 128: 2, 4-6 s on 2 cores).
SEGMENT_SLOTS, SEGMENT_BUDGET = 64, 32


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (hashable: part of the compiled program)."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    # A row also stops once its text (the bytes of its tokens, `token_bytes`) contains one of
    # these; the stop string's token is its last (the text after it is the caller's to cut).
    stop_strings: tuple[bytes, ...] = ()

    def __post_init__(self):
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(
                f"temperature must be finite and >= 0 (0 = greedy), got {self.temperature}"
            )
        if 0 < self.temperature < np.finfo(np.float32).tiny:  # flushed to 0 in float32: NaN
            raise ValueError(
                f"temperature {self.temperature} is below float32's smallest normal number; "
                "use 0 for greedy decoding"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.pad_id < 0 or any(e < 0 for e in self.eos_ids):
            raise ValueError(f"eos_ids {self.eos_ids} and pad_id {self.pad_id} must be >= 0")
        if not all(isinstance(x, bytes) and x for x in self.stop_strings):
            raise ValueError(f"stop_strings must be non-empty bytes, got {self.stop_strings}")


@flax.struct.dataclass
class SampleOutput:
    """tokens, logprobs [B, T] (pad / 0 after the stop token), lengths [B] (stop token
    included), stopped [B] (True: ended by an EOS id or a stop string; False: truncated at T or
    a padding row)."""

    tokens: jax.Array
    lengths: jax.Array
    logprobs: jax.Array
    stopped: jax.Array


@flax.struct.dataclass
class DecodeState:
    """The while_loop carry: `step` is the index of the next token to sample."""

    step: jax.Array
    # The draws' uniform pairs [B, T, 2] (`step_uniforms`); [B, 0, 2] when greedy.
    uniform_BxTx2: jax.Array
    prompt_lens_B: jax.Array
    last_token_B: jax.Array
    # The prompts' cache, one entry per layer, written by the prefill and only read after:
    # K [N, K, Dh, P], V [N, K, P, Dh]; the mask [N, P] is False on the left padding. Empty when
    # G = 1: the prompt's K/V then fill slots [0, P) of the first new-token chunk.
    prompt_k_layers: tuple[jax.Array, ...]
    prompt_v_layers: tuple[jax.Array, ...]
    prompt_mask_NxP: jax.Array
    # The new tokens' cache (slot P + i holds new token i), one per layer: layer l reads and
    # writes its own buffers, never a slice of a stacked [L, ...] array (a copy per layer per
    # token). Each is a tuple of chunks, split at the `attention_bounds`, so a step reads only
    # the chunks filled so far, in place (a slice of one buffer would be a copy): K chunks
    # [B, K, Dh, n], V chunks [B, K, n, Dh].
    k_layers: tuple[jax.Array, ...]
    v_layers: tuple[jax.Array, ...]
    tokens_BxT: jax.Array
    logprobs_BxT: jax.Array
    lengths_B: jax.Array
    done_B: jax.Array
    stopped_B: jax.Array
    # The last bytes of each row's text, as many as the longest stop string less one (-1 before
    # the text's start); [B, 0] without stop strings.
    tail_BxW: jax.Array


def prompt_bucket(length: int) -> int:
    """The smallest bucket in PROMPT_BUCKETS that holds `length` tokens."""
    for b in PROMPT_BUCKETS:
        if b >= length:
            return b
    raise ValueError(f"prompt of {length} tokens is longer than the largest bucket")


# ---------------------------------------------------------------------------------------------
# Sampling from one step's logits.


def _top_p_threshold(probs_BxV: jax.Array, top_p: float) -> jax.Array:
    """The largest t with sum(p >= t) >= top_p per row: the smallest probability kept by top-p.

    Bisection over float32 bit patterns (ordered like the values for p >= 0): 31 masked sums
    over [B, V] instead of a full sort per decode step, which on CPU is 10-20x slower. In exact
    arithmetic the kept set {p >= t} is HF's: the shortest descending prefix whose mass reaches
    top_p, plus any ties of its last token.
    """
    as_float = lambda bits: jax.lax.bitcast_convert_type(bits, jnp.float32)
    # Invariant: `lo` keeps enough mass (t = 0 keeps everything), `hi` does not (above the max).
    hi_B = jax.lax.bitcast_convert_type(jnp.max(probs_BxV, axis=-1), jnp.int32) + 1
    lo_B = jnp.zeros_like(hi_B)

    def body(_, bounds):
        lo_B, hi_B = bounds
        mid_B = lo_B + (hi_B - lo_B) // 2
        kept_B = jnp.sum(jnp.where(probs_BxV >= as_float(mid_B)[:, None], probs_BxV, 0.0), -1)
        ok_B = kept_B >= top_p
        return jnp.where(ok_B, mid_B, lo_B), jnp.where(ok_B, hi_B, mid_B)

    lo_B, _ = jax.lax.fori_loop(0, 31, body, (lo_B, hi_B))
    return as_float(lo_B)


def _filter_mask(logp_BxV: jax.Array, top_p: float, top_k: int) -> jax.Array:
    """Allowed tokens after top-k then top-p (HF order); ties at the threshold are kept."""
    v = logp_BxV.shape[-1]
    k = v if top_k <= 0 else min(top_k, v)
    allowed_BxV = jnp.ones(logp_BxV.shape, bool)
    if k < v:
        kth_B = jax.lax.top_k(logp_BxV, k)[0][:, -1]
        allowed_BxV = logp_BxV >= kth_B[:, None]
    if top_p < 1.0:
        # Renormalised over the top-k set, as HF's top-p sees it after its top-k warper.
        probs_BxV = jnp.where(allowed_BxV, jnp.exp(logp_BxV), 0.0)
        probs_BxV = probs_BxV / jnp.sum(probs_BxV, axis=-1, keepdims=True)
        allowed_BxV = allowed_BxV & (probs_BxV >= _top_p_threshold(probs_BxV, top_p)[:, None])
    return allowed_BxV


def _first_or_last(hit_BxN: jax.Array, nonzero_BxN: jax.Array) -> jax.Array:
    """Per row: the first index where `hit`, else (float rounding past the end) the last
    index where `nonzero`; `hit` implies `nonzero`, so the answer always has mass."""
    last_B = jnp.max(jnp.where(nonzero_BxN, jnp.arange(hit_BxN.shape[-1])[None, :], 0), axis=-1)
    return jnp.where(jnp.any(hit_BxN, axis=-1), jnp.argmax(hit_BxN, axis=-1), last_B)


def step_uniforms(key: jax.Array, b: int, t: int) -> jax.Array:
    """The draws' uniform pairs [B, T, 2] in [0, 1): step s uses uniform(fold_in(key, s), (B, 2)).

    Made once per call, before the decode loops: inside a step, the two threefry calls ran as
    rolled XLA:CPU loops (a dozen small thunks per round), several percent of a tiny model's step.
    """
    draw = lambda s: jax.random.uniform(jax.random.fold_in(key, s), (b, 2), jnp.float32)
    return jax.vmap(draw, out_axes=1)(jnp.arange(t, dtype=jnp.int32))


def _inverse_cdf_sample(probs_BxV: jax.Array, uniform_Bx2: jax.Array) -> jax.Array:
    """One categorical draw per row from unnormalised probs and two uniforms in [0, 1) per row.

    Two-level inverse CDF: the first uniform picks a block of C ~ sqrt(V) tokens by the blocks'
    masses, the second a token inside it by the tokens' masses there. A cumsum over all V (a
    reduce-window on XLA:CPU) cost 5-10x the whole draw. The second uniform keeps the draw exact
    at large V: a float32 uniform takes 2^23 values, and with one uniform for both levels a
    token's chance moved by up to 2^-23 (a token of mass 1e-6 drawn up to 12% too often or too
    rarely), 2.5e-3 to 3.7e-3 in total variation at a 152k vocabulary (Qwen2's), whatever the
    distribution's shape. With one uniform a level, an entry's chance at either level is off by
    about one uniform value, 2^-23 (plus the cdfs' float32 rounding), so the draw is off by about
    (blocks + C) / 2^24 in total variation at most: 5e-5 at 152k, where every uniform of both
    levels gives 0.7e-5 to 1.7e-5 (`tests/test_sampler.py`). A token of zero probability is
    never chosen.
    """
    b, v = probs_BxV.shape
    c = max(8, 1 << (max(1, int(np.sqrt(v))) - 1).bit_length())  # a power of two >= sqrt(V)
    nb = -(-v // c)
    blocks_BxNxC = jnp.pad(probs_BxV, ((0, 0), (0, nb * c - v))).reshape(b, nb, c)
    mass_BxN = jnp.sum(blocks_BxNxC, axis=-1)
    cdf_BxN = jnp.cumsum(mass_BxN, axis=-1)
    # u in (0, 1], so a target is > 0 and a zero-mass prefix never reaches it.
    u_Bx2 = 1.0 - uniform_Bx2
    target_B = u_Bx2[:, 0] * cdf_BxN[:, -1]
    block_B = _first_or_last((cdf_BxN >= target_B[:, None]) & (mass_BxN > 0), mass_BxN > 0)
    inside_BxC = jnp.take_along_axis(blocks_BxNxC, block_B[:, None, None], axis=1)[:, 0]
    cdf_BxC = jnp.cumsum(inside_BxC, axis=-1)
    target_B = u_Bx2[:, 1] * cdf_BxC[:, -1]
    offset_B = _first_or_last((cdf_BxC >= target_B[:, None]) & (inside_BxC > 0), inside_BxC > 0)
    return (block_B * c + offset_B).astype(jnp.int32)


def sample_logits(
    logits_BxV: jax.Array, key: jax.Array, sampling: SamplingConfig
) -> tuple[jax.Array, jax.Array]:
    """Chosen tokens [B] and their log-probs [B] under the temperature-scaled, unfiltered law
    (`sample_with_uniforms` with uniform(key, (B, 2)))."""
    uniform_Bx2 = jax.random.uniform(key, (logits_BxV.shape[0], 2), jnp.float32)
    return sample_with_uniforms(logits_BxV, uniform_Bx2, sampling)


def sample_with_uniforms(
    logits_BxV: jax.Array, uniform_Bx2: jax.Array, sampling: SamplingConfig
) -> tuple[jax.Array, jax.Array]:
    """Chosen tokens [B] and their log-probs [B]; row b draws with the pair uniform_Bx2[b] in
    [0, 1) (`_inverse_cdf_sample`; unused when greedy).

    One exp pass over [B, V]: the draw uses the unnormalised weights exp(z - max) (the inverse
    CDF is scale-free) and the chosen token's log-prob is z - max - log(sum), the value
    log_softmax gives, so neither [B, V] log-probs nor normalised probs are materialised unless
    top-p / top-k need them.
    """
    z_BxV = logits_BxV.astype(jnp.float32)
    if sampling.temperature not in (0, 1):
        # The max is taken out before the division: (z - max) / T is <= 0 with an exact 0 at
        # the max however XLA rounds each fused copy of the division, and finite for any T > 0
        # (z / T alone overflowed, or came out different in the max and the exp, at T << 1).
        z_BxV = (z_BxV - jnp.max(z_BxV, axis=-1, keepdims=True)) / sampling.temperature
    max_B = jnp.max(z_BxV, axis=-1)
    weights_BxV = jnp.exp(z_BxV - max_B[:, None])
    log_total_B = jnp.log(jnp.sum(weights_BxV, axis=-1))
    if sampling.temperature == 0:
        token_B = jnp.argmax(z_BxV, axis=-1).astype(jnp.int32)
    else:
        if sampling.top_k > 0 or sampling.top_p < 1.0:
            logp_BxV = z_BxV - (max_B + log_total_B)[:, None]
            allowed_BxV = _filter_mask(logp_BxV, sampling.top_p, sampling.top_k)
            weights_BxV = jnp.where(allowed_BxV, weights_BxV, 0.0)
        token_B = _inverse_cdf_sample(weights_BxV, uniform_Bx2)
    z_B = jnp.take_along_axis(z_BxV, token_B[:, None], axis=-1)[:, 0]
    return token_B, z_B - max_B - log_total_B


# ---------------------------------------------------------------------------------------------
# Model calls.


def _last_logits(cfg, params, tokens_BxT, positions_BxT, cache, cache_index, kv_mask_BxS):
    """Logits [B, V] of the last of T new tokens, and the updated cache.

    As `transformer.forward_cached`, but unembeds only the last position, so a long prefill
    never materialises [B, P, V] logits.
    """
    mask = transformer.cache_mask(kv_mask_BxS, tokens_BxT.shape[1], cache_index)
    h_BxTxD, cache = transformer.Transformer(cfg).apply(
        {"params": params}, tokens_BxT, positions_BxT, mask, cache, cache_index
    )
    return transformer.unembed(cfg, params, h_BxTxD[:, -1]), cache


def _rms_norm_t(cfg, scale_D, x_DxB):
    # As transformer.RMSNorm, on feature-major activations (statistics over axis 0).
    return transformer.rms_norm(x_DxB, scale_D, cfg.rms_norm_eps, axis=0)


def _rope_t(x_NxDhxB, cos_DhxB, sin_DhxB):
    # As transformer._apply_rope (rotate-half), on feature-major [N, Dh, B] activations.
    x = x_NxDhxB.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=1)
    rotated = jnp.concatenate([-x2, x1], axis=1)
    out = x * cos_DhxB[None] + rotated * sin_DhxB[None]
    return out.astype(x_NxDhxB.dtype)


def _attend_chunk(q_BxKxGxDh, k_BxKxDhxN, v_BxKxNxDh, kv_mask_BxN, dt):
    """Attention of G queries per row and kv head over one cache chunk of N slots (the mask's
    rows may broadcast: [1, N]), unnormalised:
    the scores' max [B, K, G, 1], the sum of exp(score - max) [B, K, G, 1] and the
    exp-weighted sum of values [B, K, G, Dh] (combined over chunks by `_attend`)."""
    # Batched dots over (B, K). K is cached as [Dh, S] so q.K is a plain (not transposed)
    # product: on XLA:CPU 2-3x faster than against [S, Dh] at G 2-4, Dh 64 (0.10 vs 0.29 ms per
    # layer at B 32, S 143), though slower at G 1; a broadcast multiply-reduce is slower still.
    scores_BxKxGxN = jnp.einsum(
        "bkge,bkes->bkgs", q_BxKxGxDh, k_BxKxDhxN.astype(dt), preferred_element_type=jnp.float32
    )
    scores_BxKxGxN = jnp.where(
        kv_mask_BxN[:, None, None, :], scores_BxKxGxN, jnp.finfo(jnp.float32).min
    )
    max_BxKxGx1 = jnp.max(scores_BxKxGxN, axis=-1, keepdims=True)
    weights_BxKxGxN = jnp.exp(scores_BxKxGxN - max_BxKxGx1)
    sum_BxKxGx1 = jnp.sum(weights_BxKxGxN, axis=-1, keepdims=True)
    out_BxKxGxDh = jnp.einsum(
        "bkgs,bkse->bkge",
        weights_BxKxGxN.astype(dt),
        v_BxKxNxDh.astype(dt),
        preferred_element_type=jnp.float32,
    )
    return max_BxKxGx1, sum_BxKxGx1, out_BxKxGxDh


def _by_prompt(x_BxKxGxE, n):
    """[B, K, G, E] -> [N, K, M*G, E] for B = N*M rows, the M samples of a prompt adjacent: the
    rows of one prompt's samples become rows of one product against that prompt's cache."""
    b, k, g, e = x_BxKxGxE.shape
    x = x_BxKxGxE.reshape(n, b // n, k, g, e)
    return jnp.transpose(x, (0, 2, 1, 3, 4)).reshape(n, k, (b // n) * g, e)


def _by_row(x_NxKxMGxE, b):
    """The inverse of `_by_prompt`: [N, K, M*G, E] -> [B, K, G, E]."""
    n, k, mg, e = x_NxKxMGxE.shape
    m = b // n
    x = x_NxKxMGxE.reshape(n, k, m, mg // m, e)
    return jnp.transpose(x, (0, 2, 1, 3, 4)).reshape(b, k, mg // m, e)


def _attend(q_BxKxGxDh, prompt_cache, k_chunks, v_chunks, chunk_masks, dt):
    """Attention over a prompt's shared cache and the given chunks of the row's own cache (all
    read in place), one softmax over their unmasked slots; [B, K, G, Dh].

    `prompt_cache` is (K [N, K, Dh, P], V [N, K, P, Dh], mask [N, P]) for N prompts of M = B / N
    adjacent samples each: their queries meet the prompt's keys in one product of M*G rows per
    kv head, so each prompt slot is read once per prompt, not once per sample. None when the
    prompt's K/V are in the chunks (G = 1).
    """
    parts = [
        _attend_chunk(q_BxKxGxDh, k, v, mask, dt)
        for k, v, mask in zip(k_chunks, v_chunks, chunk_masks, strict=True)
    ]
    if prompt_cache is not None:
        b, n = q_BxKxGxDh.shape[0], prompt_cache[0].shape[0]
        prompt_part = _attend_chunk(_by_prompt(q_BxKxGxDh, n), *prompt_cache, dt)
        parts.append(tuple(_by_row(x, b) for x in prompt_part))
    if len(parts) == 1:  # nothing to combine
        _, total_BxKxGx1, out_BxKxGxDh = parts[0]
        return (out_BxKxGxDh / total_BxKxGx1).astype(dt)
    max_BxKxGx1 = functools.reduce(jnp.maximum, [m for m, _, _ in parts])
    scales = [jnp.exp(m - max_BxKxGx1) for m, _, _ in parts]
    total_BxKxGx1 = sum(scale * total for scale, (_, total, _) in zip(scales, parts))
    out_BxKxGxDh = sum(scale * o for scale, (_, _, o) in zip(scales, parts))
    return (out_BxKxGxDh / total_BxKxGx1).astype(dt)


def attention_bounds(prompt_len: int, cache_len: int, n_layers: int) -> tuple[int, ...]:
    """The cache prefixes decoding attends over, one per segment of the decode loop; the last
    one, the cache's capacity, is `cache_len` rounded up to a whole segment.

    Decode step t feeds the token sampled at step t - 1 into slot P + t - 1 and needs slots
    [0, P + t); besides the prompt's slots [0, P) it attends over the new tokens' slots up to
    the first bound past P + t - 1, so reading the cache costs what is filled (rounded up to a
    segment) rather than all S slots per step. The new tokens' cache is split at the bounds.
    Segments are of equal size, a multiple of SEGMENT_SLOTS (the slots past `cache_len` are
    never written and always masked), and each layer compiles its own attention per segment, so
    there are at most SEGMENT_BUDGET // n_layers of them (a model of more than
    SEGMENT_BUDGET // 2 layers reads the whole cache every step).
    """
    new = cache_len - prompt_len
    if new <= 0:  # one new token: the prefill samples it, nothing is decoded
        return (prompt_len,)
    blocks = -(-new // SEGMENT_SLOTS)
    per_segment = -(-blocks // max(1, min(blocks, SEGMENT_BUDGET // n_layers)))
    size = per_segment * SEGMENT_SLOTS
    return tuple(prompt_len + size * (j + 1) for j in range(-(-blocks // per_segment)))


def _write_slot(chunks, new, slot, segment, *, axis):
    """Writes `new` (size 1 on `axis`) at slot `slot` of a cache split into chunks along `axis`
    (slot 0 starts chunk 0); the slot lies in chunk `segment` (static). Only that chunk is
    written, in place."""
    at = [jnp.int32(0)] * chunks[segment].ndim
    at[axis] = slot - sum(chunk.shape[axis] for chunk in chunks[:segment])
    written = jax.lax.dynamic_update_slice(chunks[segment], new.astype(chunks[segment].dtype), at)
    return chunks[:segment] + (written,) + chunks[segment + 1 :]


def _decode_layer(
    cfg, x_DxB, layer, prompt_cache, k_chunks, v_chunks, slot, rope, chunk_masks, segment
):
    """One decoder layer for one new token per row: writes its K/V at slot `slot` of the chunks
    (in place) and attends to the prompt's slots and to the new ones `chunk_masks` allow,
    itself included. Returns x and the new tokens' caches.

    `prompt_cache` is this layer's (K, V, mask) of the prompts (`_attend`), or None when they
    head the first chunk. The new tokens' cache is split into chunks at the `attention_bounds`
    (K [B, K, Dh, n], V [B, K, n, Dh]); `slot` counts from the first chunk's start and lies in
    chunk `segment` (static: each segment has its own decode loop), and attention reads chunks
    0..segment only, so its cost follows the filled length, not S. `chunk_masks` covers those
    chunks.

    Activations are feature-major ([D, B]) and `layer` is one entry of `decode_layers`
    (transposed [out, in] kernels, q|k|v and gate|up fused), so every projection is W @ x with
    the weight as the left operand: at B = 32 on XLA:CPU that is 1.5-3x faster than x @ W,
    which repacks the whole weight matrix for each product.
    """
    dt = jnp.dtype(cfg.dtype)
    b, h, kh, dh = x_DxB.shape[1], cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    qkv = layer["qkv_kernel"]
    qkv_NxB = qkv.reshape(-1, qkv.shape[-1]) @ _rms_norm_t(cfg, layer["attn_norm"], x_DxB)
    if cfg.qkv_bias:
        qkv_NxB = qkv_NxB + layer["qkv_bias"][:, None]
    # The cache and the attention products are row-major: [B, heads, Dh] from here on.
    if qkv.ndim == 2:  # [(H + 2K) Dh, D]: all q heads, then all k, then all v
        qkv_NxDhxB = qkv_NxB.reshape(h + 2 * kh, dh, b)
        q_HxDhxB, k_KxDhxB, v_KxDhxB = jnp.split(qkv_NxDhxB, [h, h + kh])
    else:  # [K, (G + 2) Dh, D]: per kv head, its G query heads, its k, its v
        qkv_KxG2xDhxB = qkv_NxB.reshape(kh, h // kh + 2, dh, b)
        q_HxDhxB = qkv_KxG2xDhxB[:, : h // kh].reshape(h, dh, b)
        k_KxDhxB, v_KxDhxB = qkv_KxG2xDhxB[:, -2], qkv_KxG2xDhxB[:, -1]
    if cfg.qk_norm:  # as transformer.Attention._head_norm: each head over Dh (axis 1)
        q_HxDhxB = transformer.rms_norm(q_HxDhxB, layer["q_norm"], cfg.rms_norm_eps, axis=1)
        k_KxDhxB = transformer.rms_norm(k_KxDhxB, layer["k_norm"], cfg.rms_norm_eps, axis=1)
    q_BxHxDh = jnp.transpose(_rope_t(q_HxDhxB, *rope), (2, 0, 1))
    k_BxKxDh = jnp.transpose(_rope_t(k_KxDhxB, *rope), (2, 0, 1))
    v_BxKxDh = jnp.transpose(v_KxDhxB, (2, 0, 1))
    k_chunks = _write_slot(k_chunks, k_BxKxDh[..., None], slot, segment, axis=3)
    v_chunks = _write_slot(v_chunks, v_BxKxDh[:, :, None], slot, segment, axis=2)
    q_BxKxGxDh = q_BxHxDh.reshape(b, kh, h // kh, dh) * jnp.asarray(dh**-0.5, dt)
    read = segment + 1
    out_BxKxGxDh = _attend(
        q_BxKxGxDh, prompt_cache, k_chunks[:read], v_chunks[:read], chunk_masks, dt
    )
    x_DxB = x_DxB + layer["o_kernel"] @ out_BxKxGxDh.reshape(b, h * dh).T
    h_DxB = _rms_norm_t(cfg, layer["mlp_norm"], x_DxB)
    gate_up = layer["gate_up_kernel"]
    if gate_up.ndim == 2:  # [2F, D]: all gate rows, then all up rows
        gate_FxB, up_FxB = jnp.split(gate_up @ h_DxB, 2, axis=0)
    else:  # [S, 2F/S, D]: per shard of the MLP width, its gate rows, then its up rows
        gate_up_Sx2xFxB = (gate_up.reshape(-1, gate_up.shape[-1]) @ h_DxB).reshape(
            gate_up.shape[0], 2, -1, b
        )
        gate_FxB, up_FxB = (gate_up_Sx2xFxB[:, i].reshape(-1, b) for i in (0, 1))
    return x_DxB + layer["down_kernel"] @ (jax.nn.silu(gate_FxB) * up_FxB), k_chunks, v_chunks


def _decode_logits(
    cfg, params, layers, rope_tables, token_B, position_B, state, slot, new_mask_1xR, segment
):
    """Logits [B, V] of one new token per row, and the new tokens' caches with its K/V written
    at new-token slot `slot` (global slot P + slot).

    The same math as `transformer.forward_cached` with T = 1, but unrolled over per-layer
    params (`decode_layers`) and per-layer caches: a scan over the stacked [L, ...] arrays
    copies each layer's weights and cache out of the stack every token, which on CPU was a
    third of the step. Attention covers the prompt's cache (`state.prompt_*`, masked by its
    padding) and the new tokens' chunks 0..segment, where `segment` (static) is the chunk
    holding `slot`; `new_mask_1xR` covers the new tokens' slots of those chunks and must mask
    out slots > `slot` (stale or zero K/V). `rope_tables` are RoPE's cos and sin
    [Dh, positions] (`decode`).
    """
    dt = jnp.dtype(cfg.dtype)
    k_layers, v_layers = state.k_layers, state.v_layers
    if state.prompt_k_layers:
        prompt_caches = [
            (k, v, state.prompt_mask_NxP)
            for k, v in zip(state.prompt_k_layers, state.prompt_v_layers, strict=True)
        ]
        mask_xR = new_mask_1xR
    else:  # G = 1: the prompt's K/V are slots [0, P) of the first chunk (`prefill`).
        prompt_caches = [None] * cfg.n_layers
        p = state.prompt_mask_NxP.shape[1]
        new_mask_BxR = jnp.broadcast_to(new_mask_1xR, (token_B.shape[0], new_mask_1xR.shape[1]))
        mask_xR = jnp.concatenate([state.prompt_mask_NxP, new_mask_BxR], axis=1)
        slot = slot + p  # counted from the first chunk's start, which holds the prompt
    ends = np.cumsum([k.shape[3] for k in k_layers[0]])[: segment + 1]
    chunk_masks = tuple(jnp.split(mask_xR, ends[:-1], axis=1))
    x_DxB = jnp.take(params["embedding"], token_B, axis=0).astype(dt).T
    rope = tuple(jnp.take(table_DhxS, position_B, axis=1) for table_DhxS in rope_tables)
    new_k, new_v = [], []
    for layer, prompt_cache, k_chunks, v_chunks in zip(
        layers["layers"], prompt_caches, k_layers, v_layers, strict=True
    ):
        x_DxB, k_chunks, v_chunks = _decode_layer(
            cfg, x_DxB, layer, prompt_cache, k_chunks, v_chunks, slot, rope, chunk_masks, segment
        )
        new_k.append(k_chunks)
        new_v.append(v_chunks)
    h_DxB = _rms_norm_t(cfg, params["final_norm"]["scale"], x_DxB)
    logits_VxB = jnp.matmul(layers["unembed"], h_DxB, preferred_element_type=jnp.float32)
    # The barrier keeps XLA from folding the transpose into the product (a transposed-operand
    # dot that XLA:CPU runs 3x slower); the transpose itself is one small copy.
    return jax.lax.optimization_barrier(logits_VxB).T, tuple(new_k), tuple(new_v)


def decode_layers(cfg, params, *, split_heads: bool = False, mlp_shards: int = 1) -> dict:
    """The decode step's weights, made once per `generate` call (one transient copy of the layer
    weights and the untied output projection): per layer (the scanned [L, ...] params split into
    L dicts) q|k|v and gate|up kernels concatenated into one matmul each; every kernel
    transposed to [out, in] (the left operand of W @ x) and cast to the compute dtype.

    Where a (tensor) axis splits the heads or the MLP width (`split_heads`, `mlp_shards` ways:
    `sharding.inner_ways`), the fused kernels are blocks that split as the params do: q|k|v
    [K, (G + 2) Dh, D] (kv head j's G query heads, its k, its v) and gate|up
    [mlp_shards, 2F / mlp_shards, D] (a shard's gate rows, then its up rows). Concatenated
    whole (all q, then all k, then all v; all gate, then all up: the 2-D kernels of one
    device), a tensor shard's part of the products held other shards' heads and units, and
    every decode step moved them between devices (6 collective-permutes a layer at tensor=2;
    on CPU 1.2x slower).
    """
    dt = jnp.dtype(cfg.dtype)
    stacked = params["layers"]
    attn, mlp = stacked["attn"], stacked["mlp"]
    kh, dh = cfg.n_kv_heads, cfg.head_dim

    def qkv_blocks(q_xHxDh, k_xKxDh, v_xKxDh):  # -> [..., K, (G + 2) Dh]
        lead = q_xHxDh.shape[:-2]
        q = q_xHxDh.reshape(*lead, kh, cfg.n_heads // kh, dh)
        k, v = (x.reshape(*lead, kh, 1, dh) for x in (k_xKxDh, v_xKxDh))
        return jnp.concatenate([q, k, v], axis=-2).reshape(*lead, kh, -1)

    qkv = [attn[f"{n}_kernel"] for n in "qkv"]
    if split_heads:
        qkv_LxDxKxN = qkv_blocks(*qkv)
    else:
        flat = lambda w_LxDxNxDh: w_LxDxNxDh.reshape(*w_LxDxNxDh.shape[:2], -1)
        qkv_LxDxN = jnp.concatenate([flat(w) for w in qkv], axis=-1)
    if mlp_shards == 1:
        gate_up_LxDx2F = jnp.concatenate([mlp["gate_kernel"], mlp["up_kernel"]], axis=-1)
    o_LxHDxD = attn["o_kernel"].reshape(cfg.n_layers, -1, cfg.d_model)
    out = []
    for i in range(cfg.n_layers):
        layer = {
            "attn_norm": stacked["attn_norm"]["scale"][i],
            "mlp_norm": stacked["mlp_norm"]["scale"][i],
            "qkv_kernel": (
                jnp.transpose(qkv_LxDxKxN[i], (1, 2, 0)) if split_heads else qkv_LxDxN[i].T
            ).astype(dt),
            "o_kernel": o_LxHDxD[i].T.astype(dt),
            "down_kernel": mlp["down_kernel"][i].T.astype(dt),
        }
        if mlp_shards == 1:
            layer["gate_up_kernel"] = gate_up_LxDx2F[i].T.astype(dt)
        else:
            blocks = lambda w_DxF: w_DxF.T.astype(dt).reshape(mlp_shards, -1, w_DxF.shape[0])
            layer["gate_up_kernel"] = jnp.concatenate(
                [blocks(mlp["gate_kernel"][i]), blocks(mlp["up_kernel"][i])], axis=1
            )
        if cfg.qk_norm:
            layer.update(q_norm=attn["q_norm"][i], k_norm=attn["k_norm"][i])
        if cfg.qkv_bias:
            biases = [attn[f"{n}_bias"][i] for n in "qkv"]
            joined = qkv_blocks(*biases) if split_heads else jnp.concatenate(biases)
            layer["qkv_bias"] = joined.reshape(-1).astype(dt)
        out.append(layer)
    w, is_vxd = transformer.unembed_weight(cfg, params)
    return {"layers": out, "unembed": (w if is_vxd else w.T).astype(dt)}


def _kv_mask(prompt_lens_B: jax.Array, p: int, s: int) -> jax.Array:
    """Slots holding real tokens: the left padding [0, P - len) is masked out."""
    return jnp.arange(s, dtype=jnp.int32)[None, :] >= (p - prompt_lens_B)[:, None]


def _step_uniform(state: DecodeState, step, sampling: SamplingConfig) -> jax.Array:
    """Step `step`'s uniform pairs [B, 2] (zeros when greedy: none are drawn)."""
    if sampling.temperature == 0:
        return jnp.zeros((state.uniform_BxTx2.shape[0], 2), jnp.float32)
    return jax.lax.dynamic_index_in_dim(state.uniform_BxTx2, step, axis=1, keepdims=False)


def _record(
    state: DecodeState, token_B, logp_B, sampling: SamplingConfig, stop_table_VxE=None
) -> DecodeState:
    """Writes step `state.step`'s tokens; rows already done get pad / 0. A row stops on an EOS
    id, or on a token that completes one of the stop strings (`stop_table_VxE`)."""
    active_B = ~state.done_B
    token_B = jnp.where(active_B, token_B, sampling.pad_id).astype(jnp.int32)
    logp_B = jnp.where(active_B, logp_B, 0.0)
    hit_eos_B = jnp.zeros_like(active_B)
    for eos in sampling.eos_ids:
        hit_eos_B = hit_eos_B | (token_B == eos)
    tail_BxW = state.tail_BxW
    if sampling.stop_strings:
        hit_B, tail_BxW = _stop_string_hits(
            tail_BxW, stop_table_VxE[token_B], sampling.stop_strings
        )
        hit_eos_B = hit_eos_B | hit_B
        tail_BxW = jnp.where(active_B[:, None], tail_BxW, state.tail_BxW)
    hit_eos_B = hit_eos_B & active_B
    start = (jnp.int32(0), state.step)
    return state.replace(
        step=state.step + 1,
        last_token_B=token_B,
        tokens_BxT=jax.lax.dynamic_update_slice(state.tokens_BxT, token_B[:, None], start),
        logprobs_BxT=jax.lax.dynamic_update_slice(state.logprobs_BxT, logp_B[:, None], start),
        lengths_B=state.lengths_B + active_B.astype(jnp.int32),
        done_B=state.done_B | hit_eos_B,
        stopped_B=state.stopped_B | hit_eos_B,
        tail_BxW=tail_BxW,
    )


def _stop_string_hits(tail_BxW, entry_BxE, stops: tuple[bytes, ...]):
    """Whether each row's new token completes a stop string, and the row's new tail (its text's
    last W bytes, W = the longest stop string's length - 1; -1 before the text's start).

    `entry_BxE` is the token's row of `stop_table`: its first W bytes, its last W bytes, its
    length in bytes and whether a stop string lies wholly inside it. A stop string that ends in
    the token either lies inside it or ends within its first W bytes (it is at most W + 1 bytes
    long), so the W bytes before the token and its first W bytes are all that is compared.
    """
    w = tail_BxW.shape[1]
    prefix_BxW, suffix_BxW = entry_BxE[:, :w], entry_BxE[:, w : 2 * w]
    n_B, hit_B = entry_BxE[:, 2 * w], entry_BxE[:, 2 * w + 1] > 0
    window_Bx2W = jnp.concatenate([tail_BxW, prefix_BxW], axis=1)
    ends_BxW = jnp.arange(w)[None, :] < n_B[:, None]  # token bytes a match may end at
    for stop in stops:
        m = len(stop)
        match_BxW = ends_BxW
        for k, byte in enumerate(stop):  # byte k of a match ending at token byte j: w-m+1+k+j
            match_BxW = match_BxW & (window_Bx2W[:, w - m + 1 + k : 2 * w - m + 1 + k] == byte)
        hit_B = hit_B | jnp.any(match_BxW, axis=1)
    at_BxW = jnp.minimum(n_B[:, None] + jnp.arange(w)[None, :], 2 * w - 1)
    short_BxW = jnp.take_along_axis(window_Bx2W, at_BxW, axis=1) if w else tail_BxW
    return hit_B, jnp.where(n_B[:, None] >= w, suffix_BxW, short_BxW)


def tail_width(stops) -> int:
    """W: the bytes of a row's text the stop check keeps (the longest stop string's length - 1;
    0 without stop strings). The decode state's tail and `stop_table`'s columns both use it."""
    return max(map(len, stops), default=1) - 1


@functools.lru_cache(maxsize=4)
def _stop_table_cached(token_bytes: tuple, stop_strings: tuple, vocab_size: int) -> np.ndarray:
    """`stop_table`, made once per tokenizer and stop strings (0.5 s for a 152k vocabulary;
    an evaluation calls the sampler twice per batch)."""
    return stop_table(token_bytes, stop_strings, vocab_size)


def stop_table(token_bytes, stop_strings, vocab_size: int) -> np.ndarray:
    """[V, 2W + 2] int32, the rows `_stop_string_hits` reads: per token id its first W bytes and
    its last W bytes (-1 where it is shorter), its length in bytes, and 1 where a stop string
    lies wholly inside it (W = the longest stop string's length - 1). `token_bytes[i]` is the
    text token i adds to a decoded sequence (`text.token_bytes`); ids past it have none."""
    stops = tuple(stop_strings)
    w = tail_width(stops)
    table = np.full((vocab_size, 2 * w + 2), -1, np.int32)
    table[:, 2 * w :] = 0
    for i, piece in enumerate(token_bytes[:vocab_size]):
        if not piece:
            continue
        head, tail = piece[:w], piece[-w:] if w else b""
        table[i, : len(head)] = np.frombuffer(head, np.uint8)
        table[i, 2 * w - len(tail) : 2 * w] = np.frombuffer(tail, np.uint8)
        table[i, 2 * w] = len(piece)
        table[i, 2 * w + 1] = any(stop in piece for stop in stops)
    return table


# ---------------------------------------------------------------------------------------------
# Prefill and decode.


def _constrain(state: DecodeState, layout) -> DecodeState:
    """Pins the decode state's layout over the mesh axes that do not split the rows (the
    cache's kv heads over the tensor axis); layout = `sharding.per_shard_layout`, None leaves it
    to the compiler. Each device holds whole rows (`_generate`), so rows are not pinned."""
    if layout is None:
        return state
    mesh, rules = layout
    cache_k = sharding_lib.cache_sharding(mesh, rules, layout="decode_k")
    cache_v = sharding_lib.cache_sharding(mesh, rules, layout="decode_v")
    pin = jax.lax.with_sharding_constraint
    pin_all = lambda chunks, where: tuple(pin(c, where) for c in chunks)
    return state.replace(
        prompt_k_layers=pin_all(state.prompt_k_layers, cache_k),
        prompt_v_layers=pin_all(state.prompt_v_layers, cache_v),
        k_layers=tuple(pin_all(chunks, cache_k) for chunks in state.k_layers),
        v_layers=tuple(pin_all(chunks, cache_v) for chunks in state.v_layers),
    )


def prefill(
    cfg,
    params,
    prompt_NxP,
    prompt_lens_N,
    uniform_BxTx2,
    *,
    max_new_tokens,
    num_samples,
    sampling,
    layout=None,
    stop_table_VxE=None,
):
    """Prefills each prompt once and samples token 0 of every row; `uniform_BxTx2` are the draws'
    uniform pairs (`step_uniforms`; [B, 0, 2] when greedy); `stop_table_VxE` with stop strings.

    Group sampling shares the prompt: its FLOPs are paid once and its cache is kept once, for
    all G samples (`_attend`); only the new tokens' cache has B = N*G rows. With G = 1 the
    prompt's K/V head the first new-token chunk instead (`DecodeState`).
    """
    n, p = prompt_NxP.shape
    g, t = num_samples, max_new_tokens
    s = p + t - 1  # the last sampled token is never fed back, so it needs no slot
    prompt_lens_N = prompt_lens_N.astype(jnp.int32)
    positions_NxP = jnp.maximum(
        jnp.arange(p, dtype=jnp.int32)[None, :] - (p - prompt_lens_N)[:, None], 0
    )
    cache = transformer.init_cache(cfg, n, p)
    if layout is not None:
        cache_sh = sharding_lib.cache_sharding(*layout, layout="model")
        cache = jax.tree.map(lambda c: jax.lax.with_sharding_constraint(c, cache_sh), cache)
    prompt_mask_NxP = _kv_mask(prompt_lens_N, p, p)
    logits_NxV, cache = _last_logits(
        cfg, params, prompt_NxP, positions_NxP, cache, jnp.int32(0), prompt_mask_NxP
    )
    b, dt = n * g, jnp.dtype(cfg.dtype)
    kh, dh = cfg.n_kv_heads, cfg.head_dim
    # The new tokens' cache: per layer, chunks split at the decode's attention bounds (whole
    # segments: up to SEGMENT_SLOTS - 1 slots past s are never written).
    sizes = np.diff((p, *attention_bounds(p, s, cfg.n_layers)))
    zeros = lambda *shape: jnp.zeros(shape, dt)

    prompt_k = tuple(jnp.transpose(k, (0, 2, 3, 1)) for k in cache.k)  # [N, K, Dh, P]
    prompt_v = tuple(jnp.transpose(v, (0, 2, 1, 3)) for v in cache.v)  # [N, K, P, Dh]
    k_layers = tuple(tuple(zeros(b, kh, dh, m) for m in sizes) for _ in range(cfg.n_layers))
    v_layers = tuple(tuple(zeros(b, kh, m, dh) for m in sizes) for _ in range(cfg.n_layers))
    if g == 1:  # nothing to share: the prompt's K/V head the first chunk (B = N rows)
        k_layers = tuple(
            (jnp.concatenate([k, chunks[0]], axis=3), *chunks[1:])
            for k, chunks in zip(prompt_k, k_layers, strict=True)
        )
        v_layers = tuple(
            (jnp.concatenate([v, chunks[0]], axis=2), *chunks[1:])
            for v, chunks in zip(prompt_v, v_layers, strict=True)
        )
        prompt_k = prompt_v = ()

    logits_BxV = jnp.repeat(logits_NxV, g, axis=0)
    prompt_lens_B = jnp.repeat(prompt_lens_N, g, axis=0)
    state = DecodeState(
        step=jnp.int32(0),
        uniform_BxTx2=uniform_BxTx2,
        prompt_lens_B=prompt_lens_B,
        last_token_B=jnp.zeros((b,), jnp.int32),
        prompt_k_layers=prompt_k,
        prompt_v_layers=prompt_v,
        prompt_mask_NxP=prompt_mask_NxP,
        k_layers=k_layers,
        v_layers=v_layers,
        tokens_BxT=jnp.full((b, t), sampling.pad_id, jnp.int32),
        logprobs_BxT=jnp.zeros((b, t), jnp.float32),
        lengths_B=jnp.zeros((b,), jnp.int32),
        done_B=prompt_lens_B == 0,
        stopped_B=jnp.zeros((b,), bool),
        tail_BxW=jnp.full((b, tail_width(sampling.stop_strings)), -1, jnp.int32),
    )
    token_B, logp_B = sample_with_uniforms(logits_BxV, _step_uniform(state, 0, sampling), sampling)
    return _constrain(_record(state, token_B, logp_B, sampling, stop_table_VxE), layout)


def decode(
    cfg,
    params,
    state: DecodeState,
    *,
    sampling,
    layout=None,
    stop_axes=(),
    layers=None,
    stop_table_VxE=None,
) -> SampleOutput:
    """Runs the decode loops until every row has stopped or T tokens are sampled.

    One `lax.while_loop` per cache chunk (`attention_bounds`): the loop for chunk j feeds slots
    in chunk j and attends over chunks 0..j, all known when it is traced, so a step needs no
    branch to pick the chunk to write or the chunks to read. Each loop also stops as soon as
    every row has stopped; the later loops then run no step. With `stop_axes` (manual mesh axes
    inside `jax.shard_map`) "every row" means every row on those axes (`_generate`).

    `layers`: `decode_layers(cfg, params)` made by the caller; `params` then needs only its
    "embedding" and "final_norm".
    """
    t, p = state.tokens_BxT.shape[1], state.prompt_mask_NxP.shape[1]
    # Ends of the chunks in new-token slots (the first chunk holds the prompt's P slots too when
    # G = 1); none when T = 1 (the prefill sampled the only token).
    sizes = [v.shape[2] for v in state.v_layers[0]]
    sizes[0] -= 0 if state.prompt_v_layers else p
    ends = np.cumsum(sizes) if t > 1 else []
    layers = decode_layers(cfg, params) if layers is None else layers
    # RoPE cos / sin of every position a step can feed (< P + T), made once and gathered per
    # step: computed inside the step, XLA fused cos and sin into each consumer and evaluated them
    # per element of q and k, heads times over.
    positions_1xS = jnp.arange(p + t, dtype=jnp.int32)[None]
    cos_1xSxDh, sin_1xSxDh = transformer.rope_tables(cfg, positions_1xS)
    rope_tables = (cos_1xSxDh[0].T, sin_1xSxDh[0].T)
    slot_R = jnp.arange(sum(sizes), dtype=jnp.int32)[None, :]

    def cond(st: DecodeState, last_step):
        all_done = jnp.all(st.done_B)
        if stop_axes:  # done only when every shard is: one scalar all-reduce per step
            all_done = jax.lax.pmin(all_done.astype(jnp.int32), stop_axes) > 0
        return (st.step < last_step) & ~all_done

    def body(st: DecodeState, segment):
        # Feed the token sampled at step-1: new token step-1, at cache slot P + step - 1.
        slot = st.step - 1
        read = int(ends[segment])
        logits_BxV, k, v = _decode_logits(
            cfg,
            params,
            layers,
            rope_tables,
            st.last_token_B,
            st.prompt_lens_B + slot,
            st,
            slot,
            slot_R[:, :read] <= slot,
            segment,
        )
        uniform_Bx2 = _step_uniform(st, st.step, sampling)
        token_B, logp_B = sample_with_uniforms(logits_BxV, uniform_Bx2, sampling)
        st = st.replace(k_layers=k, v_layers=v)
        return _constrain(_record(st, token_B, logp_B, sampling, stop_table_VxE), layout)

    for segment, end in enumerate(ends):
        # Steps whose new-token slot step - 1 lies below `end`, in order; T - 1 feeds at most.
        last_step = min(t, int(end) + 1)
        state = jax.lax.while_loop(
            functools.partial(cond, last_step=last_step),
            functools.partial(body, segment=segment),
            state,
        )
    return SampleOutput(
        tokens=state.tokens_BxT,
        lengths=state.lengths_B,
        logprobs=state.logprobs_BxT,
        stopped=state.stopped_B,
    )


def _generate(
    cfg,
    params,
    prompt_NxP,
    prompt_lens_N,
    key,
    prompt_order_N=None,
    stop_table_VxE=None,
    *,
    max_new_tokens,
    num_samples,
    sampling,
    layout,
    draw_prompts=None,
):
    """One program: the cache is born and dies inside it (no host round trip, nothing to donate;
    XLA updates the while_loop carry in place).

    On a mesh, the prefill is one program over the whole mesh, laid out as the training forward
    (rows split over the batch axes, FSDP weights gathered a layer at a time), and then every
    device samples its own rows with its own decode loops (`jax.shard_map` over the batch axes):
    no step waits for another device (one global loop all-reduced its all-rows-done test every
    step, and gathered FSDP weights inside the loop), and each device stops as soon as its own
    rows have. The decode weights (`decode_layers`, in the compute dtype) are made on the
    params' own shards and gathered over the batch axes once per call: a device holds one
    compute-dtype copy of the model while sampling, not the gathered params besides (7B in bf16:
    ~15 GB, where float32 params plus the copy were ~46 GB). The other axes (tensor) stay
    automatic (`sharding.per_shard_layout`). When those axes are
    split, the steps hold collectives over them, and XLA:CPU's collectives wait for every
    device of the program, so a shard that stopped early would leave the others waiting
    forever: the loops then stop when every shard's rows have (`decode`'s stop_axes). The
    draws' uniforms are made for all rows before the split, so a row draws the same numbers on
    any mesh.
    """
    b, t = prompt_NxP.shape[0] * num_samples, max_new_tokens
    # The draws of a batch of `draw_prompts` prompts (this call's, unless it is a part of one:
    # `generate_local`'s draw_from), of which `prompt_order_N` picks this call's.
    drawn = b if draw_prompts is None else draw_prompts * num_samples
    uniform_BxTx2 = step_uniforms(key, drawn, t if sampling.temperature > 0 else 0)
    if prompt_order_N is not None:  # row n*G+g draws as the prompt's place in the order says
        samples_1xG = jnp.arange(num_samples)[None, :]
        rows_B = (prompt_order_N[:, None] * num_samples + samples_1xG).reshape(-1)
        uniform_BxTx2 = jnp.take(uniform_BxTx2, rows_B, axis=0)
    run = dict(max_new_tokens=max_new_tokens, num_samples=num_samples, sampling=sampling)
    run.update(stop_table_VxE=stop_table_VxE)
    if layout is None:
        state = prefill(cfg, params, prompt_NxP, prompt_lens_N, uniform_BxTx2, **run)
        return decode(cfg, params, state, sampling=sampling, stop_table_VxE=stop_table_VxE)
    mesh, rules = layout
    # The compute dtype on the params' own shards: every use casts a weight to it first, so the
    # values are the same, and what is gathered below is half the bytes of float32 params.
    dt = jnp.dtype(cfg.dtype)
    params = jax.tree.map(
        lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )
    # The prefill forward's activations laid out on the mesh, as the training steps'.
    with sharding_lib.activation_layout(mesh, rules):
        state = prefill(cfg, params, prompt_NxP, prompt_lens_N, uniform_BxTx2, layout=layout, **run)
    rows = sharding_lib.batch_sharding(mesh).spec
    layers = decode_layers(
        cfg,
        params,
        split_heads=sharding_lib.inner_ways(mesh, rules, "heads") > 1,
        mlp_shards=sharding_lib.inner_ways(mesh, rules, "mlp"),
    )
    if mesh.shape.get("fsdp", 1) > 1 and mesh.shape.get("tensor", 1) == 1:
        # Made on the params' shards and kept split over the batch axes until the shard_map
        # gathers them, so no device holds both the gathered params and the copy (fsdp=8,
        # compiled temporaries 1.2x smaller than left to the partitioner). Not with a tensor
        # axis: the copy stays split over it as the params are (pinned to the batch axes alone
        # it would be whole over tensor: 111 against 67 MB in the same test at tensor=2), nor
        # with replicated params (data parallelism alone: made whole where they are).
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(rows[0]))
        layers = jax.lax.with_sharding_constraint(layers, split)
    small = {"embedding": params["embedding"], "final_norm": params["final_norm"]}
    everywhere = jax.sharding.PartitionSpec()
    inner = sharding_lib.per_shard_layout(mesh, rules)
    axes = tuple(sharding_lib.batch_axes(mesh))

    def decode_rows(small, layers, state, stop_table_VxE):
        return decode(
            cfg,
            small,
            state,
            sampling=sampling,
            layout=inner,
            stop_axes=axes if inner is not None else (),
            layers=layers,
            stop_table_VxE=stop_table_VxE,
        )

    per_shard = jax.shard_map(
        decode_rows,
        mesh=mesh,
        in_specs=(
            everywhere,
            everywhere,
            jax.tree.map(lambda x: rows if x.ndim else everywhere, state),
            everywhere,
        ),
        out_specs=rows,
        axis_names=set(axes),
        # No collectives inside; the check would ask every zero-initialised carry (the caches)
        # to be cast to "varying over the batch axes" first.
        check_vma=False,
    )
    return per_shard(small, layers, state, stop_table_VxE)


_generate_jit = jax.jit(
    _generate,
    static_argnames=("cfg", "max_new_tokens", "num_samples", "sampling", "layout", "draw_prompts"),
)


def _integer(name: str, value) -> int:
    """`value` as an int; a fractional or non-numeric value raises naming `name`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _real(name: str, value) -> float:
    """`value` as a float (a Python, NumPy or 0-d JAX number); anything else (None, a string)
    raises naming `name`."""
    if not isinstance(value, (str, bytes, bool, np.bool_)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{name} must be a number, got {value!r}")


def token_ids(name: str, ids) -> tuple[int, ...]:
    """Stop token ids as a tuple: None (none), one id, or a sequence of ids."""
    if ids is None:
        return ()
    if isinstance(ids, (np.ndarray, jax.Array)) and ids.ndim == 0:  # iterating it raised
        ids = ids.item()
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, (bool, np.bool_)):
        return (int(ids),)
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"{name} must be a token id or a sequence of token ids, got {ids!r}")
    return tuple(_integer(name, i) for i in ids)


def _stop_bytes(stop_strings) -> tuple[bytes, ...]:
    """Stop strings as UTF-8 bytes: None / () (none), one str or bytes, or a sequence of them."""
    if isinstance(stop_strings, (str, bytes)):  # one stop string, not one per character
        stop_strings = (stop_strings,)
    if not hasattr(stop_strings or (), "__iter__"):
        raise TypeError(
            f"stop_strings must be a string or a sequence of them, got {stop_strings!r}"
        )
    out = []
    for x in stop_strings or ():
        if not isinstance(x, (str, bytes)) or not x:
            raise ValueError(f"stop_strings must be non-empty strings, got {x!r}")
        out.append(x.encode("utf-8") if isinstance(x, str) else x)
    return tuple(out)


def sampling_bytes(
    cfg, prompts: int, prompt_len: int, num_samples: int, max_new_tokens: int, *, greedy=False
) -> int:
    """Bytes a sampler call of `prompts` prompts (bucket `prompt_len`) keeps for its whole run,
    at the least: the prompts' K/V, the new tokens' K/V (to the end of the last decode segment)
    and the rows' tokens, log-probs and draws. Weights and activations come on top."""
    rows, t = prompts * num_samples, max_new_tokens
    new_slots = attention_bounds(prompt_len, prompt_len + t - 1, cfg.n_layers)[-1] - prompt_len
    per_slot = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
    # A row's token (int32) and log-prob (float32) a step, and its two uniforms when sampling.
    return per_slot * (rows * new_slots + prompts * prompt_len) + rows * t * (8 if greedy else 16)


def generate_padded(
    cfg: config_lib.ModelConfig,
    params,
    prompt_tokens_NxP: jax.Array,
    prompt_lens_N: jax.Array,
    key: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    eos_ids: int | tuple[int, ...] | None = (),
    pad_id: int = 0,
    mesh=None,
    rules=None,
    prompt_order_N=None,
    draw_prompts: int | None = None,
    stop_strings=(),
    token_bytes=None,
) -> SampleOutput:
    """Samples G continuations of left-padded prompts; rows n*G..n*G+G-1 belong to prompt n.

    `stop_strings` (strs or bytes, or one of them): a row also stops at the token that
    completes one of them in its text, `token_bytes[i]` being the bytes token i adds to it
    (`text.token_bytes`); the token is the row's last (stopped True) and the text after the
    stop string is left to the caller to cut. The row's tokens up to there are those it
    samples without stop strings.

    `prompt_order_N` (a permutation of 0..N-1, default the identity) gives each prompt the draws
    of that place in the batch: `generate_local` puts every process's padding after all real
    prompts, so that the draws equal one process's on the concatenated prompts. With
    `draw_prompts`, the places are in a batch of that many prompts (this call one part of it).

    With a mesh, rows and the KV cache are pinned to it (rows over the batch axes, kv heads by
    `rules`); the prompts should then be placed on it already (`sharding.put_batch`).
    """
    if prompt_tokens_NxP.ndim != 2 or prompt_lens_N.shape != prompt_tokens_NxP.shape[:1]:
        raise ValueError(
            f"prompt_tokens_NxP {prompt_tokens_NxP.shape} and prompt_lens_N "
            f"{prompt_lens_N.shape} must be [N, P] and [N]"
        )
    max_new_tokens, num_samples = (
        _integer("max_new_tokens", max_new_tokens),
        _integer("num_samples", num_samples),
    )
    if max_new_tokens < 1 or num_samples < 1:
        raise ValueError(
            f"max_new_tokens ({max_new_tokens}) and num_samples ({num_samples}) must be >= 1"
        )
    stops = _stop_bytes(stop_strings)
    if stops and token_bytes is None:
        raise ValueError("stop_strings need token_bytes: the bytes each token id adds to a text")
    if stops:
        token_bytes = tuple(token_bytes)
        if not all(isinstance(piece, bytes) for piece in token_bytes):
            raise TypeError("token_bytes must hold one bytes object per token id")
    sampling = SamplingConfig(
        _real("temperature", temperature),
        _real("top_p", top_p),
        _integer("top_k", top_k),
        token_ids("eos_ids", eos_ids),
        _integer("pad_id", pad_id),
        tuple(dict.fromkeys(stops)),
    )
    table = _stop_table_cached(token_bytes, stops, cfg.vocab_size) if stops else None
    if max((sampling.pad_id, *sampling.eos_ids)) >= cfg.vocab_size:
        raise ValueError(
            f"eos_ids {sampling.eos_ids} and pad_id {sampling.pad_id} must be below the "
            f"model's vocab_size {cfg.vocab_size}"
        )
    n, p = prompt_tokens_NxP.shape
    memory.check_fits(
        sampling_bytes(cfg, n, p, num_samples, max_new_tokens, greedy=sampling.temperature == 0),
        jax.devices()[:1] if mesh is None else mesh.devices.flat,
        f"sampling {n} prompts x {num_samples} samples x {max_new_tokens} new tokens (prompts "
        f"padded to {p}: the KV cache and token buffers)",
        "sample fewer prompts per call, fewer samples or fewer new tokens",
    )
    return _generate_jit(
        cfg,
        params,
        prompt_tokens_NxP,
        prompt_lens_N,
        key,
        prompt_order_N,
        table,
        max_new_tokens=int(max_new_tokens),
        num_samples=int(num_samples),
        sampling=sampling,
        layout=None if mesh is None else (mesh, tuple(rules or sharding_lib.DEFAULT_RULES)),
        draw_prompts=draw_prompts,
    )


def generate_local(
    cfg: config_lib.ModelConfig,
    params,
    prompt_tokens_NxP: np.ndarray,
    prompt_lens_N: np.ndarray,
    key: jax.Array,
    *,
    mesh,
    rules=None,
    draw_from: tuple[int, int] | None = None,
    **kw,
) -> dict:
    """Samples for this process's prompts on the whole mesh; returns this process's rows (numpy).

    Every process calls it at once with its own N prompts (the same N and P everywhere): they
    form one global batch in process order, sampled by one sharded program, so the draws equal a
    single process's on the concatenated prompts. Prompts are padded with empty rows to a
    multiple of this process's share of the batch axes; those rows are dropped again.

    `draw_from` = (offset, total): these prompts are positions offset.. of this process's
    `total` prompts, sampled in several calls of the same key; each prompt gets the draws it
    has in one call of all of them (so the samples do not depend on how they are split into
    calls, nor on the number of processes). Prompts past `total` (a last call padded to the
    others' size, one program for all) are padding.
    """
    n = prompt_tokens_NxP.shape[0]
    share = max(1, sharding_lib.batch_divisor(mesh) // jax.process_count())
    rows = -(-n // share) * share
    tokens_NxP = np.zeros((rows, prompt_tokens_NxP.shape[1]), np.int32)
    tokens_NxP[:n] = prompt_tokens_NxP
    tokens_NxP[n:] = kw.get("pad_id", 0)
    lens_N = np.zeros((rows,), np.int32)
    lens_N[:n] = prompt_lens_N
    # Each process pads its own prompts, so padding rows sit between processes' prompts; the
    # order gives the real prompts the places (and draws) they have in one process's batch.
    p, count = jax.process_index(), jax.process_count()
    if draw_from is None:
        order_N = np.concatenate(
            [p * n + np.arange(n), count * n + p * (rows - n) + np.arange(rows - n)]
        )
        draw_prompts = None
    else:
        offset, total = draw_from
        if not 0 <= offset < total:
            raise ValueError(f"draw_from {draw_from}: the offset must lie in [0, total)")
        # The places of one call of all `total` (padded as it would be); padding rows take the
        # first prompt's draws (their samples are dropped).
        draw_prompts = count * -(-total // share) * share
        real = p * total + offset + np.arange(min(n, total - offset))
        order_N = np.concatenate([real, np.full(rows - len(real), real[0])])
    order_N = order_N.astype(np.int32)
    tokens_NxP, lens_N, order_N = sharding_lib.put_batch((tokens_NxP, lens_N, order_N), mesh)
    out = generate_padded(
        cfg,
        params,
        tokens_NxP,
        lens_N,
        key,
        mesh=mesh,
        rules=rules,
        prompt_order_N=order_N,
        draw_prompts=draw_prompts,
        **kw,
    )
    keep = n * _integer("num_samples", kw.get("num_samples", 1))
    return {name: sharding_lib.local_rows(x)[:keep] for name, x in vars(out).items()}


def check_prompts(prompts, vocab_size: int) -> None:
    """Raises ValueError unless `prompts` is a non-empty list of non-empty lists of integer token
    ids in [0, vocab_size); the model's embedding lookup would clamp an id out of range."""
    if isinstance(prompts, (str, bytes)) or not hasattr(prompts, "__len__") or not len(prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    for i, ids in enumerate(prompts):
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(
                f"prompt {i} must be a non-empty list of token ids, got an array of shape "
                f"{ids.shape}"
            )
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"prompt {i}: token ids must be integers, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        if bad.size:
            raise ValueError(
                f"prompt {i}: token id {int(bad[0])} is outside the model's vocabulary "
                f"[0, {vocab_size})"
            )


def pad_prompts(prompts, bucket: int, rows: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists into [rows, bucket]; rows beyond len(prompts) are padding rows."""
    tokens_NxP = np.full((rows, bucket), pad_id, np.int32)
    lens_N = np.zeros((rows,), np.int32)
    for i, ids in enumerate(prompts):
        if len(ids):  # lists or arrays of ids
            tokens_NxP[i, bucket - len(ids) :] = ids
        lens_N[i] = len(ids)
    return tokens_NxP, lens_N


def seed_key(seed: int) -> jax.Array:
    """jax.random.key(seed) for seeds in [0, 2**32); other integers fold in 32 bits at a time
    (key() keeps only the low 32 bits without jax_enable_x64: 2**40 drew as 0)."""
    seed = int(seed)
    if 0 <= seed < 2**32:
        return jax.random.key(seed)
    magnitude, chunks = abs(seed), []
    while magnitude:
        chunks.append(magnitude & 0xFFFFFFFF)
        magnitude >>= 32
    key = jax.random.key(chunks[0])
    for chunk in chunks[1:]:
        key = jax.random.fold_in(key, chunk)
    # The chunk count and the sign last: no two seeds fold the same sequence.
    return jax.random.fold_in(key, (len(chunks) << 1) | (seed < 0))


def generate(
    cfg: config_lib.ModelConfig,
    params,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    eos_ids=(),
    seed: int = 0,
    pad_id: int = 0,
    mesh=None,
    stop_strings=(),
    token_bytes=None,
) -> SampleOutput:
    """Samples from token-id lists of varied lengths; returns host (numpy) arrays, N*G rows.

    `seed`: any integer; seeds in [0, 2**32) give jax.random.key(seed)'s draws, larger ones
    (which key() would cut to their low 32 bits) fold in their higher bits."""
    check_prompts(prompts, cfg.vocab_size)
    max_new_tokens, seed = _integer("max_new_tokens", max_new_tokens), _integer("seed", seed)
    num_samples = _integer("num_samples", num_samples)  # 2.0 sampled, then failed to slice rows
    longest = max(map(len, prompts))
    if longest + max_new_tokens > cfg.max_seq_len:
        logging.log_first_n(
            logging.WARNING,
            "generate: prompts of up to %d tokens plus %d new ones pass the model's max_seq_len "
            "%d: positions beyond it were never trained",
            1,
            longest,
            max_new_tokens,
            cfg.max_seq_len,
        )
    n = len(prompts)
    rows = (
        n
        if mesh is None
        else -(-n // sharding_lib.batch_divisor(mesh)) * sharding_lib.batch_divisor(mesh)
    )
    tokens_NxP, lens_N = pad_prompts(prompts, prompt_bucket(max(map(len, prompts))), rows, pad_id)
    if mesh is not None:
        tokens_NxP, lens_N = sharding_lib.put_batch((tokens_NxP, lens_N), mesh)
    out = generate_padded(
        cfg,
        params,
        jnp.asarray(tokens_NxP),
        jnp.asarray(lens_N),
        seed_key(seed),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        num_samples=num_samples,
        eos_ids=token_ids("eos_ids", eos_ids),
        pad_id=pad_id,
        mesh=mesh,
        stop_strings=stop_strings,
        token_bytes=token_bytes,
    )
    keep = n * num_samples
    return jax.tree.map(lambda x: np.asarray(x)[:keep], out)
