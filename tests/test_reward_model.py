"""Reward models: Bradley-Terry loss, tokenization, scoring, the stage, the scorer, HH-RLHF."""

import dataclasses
import gzip
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from r1jax import configlib, sharding, text
from r1jax.data import pipeline, sources, world
from r1jax.model import config as model_config
from r1jax.model import transformer
from r1jax.rewards import preference
from r1jax.train import checkpoint, reward_model, trainer
from r1jax.train import metrics as metrics_lib
from r1jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HH_FILE = os.path.join(base.DATA_DIR, "hh_rlhf_harmless_base_test.jsonl.gz")
TINY = dataclasses.replace(
    model_config.get_preset("tiny"),
    vocab_size=64,
    d_model=32,
    n_layers=2,
    n_heads=2,
    n_kv_heads=2,
    head_dim=16,
    d_ff=64,
    max_seq_len=128,
)


def _np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def test_bradley_terry_loss_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    c, r = rng.normal(size=7).astype(np.float32), rng.normal(size=7).astype(np.float32)
    loss, metrics = preference.bradley_terry_loss(jnp.asarray(c), jnp.asarray(r))
    m = c.astype(np.float64) - r
    np.testing.assert_allclose(loss, -np.mean(_np_log_sigmoid(m)), rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(m > 0), rtol=1e-6)
    np.testing.assert_allclose(metrics["margin"], np.mean(m), rtol=1e-5, atol=1e-6)
    grad_c, grad_r = jax.grad(lambda a, b: preference.bradley_terry_loss(a, b)[0], (0, 1))(
        jnp.asarray(c), jnp.asarray(r)
    )
    expected = -(1.0 - 1.0 / (1.0 + np.exp(-m))) / len(m)  # d/dc of -mean log σ(c - r)
    np.testing.assert_allclose(grad_c, expected, rtol=1e-5)
    np.testing.assert_allclose(grad_r, -expected, rtol=1e-5)
    # Large margins stay finite (log_sigmoid, not log(sigmoid)).
    big, _ = preference.bradley_terry_loss(jnp.asarray([-100.0]), jnp.asarray([100.0]))
    assert np.isfinite(big) and abs(float(big) - 200.0) < 1e-3
    with pytest.raises(ValueError, match="chosen"):
        preference.bradley_terry_loss(jnp.zeros(3), jnp.zeros(4))


@pytest.fixture(scope="module")
def world_tokenizer():
    return text.load_tokenizer(base.WORLD_BASE)


def test_tokenize_is_sft_tokenization_and_keeps_the_end(world_tokenizer):
    tok = world_tokenizer
    prompt, response = "Say times 4, plus 3 in Chinese.", "Sure! The answer is 乘4，加3."
    ids = preference.tokenize(tok, prompt, response, template="world", max_len=128)
    sft = pipeline.tokenize_sft({"prompt": prompt, "response": response}, tok, 128, "world")
    assert ids == [*sft["inputs"].tolist(), int(sft["targets"][-1])]
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    cut = preference.tokenize(tok, prompt, response, template="world", max_len=20)
    assert len(cut) == 20 and cut[0] == tok.bos_id and cut[1:] == ids[-19:]
    assert preference.tokenize(tok, prompt, response, template="world", max_len=0) == ids
    assert preference.bucket_length(40, 128) == 64 and preference.bucket_length(100, 100) == 100


def test_response_scope():
    think = "<think>2 plus 3 gives 5.</think> Sure! The answer is 5."
    assert preference.response_in_scope(think, "summary") == "Sure! The answer is 5."
    assert preference.response_in_scope(think, "response") == think
    assert preference.response_in_scope("Sure! 5.", "summary") == "Sure! 5."
    assert preference.response_in_scope("<think>2 plus 3 gives", "summary") == ""
    # A prompt that opened <think>: an unclosed thought is not a summary.
    assert preference.response_in_scope("2 plus 3 gives", "summary", prompt_opens_think=True) == ""
    assert not preference.has_summary("<think>5</think>  ")
    assert preference.has_summary("5</think> Five.", prompt_opens_think=True)
    with pytest.raises(ValueError, match="scope"):
        preference.response_in_scope(think, "thought")


