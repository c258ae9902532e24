"""Configs: every variant loads and validates; mistakes stop at start-up naming the field."""

import os
import subprocess
import sys

import pytest

from r1jax import configlib

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
    assert out.returncode != 0 and "lrr" in out.stderr
    out = subprocess.run(
        base + [f"--workdir={tmp_path}", f"--config.data.train={tmp_path}/missing.jsonl"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode != 0
    assert "config.data.train" in out.stderr and "missing.jsonl" in out.stderr


def test_malformed_row_names_file_and_line_or_is_skipped_and_counted(tmp_path):
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
    assert [r["prompt"] for r in supervised.load_records(cfg, str(bad))] == ["a", "d"]
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
