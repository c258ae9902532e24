"""Sharded training and sampling on 8 host devices equal one device.

N sequences, P prompt tokens, T completion tokens, L = P + T.

One model whose every sharded dimension divides its mesh axis (D 64 over fsdp <= 8; 4 heads,
2 kv heads, F 128 and V 256 over tensor = 2). The steps are the library's jitted functions
(shardings, donation), compiled with XLA:CPU's LLVM optimisation and fusion emitters off: that
changes how fast the host code runs, not the partitioned programs under test, and cuts the
compile time that dominates these tests five-fold.
"""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from r1jax import sampler, sharding
from r1jax.model import config as config_lib
from r1jax.model import transformer
from r1jax.rewards import preference
from r1jax.rl import steps
from r1jax.train import checkpoint, reward_model, supervised, trainer
from r1jax.train import state as state_lib

CFG = config_lib.ModelConfig(
    vocab_size=256,
    d_model=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=16,
    d_ff=128,
    qkv_bias=True,
)
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]
MESH_IDS = ["x".join(map(str, s)) for s in MESHES]
ATOL = 1e-5  # float32; the meshes only reorder the partial sums of reductions
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _optimizer():
    # eps 1e-4, not 1e-8: Adam's first step divides each gradient by its own size, so on the
    # few gradients that cancel to ~1e-9 float32 reordering noise (~1e-8 here) would move the
    # update by up to lr * noise / eps. eps bounds that at 1e-7; a wrong gradient (a missing
    # shard, a wrong reduction) still moves the params by ~lr = 1e-3.
    optim = ml_collections.ConfigDict(
        dict(lr=1e-3, schedule="constant", warmup_steps=0, min_lr_ratio=1.0, b1=0.9, b2=0.95)
    )
    optim.update(eps=1e-4, weight_decay=0.01, grad_clip=1.0)
    return state_lib.make_optimizer(optim, 10)


def _mesh(shape):
    if shape == (1, 1, 1):
        return sharding.make_mesh({"data": 1}, jax.devices()[:1])
    return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))


@functools.cache
def _host_params():
    """The model's initial params as numpy (placed on each mesh by the tests)."""
    return jax.device_get(transformer.init_params(CFG, jax.random.key(0)))


def _state_on(mesh, params, logical, opt):
    """A step-0 TrainState around host `params`, laid out on `mesh` by the default rules."""
    shardings = trainer.state_shardings(logical, params, opt, mesh, sharding.DEFAULT_RULES)
    return trainer.state_from_params(params, shardings, opt, jax.random.key(1)), shardings


def _run(jitted, state, batch):
    return jitted.lower(state, batch).compile(FAST_COMPILE)(state, batch)


def _sft_batch(rows=16, t=16):
    rng = np.random.default_rng(0)
    return {
        "inputs": rng.integers(0, CFG.vocab_size, (rows, t)).astype(np.int32),
        "targets": rng.integers(0, CFG.vocab_size, (rows, t)).astype(np.int32),
        "loss_mask": (rng.random((rows, t)) < 0.7).astype(np.float32),
        "segment_ids": np.ones((rows, t), np.int32),
        "positions": np.tile(np.arange(t, dtype=np.int32), (rows, 1)),
    }


def _grpo_batch(n=16, p=8, t=8):
    rng = np.random.default_rng(1)
    lengths_N = rng.integers(1, t + 1, n)
    mask_NxT = (np.arange(t)[None] < lengths_N[:, None]).astype(np.float32)
    segment_NxL = np.concatenate([np.ones((n, p)), mask_NxT], axis=1).astype(np.int32)
    # Old and reference log-probs near the model's (about -log V), so ratios and the KL matter.
    near = lambda: (-np.log(CFG.vocab_size) + 0.3 * rng.standard_normal((n, t))) * mask_NxT
    return {
        "input_ids_NxL": rng.integers(0, CFG.vocab_size, (n, p + t)).astype(np.int32),
        "positions_NxL": np.tile(np.arange(p + t, dtype=np.int32), (n, 1)),
        "segment_ids_NxL": segment_NxL,
        "completion_mask_NxT": mask_NxT,
        "advantages_N": rng.standard_normal(n).astype(np.float32),
        "old_logp_NxT": near().astype(np.float32),
        "ref_logp_NxT": near().astype(np.float32),
        "sampler_logp_NxT": near().astype(np.float32),
    }