def test_padded_batch_scores_like_each_row_alone():
    params = preference.init_params(
        TINY, transformer.init_params(TINY, jax.random.key(0)), jax.random.key(1)
    )
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 64, n).tolist() for n in (17, 9)]
    score = jax.jit(lambda p, t, m: preference.scores(TINY, p, t, m))
    tokens, mask = preference.pad_rows(rows, 32, pad_id=0, num_rows=3)
    batch = np.asarray(score(params, tokens, mask))
    alone = [float(score(params, *preference.pad_rows([r], len(r), 0))[0]) for r in rows]
    np.testing.assert_allclose(batch[:2], alone, rtol=1e-5, atol=1e-5)
    # Read at the last real token: padding content does not matter, the last token does.
    tokens[:, 20:] = 7
    np.testing.assert_allclose(np.asarray(score(params, tokens, mask))[:2], batch[:2], atol=1e-6)
    tokens[0, 16] = (tokens[0, 16] + 1) % 64
    assert abs(float(score(params, tokens, mask)[0]) - batch[0]) > 1e-6
    with pytest.raises(ValueError, match="more than the padded length"):
        preference.pad_rows(rows, 8, 0)


def _pair_batch(rng, b=8, t=16):
    batch = {}
    for side in ("chosen", "rejected"):
        lengths = rng.integers(3, t + 1, b)
        batch[f"{side}_BxT"] = rng.integers(1, 64, (b, t)).astype(np.int32)
        batch[f"{side}_mask_BxT"] = np.arange(t)[None, :] < lengths[:, None]
    return batch


def test_step_lowers_the_loss_and_accumulation_is_exact():
    spec = os.path.join(REPO, "configs/reward_model.py:tiny")
    cfg = configlib.load_config(spec, optim__lr=3e-3, optim__warmup_steps=0)
    opt = state_lib.make_optimizer(cfg.optim, 20)
    params = preference.init_params(
        TINY, transformer.init_params(TINY, jax.random.key(0)), jax.random.key(1)
    )
    state = state_lib.create(params, opt, jax.random.key(2))
    batch = _pair_batch(np.random.default_rng(0))
    step = jax.jit(
        lambda s, b, k: reward_model.reward_model_step(
            s, b, model_cfg=TINY, optimizer=opt, grad_accum=k
        ),
        static_argnums=2,
    )
    one, m1 = step(state, batch, 1)
    two, m2 = step(state, batch, 2)
    for key in ("loss", "accuracy", "margin", "grad_norm"):
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), one.params, two.params
    )
    # The loss sees r_c - r_r only: the head's bias has no gradient and does not move (Adam would
    # scale its rounding-noise gradient up to a full step).
    for moved in (one, two):
        np.testing.assert_array_equal(moved.params["head"]["bias"], state.params["head"]["bias"])
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch, 1)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] * 0.7, losses


# ---- the stage ------------------------------------------------------------------------------

SHORT = dict(
    model__init_from="",
    model__preset="tiny",
    model__d_model=32,
    model__n_layers=2,
    model__n_heads=2,
    model__n_kv_heads=2,
    model__head_dim=16,
    model__d_ff=64,
    model__max_seq_len=128,
    data__max_records=48,
    data__batch_size=8,
    rm__hh_max_pairs=8,
    rm__max_len=64,  # every row keeps its last 64 tokens: one length bucket, fewer compiles
    optim__lr=3e-3,
    optim__warmup_steps=1,
    train__steps=6,
    train__log_every=1,
    train__eval_every=3,
    train__checkpoint_every=3,
    mesh__num_devices=1,
    metrics__tensorboard=False,
    metrics__peak_flops=1e9,
)


def _cfg(**extra):
    hh = {"rm__hh_eval": HH_FILE if os.path.isfile(HH_FILE) else ""}
    spec = os.path.join(REPO, "configs/reward_model.py:tiny")
    return configlib.load_config(spec, **{**SHORT, **hh, **extra})


class _Killed(Exception):
    pass


def _curve(workdir):
    rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    timing = ("step_time_s", "tokens_per_s", "mfu")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    """One uninterrupted short run of the stage (shared by the tests below)."""
    workdir = tmp_path_factory.mktemp("rm") / "full"
    out = reward_model.run(_cfg(), workdir)
    return workdir, out


