"""RL run reports: summary numbers, compute accounting, the report figure, HF export."""

import json
import warnings

import jax
import numpy as np
import pytest

from r1jax import evaluation, export, text
from r1jax.model import config as model_config
from r1jax.model import hf_io
from r1jax.model import transformer as tf
from r1jax.train import checkpoint, report


def _result(pass1, maj):
    metrics = {"pass@1": pass1, "pass@1_greedy": pass1, "format_rate": 1.0, "mean_length": 9.0}
    metrics.update({"pass@4": min(1.0, 2 * pass1), "maj@1": pass1, "maj@4": maj})
    metrics["chain/pass@1"] = pass1
    curves = {"k": [1, 4], "pass@k": [pass1, min(1.0, 2 * pass1)], "maj@k": [pass1, maj]}
    return evaluation.EvalResult(metrics=metrics, curves=curves, samples=[])


def test_summary_reports_before_after_gain_and_compute():
    flops = {"train_flops": 3.0e12, "rollout_flops": 1.0e12}
    out = report.summary(_result(0.2, 0.25), _result(0.6, 0.7), flops, steps=10)
    assert out["before"]["pass@1"] == 0.2 and out["after"]["maj@4"] == 0.7
    assert out["after"]["chain/pass@1"] == 0.6
    assert out["gain"]["pass@1"] == pytest.approx(0.4)
    assert out["compute"]["total_flops"] == pytest.approx(4.0e12)
    only_after = report.summary(None, _result(0.6, 0.7), flops, steps=10)
    assert "before" not in only_after and "gain" not in only_after


def test_step_flops_count_as_mfu_does():
    cfg = model_config.ModelConfig(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=2,
        head_dim=16,
        d_ff=64,
        max_seq_len=32,
    )
    counts = dict(trained_tokens=100, generated_tokens=40, scored_tokens=100, epochs=2, seq_len=20)
    out = report.step_flops(cfg, **counts)
    # Attention counted at the rollout's length, not max_seq_len (32k-128k for real presets).
    fwd = model_config.forward_flops_per_token(cfg, 20)
    assert fwd < model_config.forward_flops_per_token(cfg, 32)
    # Training: forward + backward (3 forwards) a token and epoch, the count MFU uses (6·N·D
    # missed attention and counted the embedding lookup as a matmul).
    assert out["train_flops"] == pytest.approx(3 * fwd * 100 * 2)
    assert out["rollout_flops"] == pytest.approx(fwd * 140)
    # PPO with a separate critic trains two models.
    two = report.step_flops(cfg, **counts, trained_models=2)
    assert two["train_flops"] == pytest.approx(2 * out["train_flops"])


