"""Configs: every variant loads and validates; mistakes stop at start-up naming the field."""

import dataclasses
import gzip
import json
import os
import re
import subprocess
import sys

import pytest

from r1jax import configlib
from r1jax.model import config as model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = [
    "configs/sft.py:tiny",
    "configs/sft.py:qwen2.5-1.5b",
    "configs/sft.py:qwen2.5-7b-tpu",
    "configs/pretrain.py:tiny",
    "configs/pretrain.py:gsm8k",
    "configs/pretrain.py:qwen2.5-0.5b",
    "configs/eval.py:gsm8k",
    "configs/eval.py:math500",
    "configs/eval.py:humaneval",
    "configs/eval.py:humaneval_completion",
    "configs/eval.py:aime24",
    "configs/eval.py:world",
]


@pytest.mark.parametrize("spec", VARIANTS)
def test_every_variant_loads(spec):
    cfg = configlib.load_config(os.path.join(REPO, spec))
    assert cfg.stage in configlib.STAGES
    model_cfg = configlib.model_config_from(cfg, vocab_size=1000)
    assert model_cfg.n_heads % model_cfg.n_kv_heads == 0


def test_tiny_variants_validate(shared_data):
    for spec in ("configs/sft.py:tiny", "configs/pretrain.py:tiny", "configs/pretrain.py:gsm8k"):
        configlib.validate(configlib.load_config(os.path.join(REPO, spec)), num_devices=8)


def _cfg(**kw):
    return configlib.load_config(os.path.join(REPO, "configs/sft.py:tiny"), **kw)


def test_batch_not_divisible_by_devices_names_the_field(shared_data):
    with pytest.raises(configlib.ConfigError, match=r"config\.data\.batch_size.*8 data-parallel"):
        configlib.validate(_cfg(data__batch_size=12), num_devices=8)


def test_grad_accum_that_does_not_divide_the_batch(shared_data):
    with pytest.raises(configlib.ConfigError, match=r"config\.data\.batch_size.*grad_accum"):
        configlib.validate(_cfg(train__grad_accum=3), num_devices=1)


def test_missing_data_file_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(configlib.ConfigError, match=r"config\.data\.train.*nope\.jsonl"):
        configlib.validate(_cfg(data__train=missing), num_devices=1)


def test_unknown_preset_and_mesh(shared_data):
    with pytest.raises(configlib.ConfigError, match=r"config\.model\.preset"):
        configlib.validate(_cfg(model__preset="gpt5"), num_devices=1)
    with pytest.raises(configlib.ConfigError, match=r"config\.mesh"):
        configlib.validate(_cfg(mesh__fsdp=3), num_devices=8)


def test_unknown_field_fails(shared_data):
    with pytest.raises(KeyError, match="lrr"):
        _cfg(optim__lrr=1.0)


