"""Decoder-only transformer (Qwen2 / Llama / Qwen3) in Flax linen, with an explicit KV cache.

B batch, T time, S cache length, D model, H heads, K kv heads, G heads per kv head,
Dh head dim (e in einsums), F mlp, V vocab, L layers; N is H or K where both fit.

Params are a plain pytree; every leaf carries logical axis names ("vocab", "embed", "heads",
"kv_heads", "head_dim", "mlp", "norm", "layers") that `logical_axes` returns as PartitionSpecs.
Layers are stacked with `nn.scan`, so layer params have a leading "layers" axis.
"""

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sharding
from r1jax.model import config as config_lib

ModelConfig = config_lib.ModelConfig

_INIT_STD = 0.02  # Hugging Face `initializer_range` for Qwen2 / Llama
# Activation layouts on a mesh (no-ops unless traced in sharding.activation_layout): rows
# split like the batch, the residual stream whole, heads and the MLP hidden split like their
# weights (tensor parallelism), so FSDP gathers weights to the rows, never the rows.
_RESIDUAL = ("batch", None, None)
_HIDDEN = ("batch", None, "mlp")


class AttentionMask(NamedTuple):
    """Which slots each query attends to: query t of row b sees slot s iff
    q_group[b, t] == kv_group[b, s] and kv_index[s] <= q_index[t].

    Four small int32 arrays instead of a [B, T, S] boolean: each block of queries compares its
    own [B, chunk, S] where attention uses it. The boolean was built ahead of the layer loop
    and copied when padded and laid out by block (~1 GB a row of 32k tokens), and without
    remat the gradient kept every block's slice broadcast over the heads, in every layer
    (compiled at 1.5B widths, one row of 16k tokens, one layer: 9.0 GB of temporaries, now
    6.9 GB; remat=full, a row of 32k: 13.6 GB, now 13.0 GB).
    """

    q_group_BxT: jax.Array
    kv_group_BxS: jax.Array
    q_index_T: jax.Array
    kv_index_S: jax.Array

    def dense(self) -> jax.Array:
        """The mask [B, T, S] as a boolean."""
        same_BxTxS = self.q_group_BxT[:, :, None] == self.kv_group_BxS[:, None, :]
        return same_BxTxS & (self.kv_index_S[None, :] <= self.q_index_T[:, None])[None]


# Groups that match nothing: padding queries, and slots no query may see.
_NO_QUERY = np.iinfo(np.int32).min
_NO_SLOT = np.iinfo(np.int32).min + 1


def packing_mask(segment_ids_BxT: jax.Array | None, b: int, t: int) -> AttentionMask:
    """Causal attention within each packed segment (segment_ids: 1, 2, ... per example, 0 =
    padding, whose queries see nothing and whose slots no one sees); one causal segment per
    row when segment_ids is None."""
    index_T = jnp.arange(t, dtype=jnp.int32)
    if segment_ids_BxT is None:
        zeros_BxT = jnp.zeros((b, t), jnp.int32)
        return AttentionMask(zeros_BxT, zeros_BxT, index_T, index_T)
    seg_BxT = jnp.asarray(segment_ids_BxT).astype(jnp.int32)
    real_BxT = seg_BxT != 0
    return AttentionMask(
        jnp.where(real_BxT, seg_BxT, _NO_QUERY),
        jnp.where(real_BxT, seg_BxT, _NO_SLOT),
        index_T,
        index_T,
    )


