"""Chunked log-probs and entropy equal a full log_softmax, values and gradients."""

import dataclasses
import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import sharding
from r1jax.model import config as config_lib
from r1jax.model import logprobs
from r1jax.model import transformer as tf

CFG = config_lib.ModelConfig(
    vocab_size=300,
    d_model=32,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    head_dim=16,
    d_ff=64,
)


def _params(cfg, seed=0):
    """Random params from numpy (no compile); std 0.5 gives peaked but finite distributions."""
    shapes = jax.eval_shape(functools.partial(tf.init_params, cfg), jax.random.key(0))
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), jnp.float32), shapes)


def _reference(cfg, params, h, targets, temperature):
    logp_BxTxV = jax.nn.log_softmax(tf.unembed(cfg, params, h) / temperature, axis=-1)
    logp = jnp.take_along_axis(logp_BxTxV, targets[..., None], axis=-1)[..., 0]
    return logp, -jnp.sum(jnp.exp(logp_BxTxV) * logp_BxTxV, axis=-1)


def _total(fn, params, h):
    logp, ent = fn(params, h)
    return jnp.sum(logp * 0.7 + ent * 0.3), (logp, ent)


def _inputs(cfg):
    rng = np.random.RandomState(1)
    h = jnp.asarray(rng.normal(0, 1, (2, 8, cfg.d_model)), jnp.float32)
    return h, jnp.asarray(rng.randint(0, cfg.vocab_size, (2, 8)), jnp.int32)


@functools.cache
def _reference_grads(cfg):
    h, targets = _inputs(cfg)
    reference = lambda p, hh: _reference(cfg, p, hh, targets, 0.7)
    grad_fn = jax.grad(functools.partial(_total, reference), argnums=(0, 1), has_aux=True)
    return jax.jit(grad_fn)(_params(cfg), h)


# V = 300: None is one full-vocabulary chunk, 100 divides V, 64 and 7 leave a ragged last chunk.
@pytest.mark.parametrize("tie, chunk_size", [(False, None), (False, 100), (False, 64), (True, 7)])
def test_chunked_equals_full_log_softmax(tie, chunk_size):
    cfg = dataclasses.replace(CFG, tie_embeddings=tie)
    h, targets = _inputs(cfg)
    chunked = lambda p, hh: logprobs.token_logprobs(
        cfg, p, hh, targets, temperature=0.7, chunk_size=chunk_size
    )
    grad_fn = jax.grad(functools.partial(_total, chunked), argnums=(0, 1), has_aux=True)
    g, (logp, ent) = jax.jit(grad_fn)(_params(cfg), h)
    rg, (ref_logp, ref_ent) = _reference_grads(cfg)
    assert logp.shape == ent.shape == (2, 8)
    np.testing.assert_allclose(logp, ref_logp, atol=1e-5)
    np.testing.assert_allclose(ent, ref_ent, atol=1e-5)
    assert float(jnp.max(-ref_logp)) > 1.0  # the check is not on a near-uniform distribution
    chex.assert_trees_all_close(g, rg, atol=1e-5)


def test_sequence_logprobs_scores_next_tokens():
    tokens = jnp.asarray(np.random.RandomState(2).randint(0, CFG.vocab_size, (2, 10)), jnp.int32)

    @jax.jit
    def run(params):
        logp, ent = logprobs.sequence_logprobs(CFG, params, tokens, chunk_size=64)
        return logp, ent, tf.forward(CFG, params, tokens)

    logp, ent, logits = run(_params(CFG))
    ref = jax.nn.log_softmax(logits[:, :-1])
    assert logp.shape == ent.shape == (2, 9)
    np.testing.assert_allclose(
        logp, jnp.take_along_axis(ref, tokens[:, 1:, None], -1)[..., 0], atol=1e-5
    )
    np.testing.assert_allclose(ent, -jnp.sum(jnp.exp(ref) * ref, axis=-1), atol=1e-5)


def test_shape_mismatch_is_reported():
    h = jnp.zeros((2, 8, CFG.d_model))
    with pytest.raises(ValueError, match="targets_BxT"):
        logprobs.token_logprobs(CFG, _params(CFG), h, jnp.zeros((2, 7), jnp.int32))


@pytest.mark.parametrize("tied", [False, True])
def test_vocab_split_over_tensor_is_walked_shard_by_shard(tied):
    """Vocabulary split over tensor, walked in chunks (64 columns of 256: 32 of each shard):
    every device slices only its own columns, and values and gradients equal one device's.
    Slicing chunks of the whole vocabulary, each device gathered the whole output projection
    (~1 GB for 7B in bf16), again for every chunk of the backward pass."""
    cfg = config_lib.ModelConfig(
        vocab_size=256, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16,
        d_ff=128, tie_embeddings=tied,
    )  # fmt: skip
    params = jax.tree.map(lambda x: 8.0 * x, tf.init_params(cfg, jax.random.key(0)))
    h = jax.random.normal(jax.random.key(1), (4, 18, 64))
    targets = jax.random.randint(jax.random.key(2), (4, 16), 0, 256)

    def total(p, h, t):  # completion positions of longer hidden states, as RL's steps take
        lp, ent = logprobs.token_logprobs(cfg, p, h[:, 1:-1], t, chunk_size=64)
        return jnp.sum(lp) + 0.1 * jnp.sum(ent)

    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    where = sharding.param_shardings(tf.logical_axes(cfg), mesh, shapes=params)
    rows = sharding.batch_sharding(mesh)
    args = (jax.device_put(params, where), jax.device_put(h, rows), jax.device_put(targets, rows))
    grad = jax.jit(sharding.laid_out(jax.value_and_grad(total, argnums=(0, 1)), mesh))
    text = grad.lower(*args).compile().as_text()
    gathered = re.findall(r"= (\S+) all-gather\(", text)
    assert gathered  # the parser sees the FSDP gathers of the chunks
    whole = [shape for shape in gathered if "256" in shape]  # all 256 columns (or rows)
    assert not whole, whole
    got = grad(*args)
    want = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(params, h, targets)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