def test_stage_lowers_the_loss_and_writes_its_report(rm_run):
    workdir, out = rm_run
    report = json.loads((workdir / "rm_eval.json").read_text())
    assert report["step"] == 6 and out["step"] == 6
    assert report["heldout_pairs"] == 48 and 0.0 <= report["heldout_accuracy"] <= 1.0
    assert set(report["heldout_by_domain"]) == {"general", "reasoning"}
    assert set(report["heldout_by_aspect"]) == {"helpful", "harmless"}
    assert "general/harmless" in report["heldout_by_domain_aspect"]
    if os.path.isfile(HH_FILE):
        assert report["hh_pairs"] == 8 and 0.0 <= report["hh_accuracy"] <= 1.0
    losses = [r["loss"] for r in _curve(workdir) if "loss" in r]
    assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2]), losses
    evals = [r for r in _curve(workdir) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[-1]["eval_accuracy"] == report["heldout_accuracy"]
    assert (workdir / "config.json").exists() and (workdir / "tokenizer.model").exists()


def test_killed_then_resumed_run_matches_the_uninterrupted_one(rm_run, tmp_path, monkeypatch):
    full, _ = rm_run
    killed = tmp_path / "killed"
    save = checkpoint.save

    def save_then_die(mngr, state, *args, **kwargs):
        saved = save(mngr, state, *args, **kwargs)
        if int(state.step) == 3:
            mngr.wait_until_finished()
            raise _Killed
        return saved

    monkeypatch.setattr(trainer.checkpoint, "save", save_then_die)
    with pytest.raises(_Killed):
        reward_model.run(_cfg(), killed)
    monkeypatch.setattr(trainer.checkpoint, "save", save)
    assert not (killed / "rm_eval.json").exists()
    reward_model.run(_cfg(), killed)
    assert _curve(killed) == _curve(full)
    assert (killed / "rm_eval.json").read_text() == (full / "rm_eval.json").read_text()


def test_scorer_round_trip(rm_run, tmp_path):
    workdir, _ = rm_run
    scorer = preference.RewardModelScorer.load(workdir, batch_size=16)
    assert scorer.template == "world" and scorer.max_len == 64
    pairs = world.dataset("preference_test", n=48)
    chosen = scorer.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = scorer.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    assert chosen.dtype == np.float32 and chosen.shape == (48,)
    if hasattr(scorer._score, "_cache_size"):  # one program per length bucket (here one: 64)
        assert scorer._score._cache_size() == 1
    report = json.loads((workdir / "rm_eval.json").read_text())
    np.testing.assert_allclose(np.mean(chosen - rejected), report["heldout_margin"], rtol=1e-4)
    assert np.mean(chosen > rejected) == report["heldout_accuracy"]
    # The same numbers as the model's forward on the row as training tokenizes it.
    ids = preference.tokenize(
        scorer.tokenizer, pairs[0]["prompt"], pairs[0]["chosen"], template="world", max_len=64
    )
    tokens, mask = preference.pad_rows([ids], len(ids), scorer.tokenizer.pad_id)
    direct = preference.scores(scorer.model_cfg, scorer.params, tokens, mask)
    np.testing.assert_allclose(chosen[0], direct[0], rtol=1e-5, atol=1e-5)
    # scope="summary" scores what follows </think> only.
    summary = preference.RewardModelScorer.load(workdir, scope="summary", batch_size=16)
    prompts = [p["prompt"] for p in pairs[:4]]
    thought = [
        f"<think>{i} plus 1 gives {i + 1}.</think> {p['chosen']}" for i, p in enumerate(pairs[:4])
    ]
    np.testing.assert_allclose(summary.score(prompts, thought), chosen[:4], rtol=1e-5, atol=1e-5)
    assert not np.allclose(scorer.score(prompts, thought), chosen[:4])
    # On a mesh: params placed by logical axes, rows split over the batch axes.
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    sharded = preference.RewardModelScorer.load(workdir, mesh=mesh, batch_size=6)
    assert sharded.batch_size == 8
    np.testing.assert_allclose(
        sharded.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs]),
        chosen,
        rtol=1e-4,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="responses"):
        scorer.score(prompts, thought[:2])
    # normalize: z-scored by the scores of its held-out responses, which rm_eval.json records.
    both = np.concatenate([chosen, rejected])
    np.testing.assert_allclose(
        [report["score_mean"], report["score_std"]], [both.mean(), both.std()], rtol=1e-4
    )
    assert scorer.score_spread() == report["score_std"]
    z = preference.RewardModelScorer.load(workdir, batch_size=16, normalize=True)
    assert z.score_spread() == 1.0
    np.testing.assert_allclose(
        z.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs]),
        (chosen - report["score_mean"]) / report["score_std"],
        rtol=1e-5,
        atol=1e-5,
    )
    # Statistics of another step than the checkpoint's (a run trained on, not finished yet)
    # z-scored its newest params by its older ones' scale, with no word.
    stale = tmp_path / "stale"
    shutil.copytree(workdir, stale)
    (stale / "rm_eval.json").write_text(json.dumps({**report, "step": 3}))
    with pytest.raises(
        configlib.ConfigError, match="are of step 3, its newest checkpoint of step 6"
    ):
        preference.RewardModelScorer.load(stale, normalize=True)
    preference.RewardModelScorer.load(stale)  # raw scores: no statistics read
    (workdir / "rm_eval.json").rename(workdir / "rm_eval.kept")
    try:
        with pytest.raises(ValueError, match="normalize needs the score statistics"):
            preference.RewardModelScorer.load(workdir, normalize=True)
    finally:
        (workdir / "rm_eval.kept").rename(workdir / "rm_eval.json")