def _sft_step(shape, cfg=CFG, grad_accum=2):
    """(new state, metrics) of one SFT step on a mesh (2 micro-batches by default)."""
    mesh, opt = _mesh(shape), _optimizer()
    state, shardings = _state_on(mesh, _host_params(), transformer.logical_axes(CFG), opt)
    step = trainer.jit_step(
        supervised.supervised_step,
        shardings,
        mesh,
        model_cfg=cfg,
        optimizer=opt,
        grad_accum=grad_accum,
    )
    return _run(step, state, sharding.put_batch(_sft_batch(), mesh))


def _sft_run(shape, cfg=CFG, grad_accum=2):
    state, metrics = _sft_step(shape, cfg, grad_accum)
    return jax.device_get(metrics), jax.device_get((state.params, state.opt_state))


def _grpo_update(shape, grad_accum=2, rows=16):
    """(jitted GRPO update: 2 minibatches (x micro-batches), KL on; step-0 state; the batch)."""
    mesh, opt = _mesh(shape), _optimizer()
    params = {"policy": _host_params()}
    state, shardings = _state_on(mesh, params, {"policy": transformer.logical_axes(CFG)}, opt)
    loss_cfg = steps.LossConfig(kl_coef=0.04, tis_cap=2.0, aggregation="token-mean")
    update = trainer.jit_step(
        steps.grpo_update,
        shardings,
        mesh,
        model_cfg=CFG,
        optimizer=opt,
        loss_cfg=loss_cfg,
        num_minibatches=2,
        grad_accum=grad_accum,
    )
    return update, state, sharding.put_batch(_grpo_batch(n=rows), mesh)


def _grpo_run(shape, grad_accum=2):
    """(metrics, updated params) of one GRPO update (`_grpo_update`)."""
    state, metrics = _run(*_grpo_update(shape, grad_accum))
    return jax.device_get(metrics), jax.device_get(state.params)


def test_grpo_update_keeps_activation_gradients_in_the_batch_layout():
    # The completion positions' hidden states (a slice of the forward's) were left to the
    # partitioner in the log-prob chunks, whose backward then split their gradient like the
    # output projection's FSDP shards: every chunk's logit gradient gathered over fsdp, then
    # an all-to-all back to rows (~25 GB a micro-batch at 7B widths, fsdp 4 x tensor 2).
    update, state, batch = _grpo_update((2, 2, 2))
    text = update.lower(state, batch).compile(FAST_COMPILE).as_text()
    assert " all-reduce(" in text  # the parser sees the step's collectives
    assert " all-to-all(" not in text


def test_sft_eval_is_laid_out_as_the_training_step():
    # Jitted bare, the eval split the activations like the FSDP weights: every q/k/v and MLP
    # product all-reduced over fsdp, and activations permuted between devices.
    mesh = _mesh((2, 2, 2))
    where = sharding.param_shardings(transformer.logical_axes(CFG), mesh)
    params = jax.device_put(_host_params(), where)
    batch = sharding.put_batch(_sft_batch(), mesh)
    program = supervised.eval_program(CFG, mesh)
    text = program.lower(params, batch).compile(FAST_COMPILE).as_text()
    assert " all-gather(" in text  # the parser sees the layers' FSDP gathers
    assert " collective-permute(" not in text
    nll, count = program(params, batch)
    want = jax.jit(functools.partial(supervised.eval_terms, model_cfg=CFG))(
        _host_params(), _sft_batch()
    )
    np.testing.assert_allclose([float(nll), float(count)], [float(w) for w in want], rtol=1e-5)


def test_reward_model_step_moves_no_rows_between_devices():
    # Chosen and rejected rows were concatenated (each device's half-blocks belonged to other
    # devices: all-to-alls of the tokens and masks, permutes of the scores, every micro-batch)
    # and the value head's D was split over tensor (permutes of [B, T] partial values).
    mesh, opt = _mesh((2, 2, 2)), _optimizer()
    params = jax.device_get(preference.init_params(CFG, _host_params(), jax.random.key(2)))
    state, shardings = _state_on(mesh, params, preference.logical_axes(CFG), opt)
    step = trainer.jit_step(
        reward_model.reward_model_step, shardings, mesh, model_cfg=CFG, optimizer=opt, grad_accum=2
    )
    rng = np.random.default_rng(3)
    tokens = lambda: rng.integers(1, CFG.vocab_size, (16, 12)).astype(np.int32)
    batch = {"chosen_BxT": tokens(), "rejected_BxT": tokens()}
    batch.update(
        chosen_mask_BxT=np.ones((16, 12), np.int32), rejected_mask_BxT=np.ones((16, 12), np.int32)
    )
    text = step.lower(state, sharding.put_batch(batch, mesh)).compile(FAST_COMPILE).as_text()
    assert " all-reduce(" in text  # the parser sees the step's collectives
    assert " all-to-all(" not in text
    assert " collective-permute(" not in text


