"""Per-token log-probs and entropies, computed in chunks over the vocabulary.

B batch, T time, D model, V vocab, C vocab chunk.

An online logsumexp (with running sums for the entropy) walks the vocabulary C columns at a
time, so no [B, T, V] float32 buffer exists; each chunk is rematerialised in the backward pass.
"""

import functools

import jax
import jax.numpy as jnp

from r1jax import sharding
from r1jax.model import transformer

_FULL_VOCAB_MAX = 8192
_DEFAULT_CHUNK = 8192


class _Stats:
    """Running max m, sum_e = sum exp(z - m), sum_ez = sum exp(z - m) * z, and target logit."""

    @staticmethod
    def init(shape):
        zeros = jnp.zeros(shape, jnp.float32)
        return (jnp.full(shape, -jnp.inf, jnp.float32), zeros, zeros, zeros)

    @staticmethod
    def update(stats, z_BxTxSxC, shard_BxT, local_BxT):
        """One chunk's logits: C columns of each of the S vocabulary shards; the target is
        column `local_BxT` (counted from the chunk's start) of shard `shard_BxT`."""
        m, sum_e, sum_ez, target_z = stats
        both = (-2, -1)
        # The max only shifts the exponent; stopping its gradient is exact and avoids inf - inf.
        m_new = jnp.maximum(m, jax.lax.stop_gradient(jnp.max(z_BxTxSxC, axis=both)))
        decay = jnp.exp(m - m_new)
        e_BxTxSxC = jnp.exp(z_BxTxSxC - m_new[..., None, None])
        sum_e = sum_e * decay + jnp.sum(e_BxTxSxC, axis=both)
        sum_ez = sum_ez * decay + jnp.sum(e_BxTxSxC * z_BxTxSxC, axis=both)
        s, c = z_BxTxSxC.shape[-2:]
        in_chunk = (local_BxT >= 0) & (local_BxT < c)
        idx = shard_BxT * c + jnp.clip(local_BxT, 0, c - 1)
        z_BxTxSC = z_BxTxSxC.reshape(*z_BxTxSxC.shape[:2], s * c)
        picked = jnp.take_along_axis(z_BxTxSC, idx[..., None], axis=-1)[..., 0]
        return (m_new, sum_e, sum_ez, jnp.where(in_chunk, picked, target_z))


def token_logprobs(cfg, params, h_BxTxD, targets_BxT, *, temperature=1.0, chunk_size=None):
    """(log p(target), entropy) per position [B, T], of softmax(logits / temperature).

    Where the activation layout splits the vocabulary S ways (`sharding.layout_ways`, a tensor
    axis), the output projection is walked shard by shard: viewed as S blocks of V / S columns,
    a chunk is the same chunk_size / S columns of every block, so each device slices its own
    columns. Sliced across the split (chunk_size columns of the whole vocabulary), every
    device gathered the whole projection, and again per chunk in the backward pass (~1 GB a
    chunk for 7B in bf16). The hidden states keep the batch layout inside each chunk, so their
    gradient does too (the partitioner split it like the projection's FSDP shards and gathered
    every chunk's logit gradient over fsdp).
    """
    if h_BxTxD.shape[:2] != targets_BxT.shape or h_BxTxD.shape[-1] != cfg.d_model:
        raise ValueError(
            f"h_BxTxD {h_BxTxD.shape} does not match targets_BxT {targets_BxT.shape} "
            f"and d_model {cfg.d_model}"
        )
    v = cfg.vocab_size
    if chunk_size is None:
        chunk_size = v if v <= _FULL_VOCAB_MAX else _DEFAULT_CHUNK
    chunk_size = min(int(chunk_size), v)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    ways = sharding.layout_ways("vocab")
    if v % ways:  # not split evenly (the params' check refuses such meshes): one block
        ways = 1
    block = v // ways
    chunk_size = max(1, min(chunk_size // ways, block))  # columns of each block per chunk
    w, is_vxd = transformer.unembed_weight(cfg, params)
    w = w.astype(jnp.dtype(cfg.dtype))
    if is_vxd:  # the tied embedding [V, D] as [S, V / S, D]
        w = sharding.constrain(w.reshape(ways, block, -1), ("vocab", None, "embed"))
    else:  # [D, V] as [D, S, V / S]
        w = sharding.constrain(w.reshape(-1, ways, block), ("embed", "vocab", None))
    h_BxTxD = h_BxTxD.astype(w.dtype)
    targets_BxT = targets_BxT.astype(jnp.int32)
    shard_BxT, column_BxT = targets_BxT // block, targets_BxT % block

    @functools.partial(jax.checkpoint, static_argnums=(2,))
    def chunk(stats, start, size):
        h = sharding.constrain(h_BxTxD, ("batch", None, None))
        if is_vxd:
            w_chunk = jax.lax.dynamic_slice_in_dim(w, start, size, axis=1)
            z = jnp.einsum("btd,scd->btsc", h, w_chunk, preferred_element_type=jnp.float32)
        else:
            w_chunk = jax.lax.dynamic_slice_in_dim(w, start, size, axis=2)
            z = jnp.einsum("btd,dsc->btsc", h, w_chunk, preferred_element_type=jnp.float32)
        z_BxTxSxC = sharding.constrain(z / temperature, ("batch", None, "vocab", None))
        return _Stats.update(stats, z_BxTxSxC, shard_BxT, column_BxT - start)

    n_full, rest = divmod(block, chunk_size)
    stats = _Stats.init(targets_BxT.shape)
    if n_full == 1:
        stats = chunk(stats, 0, chunk_size)
    else:
        starts = jnp.arange(n_full, dtype=jnp.int32) * chunk_size
        stats, _ = jax.lax.scan(lambda s, st: (chunk(s, st, chunk_size), None), stats, starts)
    if rest:  # the ragged last chunk gets its own static shape
        stats = chunk(stats, n_full * chunk_size, rest)
    m, sum_e, sum_ez, target_z = stats
    log_z = m + jnp.log(sum_e)
    return target_z - log_z, log_z - sum_ez / sum_e


def sequence_logprobs(
    cfg,
    params,
    tokens_BxT,
    *,
    positions_BxT=None,
    segment_ids_BxT=None,
    temperature=1.0,
    chunk_size=None,
):
    """(log p(tokens[:, 1:] | prefix), entropy), each [B, T-1]."""
    h_BxTxD = transformer.hidden_states(
        cfg, params, tokens_BxT, positions_BxT=positions_BxT, segment_ids_BxT=segment_ids_BxT
    )
    return token_logprobs(
        cfg,
        params,
        h_BxTxD[:, :-1],
        tokens_BxT[:, 1:],
        temperature=temperature,
        chunk_size=chunk_size,
    )