def test_collect_keeps_general_rows_above_a_raw_or_normalized_score(rm_run, tmp_path):
    # A Bradley-Terry score's offset is arbitrary: collect.normalize_scores reads
    # collect.general_min_score in standard deviations from the reward model's mean score.
    from r1jax.train import collect

    workdir, _ = rm_run
    pairs = world.dataset("preference_test", n=48)
    rows = [
        {"prompt": p["prompt"], "response": p[side]}
        for p in pairs
        for side in ("chosen", "rejected")
    ]
    data = tmp_path / "general.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer = preference.RewardModelScorer.load(workdir)
    raw = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
    report = json.loads((workdir / "rm_eval.json").read_text())
    z = (raw - report["score_mean"]) / report["score_std"]
    for normalize, threshold, expected in ((False, 0.0, raw > 0), (True, 0.5, z > 0.5)):
        cfg = base.get_config()
        cfg.collect.general_data, cfg.collect.reward_model = str(data), str(workdir)
        cfg.collect.normalize_scores, cfg.collect.general_min_score = normalize, threshold
        kept, stats = collect.general_rows(cfg, len(rows), mesh=None)
        assert stats["general_filtered_out"] == len(rows) - expected.sum() > 0, normalize
        wanted = {(r["prompt"], r["response"]) for r, e in zip(rows, expected) if e}
        assert {(r["prompt"], r["response"]) for r in kept} == wanted


def test_a_reward_model_run_is_no_language_model_to_export_or_start_from(rm_run, tmp_path):
    # Its params are a trunk and a head: export and init_from failed with orbax's layout dump.
    from r1jax import evaluation, export
    from r1jax.train import supervised

    workdir, _ = rm_run
    with pytest.raises(configlib.ConfigError, match="reward model's run .* rl.reward_model.path"):
        export.export(workdir, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    sft = configlib.load_config(os.path.join(REPO, "configs/sft.py:tiny"))
    sft.model.init_from = str(workdir)
    with pytest.raises(configlib.ConfigError, match="reward model's run"):
        supervised.initial_params(sft, configlib.model_config_from(sft))
    with pytest.raises(configlib.ConfigError, match="reward model's run"):
        evaluation.run_model_config(workdir)


def test_scorer_refuses_other_runs(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"config": {"stage": "sft"}, "model": dataclasses.asdict(TINY)})
    )
    # One line (ConfigError), and what the folder is first: with normalize, an SFT run was told
    # to train again for its missing score statistics, a Hugging Face folder a traceback.
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    for folder in (tmp_path, hf):
        for normalize in (False, True):
            with pytest.raises(configlib.ConfigError, match="not a reward_model run"):
                preference.RewardModelScorer.load(folder, normalize=normalize)


def test_a_reward_model_the_mesh_cannot_split_is_named_in_the_refusal(tmp_path):
    # An RL policy whose heads divide the tensor axis beside a reward model whose heads do not
    # (7B policy, 0.5B RM on tensor=4): the refusal named "config.mesh: param trunk/..." only,
    # as if the policy were at fault.
    odd = dataclasses.replace(TINY, vocab_size=301, n_heads=3, n_kv_heads=3)
    (tmp_path / "config.json").write_text(
        json.dumps({"config": {"stage": "reward_model"}, "model": dataclasses.asdict(odd)})
    )
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    named = re.escape(f"reward model {tmp_path}: config.mesh: param trunk/embedding (301, 32)")
    with pytest.raises(sharding.ShardingError, match=named):
        preference.RewardModelScorer.load(tmp_path, mesh=mesh)


# ---- data -----------------------------------------------------------------------------------