def _all_reduce_loop_depths(text: str) -> list[int]:
    """How many while loops enclose each all-reduce of a compiled program (its HLO text)."""
    comps, name, entry = {}, None, None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            name, comps[head.group(2)] = head.group(2), []
            entry = name if head.group(1) else entry
        elif line.startswith("}"):
            name = None
        elif name:
            comps[name].append(line)
    depths = []

    def visit(comp, depth):
        for line in comps[comp]:
            depths.extend([depth] * (" all-reduce(" in line))
            for kind, callee in re.findall(r"(calls|to_apply|body|condition)=%?([\w.\-]+)", line):
                visit(callee, depth + (kind == "body"))

    visit(entry, 0)
    return depths


def _reward_model_step(shape, grad_accum):
    mesh, opt = _mesh(shape), _optimizer()
    params = jax.device_get(preference.init_params(CFG, _host_params(), jax.random.key(2)))
    state, shardings = _state_on(mesh, params, preference.logical_axes(CFG), opt)
    step = trainer.jit_step(
        reward_model.reward_model_step,
        shardings,
        mesh,
        model_cfg=CFG,
        optimizer=opt,
        grad_accum=grad_accum,
    )
    rng = np.random.default_rng(4)
    batch = {
        f"{side}_BxT": rng.integers(1, CFG.vocab_size, (16, 12)) for side in ("chosen", "rejected")
    }
    lengths = rng.integers(4, 13, (2, 16))
    for side, n in zip(("chosen", "rejected"), lengths):
        batch[f"{side}_mask_BxT"] = (np.arange(12)[None] < n[:, None]).astype(np.int32)
    batch = {k: v.astype(np.int32) for k, v in batch.items()}
    return step, state, sharding.put_batch(batch, mesh)


@pytest.mark.parametrize("kind", ["sft", "grpo", "reward_model"])
def test_accumulation_all_reduces_gradients_over_data_once_a_step(kind):
    # Each micro-batch's gradients were all-reduced over the data axis inside the accumulation
    # loop (grad_accum x the params' bytes a step); now each replica sums its own and the
    # replicas reduce once, after the loop.
    if kind == "sft":
        mesh, opt = _mesh((8, 1, 1)), _optimizer()
        state, shardings = _state_on(mesh, _host_params(), transformer.logical_axes(CFG), opt)
        step = trainer.jit_step(
            supervised.supervised_step, shardings, mesh, model_cfg=CFG, optimizer=opt, grad_accum=2
        )
        batch = sharding.put_batch(_sft_batch(), mesh)
    elif kind == "grpo":
        step, state, batch = _grpo_update((8, 1, 1), grad_accum=2, rows=32)  # 8-row micro-batches
    else:
        step, state, batch = _reward_model_step((8, 1, 1), grad_accum=2)
    text = step.lower(state, batch).compile(FAST_COMPILE).as_text()
    depths = _all_reduce_loop_depths(text)
    assert depths  # the parser sees the step's collectives
    # On a data-only mesh every all-reduce is a reduction over the replicas; none may sit in
    # the accumulation loop. GRPO's updates are themselves a loop (one reduction each).
    assert max(depths) == (1 if kind == "grpo" else 0), depths


def test_reward_model_step_on_mesh_equals_one_device():
    results = []
    for shape, grad_accum in (((1, 1, 1), 1), ((2, 2, 2), 2), ((8, 1, 1), 2)):
        state, metrics = _run(*_reward_model_step(shape, grad_accum))
        results.append((jax.device_get(metrics), jax.device_get((state.params, state.opt_state))))
    (metrics_ref, state_ref), *meshes = results
    for metrics, state in meshes:
        _assert_metrics_close(metrics, metrics_ref)
        _assert_trees_close(state, state_ref)


# The references take whole batches; the meshes accumulate 2 micro-batches: the tests check the
# sharded step and exact gradient accumulation at once.
@pytest.fixture(scope="module")
def sft_reference():
    return _sft_run((1, 1, 1), grad_accum=1)


@pytest.fixture(scope="module")
def grpo_reference():
    return _grpo_run((1, 1, 1), grad_accum=1)