def cache_mask(kv_mask_BxS: jax.Array, t: int, cache_index) -> AttentionMask:
    """T new tokens written at slots [cache_index, cache_index + T): token t sees slot s iff
    kv_mask_BxS[b, s] and s <= cache_index + t."""
    b, s = kv_mask_BxS.shape
    slot_T = jnp.asarray(cache_index, jnp.int32) + jnp.arange(t, dtype=jnp.int32)
    kv_group_BxS = jnp.where(kv_mask_BxS.astype(bool), 0, _NO_SLOT).astype(jnp.int32)
    return AttentionMask(
        jnp.zeros((b, t), jnp.int32), kv_group_BxS, slot_T, jnp.arange(s, dtype=jnp.int32)
    )


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer: k, v of shape [L, B, S, K, Dh] in cfg.dtype."""

    k: jax.Array
    v: jax.Array


def _param(module, name, shape, names, init):
    init = nn.with_logical_partitioning(init, names)
    return module.param(name, init, shape, jnp.dtype(module.cfg.param_dtype))


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse RoPE frequencies [Dh/2] in float32, scaled as `cfg.rope_scaling` says (the
    operations and their order as transformers' `modeling_rope_utils`, in float32)."""
    dh = cfg.head_dim
    exponent = np.arange(0, dh, 2, dtype=np.int64).astype(np.float32) / np.float32(dh)
    # theta ** exponent rounded once to float32, as torch's float32 pow (numpy's float32 power
    # is 1 ulp off torch's in ~20% of entries, a phase error that grows with the position).
    base = np.float64(np.float32(cfg.rope_theta))
    pos_freqs = np.power(base, exponent.astype(np.float64)).astype(np.float32)
    inv_freq = (1.0 / pos_freqs).astype(np.float32)
    sc = cfg.rope_scaling
    if sc is None:
        return inv_freq
    if sc.rope_type == "linear":
        return (inv_freq / np.float32(sc.factor)).astype(np.float32)
    if sc.rope_type == "yarn":
        return _yarn_inv_freq(sc, pos_freqs, dh, cfg.rope_theta)
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between.
    low_wavelen = sc.original_max_position / sc.low_freq_factor
    high_wavelen = sc.original_max_position / sc.high_freq_factor
    # torch divides a number by a tensor as the number times the tensor's reciprocal.
    wavelen = np.float32(2 * np.pi) * (np.float32(1) / inv_freq)
    scaled = np.where(wavelen > low_wavelen, inv_freq / sc.factor, inv_freq)
    per_wavelen = np.float32(sc.original_max_position) * (np.float32(1) / wavelen)
    smooth = (per_wavelen - sc.low_freq_factor) / (sc.high_freq_factor - sc.low_freq_factor)
    smoothed = (1 - smooth) * scaled / sc.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _yarn_inv_freq(sc, pos_freqs: np.ndarray, dh: int, theta: float) -> np.ndarray:
    """YaRN: each frequency blends its extrapolated (unscaled) and interpolated (/ factor)
    values by a linear ramp over the dimensions, from those that turn `beta_fast` times over
    the original context (kept) to those that turn `beta_slow` times (interpolated)."""

    def correction_dim(rotations):  # the dimension that turns `rotations` times
        turns = math.log(sc.original_max_position / (rotations * 2 * math.pi))
        return (dh * turns) / (2 * math.log(theta))

    low, high = correction_dim(sc.beta_fast), correction_dim(sc.beta_slow)
    if sc.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dh - 1)
    if low == high:
        high += 0.001  # as transformers: avoids dividing by zero
    ramp = np.clip(
        (np.arange(dh // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1
    ).astype(np.float32)
    extrapolation = (1 - ramp).astype(np.float32)
    interpolated = (1.0 / (np.float32(sc.factor) * pos_freqs)).astype(np.float32)
    extrapolated = (1.0 / pos_freqs).astype(np.float32)
    blended = interpolated * (1 - extrapolation) + extrapolated * extrapolation
    return blended.astype(np.float32)


def rope_attention_scaling(cfg: ModelConfig) -> float:
    """The factor RoPE's cos and sin are multiplied by (YaRN's attention factor; else 1)."""
    sc = cfg.rope_scaling
    return float(sc.attention_factor) if sc is not None and sc.rope_type == "yarn" else 1.0


def rope_tables(cfg: ModelConfig, positions_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin tables [B, T, Dh] in float32 (rotate-half layout, as Hugging Face)."""
    freqs = (
        positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg))[None, None]
    )
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    scale = rope_attention_scaling(cfg)
    if scale != 1.0:
        cos, sin = cos * jnp.float32(scale), sin * jnp.float32(scale)
    return cos, sin


def _apply_rope(x_BxTxNxDh, cos_BxTxDh, sin_BxTxDh):
    x = x_BxTxNxDh.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    out = x * cos_BxTxDh[:, :, None, :] + rotated * sin_BxTxDh[:, :, None, :]
    return out.astype(x_BxTxNxDh.dtype)


def rms_norm(x, scale, eps: float, axis: int = -1):
    """Root-mean-square norm of `x` over `axis`, computed in float32 and scaled in x's dtype
    (as HF); `scale` has the length of that axis."""
    dt = x.dtype
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=axis, keepdims=True) + eps)
    shape = [1] * x.ndim
    shape[axis] = -1
    return scale.astype(dt).reshape(shape) * x.astype(dt)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the model dimension (`rms_norm`)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        scale = _param(self, "scale", (self.cfg.d_model,), ("norm",), nn.initializers.ones)
        return rms_norm(x_BxTxD, scale, self.cfg.rms_norm_eps)


def _matmul(x_BxTxI, w_IxO):
    """[B, T, I] @ [I, O] as one 2-D matmul: XLA:CPU runs the 3-D einsum about 2x slower."""
    b, t, i = x_BxTxI.shape
    return (x_BxTxI.reshape(b * t, i) @ w_IxO).reshape(b, t, w_IxO.shape[-1])


def _attend(cfg, q_BxTxKxGxDh, k_BxSxKxDh, v_BxSxKxDh, mask: AttentionMask):
    """Softmax attention of T queries over S slots; [B, T, K, G, Dh] in cfg.dtype."""
    scores_BxKxGxTxS = jnp.einsum(
        "btkge,bske->bkgts", q_BxTxKxGxDh, k_BxSxKxDh, preferred_element_type=jnp.float32
    ) * (cfg.head_dim**-0.5)
    # A finite fill keeps fully masked rows (padding queries) finite instead of NaN.
    scores_BxKxGxTxS = jnp.where(
        mask.dense()[:, None, None, :, :], scores_BxKxGxTxS, jnp.finfo(jnp.float32).min
    )
    probs_BxKxGxTxS = jax.nn.softmax(scores_BxKxGxTxS, axis=-1).astype(q_BxTxKxGxDh.dtype)
    return jnp.einsum("bkgts,bske->btkge", probs_BxKxGxTxS, v_BxSxKxDh)


def _attend_in_chunks(cfg, q_BxTxKxGxDh, k_BxSxKxDh, v_BxSxKxDh, mask: AttentionMask, chunk):
    """`_attend` over blocks of `chunk` queries in a loop, each block rematerialised in the
    backward pass: the float32 scores held at once are [B, H, chunk, S] instead of
    [B, H, T, S] (32 GB a row for 28 heads at 16k tokens). Each query's softmax still runs
    over all of its slots, so the result is the same up to matmul rounding. T is padded to
    whole blocks with queries that see nothing, whose outputs are dropped."""
    b, t = q_BxTxKxGxDh.shape[:2]
    n = -(-t // chunk)
    pad = n * chunk - t
    q = jnp.pad(q_BxTxKxGxDh, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
    group_BxT = jnp.pad(mask.q_group_BxT, ((0, 0), (0, pad)), constant_values=_NO_QUERY)
    index_T = jnp.pad(mask.q_index_T, (0, pad))
    # Blocks on a leading axis for lax.map: [n, B, chunk, ...].
    q_NxBxCxKxGxDh = jnp.moveaxis(q.reshape(b, n, chunk, *q.shape[2:]), 1, 0)
    group_NxBxC = jnp.moveaxis(group_BxT.reshape(b, n, chunk), 1, 0)
    index_NxC = index_T.reshape(n, chunk)

    @jax.checkpoint
    def block(args):
        # The barrier ties the mask's inputs to the queries, so that autodiff recomputes this
        # block's mask with it in the backward pass: computed from integers alone, the masks of
        # all blocks were kept from the forward pass, [B, H, T, S] booleans in all.
        q_BxCxKxGxDh, group_BxC, index_C = jax.lax.optimization_barrier(args)
        block_mask = mask._replace(q_group_BxT=group_BxC, q_index_T=index_C)
        return _attend(cfg, q_BxCxKxGxDh, k_BxSxKxDh, v_BxSxKxDh, block_mask)

    out_NxBxCxKxGxDh = jax.lax.map(block, (q_NxBxCxKxGxDh, group_NxBxC, index_NxC))
    out = jnp.moveaxis(out_NxBxCxKxGxDh, 0, 1).reshape(b, n * chunk, *q.shape[2:])
    return out[:, :t]


class Attention(nn.Module):
    """Grouped-query attention with RoPE, optional qkv bias, optional q/k norms (Qwen3) and an
    optional KV cache."""

    cfg: ModelConfig

    def _project(self, x_BxTxD, name, n, head_axis):
        cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        normal = nn.initializers.normal(_INIT_STD)
        w = _param(
            self,
            f"{name}_kernel",
            (cfg.d_model, n, cfg.head_dim),
            ("embed", head_axis, "head_dim"),
            normal,
        )
        b, t = x_BxTxD.shape[:2]
        w_DxNDh = w.astype(dt).reshape(cfg.d_model, n * cfg.head_dim)
        y_BxTxNxDh = _matmul(x_BxTxD, w_DxNDh).reshape(b, t, n, cfg.head_dim)
        y_BxTxNxDh = sharding.constrain(y_BxTxNxDh, ("batch", None, head_axis, None))
        if cfg.qkv_bias:
            b = _param(
                self,
                f"{name}_bias",
                (n, cfg.head_dim),
                (head_axis, "head_dim"),
                nn.initializers.zeros,
            )
            y_BxTxNxDh = y_BxTxNxDh + b.astype(dt)[None, None]
        return y_BxTxNxDh

    def _head_norm(self, x_BxTxNxDh, name):
        """Qwen3's q/k norm: each head's vector normalised over Dh (one scale for all heads)."""
        if not self.cfg.qk_norm:
            return x_BxTxNxDh
        scale = _param(self, name, (self.cfg.head_dim,), ("head_dim",), nn.initializers.ones)
        return rms_norm(x_BxTxNxDh, scale, self.cfg.rms_norm_eps)

    @nn.compact
    def __call__(self, x_BxTxD, rope, mask: AttentionMask, kv, cache_index):
        cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        q_BxTxHxDh = self._head_norm(self._project(x_BxTxD, "q", cfg.n_heads, "heads"), "q_norm")
        k_BxTxKxDh = self._head_norm(
            self._project(x_BxTxD, "k", cfg.n_kv_heads, "kv_heads"), "k_norm"
        )
        q_BxTxHxDh, k_BxTxKxDh = _apply_rope(q_BxTxHxDh, *rope), _apply_rope(k_BxTxKxDh, *rope)
        v_BxTxKxDh = self._project(x_BxTxD, "v", cfg.n_kv_heads, "kv_heads")
        if kv is None:
            k_BxSxKxDh, v_BxSxKxDh, new_kv = k_BxTxKxDh, v_BxTxKxDh, None
        else:
            start = (0, cache_index, 0, 0)
            k_BxSxKxDh = jax.lax.dynamic_update_slice(kv[0], k_BxTxKxDh.astype(kv[0].dtype), start)
            v_BxSxKxDh = jax.lax.dynamic_update_slice(kv[1], v_BxTxKxDh.astype(kv[1].dtype), start)
            new_kv = (k_BxSxKxDh, v_BxSxKxDh)
        b, t = x_BxTxD.shape[:2]
        g = cfg.n_heads // cfg.n_kv_heads
        q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, cfg.n_kv_heads, g, cfg.head_dim)
        k_BxSxKxDh, v_BxSxKxDh = k_BxSxKxDh.astype(dt), v_BxSxKxDh.astype(dt)
        chunk = cfg.attention_chunk
        if chunk and t > chunk:
            out_BxTxKxGxDh = _attend_in_chunks(
                cfg, q_BxTxKxGxDh, k_BxSxKxDh, v_BxSxKxDh, mask, chunk
            )
        else:
            out_BxTxKxGxDh = _attend(cfg, q_BxTxKxGxDh, k_BxSxKxDh, v_BxSxKxDh, mask)
        out_BxTxHxDh = out_BxTxKxGxDh.reshape(b, t, cfg.n_heads, cfg.head_dim)
        out_BxTxHxDh = sharding.constrain(out_BxTxHxDh, ("batch", None, "heads", None))
        w_o = _param(
            self,
            "o_kernel",
            (cfg.n_heads, cfg.head_dim, cfg.d_model),
            ("heads", "head_dim", "embed"),
            nn.initializers.normal(_INIT_STD),
        )
        w_HDhxD = w_o.astype(dt).reshape(cfg.n_heads * cfg.head_dim, cfg.d_model)
        return _matmul(out_BxTxHxDh.reshape(b, t, -1), w_HDhxD), new_kv


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD):
        cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        normal = nn.initializers.normal(_INIT_STD)
        gate = _param(self, "gate_kernel", (cfg.d_model, cfg.d_ff), ("embed", "mlp"), normal)
        up = _param(self, "up_kernel", (cfg.d_model, cfg.d_ff), ("embed", "mlp"), normal)
        down = _param(self, "down_kernel", (cfg.d_ff, cfg.d_model), ("mlp", "embed"), normal)
        g_BxTxF = sharding.constrain(_matmul(x_BxTxD, gate.astype(dt)), _HIDDEN)
        u_BxTxF = sharding.constrain(_matmul(x_BxTxD, up.astype(dt)), _HIDDEN)
        return _matmul(jax.nn.silu(g_BxTxF) * u_BxTxF, down.astype(dt))


class DecoderLayer(nn.Module):
    """Pre-norm residual block; the scan body (carry = residual stream, xs = this layer's KV)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, kv, rope, mask, cache_index):
        x_BxTxD = sharding.constrain(x_BxTxD, _RESIDUAL)
        h_BxTxD = RMSNorm(self.cfg, name="attn_norm")(x_BxTxD)
        attn_BxTxD, new_kv = Attention(self.cfg, name="attn")(h_BxTxD, rope, mask, kv, cache_index)
        x_BxTxD = x_BxTxD + attn_BxTxD
        x_BxTxD = x_BxTxD + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_BxTxD))
        return sharding.constrain(x_BxTxD, _RESIDUAL), new_kv


def _layer_class(cfg: ModelConfig):
    if cfg.remat == "none":
        return DecoderLayer
    policy = None  # "full": save nothing, recompute the whole layer
    if cfg.remat == "dots":
        policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    return nn.remat(DecoderLayer, policy=policy, prevent_cse=False)


class Transformer(nn.Module):
    """Embedding, scanned decoder layers and final norm; returns hidden states [B, T, D].

    The layers are one `nn.scan` (params stacked on a leading "layers" axis), unrolled
    `cfg.layer_unroll` layers per loop iteration.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT, positions_BxT, mask, cache=None, cache_index=None):
        cfg = self.cfg
        normal = nn.initializers.normal(_INIT_STD)
        embedding = _param(
            self, "embedding", (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), normal
        )
        if not cfg.tie_embeddings:
            # Declared here so init creates it; `unembed` reads it straight from the params.
            _param(self, "lm_head", (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), normal)
        embedding = sharding.constrain(embedding, ("vocab", None))
        x_BxTxD = jnp.take(embedding, tokens_BxT, axis=0).astype(jnp.dtype(cfg.dtype))
        x_BxTxD = sharding.constrain(x_BxTxD, _RESIDUAL)
        rope = rope_tables(cfg, positions_BxT)
        layers = nn.scan(
            _layer_class(cfg),
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.n_layers,
            unroll=cfg.layer_unroll,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(cfg, name="layers")
        kv = None if cache is None else (cache.k, cache.v)
        x_BxTxD, new_kv = layers(x_BxTxD, kv, rope, mask, cache_index)
        h_BxTxD = sharding.constrain(RMSNorm(cfg, name="final_norm")(x_BxTxD), _RESIDUAL)
        new_cache = None if cache is None else KVCache(k=new_kv[0], v=new_kv[1])
        return h_BxTxD, new_cache


def _dummy_inputs(cfg: ModelConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return tokens, tokens, packing_mask(None, 1, 1)


@functools.lru_cache(maxsize=16)
def _jitted_init(cfg: ModelConfig):
    # Eager init of a scanned module dispatches op by op and is many times slower than jit.
    return jax.jit(lambda rng: nn.meta.unbox(Transformer(cfg).init(rng, *_dummy_inputs(cfg))))


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Random params (plain, unboxed pytree of arrays in cfg.param_dtype)."""
    return _jitted_init(cfg)(rng)["params"]


def logical_axes(cfg: ModelConfig) -> dict:
    """PartitionSpecs of logical axis names, one per param leaf (same structure as params)."""
    init = lambda rng: Transformer(cfg).init(rng, *_dummy_inputs(cfg))
    boxed = jax.eval_shape(init, jax.random.key(0))
    return nn.get_partition_spec(boxed)["params"]


def _check_batch(tokens_BxT):
    # Checked first: the other inputs' shapes are read from it.
    if tokens_BxT.ndim != 2:
        raise ValueError(f"tokens_BxT must be 2-D [B, T], got shape {tuple(tokens_BxT.shape)}")


def _check_tokens(name, x, shape):
    if x.ndim != 2 or tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def hidden_states(cfg, params, tokens_BxT, *, positions_BxT=None, segment_ids_BxT=None):
    """Final-norm hidden states [B, T, D] in cfg.dtype; segment_ids (0 = pad) isolate segments."""
    _check_batch(tokens_BxT)
    if positions_BxT is None:
        positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    _check_tokens("positions_BxT", positions_BxT, tokens_BxT.shape)
    if segment_ids_BxT is not None:
        _check_tokens("segment_ids_BxT", segment_ids_BxT, tokens_BxT.shape)
    mask = packing_mask(segment_ids_BxT, *tokens_BxT.shape)
    h_BxTxD, _ = Transformer(cfg).apply({"params": params}, tokens_BxT, positions_BxT, mask)
    return h_BxTxD


def unembed_weight(cfg: ModelConfig, params) -> tuple[jax.Array, bool]:
    """The output projection and whether it is stored as [V, D] (tied) rather than [D, V]."""
    if cfg.tie_embeddings:
        return params["embedding"], True
    return params["lm_head"], False


def unembed(cfg: ModelConfig, params, h_xD: jax.Array) -> jax.Array:
    """Logits [..., V] in float32 from hidden states [..., D]."""
    w, is_vxd = unembed_weight(cfg, params)
    w = w.astype(jnp.dtype(cfg.dtype))
    spec = "...d,vd->...v" if is_vxd else "...d,dv->...v"
    return jnp.einsum(spec, h_xD.astype(w.dtype), w, preferred_element_type=jnp.float32)


def forward(cfg, params, tokens_BxT, *, positions_BxT=None, segment_ids_BxT=None):
    """Logits [B, T, V] in float32 for a (possibly packed) batch of token ids."""
    h_BxTxD = hidden_states(
        cfg, params, tokens_BxT, positions_BxT=positions_BxT, segment_ids_BxT=segment_ids_BxT
    )
    return unembed(cfg, params, h_BxTxD)


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
    """Zero KV cache with `length` slots per row."""
    shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
    # Two buffers, not one shared: a cache may be donated, and a buffer can be donated once.
    dtype = jnp.dtype(cfg.dtype)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))


def forward_cached(cfg, params, tokens_BxT, positions_BxT, cache, *, cache_index, kv_mask_BxS):
    """Runs T new tokens written at cache slots [cache_index, cache_index + T); returns logits.

    New token t attends to slot s iff kv_mask_BxS[b, s] and s <= cache_index + t.
    """
    _check_batch(tokens_BxT)
    b, t = tokens_BxT.shape
    s = cache.k.shape[2]
    _check_tokens("positions_BxT", positions_BxT, (b, t))
    _check_tokens("kv_mask_BxS", kv_mask_BxS, (b, s))
    if cache.k.shape != (cfg.n_layers, b, s, cfg.n_kv_heads, cfg.head_dim):
        raise ValueError(f"cache.k has shape {cache.k.shape}, expected [L, B, S, K, Dh]")
    cache_index = jnp.asarray(cache_index, jnp.int32)
    mask = cache_mask(kv_mask_BxS, t, cache_index)
    h_BxTxD, cache = Transformer(cfg).apply(
        {"params": params}, tokens_BxT, positions_BxT, mask, cache, cache_index
    )
    return unembed(cfg, params, h_BxTxD), cache