def test_hh_rlhf_adapter_on_the_shared_file(shared_data, tmp_path):
    path = shared_data / "hh_rlhf_harmless_base_test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(6)]
    small = tmp_path / "hh.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = sources.hh_rlhf_pairs(small)
    assert len(pairs) == 6 and pairs == sources.hh_rlhf_pairs(path, max_pairs=6)
    for row, pair in zip(rows, pairs):
        head = pair["prompt"] if pair["turns"] > 1 else f"Human: {pair['prompt']}"
        for side in ("chosen", "rejected"):
            rebuilt = f"\n\n{head}\n\nAssistant: {pair[side]}"
            assert " ".join(rebuilt.split()) == " ".join(row[side].split())
        assert "\n\nAssistant:" not in pair["chosen"][:1] and pair["chosen"] != pair["rejected"]
    assert pairs[0]["turns"] == 3 and pairs[0]["prompt"].startswith("Human: what are some pranks")
    assert sources.preference_records(small) == pairs  # told apart by its keys


def test_hh_rlhf_adapter_errors(tmp_path):
    good = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello",
        "rejected": "\n\nHuman: hi\n\nAssistant: go",
    }
    bad_rows = [
        good,
        {"chosen": good["chosen"]},  # no rejected
        {"chosen": "hello", "rejected": "there"},  # not transcripts
        {"chosen": good["chosen"], "rejected": "\n\nHuman: bye\n\nAssistant: go"},  # no shared turn
        {"chosen": 3, "rejected": good["rejected"]},
        {"chosen": good["chosen"], "rejected": good["chosen"]},  # equal replies: dropped, counted
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in bad_rows))
    with pytest.raises(sources.DataError, match=r"bad\.jsonl:2: required field 'rejected'"):
        sources.hh_rlhf_pairs(path)
    stats: dict = {}
    pairs = sources.hh_rlhf_pairs(path, on_error="skip", stats=stats)
    assert pairs == [
        {"prompt": "hi", "chosen": "hello", "rejected": "go", "turns": 1, "source": "hh-rlhf"}
    ]
    assert stats["skipped"] == 4 and stats["identical"] == 1
    assert any("bad.jsonl:3" in e and "transcript" in e for e in stats["errors"])
    assert any("bad.jsonl:4" in e and "share no conversation" in e for e in stats["errors"])
    plain = tmp_path / "plain.jsonl"
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "aspect": "x"}]
    rows.append({"prompt": "q", "chosen": ["a"], "rejected": "b"})
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(sources.DataError, match=r"plain\.jsonl:2: field 'chosen' must be a str"):
        sources.preference_records(plain)
    assert sources.preference_records(plain, on_error="skip") == rows[:1]
    # Equal replies carry no preference in plain rows either: dropped and counted.
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "a "}) + "\n")
    stats = {}
    assert sources.preference_records(same, stats=stats) == [] and stats["identical"] == 1
    # An empty reply is a reply in either kind of row (HH-RLHF's harmless test split has 4): as
    # prompt/chosen/rejected it was a malformed row, which stopped the run.
    empty = tmp_path / "empty.jsonl"
    rows = [{**good, "rejected": "\n\nHuman: hi\n\nAssistant:"}]
    rows.append({"prompt": "hi", "chosen": "hello", "rejected": ""})
    empty.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = [(p["prompt"], p["chosen"], p["rejected"]) for p in sources.preference_records(empty)]
    assert got == [("hi", "hello", "")] * 2
    empty.write_text(json.dumps({"prompt": "hi", "chosen": "hello"}) + "\n")
    with pytest.raises(sources.DataError, match=r"empty\.jsonl:1: required field 'rejected' is"):
        sources.preference_records(empty)


def test_pair_dataset_checks(tmp_path):
    cfg = _cfg()
    with pytest.raises(sources.DataError, match="not a pair dataset"):
        reward_model.load_pairs(cfg, "general_test")
    pairs = reward_model.load_pairs(cfg, "preference")
    assert len(pairs) == 48 and {p["domain"] for p in pairs} == {"general", "reasoning"}