def _host(tree):
    """numpy leaves; typed PRNG keys as their key data."""
    as_data = lambda x: (
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )
    return jax.device_get(jax.tree.map(as_data, tree))


def _assert_trees_close(got, expected, atol=ATOL):
    got, expected = _host(got), _host(expected)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


def _assert_metrics_close(got, expected, rtol=ATOL):
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        g, w = float(got[key]), float(want)
        assert abs(g - w) <= rtol * max(1.0, abs(w)), (key, g, w)


@pytest.mark.parametrize("shape", MESHES, ids=MESH_IDS)
def test_sft_step_on_mesh_equals_one_device(shape, sft_reference):
    metrics_ref, state_ref = sft_reference
    metrics, state = _sft_run(shape)
    _assert_metrics_close(metrics, metrics_ref)  # loss, grad norm, token counts
    _assert_trees_close(state, state_ref)  # params and both Adam moments
    assert np.abs(state[0]["embedding"] - _host_params()["embedding"]).max() > 1e-4


@pytest.mark.parametrize("shape", MESHES, ids=MESH_IDS)
def test_grpo_update_on_mesh_equals_one_device(shape, grpo_reference):
    metrics_ref, params_ref = grpo_reference
    metrics, params = _grpo_run(shape)
    assert metrics_ref["updates"] == 2 and metrics_ref["kl_ref"] > 0
    _assert_metrics_close(metrics, metrics_ref)  # loss, KL, ratios, clip fractions, grad norm
    _assert_trees_close(params, params_ref)


@functools.cache
def _peaked_params():
    return jax.tree.map(lambda x: x * 4.0 if x.ndim > 1 else x, _host_params())


_PROMPTS = [[i + 1] * (1 + i % 5) for i in range(8)]
_SAMPLE_KW = dict(max_new_tokens=6, num_samples=2, temperature=0.0, eos_ids=(3,))


@pytest.fixture(scope="module")
def greedy_reference():
    return sampler.generate(CFG, _peaked_params(), _PROMPTS, **_SAMPLE_KW)


@pytest.mark.parametrize("shape", MESHES, ids=MESH_IDS)
def test_greedy_sampling_on_mesh_equals_one_device(shape, greedy_reference):
    ref = greedy_reference
    assert len(np.unique(ref.tokens)) > 4  # the prompts lead to different continuations
    mesh = _mesh(shape)
    logical = transformer.logical_axes(CFG)
    params = jax.device_put(_peaked_params(), sharding.param_shardings(logical, mesh))
    out = sampler.generate(CFG, params, _PROMPTS, mesh=mesh, **_SAMPLE_KW)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=ATOL)