def test_write_report_makes_summary_and_figure(tmp_path):
    rows = [
        {"step": s, "reward": s / 10, "completion_len_mean": 5 + s, "kl_ref": 0.0}
        for s in range(1, 6)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report.write_report(
        tmp_path, _result(0.2, 0.25), _result(0.6, 0.7), {"train_flops": 1.0}, steps=5
    )
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 5
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_export_writes_a_hugging_face_folder_of_the_run(tmp_path):
    cfg = model_config.ModelConfig(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=1,
        head_dim=16,
        d_ff=64,
        max_seq_len=32,
        qkv_bias=True,  # Hugging Face Qwen2 always has the qkv bias
    )
    params = tf.init_params(cfg, jax.random.key(3))
    run = tmp_path / "run"
    run.mkdir()
    run_cfg = {"stage": "rl", "rl": {"template": "r1_zero"}}
    saved = {"config": run_cfg, "model": json.loads(json.dumps(cfg.__dict__, default=str))}
    (run / "config.json").write_text(json.dumps(saved))
    # A base model's tokenizer with its own chat template, which the run never trained on.
    import tokenizers

    vocab = {"<unk>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate("abcdefgh")}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.save(str(run / "tokenizer.json"))
    base_config = {"eos_token": "</s>", "chat_template": "<|im_start|>{{ messages[0]['content'] }}"}
    (run / "tokenizer_config.json").write_text(json.dumps(base_config))
    state = {"params": {"policy": params}}  # an RL run's layout
    mngr = checkpoint.manager(run / "checkpoints")
    import orbax.checkpoint as ocp

    mngr.save(3, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
    mngr.wait_until_finished()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = export.export(run, tmp_path / "hf")
    # orbax's notice on restoring shardings as saved (what the first pass means to do).
    assert not [w for w in caught if "Sharding info not provided" in str(w.message)]
    exported = json.loads((out / "tokenizer_config.json").read_text())
    assert exported["chat_template"] == text.hf_chat_template("r1_zero", bos=False)
    assert exported["eos_token"] == "</s>"
    loaded_cfg, loaded = hf_io.load_hf(out)
    assert loaded_cfg.n_kv_heads == 1 and loaded_cfg.vocab_size == 64
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="not an r1jax run"):
        export.export(tmp_path / "hf_missing", tmp_path / "x")


def test_quick_evaluation_during_training_uses_few_samples_and_writes_nothing(tmp_path):
    """rl.eval_every's check: at most 8 samples, pass@1 and pass@n only, no files."""
    import pathlib

    from r1jax import configlib, sharding, text
    from r1jax.data import world

    repo = pathlib.Path(__file__).resolve().parents[1]
    cfg = configlib.load_config(str(repo / "configs/r1_zero.py") + ":tiny", eval__max_problems=3)
    model_cfg, params = hf_io.load_hf(cfg.model.init_from)
    tok = text.load_tokenizer(cfg.tokenizer.path)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    evaluator = report.Evaluator(cfg, tmp_path, model_cfg, tok, world.dataset("test"), mesh)
    result = evaluator.evaluate(params, "eval_5", quick=True)
    assert result.metrics["num_problems"] == 3
    assert result.curves["k"] == [1.0, 8.0] and "pass@1_greedy" not in result.metrics
    assert list(tmp_path.iterdir()) == []


def test_a_killed_before_or_after_evaluation_resumes_from_its_journal(tmp_path, monkeypatch):
    """An RL run killed during eval_before / eval_after sampled it all again (hours for an
    aime24 / math500 evaluation); it resumes from {name}_journal.jsonl as the eval stage does."""
    import pathlib

    from r1jax import configlib, sharding, text
    from r1jax.data import world

    repo = pathlib.Path(__file__).resolve().parents[1]
    cfg = configlib.load_config(
        str(repo / "configs/r1_zero.py") + ":tiny",
        eval__max_problems=3,
        eval__prompts_per_batch=1,  # 3 batches
        eval__num_samples=4,
        eval__ks=(1, 2, 4),
    )
    model_cfg, params = hf_io.load_hf(cfg.model.init_from)
    tok = text.load_tokenizer(cfg.tokenizer.path)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    records = world.dataset("test")
    full = report.Evaluator(cfg, tmp_path / "full", model_cfg, tok, records, mesh)
    full = full.evaluate(params, "eval_after")
    calls, sample = [], evaluation.sample_completions

    def killed_at_the_fifth_call(*args, **kwargs):  # two batches: sampled and greedy each
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return sample(*args, **kwargs)

    monkeypatch.setattr(evaluation, "sample_completions", killed_at_the_fifth_call)
    evaluator = report.Evaluator(cfg, tmp_path / "killed", model_cfg, tok, records, mesh)
    with pytest.raises(KeyboardInterrupt):
        evaluator.evaluate(params, "eval_after")
    journal = tmp_path / "killed" / "eval_after_journal.jsonl"
    assert len(journal.read_text().splitlines()) == 3  # the header and two batches
    calls.clear()
    resumed = evaluator.evaluate(params, "eval_after")
    assert len(calls) == 2  # only the last batch sampled again
    assert resumed.metrics == full.metrics and not journal.exists()
    for name in ("eval_after.json", "eval_after_samples.jsonl"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    # A kill after the result was written but before the journal was removed: the resumed run
    # loads the result (eval_before is not redone) and removes the journal then.
    journal.write_text("{}\n")
    assert evaluator.load("eval_after").metrics == full.metrics and not journal.exists()
    # Another policy's journal (eval_before's params, or a run trained further) is not replayed.
    with pytest.raises(KeyboardInterrupt):
        evaluator.evaluate(params, "eval_before")
    counted = []
    monkeypatch.setattr(
        evaluation, "sample_completions", lambda *a, **kw: counted.append(1) or sample(*a, **kw)
    )
    evaluator.evaluate(jax.tree.map(lambda x: x * 1.01, params), "eval_before")
    assert len(counted) == 6