def test_a_tokenizer_trained_on_pairs_learns_their_replies(tmp_path):
    # With no tokenizer.path nor model.init_from the stage trains one on its pairs: it read
    # their prompts only, and 39% of the world's reply tokens were byte pieces.
    from r1jax.train import supervised

    cfg = _cfg(tokenizer__path="", tokenizer__train_vocab_size=400, data__max_records=200)
    pairs = reward_model.load_pairs(cfg, "preference")
    tok = supervised.resolve_tokenizer(cfg, tmp_path, pairs)
    byte_ids = {tok.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    ids = [i for p in pairs for side in ("chosen", "rejected") for i in tok.encode(p[side])]
    assert not byte_ids & set(ids)


def test_fewer_pairs_than_processes_stop_every_process(world_tokenizer):
    pairs = [{"prompt": "a", "chosen": "b", "rejected": "c"}]
    kw = dict(template="world", max_len=16, batch_size=1, seed=0, shard_count=2)
    # Process 1 has no pair: its stream ended at the first batch while process 0 trained on.
    for index in (0, 1):
        with pytest.raises(sources.DataError, match="1 preference pairs for 2 processes"):
            reward_model.pair_batches(pairs, world_tokenizer, shard_index=index, **kw)


# ---- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["tiny", "qwen2.5-1.5b", "qwen2.5-7b-tpu"])
def test_config_variants_load_and_validate(variant, tmp_path):
    spec = os.path.join(REPO, f"configs/reward_model.py:{variant}")
    cfg = configlib.load_config(spec)
    assert cfg.stage == "reward_model"
    if variant == "tiny":
        assert cfg.data.train == "preference" and cfg.data.eval == "preference_test"
        configlib.validate(cfg, num_devices=1)
        return
    # Real-model variants name paths the user supplies: stand-ins exist here.
    train = tmp_path / "train.jsonl"
    train.write_text("")
    cfg = configlib.load_config(spec, data__train=str(train), model__init_from=str(tmp_path))
    configlib.validate(cfg, num_devices=8)
    assert cfg.model.dtype == "bfloat16" and cfg.data.batch_size == 64
    assert cfg.train.steps * cfg.data.batch_size >= 160_800  # one epoch of HH-RLHF


def test_config_checks(tmp_path):
    # In configlib.validate, so that a pipeline checks them at start-up with every stage (a
    # missing HH-RLHF file stopped it at the reward-model stage, after R1-Zero had run).
    with pytest.raises(configlib.ConfigError, match=r"config\.rm\.max_len"):
        configlib.validate(_cfg(rm__max_len=-1), num_devices=1)
    with pytest.raises(configlib.ConfigError, match=r"config\.rm\.hh_eval: no such file"):
        configlib.validate(_cfg(rm__hh_eval="/nope.jsonl"), num_devices=1)
    with pytest.raises(configlib.ConfigError, match=r"config\.rm\.hh_eval: .* is not a file"):
        configlib.validate(_cfg(rm__hh_eval=str(tmp_path)), num_devices=1)
    from r1jax import pipeline as recipe

    whole = configlib.load_config(os.path.join(REPO, "configs/pipeline.py:tiny"))
    whole.stages.reward_model.rm.hh_eval = "/nope.jsonl.gz"
    with pytest.raises(configlib.ConfigError, match=r"stages\.reward_model\.rm\.hh_eval"):
        recipe.check_stage_configs(whole, tmp_path)


def test_an_hh_eval_file_without_hh_pairs_is_refused_before_training(tmp_path):
    # Its accuracy was NaN (0 pairs), written to rm_eval.json after the whole run.
    plain = tmp_path / "pairs.jsonl"
    plain.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(sources.DataError, match=r"config\.rm\.hh_eval: no HH-RLHF pair .*:1: "):
        reward_model.run(_cfg(rm__hh_eval=str(plain)), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_max_len_that_leaves_no_pair_apart_is_refused(world_tokenizer, caplog):
    # rm.max_len=2 kept BOS + EOS of every row: loss 0.693, gradient ~0, no word of it.
    cfg = _cfg()
    pairs = [
        {"prompt": f"Say {i} times 4.", "chosen": f"It is {4 * i}.", "rejected": f"Maybe {i}."}
        for i in range(20)
    ]
    with pytest.raises(configlib.ConfigError, match=r"config\.rm\.max_len: at 2 tokens"):
        reward_model._check_pairs_differ(cfg, pairs, world_tokenizer, 2)
    reward_model._check_pairs_differ(cfg, pairs, world_tokenizer, 64)
    same = [{**p, "rejected": "Sure. " + p["chosen"]} for p in pairs[:5]] + pairs[5:]
    reward_model._check_pairs_differ(cfg, same, world_tokenizer, 6)
    assert "are the same tokens in" in caplog.text