def test_full_fsdp_initialises_directly_sharded_with_an_eighth_on_each_device():
    mesh, opt = _mesh((1, 8, 1)), _optimizer()
    rng = jax.random.key(2)
    state, _ = trainer.init_state(CFG, opt, rng, mesh, sharding.DEFAULT_RULES)
    # The sharded init draws the numbers a one-device init draws.
    _assert_trees_close(state.params, transformer.init_params(CFG, jax.random.split(rng)[0]), 0)
    leaves = jax.tree.leaves(state.params)
    total = sum(x.nbytes for x in leaves)
    # Every matrix is split 8 ways over fsdp; norm scales and qkv biases (no "embed" axis,
    # 0.5% of this model, ~0 of a real one) are replicated.
    split = [x for x in leaves if x.sharding.shard_shape(x.shape) != x.shape]
    assert all(np.prod(x.sharding.shard_shape(x.shape)) * 8 == x.size for x in split)
    replicated = total - sum(x.nbytes for x in split)
    assert replicated < 0.01 * total
    per_device = sharding.bytes_per_device(state.params)
    assert len(per_device) == 8
    assert set(per_device.values()) == {(total - replicated) // 8 + replicated}
    assert max(per_device.values()) < 1.04 * total / 8
    # Adam's two moments are laid out like the params; its step counters are scalars.
    params_held = max(per_device.values())
    for held in sharding.bytes_per_device(state.opt_state).values():
        assert 2 * params_held <= held <= 2 * params_held + 64


def test_full_fsdp_step_gathers_weights_not_activations():
    # FSDP: each device keeps its rows and gathers each layer's weights to them. Without the
    # activation layout the partitioner splits activations like the weights instead (all-to-all
    # of activations, partial sums reduced), which costs memory and time on every device.
    mesh, opt = _mesh((1, 8, 1)), _optimizer()
    state, shardings = _state_on(mesh, _host_params(), transformer.logical_axes(CFG), opt)
    step = trainer.jit_step(
        supervised.supervised_step, shardings, mesh, model_cfg=CFG, optimizer=opt, grad_accum=2
    )
    hlo = step.lower(state, sharding.put_batch(_sft_batch(), mesh)).compile(FAST_COMPILE).as_text()
    assert "all-to-all" not in hlo
    gathered = re.findall(r"= [a-z0-9]+\[([0-9,]*)\]\S* all-gather\(", hlo)
    assert gathered  # the weights, one layer at a time
    per_layer = {x.size // (CFG.n_layers if "layers" in k else 1) for k, x in _flat_params()}
    sizes = {int(np.prod([int(d) for d in dims.split(",") if d])) for dims in gathered}
    assert sizes <= per_layer, (sizes, per_layer)


def _flat_params():
    leaves = jax.tree_util.tree_leaves_with_path(_host_params())
    return [(jax.tree_util.keystr(path), x) for path, x in leaves]


def test_checkpoint_saved_on_one_mesh_restores_on_another(tmp_path):
    # Saved after one SFT step on (8, 1, 1): step 1, moved params, non-zero Adam moments.
    saved, _ = _sft_step((8, 1, 1))
    expected = _host(saved)
    mngr = checkpoint.manager(tmp_path / "checkpoints")
    checkpoint.save(mngr, saved, force=True)
    mngr.wait_until_finished()
    # The target: a zero state of the same shapes laid out on (1, 4, 2).
    mesh_b, opt = _mesh((1, 4, 2)), _optimizer()
    zeros = jax.tree.map(np.zeros_like, _host_params())
    target, shardings_b = _state_on(mesh_b, zeros, transformer.logical_axes(CFG), opt)
    restored, _, _ = checkpoint.restore_latest(mngr, target)
    _assert_trees_close(restored, expected, atol=0)
    assert int(restored.step) == 1
    for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings_b)):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (leaf.sharding, want)


def test_bf16_compute_keeps_float32_master_weights_and_optimizer_state(sft_reference):
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    hidden = jax.eval_shape(
        lambda p: transformer.hidden_states(cfg, p, jnp.zeros((2, 4), jnp.int32)), _host_params()
    )
    assert hidden.dtype == jnp.bfloat16
    metrics, (params, opt_state) = _sft_run((2, 2, 2), cfg)
    dtypes = {x.dtype for x in jax.tree.leaves((params, opt_state)) if x.ndim > 0}
    assert dtypes == {np.dtype(np.float32)}
    # bf16 activations: the loss agrees with float32 to bf16's ~3 significant digits.
    loss_f32 = float(sft_reference[0]["loss"])
    assert 0 < abs(float(metrics["loss"]) - loss_f32) < 1e-2 * loss_f32


def test_remat_step_on_mesh_equals_one_device(sft_reference):
    # test_model checks both policies' gradients on one device; here one under sharding.
    metrics, state = _sft_run((1, 4, 2), dataclasses.replace(CFG, remat="dots"))
    _assert_metrics_close(metrics, sft_reference[0])
    _assert_trees_close(state, sft_reference[1])


def test_attention_in_chunks_on_mesh_equals_one_device(sft_reference):
    # Blocks of 6 of the 16 queries (the last one padded), with heads split over tensor.
    metrics, state = _sft_run((1, 4, 2), dataclasses.replace(CFG, attention_chunk=6))
    _assert_metrics_close(metrics, sft_reference[0])
    _assert_trees_close(state, sft_reference[1])


def test_kv_cache_sharding_follows_the_rules():
    mesh = _mesh((2, 2, 2))
    decode_k = sharding.cache_sharding(mesh, layout="decode_k").spec
    decode_v = sharding.cache_sharding(mesh, layout="decode_v").spec
    model = sharding.cache_sharding(mesh, layout="model").spec
    assert tuple(decode_k) == (("data", "fsdp"), "tensor", None, None)
    assert tuple(decode_v) == (("data", "fsdp"), "tensor", None, None)
    assert tuple(model) == (None, ("data", "fsdp"), None, "tensor", None)


