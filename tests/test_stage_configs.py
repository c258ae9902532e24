"""Every stage config of the R1 recipe (tiny and real-model variants) loads, validates and builds
its step functions on a tiny stand-in model (the shipped world base): the real model, data and
run paths are swapped for small local ones, every other setting is the config's own. The TPU
variants share the one-GPU variants' code path; they are validated on an 8-device mesh."""

import json
import os

import jax
import numpy as np
import pytest

from r1jax import configlib, evaluation, pipeline, sharding
from r1jax.rl import rollout
from r1jax.train import collect, reward_model, rl, supervised, trainer
from r1jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD_BASE = os.path.join(REPO, "r1jax", "assets", "world_base")
STAGE_CONFIGS = (
    "cold_start",
    "reasoning_rl",
    "rejection_sampling",
    "sft_all",
    "reward_model",
    "all_domain_rl",
    "distill",
)
REAL = ("qwen2.5-1.5b", "qwen2.5-7b-tpu")
SPECS = [f"configs/{name}.py:{v}" for name in STAGE_CONFIGS for v in ("tiny",) + REAL] + [
    "configs/distill.py:tiny_rl",
    "configs/r1_zero.py:tiny",
    "configs/r1_zero.py:qwen2.5-1.5b",
]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Small local files and a one-step reward-model run that stand in for real paths."""
    root = tmp_path_factory.mktemp("stand_ins")
    sft = root / "sft.jsonl"
    rows = [
        {"prompt": f"Work mod 7. Start with {i}. Result?", "response": f"{i}"} for i in range(8)
    ]
    sft.write_text("".join(json.dumps(r) + "\n" for r in rows))
    general = root / "general_prompts.jsonl"
    general.write_text(
        "".join(json.dumps({"prompt": f"Say plus {i} in Chinese."}) + "\n" for i in range(8))
    )
    rm_cfg = configlib.load_config(
        os.path.join(REPO, "configs/reward_model.py:tiny"),
        train__steps=1,
        data__batch_size=4,
        data__eval="",
        rm__hh_eval="",
        data__max_records=8,
        metrics__tensorboard=False,
        metrics__peak_flops=1e9,
        mesh__num_devices=1,
    )
    reward_model.run(rm_cfg, root / "rm")
    return {"sft": str(sft), "general": str(general), "rm": str(root / "rm")}


def _exists(path) -> bool:
    return bool(path) and os.path.exists(path)


def stand_in(spec: str, paths: dict):
    """The config of `spec` with the stand-in model, small shapes and local paths."""
    cfg = configlib.load_config(os.path.join(REPO, spec))
    cfg.unlock()
    cfg.model.init_from = WORLD_BASE
    cfg.tokenizer.path = ""
    cfg.tokenizer.train_vocab_size = 0
    cfg.mesh.num_devices = 1
    cfg.metrics.tensorboard = False
    cfg.metrics.peak_flops = 1e9
    cfg.rl.reward_workers = 0
    cfg.data.seq_len = 64
    cfg.data.batch_size = 2 * cfg.train.grad_accum
    cfg.rl.prompts_per_step = max(4, cfg.train.grad_accum * cfg.rl.num_minibatches)
    if cfg.stage == "collect":
        cfg.collect.model = WORLD_BASE
        cfg.collect.max_new_tokens = 32  # cold_start's follows data.seq_len - 512
    if cfg.collect.reward_model:
        cfg.collect.reward_model = paths["rm"]
    for name in ("reward_model", "harmlessness_model"):
        if cfg.rl[name].path:
            cfg.rl[name].path = paths["rm"]
    if cfg.rl.general_prompts.startswith("/"):
        cfg.rl.general_prompts = paths["general"]
    if cfg.collect.general_data.startswith("/"):
        cfg.collect.general_data = paths["sft"]
    if cfg.data.format != "world" and not _exists(cfg.data.train):
        cfg.data.train = paths["sft"] if cfg.stage == "sft" else cfg.rm.hh_eval
    if cfg.data.format != "world" and cfg.data.eval and not _exists(cfg.data.eval):
        cfg.data.eval = ""
    return cfg


def _lower_sft(cfg, paths):
    model_cfg, params = supervised.initial_params(
        cfg, configlib.model_config_from(cfg, vocab_size=512)
    )
    mesh = sharding.make_mesh(cfg.mesh.to_dict())
    rules = sharding.rules_from_config(cfg.mesh.rules)
    optimizer = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
    state, shardings = trainer.init_state(
        model_cfg, optimizer, jax.random.key(0), mesh, rules, params
    )
    step = trainer.jit_step(
        supervised.supervised_step,
        shardings,
        mesh,
        rules=rules,
        model_cfg=model_cfg,
        optimizer=optimizer,
        grad_accum=cfg.train.grad_accum,
    )
    records = supervised.load_records(cfg, paths["sft"])
    tokenizer = evaluation.text.load_tokenizer(WORLD_BASE)
    batch = next(supervised.make_batches(cfg, records, tokenizer, seed=0))
    return step.lower(state, sharding.put_batch(batch, mesh))


def _lower_rl(cfg, workdir):
    run = rl.RLRun(cfg, workdir)
    try:
        n, p, t = cfg.rl.prompts_per_step * cfg.rl.num_samples, 16, 8
        arrays = rollout.training_arrays(
            np.ones((cfg.rl.prompts_per_step, p), np.int32),
            np.full((cfg.rl.prompts_per_step,), p, np.int32),
            np.ones((n, t), np.int32),
            np.full((n,), t, np.int32),
            cfg.rl.num_samples,
            0,
        )
        zeros = np.zeros((n, t), np.float32)
        host = {**arrays, "advantages_N": np.ones((n,), np.float32), "sampler_logp_NxT": zeros}
        batch = sharding.put_batch(host, run.mesh)
        batch["ref_logp_NxT"] = run.jitted.logprobs(run.ref, batch)
        if not run.on_policy:
            batch["old_logp_NxT"] = batch["ref_logp_NxT"]
        return run.jitted.update.lower(run.state, batch)
    finally:
        run.close()


def _lower_rm(cfg):
    model_cfg, trunk = supervised.initial_params(
        cfg, configlib.model_config_from(cfg, vocab_size=512)
    )
    mesh = sharding.make_mesh(cfg.mesh.to_dict())
    rules = sharding.rules_from_config(cfg.mesh.rules)
    optimizer = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
    state, shardings = reward_model._initial_state(cfg, model_cfg, trunk, optimizer, mesh, rules)
    step = trainer.jit_step(
        reward_model.reward_model_step,
        shardings,
        mesh,
        rules=rules,
        model_cfg=model_cfg,
        optimizer=optimizer,
        grad_accum=cfg.train.grad_accum,
    )
    pairs = reward_model.load_pairs(cfg, cfg.data.train, max_pairs=8)
    tokenizer = evaluation.text.load_tokenizer(WORLD_BASE)
    batches = reward_model.pair_batches(
        pairs,
        tokenizer,
        template=cfg.data.template,
        max_len=64,
        batch_size=cfg.data.batch_size,
        seed=0,
        shard_index=0,
        shard_count=1,
        fixed_len=64,
    )
    return step.lower(state, sharding.put_batch(next(batches), mesh))


@pytest.mark.parametrize("spec", SPECS)
def test_stage_config_validates_and_builds_its_steps(spec, stand_ins, shared_data, tmp_path):
    cfg = stand_in(spec, stand_ins)
    configlib.validate(cfg, num_devices=1)
    if spec.endswith("-tpu"):  # the 1.5b variant's code path; on a pod its params are sharded
        own = configlib.load_config(os.path.join(REPO, spec))
        assert own.mesh.fsdp == -1 and own.mesh.data == 1
        cfg.mesh.num_devices = 0
        cfg.data.batch_size, cfg.rl.prompts_per_step = own.data.batch_size, own.rl.prompts_per_step
        configlib.validate(cfg, num_devices=8)  # its own batch sizes divide over 8 devices
        return
    if cfg.stage == "rl":
        lowered = _lower_rl(cfg, tmp_path)
    elif cfg.stage == "reward_model":
        lowered = _lower_rm(cfg)
    elif cfg.stage == "sft":
        lowered = _lower_sft(cfg, stand_ins)
    else:  # collect: the source model loads; with collect.sft, the SFT step builds
        assert cfg.stage == "collect"
        mesh = sharding.make_mesh(cfg.mesh.to_dict())
        model_cfg, _, tokenizer, _ = evaluation.load_model(collect._source_config(cfg), mesh)
        assert model_cfg.vocab_size >= tokenizer.vocab_size
        lowered = (
            _lower_sft(collect.sft_config(cfg, stand_ins["sft"]), stand_ins)
            if (cfg.collect.sft)
            else None
        )
    if lowered is not None:
        assert "stablehlo" in lowered.as_text()[:20000] or lowered.as_text()


def test_pipeline_config_wires_every_stage(shared_data, tmp_path):
    cfg = configlib.load_config(os.path.join(REPO, "configs/pipeline.py:tiny"))
    pipeline.check(cfg)
    assert list(cfg.pipeline.order) == list(cfg.stages.keys()) or set(cfg.pipeline.order) == set(
        cfg.stages.keys()
    )
    for name in cfg.pipeline.order:
        stage = pipeline.resolve_config(cfg.stages[name], tmp_path)
        assert stage.stage in configlib.STAGES