def test_cli_unknown_override_and_missing_file(tmp_path):
    base = [sys.executable, "-m", "r1jax.main", "--config=configs/sft.py:tiny"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        base + [f"--workdir={tmp_path}", "--config.optim.lrr=1e-4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode != 0
    assert "--config.optim.lrr=1e-4: config.optim has no field 'lrr' (did you mean" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    out = subprocess.run(
        base + [f"--workdir={tmp_path}", f"--config.data.train={tmp_path}/missing.jsonl"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode != 0
    assert "config.data.train" in out.stderr and "missing.jsonl" in out.stderr
    # A model the mesh cannot split: one line too (it was a 20-line traceback).
    many = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run(
        base + [f"--workdir={tmp_path / 'tp'}", "--config.mesh.data=1", "--config.mesh.tensor=8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=many,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("r1jax: config.mesh: param ") and "not a multiple of 8" in last, last
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_malformed_row_names_file_and_line_or_is_skipped_and_counted(tmp_path, caplog):
    from r1jax.data import sources
    from r1jax.train import supervised

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "a", "response": "b"}\n{"prompt": "c", \n{"prompt": "d", "response": "e"}\n'
    )
    cfg = _cfg(data__train=str(bad), data__format="jsonl", data__eval="")
    with pytest.raises(sources.DataError, match=r"bad\.jsonl:2"):
        supervised.load_records(cfg, str(bad))
    cfg = _cfg(data__train=str(bad), data__format="jsonl", data__eval="", data__on_error="skip")
    with caplog.at_level("WARNING"):
        assert [r["prompt"] for r in supervised.load_records(cfg, str(bad))] == ["a", "d"]
    # The count, and which rows (it said how many only).
    assert "skipped 1 malformed rows" in caplog.text and "bad.jsonl:2: " in caplog.text
    # A gzipped JSON list is read as a list (it was read as JSONL, failing at line 1).
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    with gzip.open(tmp_path / "rows.json.gz", "wt") as f:
        json.dump(rows, f, indent=1)
    assert supervised.load_records(cfg, str(tmp_path / "rows.json.gz")) == rows
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "r1jax.main",
            "--config=configs/sft.py:tiny",
            f"--workdir={tmp_path / 'run'}",
            f"--config.data.train={bad}",
            "--config.data.format=jsonl",
            "--config.data.eval=",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode != 0 and "bad.jsonl:2" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize(
    "spec,field,value",
    [
        ("sft.py:tiny", "data.batch_size", 0),
        ("sft.py:tiny", "data.max_records", -1),
        ("sft.py:tiny", "data.eval_batches", 0),
        ("sft.py:tiny", "optim.schedule", "cosin"),
        ("sft.py:tiny", "model.remat", "fulll"),
        ("sft.py:tiny", "model.d_model", -8),
        ("sft.py:tiny", "model.family", "qwen2.5"),
        ("r1_zero.py:tiny", "rl.advantage", "reinforce"),
        ("r1_zero.py:tiny", "rl.std_normalize", "batchnorm"),
        ("sft.py:tiny", "tokenizer.train_vocab_size", -5),
        ("r1_zero.py:tiny", "rl.num_minibatches", 0),
        ("r1_zero.py:tiny", "rl.prompts_per_step", -16),
        ("r1_zero.py:tiny", "rl.epochs", 0),
        ("r1_zero.py:tiny", "rl.top_p", 1.5),
        # Values that train, silently wrong: 0 kept no checkpoint (orbax max_to_keep), a
        # negative TIS cap reversed the policy gradient, a negative kl_coef skipped the
        # reference pass in GRPO and rewarded log-probs in PPO, a negative min_lr_ratio ascended.
        ("sft.py:tiny", "train.keep_checkpoints", 0),
        ("sft.py:tiny", "optim.min_lr_ratio", -0.5),
        ("sft.py:tiny", "optim.b2", 1.0),
        ("sft.py:tiny", "optim.eps", 0.0),
        ("r1_zero.py:tiny", "rl.tis_cap", -1.0),
        ("r1_zero.py:tiny", "rl.tis_cap", 0.5),
        ("r1_zero.py:tiny", "rl.kl_coef", -0.001),
        ("r1_zero.py:tiny", "rl.clip_low", -0.2),
        ("r1_zero.py:tiny", "rl.dual_clip", 0.5),
        ("r1_zero.py:tiny", "rl.gamma", 1.5),
        ("r1_zero.py:tiny", "rl.lam", 1.5),  # was named config.rl.gamma
        ("r1_zero.py:tiny", "rl.reward_timeout_s", 0),
        ("r1_zero.py:tiny", "rl.overlong_buffer", 10_000),
        # From the config audit: inf passed the >= checks (lr=inf saved NaN weights, eps=inf
        # updated nothing); negative step counts act every step (ref_reset_every=-1 reset the
        # reference each step: no KL); eval settings the RL stage's evaluations use.
        ("r1_zero.py:tiny", "optim.lr", float("inf")),
        ("r1_zero.py:tiny", "optim.eps", float("inf")),
        ("r1_zero.py:tiny", "rl.kl_coef", float("inf")),
        ("r1_zero.py:tiny", "rl.temperature", float("nan")),
        ("sft.py:tiny", "train.epochs", float("inf")),
        ("r1_zero.py:tiny", "rl.ref_reset_every", -1),
        ("r1_zero.py:tiny", "rl.eval_every", -1),
        ("r1_zero.py:tiny", "rl.log_samples_every", -1),
        ("r1_zero.py:tiny", "eval.num_samples", 0),
        ("r1_zero.py:tiny", "mesh.num_devices", -1),
        ("sft.py:tiny", "train.max_bad_steps", 0),
        ("r1_zero.py:tiny", "eval.ks", (1.5, 2)),
        ("r1_zero.py:tiny", "eval.ks", ()),
        ("r1_zero.py:tiny", "eval.stop_strings", ("\ndef", "")),  # an empty one stops at once
        # Read by the pretrain, sft and collect stages only: elsewhere it did nothing.
        ("r1_zero.py:tiny", "train.epochs", 1.0),
        ("reward_model.py:tiny", "train.epochs", 2.0),
        ("r1_zero.py:tiny", "rl.critic_lr", 1e-5),  # GRPO has no critic
        ("ppo.py:tiny", "rl.critic_lr", -1e-5),
        ("r1_zero.py:tiny", "rl.kl_horizon", 1000),  # adapts PPO's KL in the reward only
        ("ppo.py:tiny,kl_penalty", "rl.kl_horizon", 1000),
        ("ppo.py:tiny", "rl.kl_horizon", -1),
        ("ppo.py:tiny", "rl.kl_horizon", 6),  # 0.2 x 32 samples a step: beta could turn < 0
    ],
)
def test_sizes_and_names_that_cannot_work_name_the_field(shared_data, spec, field, value):
    cfg = configlib.load_config(os.path.join(REPO, "configs", spec))
    section, name = field.split(".")
    cfg[section][name] = value
    with pytest.raises(configlib.ConfigError, match=rf"config\.{field}: "):
        configlib.validate(cfg, num_devices=1)


@pytest.mark.parametrize("overrides", [{"rl__top_p": 0.9}, {"rl__top_k": 20}, {}])
def test_truncated_rl_sampling_is_warned_about(shared_data, caplog, overrides):
    # The ratio's and the KL's log-probs are the untruncated policy's: silently off-policy.
    cfg = configlib.load_config(os.path.join(REPO, "configs/r1_zero.py:tiny"), **overrides)
    with caplog.at_level("WARNING"):
        configlib.validate(cfg, num_devices=1)
    assert ("off-policy by the truncation" in caplog.text) == bool(overrides)


@pytest.mark.parametrize(
    "spec,overrides,field",
    [
        ("r1_zero.py:tiny", {"seed": -1}, "seed"),
        ("r1_zero.py:tiny", {"rl__rewards__format": float("inf")}, "rl.rewards.format"),
        # A negative count took all but that many prompts (records[:-5]); bounds no sample can
        # meet were found after sampling them all; NaN rejected every general sample.
        ("cold_start.py:tiny", {"collect__num_prompts": -5}, "collect.num_prompts"),
        (
            "cold_start.py:tiny",
            {"collect__min_tokens": 50, "collect__max_tokens": 10},
            "collect.max_tokens",
        ),
        (
            "distill.py:tiny",
            {"collect__general_min_score": float("nan")},
            "collect.general_min_score",
        ),
    ],
)
def test_values_that_cannot_work_in_any_section_name_the_field(shared_data, spec, overrides, field):
    cfg = configlib.load_config(os.path.join(REPO, "configs", spec))
    if cfg.stage == "collect":
        cfg.collect.model = os.path.join(REPO, "r1jax/assets/world_base")
    cfg = configlib.updated(cfg, **overrides)
    with pytest.raises(configlib.ConfigError, match=rf"config\.{re.escape(field)}: "):
        configlib.validate(cfg, num_devices=1)


def test_a_negative_layer_loop_or_attention_block_says_what_0_means(shared_data):
    cfg = configlib.load_config(os.path.join(REPO, "configs", "sft.py:tiny"))
    for name, zero in (("unroll_layers", "auto"), ("attention_chunk", "all queries at once")):
        bad = configlib.updated(cfg, **{f"model__{name}": -1})
        with pytest.raises(configlib.ConfigError, match=rf"config\.model\.{name}: .*0 = {zero}"):
            configlib.validate(bad, num_devices=1)


def test_tokenizer_sizes_that_cannot_work_are_one_line_errors(tmp_path, caplog):
    # Both were tracebacks main does not print as one line (a ValueError; SentencePiece's
    # RuntimeError), and a size the data cannot fill was trained smaller without a word.
    from r1jax import text
    from r1jax.train import supervised

    cfg = configlib.updated(_cfg(), tokenizer__train_vocab_size=5)
    records = [{"prompt": "Question 12: what is 3 + 4?", "response": "It is 7."}] * 20
    with pytest.raises(text.TokenizerError, match=r"config\.tokenizer\.train_vocab_size=5: "):
        supervised._train_tokenizer(cfg, tmp_path, records)
    cfg = configlib.updated(cfg, tokenizer__train_vocab_size=2000)
    tokenizer = supervised._train_tokenizer(cfg, tmp_path, records)
    assert tokenizer.vocab_size < 2000 and "the data gave only" in caplog.text
    with pytest.raises(text.TokenizerError, match="vocab_size is 100"):
        text.check_fits(tokenizer, 100)


def test_a_tokenizer_process_0_cannot_train_stops_every_process(tmp_path, monkeypatch):
    # Process 0 trains the tokenizer while the others wait: its error stopped it alone, and the
    # others waited in the barrier until JAX's shutdown barrier aborted both, 5 minutes later.
    import jax

    from r1jax import distributed, text
    from r1jax.train import supervised

    cfg = configlib.updated(_cfg(), tokenizer__train_vocab_size=5)
    records = [{"prompt": "Question 12: what is 3 + 4?", "response": "It is 7."}] * 20
    agreed = []
    monkeypatch.setattr(distributed, "global_min", lambda v: agreed.append(v) or min(agreed))
    monkeypatch.setattr(distributed, "barrier", lambda name: agreed.append(None))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    with pytest.raises(text.TokenizerError, match=r"train_vocab_size=5: SentencePiece could not"):
        supervised.resolve_tokenizer(cfg, tmp_path / "run", records)
    assert agreed == [0]  # what process 0 told the others
    monkeypatch.setattr(jax, "process_index", lambda: 1)  # process 1, told process 0 failed
    with pytest.raises(text.TokenizerError, match="process 0 could not train the tokenizer"):
        supervised.resolve_tokenizer(cfg, tmp_path / "run", records)
    assert agreed == [0, 1]


def test_an_init_from_that_is_no_model_names_the_field(tmp_path):
    # An empty folder said "folder has neither tokenizer.json nor tokenizer.model", a file
    # "not a tokenizer": neither named config.model.init_from.
    from r1jax.train import supervised

    for init_from in (tmp_path, os.path.join(REPO, "README.md")):
        cfg = configlib.updated(_cfg(), model__init_from=str(init_from))
        with pytest.raises(
            configlib.ConfigError, match=r"config\.model\.init_from: .* is not a model"
        ):
            supervised.resolve_tokenizer(cfg, tmp_path / "run", [])


def test_data_file_that_is_a_folder_and_bad_model_shape(shared_data, tmp_path):
    with pytest.raises(configlib.ConfigError, match=r"config\.data\.train: .* is a folder"):
        configlib.validate(_cfg(data__train=str(tmp_path)), num_devices=1)
    with pytest.raises(configlib.ConfigError, match=r"config\.model: .*n_kv_heads"):
        configlib.model_config_from(_cfg(model__n_heads=3), vocab_size=100)


def test_model_family_switches_the_architecture_of_a_random_init():
    # A Qwen3 (or Llama) shape described by the config alone: random init, a bare checkpoint.
    for family, bias, norms in (("qwen3", False, True), ("llama", False, False)):
        shape = configlib.model_config_from(_cfg(model__family=family), vocab_size=100)
        assert (shape.family, shape.qkv_bias, shape.qk_norm) == (family, bias, norms)
    tiny = configlib.model_config_from(_cfg(), vocab_size=100)
    assert (tiny.family, tiny.qkv_bias, tiny.qk_norm) == ("qwen2", True, False)  # the preset's


def test_a_workdir_holding_another_run_is_refused_and_kept(tmp_path):
    cfg = configlib.load_config(os.path.join(REPO, "configs/sft.py:tiny"))
    shape = configlib.model_config_from(cfg, vocab_size=100)
    configlib.save_resolved(cfg, tmp_path, shape)
    other = dataclasses.replace(shape, d_model=64)
    configlib.save_resolved(cfg, tmp_path, other)  # no checkpoints yet: nothing to protect
    configlib.save_resolved(cfg, tmp_path, shape)
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(configlib.ConfigError, match=r"another shape .*d_model 128 -> 64"):
        configlib.save_resolved(cfg, tmp_path, other)
    pretrain = configlib.updated(cfg, stage="pretrain")
    with pytest.raises(configlib.ConfigError, match="checkpoints of a 'sft' run, not of this"):
        configlib.save_resolved(pretrain, tmp_path, shape)
    assert (tmp_path / "config.json").read_text() == before
    longer = dataclasses.replace(shape, max_seq_len=512, dtype="bfloat16")
    configlib.save_resolved(configlib.updated(cfg, train__steps=400), tmp_path, longer)  # resumes


def test_a_stage_is_refused_over_another_stages_outputs_without_checkpoints(tmp_path):
    # A pipeline's folder has no checkpoints of its own, only its stages' folders and table.
    pipeline_cfg = {"config": {"stage": "pipeline"}}
    (tmp_path / "config.json").write_text(json.dumps(pipeline_cfg))
    sft = configlib.load_config(os.path.join(REPO, "configs/sft.py:tiny"))
    shape = configlib.model_config_from(sft, vocab_size=100)
    configlib.save_resolved(sft, tmp_path / "fresh", shape)  # only config.json: a fresh start
    configlib.save_resolved(sft, tmp_path / "fresh", shape)
    (tmp_path / "r1_zero").mkdir()
    with pytest.raises(configlib.ConfigError, match="holds the outputs of a 'pipeline' run") as e:
        configlib.save_resolved(sft, tmp_path, shape)
    assert "init_from" not in str(e.value)  # the pipeline's folder holds no model to start from
    assert json.loads((tmp_path / "config.json").read_text()) == pipeline_cfg


def test_a_run_saved_before_rope_types_resumes_and_loads(tmp_path):
    # A Llama 3 run's config.json written when RopeScaling had only llama3's four fields.
    cfg = configlib.load_config(os.path.join(REPO, "configs/sft.py:tiny"))
    scaling = model_config.RopeScaling(8.0, 1.0, 4.0, 8192)
    shape = dataclasses.replace(
        configlib.model_config_from(cfg, vocab_size=100), rope_scaling=scaling
    )
    configlib.save_resolved(cfg, tmp_path, shape)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model"]["rope_scaling"] = {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position": 8192,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    assert configlib.load_resolved(tmp_path)[0] == shape
    configlib.save_resolved(cfg, tmp_path, shape)  # resumes
    yarn = model_config.RopeScaling(4.0, original_max_position=64, rope_type="yarn")
    with pytest.raises(configlib.ConfigError, match="another shape .*rope_scaling"):
        configlib.save_resolved(cfg, tmp_path, dataclasses.replace(shape, rope_scaling=yarn))


def test_workdir_that_is_a_file_and_config_problems(tmp_path):
    from r1jax import main

    (tmp_path / "file").write_text("x")
    with pytest.raises(configlib.ConfigError, match="exists and is not a folder"):
        configlib.check_workdir(tmp_path / "file")
    with pytest.raises(configlib.ConfigError, match=r"file is a file, not a folder"):
        configlib.check_workdir(tmp_path / "file" / "run")
    configlib.check_workdir(tmp_path / "new" / "run")
    spec = os.path.join(REPO, "configs/sft.py:tiny")
    assert "no such config file" in main.config_problem(["r1jax", "--config=nope.py:tiny"])
    problem = main.config_problem(["r1jax", f"--config={spec}", "--config.rll.num_samples=4"])
    assert problem == (
        "--config.rll.num_samples=4: config has no field 'rll' (did you mean config.rl?)"
    )
    problem = main.config_problem(["r1jax", f"--config={spec}", "--config.seed.x=1"])
    assert "config.seed is a value, not a section" in problem


def test_an_unknown_variant_is_one_line_not_a_traceback(tmp_path):
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "r1jax.main",
            "--config=configs/sft.py:bogus",
            f"--workdir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("r1jax: --config=configs/sft.py:bogus: ValueError: ") and "bogus" in last


def test_config_given_as_a_separate_argument_loads_from_any_folder(tmp_path):
    # `--config PATH` as absl reads it: the config's folder goes on sys.path as for --config=PATH
    # (without it, `from configs import base` was a ModuleNotFoundError traceback).
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "r1jax").symlink_to(os.path.join(REPO, "r1jax"))  # r1jax, no configs
    spec = os.path.join(REPO, "configs/sft.py:tiny")
    argv = ["--config", spec, f"--workdir={tmp_path / 'run'}", "--config.optim.lrr=1"]
    code = f"import sys; from r1jax import main; sys.argv = ['r1jax', *{argv!r}]; main.run()"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(tmp_path / "lib")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "config.optim has no field 'lrr'" in out.stderr.strip().splitlines()[-1]


def test_a_config_file_that_is_not_python_is_one_line(tmp_path):
    (tmp_path / "notes.md").write_text("# Notes\n\nPython >= 3.11, e.g. `x`\n")
    out = subprocess.run(
        [sys.executable, "-m", "r1jax.main", "--config=notes.md", f"--workdir={tmp_path / 'r'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("r1jax: --config=notes.md: SyntaxError: ") and "line 3" in last, last


def test_export_names_a_wrong_folder_in_one_line(tmp_path):
    from r1jax import export

    with pytest.raises(SystemExit, match=r"^r1jax\.export: .*nope/config\.json: not an r1jax run"):
        export.main([str(tmp_path / "nope"), str(tmp_path / "out")])


def _tiny_run(run):
    """An r1jax run folder with a one-layer model's checkpoint, its config and a tokenizer."""
    import shutil

    import jax
    import orbax.checkpoint as ocp

    from r1jax.model import transformer
    from r1jax.train import checkpoint

    cfg = model_config.ModelConfig(
        vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, d_ff=64
    )
    mngr = checkpoint.manager(run / "checkpoints")
    state = {"params": transformer.init_params(cfg, jax.random.key(0))}
    mngr.save(1, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
    mngr.wait_until_finished()
    saved = json.dumps({"config": {"stage": "pretrain"}, "model": dataclasses.asdict(cfg)})
    (run / "config.json").write_text(saved)
    shutil.copy(os.path.join(REPO, "r1jax/assets/world_base/tokenizer.model"), run)
    return saved


def test_export_into_a_run_folder_is_refused_and_leaves_the_run(tmp_path):
    # Into the run itself it deleted the run's config.json (the export's own replaces it), wrote
    # a tokenizer.json beside the run's tokenizer.model, then failed calling the folder "not an
    # r1jax run"; into another run it replaced that run's config.json.
    import shutil

    from r1jax import export

    run, other = tmp_path / "run", tmp_path / "other"
    saved = _tiny_run(run)
    shutil.copytree(run, other)
    before = sorted(p.name for p in run.iterdir())
    for out in (run, tmp_path / "run" / ".." / "run", other):
        with pytest.raises(SystemExit, match=r"^r1jax\.export: .*holds an r1jax run"):
            export.main([str(run), str(out)])
    for folder in (run, other):
        assert sorted(p.name for p in folder.iterdir()) == before
        assert (folder / "config.json").read_text() == saved
    assert export.export(run, tmp_path / "hf") == tmp_path / "hf"  # a fresh folder still works


def test_export_to_a_file_is_one_line(tmp_path):
    # OUT_DIR a file, or under one, was a NotADirectoryError traceback.
    from r1jax import export

    _tiny_run(tmp_path / "run")
    (tmp_path / "notes.txt").write_text("notes")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "hf"):
        with pytest.raises(SystemExit, match=r"^r1jax\.export: .*Not a directory: .*notes\.txt"):
            export.main([str(tmp_path / "run"), str(out)])


def test_rl_config_mistakes_that_need_two_fields(shared_data):
    cfg = configlib.load_config(os.path.join(REPO, "configs/ppo.py:tiny,kl_penalty"))
    cfg.rl.kl_coef = 0.0  # the adaptive coefficient would stay 0 forever
    with pytest.raises(configlib.ConfigError, match=r"config\.rl\.kl_coef: "):
        configlib.validate(cfg, num_devices=1)
    cfg = configlib.load_config(os.path.join(REPO, "configs/ppo.py:tiny,kl_penalty"))
    cfg.rl.kl_target = 0.0  # was named config.rl.kl_coef
    with pytest.raises(configlib.ConfigError, match=r"config\.rl\.kl_target: "):
        configlib.validate(cfg, num_devices=1)
    # The clip form's extras were silently ignored by the penalty form's loss.
    for field, value in (("entropy_coef", 0.01), ("tis_cap", 2.0), ("ratio_level", "sequence")):
        cfg = configlib.load_config(os.path.join(REPO, "configs/ppo.py:tiny,kl_penalty"))
        configlib.validate(cfg, num_devices=1)
        cfg.rl[field] = value
        with pytest.raises(configlib.ConfigError, match=rf"config\.rl\.{field}: .*kl_penalty"):
            configlib.validate(cfg, num_devices=1)
    cfg = configlib.load_config(os.path.join(REPO, "configs/r1_zero.py:tiny"))
    cfg.rl.rewards = {"accuracy": 0.0, "format": 0.0}
    with pytest.raises(configlib.ConfigError, match=r"config\.rl\.rewards: .*nothing to learn"):
        configlib.validate(cfg, num_devices=1)
    cfg = configlib.load_config(os.path.join(REPO, "configs/r1_zero.py:tiny"))
    cfg.mesh.data = 2  # was a ValueError traceback in RL configs (one line in SFT)
    with pytest.raises(configlib.ConfigError, match=r"config\.mesh"):
        configlib.validate(cfg, num_devices=1)


def test_derived_fields_follow_an_override():
    # DAPO's overlong buffer stayed 1024 under --config.rl.max_new_tokens=512: every
    # completion, the empty one included, was penalised.
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/grpo.py:qwen2.5-1.5b,dapo"), rl__max_new_tokens=512
    )
    assert cfg.rl.overlong_buffer == 512 // 5  # DAPO's 4,096 of 20,480
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/cold_start.py:qwen2.5-1.5b"), data__seq_len=4096
    )
    assert cfg.collect.max_new_tokens == 4096 - 512


def test_an_unreadable_config_json_beside_outputs_says_outputs(tmp_path):
    # A folder with outputs and no checkpoints was said to have checkpoints.
    grpo = configlib.load_config(os.path.join(REPO, "configs/grpo.py:tiny"))
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(configlib.ConfigError, match=r"has outputs but .*config.json is unreadable"):
        configlib.check_resumable(grpo, tmp_path)
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    with pytest.raises(configlib.ConfigError, match=r"has checkpoints but .*config.json is unr"):
        configlib.check_resumable(grpo, tmp_path)


def test_a_resume_with_changed_settings_is_refused_warned_or_recorded(tmp_path, caplog):
    grpo = configlib.load_config(os.path.join(REPO, "configs/grpo.py:tiny"))
    shape = configlib.model_config_from(grpo, vocab_size=100)
    configlib.save_resolved(grpo, tmp_path, shape)
    (tmp_path / "checkpoints" / "6").mkdir(parents=True)
    before = (tmp_path / "config.json").read_text()
    # PPO's checkpoint holds a value head: orbax failed after config.json was overwritten.
    ppo = configlib.load_config(os.path.join(REPO, "configs/ppo.py:tiny"))
    with pytest.raises(
        configlib.ConfigError, match=r"another RL run \(rl.algorithm 'grpo' -> 'ppo'"
    ):
        configlib.save_resolved(ppo, tmp_path, shape)
    assert (tmp_path / "config.json").read_text() == before
    configlib.check_resumable(configlib.updated(grpo, rl__critic="separate"), tmp_path, shape)
    # Another seed reorders the rest of the data: allowed, said, and what trained steps 1-6 kept.
    with caplog.at_level("WARNING"):
        configlib.save_resolved(configlib.updated(grpo, seed=1), tmp_path, shape)
    assert "other data settings" in caplog.text and "seed 0 -> 1" in caplog.text
    kept = tmp_path / "config_history" / "config_to_step_6.json"
    assert kept.read_text() == before
    assert json.loads((tmp_path / "config.json").read_text())["config"]["seed"] == 1


def test_a_mesh_rule_naming_an_unknown_axis_stops_at_start_up(shared_data):
    for spec in ("configs/sft.py:tiny", "configs/r1_zero.py:tiny"):
        cfg = configlib.load_config(os.path.join(REPO, spec), mesh__num_devices=1)
        cfg.mesh.rules = [["kv_head", None]]  # a typo was ignored and the rest replicated
        with pytest.raises(configlib.ConfigError, match=r"config\.mesh\.rules: .*'kv_head'"):
            configlib.validate(cfg, num_devices=1)


# Where users copy commands from: every config spec and every config field these name must exist.
DOC_FILES = [
    "README.md",
    "r1jax/rewards/README.md",
    "configs/world_notes.md",
    *sorted(f"configs/{n}" for n in os.listdir(os.path.join(REPO, "configs")) if n.endswith(".py")),
    *sorted(f"launch/{n}" for n in os.listdir(os.path.join(REPO, "launch"))),
]
_SPEC = re.compile(r"configs/\w+\.py:[\w.,-]*\w")
_FIELD = re.compile(r"(?<![\w./-])(--)?config\.((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)")


def _has_field(cfg, dotted: str) -> bool:
    node = cfg
    for name in dotted.split("."):
        if not hasattr(node, "keys") or name not in node:
            return False
        node = node[name]
    return True


def test_every_config_and_field_the_docs_name_exists():
    """A renamed variant or field fails here, not in a user's copy of a documented command."""
    configs, missing = {}, []

    def config(spec):
        if spec not in configs:
            configs[spec] = configlib.load_config(os.path.join(REPO, spec))
        return configs[spec]

    known = [config("configs/base.py"), config("configs/pipeline.py:tiny")]
    for name in DOC_FILES:
        with open(os.path.join(REPO, name), encoding="utf-8") as f:
            text = f.read().replace("\\\n", " ")  # a shell command continued over lines
        for line in text.splitlines():
            specs = _SPEC.findall(line)
            for spec in specs:
                try:
                    config(spec)
                except Exception as e:  # noqa: BLE001 - any failure to load is the finding
                    missing.append(f"{name}: {spec} does not load ({e})")
            # A field on an r1jax command line must exist in that command's config.
            command = "r1jax --config=configs/" in line and len(specs) == 1
            for flag, field in _FIELD.findall(line):
                if field in ("json", "x"):  # config.json, the file; --config.x=y, the usage
                    continue
                cfgs = [config(specs[0])] if command and flag and specs[0] in configs else known
                if not any(_has_field(c, field) for c in cfgs):
                    missing.append(f"{name}: {flag}config.{field}")
    assert not missing, "\n".join(missing)


def test_every_base_field_has_its_comment():
    """configs/base.py: each field's comment on its line, on the lines just above it, or (a
    group) a comment that says it covers the fields below."""
    lines = open(os.path.join(REPO, "configs/base.py"), encoding="utf-8").read().splitlines()
    bare, group = [], False
    for i, line in enumerate(lines):
        field = re.match(r"\s*c\.([\w.]+) = (?!ml_collections\.ConfigDict\(\)$)", line)
        if not line.strip():
            group = False
        if not field:
            continue
        statement = [line]
        while statement[-1].rstrip().endswith("(") and i + len(statement) < len(lines):
            statement.append(lines[i + len(statement)])  # a value over several lines
        commented = any("#" in part for part in statement)
        group = group or any("below" in part.partition("#")[2] for part in statement)
        if not (commented or lines[i - 1].strip().startswith("#") or group):
            bare.append(field.group(1))
    assert not bare, f"configs/base.py fields without a comment: {bare}"