def test_config_rules_replace_only_the_names_they_give():
    # A partial list replaced the whole table: every other name (embed, vocab, ...) mapped to
    # no mesh axis, and full FSDP held all the params on every device, silently.
    rules = sharding.rules_from_config([["kv_heads", None], ["mlp", ["fsdp", "tensor"]]])
    want = dict(sharding.DEFAULT_RULES, kv_heads=None, mlp=("fsdp", "tensor"))
    assert rules == tuple(want.items()) and sharding.rules_from_config([]) == sharding.DEFAULT_RULES
    cfg = config_lib.ModelConfig(
        vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64
    )
    shapes = jax.eval_shape(functools.partial(transformer.init_params, cfg), jax.random.key(0))
    placed = sharding.param_shardings(
        transformer.logical_axes(cfg), _mesh((1, 8, 1)), rules, shapes=shapes
    )
    assert tuple(placed["embedding"].spec) == ("tensor", "fsdp")  # still split
    for bad, match in (
        ([["kv_head", None]], "unknown logical axis 'kv_head'"),
        ([["embed", "model"]], "'embed' -> unknown mesh axis 'model'"),
        ([["embed"]], "not a \\[name, mesh axes\\] pair"),
    ):
        with pytest.raises(ValueError, match=f"config.mesh.rules: .*{match}"):
            sharding.rules_from_config(bad)


def test_mesh_sizes_infer_minus_one_and_reject_bad_shapes():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape({"data": 1, "fsdp": -1}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.mesh_shape({"data": -1, "fsdp": 3}, 8)
    with pytest.raises(ValueError, match="needs 4 devices, 8 are available"):
        sharding.mesh_shape({"data": 2, "fsdp": 2}, 8)


@pytest.mark.parametrize(
    "preset,mesh_sizes,match",
    [
        (
            "qwen2.5-0.5b",
            {"fsdp": 2, "tensor": 4},
            r"attn/\w+ .* size (14|2) is not a multiple of 4",
        ),
        ("tiny", {"fsdp": 1, "tensor": 8}, r"dimension \d of size \d+ is not a multiple of 8"),
    ],
)
def test_a_mesh_that_does_not_divide_the_model_is_refused_naming_the_param(
    preset, mesh_sizes, match
):
    # Checked on shapes only (jax.eval_shape): nothing is allocated, the 0.5B model included.
    model_cfg = config_lib.get_preset(preset)
    mesh = sharding.make_mesh(mesh_sizes)
    optimizer = _optimizer()
    with pytest.raises(ValueError, match=f"config.mesh: param .*{match}"):
        trainer.model_shardings(model_cfg, optimizer, mesh, sharding.DEFAULT_RULES)
    fits = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    trainer.model_shardings(model_cfg, optimizer, fits, sharding.DEFAULT_RULES)


def test_rules_that_split_a_name_over_a_batch_axis_train_as_one_device(sft_reference):
    # configs/base.py's example rules: "mlp" over (fsdp, tensor) beside "batch" over (data,
    # fsdp) pinned the MLP's hidden activations to fsdp twice (jax's DuplicateSpecError). The
    # batch keeps fsdp; the hidden activations are split over tensor.
    rules = sharding.rules_from_config([["embed", None], ["mlp", ["fsdp", "tensor"]]])
    mesh, opt = _mesh((2, 2, 2)), _optimizer()
    shardings = trainer.state_shardings(
        transformer.logical_axes(CFG), _host_params(), opt, mesh, rules
    )
    gate = shardings.params["layers"]["mlp"]["gate_kernel"]
    assert gate.spec == jax.sharding.PartitionSpec(None, None, ("fsdp", "tensor"))
    state = trainer.state_from_params(_host_params(), shardings, opt, jax.random.key(1))
    step = trainer.jit_step(
        supervised.supervised_step, shardings, mesh, rules=rules, model_cfg=CFG, optimizer=opt,
        grad_accum=2,
    )  # fmt: skip
    state, metrics = _run(step, state, sharding.put_batch(_sft_batch(), mesh))
    metrics_ref, state_ref = sft_reference
    _assert_metrics_close(jax.device_get(metrics), metrics_ref)
    _assert_trees_close(jax.device_get((state.params, state.opt_state)), state_ref)


def test_inner_ways_counts_only_the_axes_that_do_not_split_the_batch():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.inner_ways(mesh, sharding.DEFAULT_RULES, "mlp") == 2
    assert sharding.inner_ways(mesh, sharding.DEFAULT_RULES, "embed") == 1  # fsdp splits rows
    assert sharding.inner_ways(mesh, sharding.DEFAULT_RULES, "head_dim") == 1
    rules = sharding.rules_from_config([["heads", ["fsdp", "tensor"]], ["mlp", None]])
    assert sharding.inner_ways(mesh, rules, "heads") == 2
    assert sharding.inner_ways(mesh, rules, "mlp") == 1
