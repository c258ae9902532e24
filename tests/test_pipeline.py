"""The R1 recipe's glue: sampling datasets (checks, rendering, mixing), per-prompt reward routing
and general-prompt mixing in GRPO, the pipeline's wiring, and every stage config."""

import json
import os
import types

import ml_collections
import numpy as np
import pytest

from r1jax import configlib, pipeline, text
from r1jax.data import sources, world
from r1jax.rewards import language
from r1jax.rl import rollout
from r1jax.train import collect, rl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD_BASE = os.path.join(REPO, "r1jax", "assets", "world_base")
RECORD = {
    "task": "world",
    "kind": "chain",
    "language": "en",
    "prompt": "Work mod 7. Start with 0, then minus 5, times 4. Result?",
    "answer": "1",
}
GOOD = "<think>0 minus 5 gives 2. 2 times 4 gives 1.</think> <answer>1</answer>"


def _collect_cfg(**kw):
    c = ml_collections.ConfigDict(
        dict(
            min_tokens=1,
            max_tokens=0,
            require_format=True,
            require_correct=True,
            min_language_consistency=1.0,
            max_ngram_repeats=3,
            ngram_size=4,
            max_paragraph_chars=0,
            reject_code_blocks=False,
        )
    )
    c.update(kw)
    return c


# ---- collect: checks and rendering -----------------------------------------------------------


def test_rejection_reasons_name_the_first_failed_check():
    c = _collect_cfg()
    assert collect.rejection_reason(GOOD, RECORD, 20, False, c) is None
    assert collect.rejection_reason(GOOD, RECORD, 20, True, c) == "truncated"
    assert collect.rejection_reason(GOOD, RECORD, 20, False, _collect_cfg(max_tokens=10)) == (
        "length"
    )
    assert collect.rejection_reason(GOOD, RECORD, 5, False, _collect_cfg(min_tokens=6)) == "length"
    assert collect.rejection_reason("<answer>1</answer>", RECORD, 5, False, c) == "format"
    extra = GOOD.replace("</think> ", "</think> so ")
    assert collect.rejection_reason(extra, RECORD, 20, False, c) == "format"
    wrong = GOOD.replace("<answer>1", "<answer>2")
    assert collect.rejection_reason(wrong, RECORD, 20, False, c) == "incorrect"
    mixed = "<think>0减5得2。 2 times 4 gives 1.</think> <answer>1</answer>"
    assert collect.rejection_reason(mixed, RECORD, 20, False, c) == "language"
    assert (
        collect.rejection_reason(
            mixed, RECORD, 20, False, _collect_cfg(min_language_consistency=0.0)
        )
        is None
    )
    loop = "<think>" + "2 times 4 gives 1. " * 5 + "</think> <answer>1</answer>"
    assert collect.rejection_reason(loop, RECORD, 20, False, c) == "repetition"
    assert collect.ngram_repeats("a b c d a b c d a b c d", 4) == 3
    assert collect.ngram_repeats("乘4得1乘4得1", 4) == 2  # CJK characters are words


def test_without_the_strict_format_a_kept_sample_still_renders_in_the_r1_format():
    # collect.require_format off kept '<think><think>a</think></think> <answer>1</answer>' and
    # a thought holding an answer block, rendered as rows with a tag twice for SFT to learn.
    lenient = _collect_cfg(require_format=False)
    nested = GOOD.replace("<think>", "<think><think>").replace("</think>", "</think></think>")
    inner = GOOD.replace("gives 2.", "gives <answer>2</answer>.")
    for completion in (nested, inner, GOOD.replace("<answer>1", "<answer><think>1")):
        assert collect.rejection_reason(completion, RECORD, 20, False, lenient) == "format"
    for completion in (f"So: {GOOD}", f"{GOOD} Done."):  # text around the blocks: kept
        assert collect.rejection_reason(completion, RECORD, 20, False, lenient) is None
        rendered = collect.render(completion, RECORD, summary=False)
        assert rendered == GOOD


def test_text_from_token_bytes_that_are_not_utf8_is_rejected():
    # A byte-fallback token cut a character: the decoded text holds U+FFFD, not what the model
    # wrote (a tiny pipeline's teacher: 135 of 366 kept general answers were such gibberish).
    c = _collect_cfg(num_samples=1, summary=False, general_min_score=0.0)
    cut = GOOD.replace("</think>", "\ufffd</think>")
    assert collect.rejection_reason(cut, RECORD, 20, False, c) == "invalid_text"
    assert collect.rejection_reason(cut, {**RECORD, "prompt": "x\ufffd"}, 20, False, c) is None
    general = {"prompt": "Say hi.", "domain": "general"}
    texts = ["Hi \ufffd there", "Hi there"]
    from r1jax.rewards import registry

    with registry.RewardPool({"accuracy": 1.0}, num_workers=0, timeout_s=10) as pool:
        for response, verdict in zip(texts, ([0, None, "invalid_text"], [0, "Hi there", None])):
            judged = collect._judge(c, [general], [response], [5], [False], [1.0], pool)
            assert judged["verdicts"] == [verdict]


def test_an_empty_or_out_of_bounds_general_answer_is_rejected_whatever_its_score():
    # A teacher that stopped at once on a general prompt gave an empty row for SFT, kept when
    # the reward model scored it above the threshold; collect.min_tokens / max_tokens (the
    # response length bounds) did not apply to general answers.
    from r1jax.rewards import registry

    general = {"prompt": "Say hi.", "domain": "general"}
    texts, lengths = ["", " \n", "Hi there", "Hi there, how are you today?"], [1, 2, 3, 8]
    with registry.RewardPool({"accuracy": 1.0}, num_workers=0, timeout_s=10) as pool:
        for c, kept in ((_collect_cfg(), [2, 3]), (_collect_cfg(min_tokens=2, max_tokens=4), [2])):
            c.update(num_samples=4, summary=False, general_min_score=0.0)
            judged = collect._judge(c, [general], texts, lengths, [False] * 4, [1.0] * 4, pool)
            reasons = [v[2] for v in judged["verdicts"]]
            assert [j for j, r in enumerate(reasons) if r is None] == kept
            assert {r for r in reasons if r} == {"length"}


def test_r1s_readability_filters_long_paragraphs_and_code_blocks():
    long = GOOD.replace("<think>", "<think>" + "We add the numbers one by one. " * 10 + "\n\n")
    assert collect.longest_paragraph("ab\n\n  abcd \n \nx") == 4
    loose = _collect_cfg(max_ngram_repeats=0)  # (the long paragraph repeats itself)
    assert collect.rejection_reason(long, RECORD, 20, False, loose) is None
    strict = _collect_cfg(max_paragraph_chars=200, max_ngram_repeats=0)
    assert collect.rejection_reason(long, RECORD, 20, False, strict) == "readability"
    assert collect.rejection_reason(GOOD, RECORD, 20, False, strict) is None
    fenced = GOOD.replace("</think>", "\n```python\nprint(1)\n```</think>")
    no_code = _collect_cfg(reject_code_blocks=True)
    assert collect.rejection_reason(fenced, RECORD, 20, False, no_code) == "readability"
    assert collect.rejection_reason(GOOD, RECORD, 20, False, no_code) is None


def test_a_grader_that_raises_rejects_the_sample_instead_of_stopping_collection(monkeypatch):
    # A resumed collection would sample the same call and raise again: it could never finish.
    def broken(completion, record):
        raise RuntimeError("grader bug")

    monkeypatch.setitem(collect.tasks.TASKS, "world", broken)
    assert collect.rejection_reason(GOOD, RECORD, 20, False, _collect_cfg()) == "grading_error"


def test_grading_workers_judge_a_call_as_this_process_does():
    # Collection grades each call's samples in config.eval.grade_workers processes (math-verify
    # and code runs in parallel, no sandbox forked from the process holding the model).
    from r1jax.rewards import registry

    c = _collect_cfg(num_samples=3, summary=False, general_min_score=0.0)
    maths = {"task": "math", "prompt": "1+1?", "answer": "\\frac{1}{2}"}
    odd = {**RECORD, "task": "no_such_task"}  # its grader raises
    batch = [RECORD, maths, odd]
    answer = lambda a: GOOD.replace("<answer>1", f"<answer>{a}")  # noqa: E731
    texts = [GOOD, answer(2), "<answer>1</answer>", answer(0.5), GOOD, answer("x")] + [GOOD] * 3
    judged = []
    for workers in (0, 2):
        with registry.RewardPool({"accuracy": 1.0}, num_workers=workers, timeout_s=10) as pool:
            judged.append(collect._judge(c, batch, texts, [20] * 9, [False] * 9, None, pool))
    assert judged[0] == judged[1]
    reasons = [v[2] for v in judged[0]["verdicts"]]
    assert (
        reasons
        == [None, "incorrect", "format", None, "incorrect", "incorrect"] + ["grading_error"] * 3
    )


def test_a_prompt_cut_to_max_len_keeps_its_bos():
    class Words:
        bos_id = 2

        def encode(self, s):
            return [10 + i for i in range(len(s.split()))]

    ids = rollout.encode_prompts([{"prompt": "a b c d e f"}, {"prompt": "a"}], Words(), "none", 4)
    assert ids == [[2, 13, 14, 15], [2, 10]]
    Words.bos_id = None
    assert rollout.encode_prompts([{"prompt": "a b c d e f"}], Words(), "none", 4) == [
        [12, 13, 14, 15]
    ]


def test_prompts_longer_than_max_prompt_len_are_counted_and_warned_about(caplog):
    class Words:
        bos_id = 2

        def encode(self, s):
            return [10 + i for i in range(len(s.split()))]

    records = [{"prompt": "a b c d e f"}, {"prompt": "a"}, {"prompt": "a b c"}]
    # BOS + 6, 1 and 3 words: one prompt past 4 tokens, the longest 7.
    assert rollout.long_prompts(records, Words(), "none", 4) == (1, 3, 7)
    assert rollout.long_prompts(records, Words(), "none", 7) == (0, 3, 7)
    cfg = ml_collections.ConfigDict({"rl": {"template": "none", "max_prompt_len": 4}})
    with caplog.at_level("WARNING"):
        rl._warn_long_prompts(cfg, Words(), records, "config.data.train")
    assert "1 of 3 prompts checked in config.data.train" in caplog.text
    assert "rl.max_prompt_len=4 tokens (the longest 7)" in caplog.text
    caplog.clear()
    cfg.rl.max_prompt_len = 7
    with caplog.at_level("WARNING"):
        rl._warn_long_prompts(cfg, Words(), records, "config.data.train")
    assert "max_prompt_len" not in caplog.text


def test_collection_samples_in_its_own_or_the_source_runs_template_not_the_evals():
    # With collect.template '' (the source run's own), a set eval.template took precedence.
    cfg = configlib.load_config(os.path.join(REPO, "configs/cold_start.py:tiny"))
    cfg.eval.template = "chat"
    sft_run = {"stage": "sft", "data": {"template": "world"}}
    cfg.collect.template = ""
    assert collect._template(cfg.collect, sft_run) == "world"
    assert collect._template(cfg.collect, {"stage": "pretrain"}) == "r1_zero"
    cfg.collect.template = "none"
    assert collect._template(cfg.collect, sft_run) == "none"


def test_render_adds_a_summary_in_the_prompts_language():
    assert collect.render(GOOD, RECORD, summary=True) == (
        "<think>0 minus 5 gives 2. 2 times 4 gives 1. Result: 1.</think> <answer>1</answer>"
    )
    zh = {**RECORD, "language": "zh"}
    assert collect.render(GOOD, zh, summary=True).endswith("结果是1。</think> <answer>1</answer>")
    assert collect.render(GOOD, RECORD, summary=False) == GOOD
    # Every language the consistency reward knows has a summary written in it.
    for lang in language.LANGUAGES:
        line = collect.render(GOOD, {**RECORD, "language": lang}, summary=True)
        summary = line.split("gives 1. ", 1)[1].split("</think>")[0]
        assert language.consistency(summary, lang) == 1.0, (lang, summary)
    # A program answer (a code record) gets no summary line restating it.
    program = (
        "<think>Loop and add.</think> <answer>```python\ndef f(x):\n    return x\n```</answer>"
    )
    code = {"prompt": "Write f.", "task": "code", "test": "t", "entry_point": "f"}
    assert collect.render(program, code, summary=True) == program


def test_collect_writes_a_deduplicated_dataset_with_provenance_and_sfts(tmp_path):
    """From the shipped base: only accepted, distinct rows; general rows mixed at the ratio;
    a second run finds the dataset and does not sample again; collect.sft trains on it."""
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/cold_start.py:tiny"),
        collect__model=WORLD_BASE,
        collect__num_prompts=48,
        collect__num_samples=4,
        collect__max_per_prompt=2,
        collect__prompts_per_batch=48,
        collect__min_language_consistency=0.0,
        collect__general_data="general_sft",
        collect__general_ratio=0.5,
        train__steps=2,
        data__batch_size=8,
        metrics__tensorboard=False,
        metrics__peak_flops=1e9,
        mesh__num_devices=1,
    )
    out = collect.run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "dataset.jsonl").open(encoding="utf-8")]
    prov = json.loads((tmp_path / "provenance.json").read_text())
    reasoning = [r for r in rows if r.get("domain") != "general"]
    general = [r for r in rows if r.get("domain") == "general"]
    assert prov["reasoning_rows"] == len(reasoning) > 0
    assert prov["general_data_from"] == {"world_seed": cfg.data.world_seed}
    assert len(general) == round(0.5 * len(reasoning)) == prov["general_rows"]
    assert prov["sampled"] == 48 * 4
    accounted = prov["accepted"] + sum(prov["rejected_by"].values()) + prov["duplicates"]
    assert accounted + prov["over_max_per_prompt"] == 48 * 4  # every sample has its fate
    assert len({(r["prompt"], r["response"]) for r in rows}) == len(rows)
    per_prompt = {}
    for r in reasoning:
        per_prompt[r["prompt"]] = per_prompt.get(r["prompt"], 0) + 1
        assert world.grade(r["response"], r) == 1.0
        # The summary line restates the sample's own answer (a Countdown answer may be another
        # expression than the record's).
        think, answer = text.split_reasoning(r["response"])
        assert think.endswith(f"Result: {answer}.") or r["language"] == "zh"
    assert max(per_prompt.values()) <= 2
    assert out["step"] == 2 and (tmp_path / "checkpoints").is_dir()
    before = (tmp_path / "dataset.jsonl").read_bytes()
    assert collect.collect(cfg, tmp_path) == tmp_path / "dataset.jsonl"  # complete: kept as is
    assert (tmp_path / "dataset.jsonl").read_bytes() == before
    # Other prompts (another world seed: none in common) are not served the finished dataset.
    other = configlib.updated(cfg, data__world_seed=7)
    with pytest.raises(configlib.ConfigError, match="prompts_sha256"):
        collect.collect(other, tmp_path)


def test_general_rows_follow_the_ratio_of_reasoning_rows_and_need_their_fields(
    tmp_path, monkeypatch
):
    # Sampled general answers (collect.general_prompts) are neither reasoning rows nor general
    # data rows: general_ratio counted them as reasoning rows (8 general rows a reasoning row).
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/cold_start.py:tiny"),
        collect__model=WORLD_BASE,
        collect__num_prompts=8,
        collect__general_data="general_sft",
        collect__general_ratio=1.0,
        mesh__num_devices=1,
    )
    accepted = [{"prompt": f"q{i}", "response": "r"} for i in range(3)]
    accepted += [{"prompt": f"g{i}", "response": "r", "domain": "general"} for i in range(5)]
    stats = {"accepted": 8, "sampled": 8, "rejected_by": {}}
    monkeypatch.setattr(collect, "sample_accepted", lambda *a, **kw: (accepted, dict(stats)))
    collect.collect(cfg, tmp_path / "mix")
    prov = json.loads((tmp_path / "mix" / "provenance.json").read_text())
    assert (prov["reasoning_rows"], prov["general_sampled_rows"], prov["general_rows"]) == (3, 5, 3)
    # Written in a seeded order, not reasoning rows first (data.max_records on the SFT kept
    # no general row): the same seed, the same order.
    rows = sources.read_jsonl(tmp_path / "mix" / "dataset.jsonl")
    assert rows[:3] != accepted[:3] and len(rows) == 11
    assert all(row in rows for row in accepted)
    collect.collect(cfg, tmp_path / "again")
    assert sources.read_jsonl(tmp_path / "again" / "dataset.jsonl") == rows

    # General rows of another schema stop collection naming the file and row (they reached the
    # SFT, which stopped there, or with data.on_error=skip dropped them all), before the
    # sampling (they stopped it after every prompt was sampled).
    def sampled(*args, **kw):
        raise AssertionError("the model was sampled")

    monkeypatch.setattr(collect, "sample_accepted", sampled)
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    bad = configlib.updated(cfg, collect__general_data=str(alpaca))
    with pytest.raises(sources.DataError, match=r"alpaca\.jsonl:1: .*'prompt'"):
        collect.collect(bad, tmp_path / "alpaca")


def test_the_reward_model_judging_general_rows_is_checked_before_sampling(tmp_path, monkeypatch):
    # It was loaded (and a folder that is no reward_model run refused) after every prompt was
    # sampled; the rerun with the right folder then restarted the journal (another setting).
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/cold_start.py:tiny"),
        collect__model=WORLD_BASE,
        collect__num_prompts=8,
        collect__general_data="general_sft",
        collect__general_ratio=1.0,
        collect__reward_model=WORLD_BASE,
        mesh__num_devices=1,
    )

    def sampled(*args, **kw):
        raise AssertionError("the model was sampled")

    monkeypatch.setattr(collect, "sample_accepted", sampled)
    with pytest.raises(configlib.ConfigError, match=r"world_base is not a reward_model run"):
        collect.collect(cfg, tmp_path)


def test_a_collection_without_one_reasoning_row_stops_before_its_sft(tmp_path, monkeypatch):
    # A teacher whose every reasoning sample failed (a wrong template: 'format') but whose
    # general answers the reward model accepted gave a distillation set of general rows only.
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/cold_start.py:tiny"),
        collect__model=WORLD_BASE,
        collect__num_prompts=8,
        mesh__num_devices=1,
    )
    general = [{"prompt": f"g{i}", "response": "r", "domain": "general"} for i in range(5)]
    stats = {"accepted": 5, "sampled": 13, "rejected_by": {"format": 8}}
    monkeypatch.setattr(collect, "sample_accepted", lambda *a, **kw: (general, dict(stats)))
    with pytest.raises(configlib.ConfigError, match=r"for a reasoning prompt passed.*'format': 8"):
        collect.run(cfg, tmp_path)
    assert not (tmp_path / collect.DATASET).exists()
    assert not (tmp_path / "checkpoints").exists()


def test_collect_config_errors_name_the_field(tmp_path):
    spec = os.path.join(REPO, "configs/cold_start.py:tiny")
    with pytest.raises(configlib.ConfigError, match=r"config\.collect\.model"):
        configlib.validate(configlib.load_config(spec, collect__model=""), num_devices=1)
    with pytest.raises(configlib.ConfigError, match=r"config\.collect\.model.*nope"):
        configlib.validate(
            configlib.load_config(spec, collect__model=str(tmp_path / "nope")), num_devices=1
        )
    with pytest.raises(configlib.ConfigError, match=r"config\.collect\.general_data"):
        cfg = configlib.load_config(spec, collect__model=WORLD_BASE, collect__general_ratio=0.5)
        configlib.validate(cfg, num_devices=1)
    # General prompts are judged by a reward model: without one (or without the file) the
    # collection stopped after loading the model, in a pipeline hours after its start.
    distill = os.path.join(REPO, "configs/distill.py:tiny")
    with pytest.raises(configlib.ConfigError, match=r"config\.collect\.reward_model"):
        configlib.validate(
            configlib.load_config(distill, collect__model=WORLD_BASE, collect__reward_model=""),
            num_devices=1,
        )
    missing, prompts = str(tmp_path / "general.jsonl"), tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps(RECORD) + "\n")
    with pytest.raises(configlib.ConfigError, match=r"config\.collect\.general_prompts.*general"):
        cfg = configlib.load_config(
            spec,
            collect__model=WORLD_BASE,
            collect__general_prompts=missing,
            collect__reward_model=WORLD_BASE,
            data__format="jsonl",
            data__train=str(prompts),
        )
        configlib.validate(cfg, num_devices=1)
    # A collection without its SFT has no SFT batch to split over the devices.
    alone = configlib.load_config(spec, collect__model=WORLD_BASE, collect__sft=False)
    configlib.validate(alone, num_devices=64)  # data.batch_size 32 would not split over 64
    with pytest.raises(configlib.ConfigError, match="data.batch_size"):
        configlib.validate(configlib.load_config(spec, collect__model=WORLD_BASE), num_devices=64)


# ---- GRPO: general prompts mixed in, routed to a reward model --------------------------------


def test_mixed_prompts_put_general_prompts_at_the_end_of_late_rounds():
    reasoning = [{"prompt": f"r{i}"} for i in range(10)]
    general = [{"prompt": f"g{i}", "domain": "general"} for i in range(3)]
    ds = rl.mixed_prompts(
        reasoning, general, seed=0, per_round=4, general_per_round=1, general_from_round=2
    )
    rounds = [[ds[r * 4 + s]["prompt"] for s in range(4)] for r in range(8)]
    for r, names in enumerate(rounds):
        kinds = [n[0] for n in names]
        assert kinds == (["r"] * 4 if r < 2 else ["r", "r", "r", "g"]), (r, names)
    flat = [n for names in rounds for n in names]
    reasoning_seen = [n for n in flat if n[0] == "r"]
    # every reasoning prompt once per epoch (no skips or repeats across the switch)
    assert sorted(reasoning_seen[:10]) == sorted(r["prompt"] for r in reasoning)
    general_seen = [n for n in flat if n[0] == "g"]
    assert sorted(general_seen[:3]) == ["g0", "g1", "g2"]
    assert len(set(general_seen[3:6])) == 3
    # The general prompts' seed is the run's + 1: the largest seed validate allows wraps.
    ds = rl.mixed_prompts(
        reasoning, general, seed=2**32 - 1, per_round=4, general_per_round=1, general_from_round=0
    )
    assert sorted(ds[r * 4 + 3]["prompt"] for r in range(3)) == ["g0", "g1", "g2"]


class _LengthScorer:
    """A reward model stand-in for routing tests: longer responses score higher (scope
    'summary': the length of the summary)."""

    def __init__(self, scope="response", scale=1.0, spread=2.0):
        self.calls, self.scope, self.scale, self.spread = [], scope, scale, spread

    def score_spread(self):
        return self.spread

    def score(self, prompts, responses, *, opens_think):
        from r1jax.rewards import preference

        self.calls.append(list(prompts))
        return np.array(
            [
                self.scale * len(preference.response_in_scope(r, self.scope, prompt_opens_think=o))
                for r, o in zip(responses, opens_think)
            ],
            np.float32,
        )


def _maker(reward_models, group_size=1, general_rule_rewards=(), missing_eos_penalty=0.0):
    maker = rollout.ExperienceMaker.__new__(rollout.ExperienceMaker)
    maker.reward_models = reward_models
    maker.cfg = types.SimpleNamespace(
        num_samples=group_size,
        general_rule_rewards=general_rule_rewards,
        missing_eos_penalty=missing_eos_penalty,
    )
    return maker


def test_general_prompts_get_the_reward_models_reasoning_prompts_the_rules():
    scorer, harmless = _LengthScorer(), _LengthScorer(scale=-2.0)
    maker = _maker([("reward_model", scorer, 0.5)])
    records = [RECORD, RECORD, {"prompt": "Say plus 3 in Chinese.", "domain": "general"}] * 1
    texts = [GOOD, "<answer>2</answer>", "Sure! It is 加3."]
    rule_N = np.array([1.5, 0.0, 0.25], np.float32)
    per_fn = {"accuracy": np.array([1.0, 0.0, 0.0], np.float32)}
    rewards_N, out = maker._route(texts, records, rule_N, per_fn)
    np.testing.assert_allclose(rewards_N, [1.5, 0.0, 0.5 * len(texts[2])])
    assert scorer.calls == [["Say plus 3 in Chinese."]]
    assert np.isnan(out["accuracy"][2]) and not np.isnan(out["accuracy"][:2]).any()
    assert np.isnan(out["reward_model"][:2]).all() and out["reward_model"][2] == len(texts[2])
    # Two reward models (R1: helpfulness and harmlessness): their weighted sum, each logged.
    maker = _maker([("reward_model", scorer, 0.5), ("harmlessness_model", harmless, 1.0)])
    rewards_N, out = maker._route(texts, records, rule_N, per_fn)
    np.testing.assert_allclose(rewards_N, [1.5, 0.0, (0.5 - 2.0) * len(texts[2])])
    assert out["harmlessness_model"][2] == -2.0 * len(texts[2])
    maker = _maker([])
    with pytest.raises(ValueError, match="reward_model.path"):
        maker._route(texts, records, rule_N, per_fn)


def test_a_reward_models_non_finite_score_counts_as_0_and_is_warned_about(caplog):
    # nan_to_num made a broken model's NaN 0 (and its inf 3.4e38) without a word.
    broken = _LengthScorer(scale=float("inf"))
    maker = _maker([("reward_model", broken, 1.0)])
    records = [RECORD, {"prompt": "Say hi.", "domain": "general"}]
    maker.last_pool_metrics = {}
    with caplog.at_level("WARNING"):
        rewards_N, out = maker._route([GOOD, "hi"], records, np.ones(2, np.float32), {})
    np.testing.assert_array_equal(rewards_N, [1.0, 0.0])
    assert "scored 1 of 1 general responses NaN or inf" in caplog.text
    # Logged as it counts (0), and counted: NaN, the other domains' mark, hid it from the
    # reward/reward_model mean, which then did not add up to the reward's.
    assert np.isnan(out["reward_model"][0]) and out["reward_model"][1] == 0.0
    assert maker.last_pool_metrics == {"rewards/crashes/reward_model": 1.0}
    # A summary model's NaN for a finished response: the group's unfinished one is floored
    # below the 0 it counts as (a NaN floor made it 0 too, level with it).
    nan_for_long = _LengthScorer("summary", spread=1.0)
    nan_for_long.scale = 1.0
    score = nan_for_long.score
    nan_for_long.score = lambda p, r, opens_think: np.where(
        score(p, r, opens_think=opens_think) > 3, np.nan, 1.0
    ).astype(np.float32)
    maker = _maker([("reward_model", nan_for_long, 1.0)], group_size=2)
    general = {"prompt": "Say hi.", "domain": "general"}
    rewards_N, _ = maker._route(
        ["<think>a</think> Hello there.", "<think>cut"], [general] * 2, np.zeros(2, np.float32), {}
    )
    np.testing.assert_array_equal(rewards_N, [0.0, -1.0])


def test_a_response_with_no_summary_scores_below_its_groups_worst_finished_one():
    # Judged as an empty reply, a response cut inside its thought scored above real answers
    # (+1.16 against -3.8 for a rude one with the tiny reward model): never finishing paid.
    # One spread (the model's score std) below the worst finished answer of its group: tied
    # with it, a group with one finished answer had no advantage for finishing.
    general = {"prompt": "Write a haiku.", "domain": "general"}
    opened = {**general, "prompt_opens_think": True}
    records = [general] * 3 + [opened] * 3 + [general] * 2
    texts = [
        "<think>leaves</think> Leaves fall, slowly down.",  # finished: 25
        "<think>first, count the syllables of",  # cut inside the thought
        "<think>a</think> Short one.",  # finished: 10
        "count syllables</think> Autumn.",  # opened by the prompt, finished: 7
        "five, seven, five and",  # opened by the prompt, never closed
        "ok</think>   ",  # nothing after </think>
        "<think>never closed",  # a group with no finished response:
        "<think>also cut",  # its rows take the call's lowest finished score
    ]
    maker = _maker([("reward_model", _LengthScorer("summary"), 1.0)], group_size=3)
    zeros = np.zeros(len(texts), np.float32)
    rewards_N, out = maker._route(texts, records, zeros, {})
    np.testing.assert_allclose(rewards_N, [25, 10 - 2, 10, 7, 7 - 2, 7 - 2, 7 - 2, 7 - 2])
    # A model whose run recorded no score statistics: the spread of this call's finished ones.
    maker = _maker([("reward_model", _LengthScorer("summary", spread=None), 1.0)], group_size=3)
    rewards_N, _ = maker._route(texts, records, zeros, {})
    spread = np.std([25, 10, 7])
    np.testing.assert_allclose(
        rewards_N[[1, 4, 7]], [10 - spread, 7 - spread, 7 - spread], rtol=1e-6
    )
    # A whole-response model judges them as they are.
    maker = _maker([("harmlessness_model", _LengthScorer("response"), 1.0)], group_size=3)
    rewards_N, _ = maker._route(texts, records, zeros, {})
    np.testing.assert_allclose(rewards_N, [len(t) for t in texts])


def test_missing_eos_penalty_lowers_a_cut_general_response_only():
    # A reward model scores a response cut at max_new_tokens with an end token put after it,
    # as if it were finished: rl.missing_eos_penalty (TRL's) takes that back, off by default.
    general = {"prompt": "Write a haiku.", "domain": "general"}
    records = [RECORD, RECORD, general, general]
    texts = [GOOD, "<think>cut", "Leaves fall.", "Leaves fall, slowly, and"]
    truncated_N = np.array([False, True, False, True])
    rule_N = np.array([1.5, 0.0, 0.0, 0.0], np.float32)
    for penalty, expected in ((0.0, [1.5, 0.0, 12, 24]), (5.0, [1.5, 0.0, 12, 24 - 5])):
        maker = _maker([("reward_model", _LengthScorer(), 1.0)], 2, missing_eos_penalty=penalty)
        rewards_N, out = maker._route(texts, records, rule_N, {}, truncated_N)
        np.testing.assert_allclose(rewards_N, expected)
        assert out["reward_model"][3] == 24  # the model's own score is logged as it is
    spec = os.path.join(REPO, "configs/all_domain_rl.py:tiny")
    ok = dict(model__init_from=WORLD_BASE, rl__reward_model__path=WORLD_BASE)
    cfg = configlib.load_config(spec, rl__missing_eos_penalty=1.0, **ok)
    configlib.validate(cfg, num_devices=1)
    assert rl.rollout_config(cfg).missing_eos_penalty == 1.0
    for bad in (
        dict(rl__missing_eos_penalty=-1.0),
        dict(rl__missing_eos_penalty=1.0, rl__general_prompts="", rl__general_fraction=0.0),
    ):
        with pytest.raises(configlib.ConfigError, match=r"config\.rl\.missing_eos_penalty"):
            configlib.validate(configlib.load_config(spec, **{**ok, **bad}), num_devices=1)


def test_general_prompts_are_not_graded_by_the_rule_rewards(tmp_path):
    # A plain general prompt has no answer: graded by 'accuracy' it was a crash, every step.
    from r1jax.rewards import registry

    maker = _maker([("reward_model", _LengthScorer(), 1.0)])
    maker.pool = registry.RewardPool({"accuracy": 1.0, "format": 0.5}, num_workers=0, timeout_s=5)
    records = [RECORD, {"prompt": "Write a haiku.", "domain": "general"}]
    rewards_N, per_fn = maker._score_rules([GOOD, "Leaves fall."], records)
    assert maker.last_pool_metrics["rewards/crashes/accuracy"] == 0
    assert rewards_N[0] == 1.5 and rewards_N[1] == 0.0
    assert per_fn["accuracy"][0] == 1.0 and np.isnan(per_fn["accuracy"][1])


@pytest.mark.parametrize("workers", [0, 1])
def test_general_prompts_can_get_format_and_language_rewards_too(workers):
    # R1 in Nature (equations 8-10): a general prompt's reward is the reward model's score plus
    # the format reward, and the language reward is every prompt's.
    from r1jax.rewards import registry

    maker = _maker(
        [("reward_model", _LengthScorer(), 0.5)], general_rule_rewards=("format", "language")
    )
    weights = {"accuracy": 1.0, "format": 0.5, "language": 0.25}
    records = [RECORD, {"prompt": "Write a haiku.", "domain": "general"}] * 2
    texts = [
        GOOD,
        "<think>five, seven, five</think> <answer>Leaves fall.</answer>",  # format 1, English
        "<think>a guess</think> 1",  # no answer block: format 0, wrong
        "<think>落叶</think> <answer>Leaves.</answer>",  # format 1, a Chinese thought
    ]
    with registry.RewardPool(weights, num_workers=workers, timeout_s=30) as pool:
        maker.pool = pool
        rule_N, per_fn = maker._score_rules(texts, records)
        graded = pool.grade(texts, records, [[], ["format"], ["format"], []])[0]
        assert graded["format"].tolist() == [0.0, 1.0, 0.0, 0.0]
        with pytest.raises(ValueError, match=r"\['tag_count'\] are not in this pool"):
            pool.score(texts[:1], records[:1], [["tag_count"]])
    assert maker.last_pool_metrics["rewards/crashes/accuracy"] == 0
    rewards_N, out = maker._route(texts, records, rule_N, per_fn)
    accuracy, fmt, lang = out["accuracy"], out["format"], out["language"]
    assert accuracy[0] == 1.0 and np.isnan(accuracy[[1, 3]]).all()  # no answer to grade
    np.testing.assert_array_equal(fmt, [1.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(lang, [1.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(
        rewards_N,
        [
            1.0 + 0.5 + 0.25,
            0.5 * len(texts[1]) + 0.5 + 0.25,
            0.25,
            0.5 * len(texts[3]) + 0.5,
        ],
    )
    assert np.isnan(out["reward_model"][[0, 2]]).all()


def test_all_domain_config_errors_name_the_field(tmp_path):
    spec = os.path.join(REPO, "configs/all_domain_rl.py:tiny")
    ok = dict(model__init_from=WORLD_BASE, rl__reward_model__path=WORLD_BASE)
    configlib.validate(configlib.load_config(spec, **ok), num_devices=1)
    with pytest.raises(configlib.ConfigError, match=r"config\.rl\.reward_model\.path"):
        configlib.validate(
            configlib.load_config(spec, model__init_from=WORLD_BASE, rl__reward_model__path=""),
            num_devices=1,
        )
    with pytest.raises(configlib.ConfigError, match=r"config\.rl\.general_fraction"):
        configlib.validate(
            configlib.load_config(spec, rl__general_fraction=0.01, **ok), num_devices=1
        )
    nature = dict(ok, rl__general_rule_rewards=("format", "language"))
    cfg = configlib.load_config(spec, **nature)
    configlib.validate(cfg, num_devices=1)
    assert rl.rollout_config(cfg).general_rule_rewards == ("format", "language")
    # General prompts graded by a rule reward are checked as its records (a language code).
    bad = tmp_path / "general.jsonl"
    bad.write_text('{"prompt": "Say hi.", "language": "en"}\n{"prompt": "Hi?", "language": "xx"}\n')
    with pytest.raises(sources.DataError, match=r"general_prompts .*record 2: .*'xx'"):
        rl.load_general_prompts(configlib.updated(cfg, rl__general_prompts=str(bad)))
    with pytest.raises(configlib.ConfigError, match=r"general_rule_rewards: 'tag_count' is not"):
        configlib.validate(
            configlib.load_config(spec, rl__general_rule_rewards=("tag_count",), **ok),
            num_devices=1,
        )
    with pytest.raises(configlib.ConfigError, match=r"general_rule_rewards: .*need general"):
        configlib.validate(
            configlib.load_config(spec, rl__general_prompts="", rl__general_fraction=0.0, **nature),
            num_devices=1,
        )
    with pytest.raises(configlib.ConfigError, match=r"config\.rl\.reward_model\.scope"):
        configlib.validate(
            configlib.load_config(spec, rl__reward_model__scope="all", **ok), num_devices=1
        )
    # A second reward model: after the first, and both on the normalized scale.
    # The error names the one left False (it named harmlessness_model.normalize, True here).
    two = dict(ok, rl__harmlessness_model__path=WORLD_BASE)
    with pytest.raises(configlib.ConfigError, match=r"rl\.reward_model\.normalize: .*both"):
        configlib.validate(configlib.load_config(spec, **two), num_devices=1)
    unscaled = dict(two, rl__reward_model__normalize=True, rl__harmlessness_model__normalize=False)
    with pytest.raises(configlib.ConfigError, match=r"harmlessness_model\.normalize: .*both"):
        configlib.validate(configlib.load_config(spec, **unscaled), num_devices=1)
    configlib.validate(
        configlib.load_config(spec, rl__reward_model__normalize=True, **two), num_devices=1
    )
    with pytest.raises(configlib.ConfigError, match=r"harmlessness_model\.path: .*needs the first"):
        configlib.validate(
            configlib.load_config(
                spec,
                model__init_from=WORLD_BASE,
                rl__reward_model__path="",
                rl__harmlessness_model__path=WORLD_BASE,
                rl__general_prompts="",
                rl__general_fraction=0.0,
            ),
            num_devices=1,
        )


# ---- the pipeline ----------------------------------------------------------------------------


def _pipeline_cfg(**kw):
    return configlib.load_config(os.path.join(REPO, "configs/pipeline.py:tiny"), **kw)


def test_pipeline_references_resolve_and_are_checked(tmp_path):
    cfg = _pipeline_cfg()
    pipeline.check(cfg)
    cs = pipeline.resolve_config(cfg.stages.cold_start, tmp_path)
    assert cs.collect.model == str(tmp_path / "r1_zero")
    sft_all = pipeline.resolve_config(cfg.stages.sft_all, tmp_path)
    assert sft_all.data.train == str(tmp_path / "rejection_sampling" / "dataset.jsonl")
    assert pipeline.references(cfg.stages.all_domain_rl) == {"sft_all", "reward_model"}
    bad = _pipeline_cfg()
    bad.unlock()
    bad.pipeline.order = ("cold_start", "r1_zero")  # cold start reads r1_zero: must come after
    with pytest.raises(configlib.ConfigError, match=r"cold_start.*'@r1_zero'.*not an earlier"):
        pipeline.check(bad)
    bad.pipeline.order = ("r1_zero", "nope")
    with pytest.raises(configlib.ConfigError, match="'nope' has no config"):
        pipeline.check(bad)


def test_pipeline_skips_finished_stages_and_writes_markers(tmp_path, monkeypatch):
    """Stages run in order in WORKDIR/<name> with resolved inputs; a rerun skips done ones."""
    ran = []

    def fake_stage(cfg, workdir):  # records what each stage would have been given
        ran.append((os.path.basename(workdir), cfg.stage, cfg.collect.model, cfg.model.init_from))
        return {}

    monkeypatch.setattr(pipeline, "run_stage", fake_stage)
    cfg = _pipeline_cfg()
    cfg.unlock()
    cfg.pipeline.order = ("r1_zero", "cold_start", "reasoning_rl")
    done = pipeline.run_stages(cfg, tmp_path)
    assert [r[0] for r in ran] == ["r1_zero", "cold_start", "reasoning_rl"]
    assert ran[1][2] == str(tmp_path / "r1_zero")
    assert ran[2][3] == str(tmp_path / "cold_start")
    assert set(done) == {"r1_zero", "cold_start", "reasoning_rl"}
    assert not any(record["resumed"] for record in done.values())
    (tmp_path / "reasoning_rl" / pipeline.DONE).unlink()  # as if killed during the last stage
    (tmp_path / "reasoning_rl" / "metrics.jsonl").write_text('{"step": 1}\n')
    ran.clear()
    done = pipeline.run_stages(cfg, tmp_path)
    assert [r[0] for r in ran] == ["reasoning_rl"]
    assert done["reasoning_rl"]["resumed"] and not done["cold_start"]["resumed"]


def test_a_run_folder_process_0_finds_locked_stops_every_process(tmp_path, monkeypatch):
    # Process 0 alone holds the folder's lock: when another run held it, process 0 stopped in one
    # line and the others went on into the stage, to fail inside their first collective
    # (gloo's 30 s timeout and a traceback, on GPUs a wait without end).
    import jax

    from r1jax import distributed, files

    monkeypatch.setattr(pipeline, "_dispatch", lambda cfg, workdir: pytest.fail("stage ran"))
    seen = []
    monkeypatch.setattr(distributed, "global_min", lambda v: seen.append(v) or 0)
    monkeypatch.setattr(jax, "process_index", lambda: 1)  # process 1, told process 0 failed
    cfg = ml_collections.ConfigDict({"stage": "sft"})
    with pytest.raises(files.WorkdirBusy, match="process 0 could not take the run's lock"):
        pipeline.run_stage(cfg, tmp_path / "run")
    assert seen == [1]
    monkeypatch.setattr(jax, "process_index", lambda: 0)  # process 0: the folder is held
    with files.workdir_lock(tmp_path / "run"):
        with pytest.raises(files.WorkdirBusy, match="in use by another r1jax run"):
            pipeline.run_stage(cfg, tmp_path / "run")
    assert seen == [1, 0]


def test_findings_and_markdown_table():
    rows = {
        "a": {"pass@1": 0.2, "maj@16": 0.3, "language_consistency": 0.9, "general/rm_score": -1.0},
        "b": {"pass@1": 0.6, "maj@16": 0.7, "language_consistency": 0.99},
    }
    notes = pipeline.findings(rows, [("pass@1", "a", "b"), ("language_consistency", "b", "a")])
    assert notes == [
        "pass@1: a 0.200 -> b 0.600 (holds)",
        "language_consistency: b 0.990 -> a 0.900 (does NOT hold)",
    ]
    md = pipeline.format_markdown(rows, 16, {"b": 2.5})
    assert "| a | 0.200 | 0.300 | - |" in md and md.rstrip().endswith("| 2.5 |")
    # A resumed stage's minutes are only its last run's: marked, with a note.
    md = pipeline.format_markdown(rows, 16, {"b": 2.5}, {"b"})
    assert "| 2.5* |" in md and md.rstrip().endswith(
        "the minutes of the run that finished the stage"
    )
    # So is the total above the table (it said "Stages took 3.0 min." of a stopped run).
    done = {"a": {"seconds": 60.0, "resumed": False}, "b": {"seconds": 120.0, "resumed": True}}
    assert pipeline.stage_time_line(done) == (
        "Stages took 3.0 min in the runs that finished them (b resumed after a stop: their "
        "time before it is not counted)."
    )
    done["b"]["resumed"] = False
    assert pipeline.stage_time_line(done) == "Stages took 3.0 min."


def test_general_prompts_from_a_file_are_tagged_general_and_checked(tmp_path):
    path = tmp_path / "general.jsonl"
    path.write_text('{"prompt": "Write a haiku."}\n{"prompt": "Greet me.", "domain": "chat"}\n')
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/all_domain_rl.py:qwen2.5-1.5b"),
        rl__general_prompts=str(path),
        data__on_error="raise",
    )
    records = rl.load_general_prompts(cfg)
    assert [r["domain"] for r in records] == ["general", "general"]
    path.write_text('{"prompt": "Write a haiku."}\n{"question": "no prompt"}\n{"prompt": " "}\n')
    with pytest.raises(sources.DataError, match=r"general\.jsonl:2: field 'prompt' is missing"):
        rl.load_general_prompts(cfg)
    # data.on_error="skip" skips them (it stopped the run), a blank prompt too (it passed).
    cfg = configlib.updated(cfg, data__on_error="skip")
    assert [r["prompt"] for r in rl.load_general_prompts(cfg)] == ["Write a haiku."]


def test_collect_samples_on_eight_devices_as_on_one():
    """Sampling for a dataset is batched through the sampler on the mesh: rows split over 8
    devices give the same accepted samples as one device."""
    from r1jax import sharding

    cfg = configlib.load_config(
        os.path.join(REPO, "configs/cold_start.py:tiny"),
        collect__model=WORLD_BASE,
        collect__num_samples=4,
        collect__prompts_per_batch=16,
        collect__min_language_consistency=0.0,
        collect__require_correct=False,
    )
    records = world.dataset("train", n=16)
    out = {}
    for n in (1, 8):
        mesh = sharding.make_mesh({"data": -1, "num_devices": n})
        rows, stats = collect.sample_accepted(cfg, records, mesh=mesh, progress=False)
        out[n] = ([(r["prompt"], r["response"]) for r in rows], stats["rejected_by"])
        assert stats["sampled"] == 64
    assert out[1] == out[8]
    assert out[1][0]  # some samples reason in the R1 format


def test_pipeline_refuses_a_workdir_holding_a_single_stage_run(tmp_path):
    """Its config.json (which the run's checkpoints need) is not overwritten."""
    sft = configlib.load_config(os.path.join(REPO, "configs/sft.py:tiny"))
    configlib.save_resolved(sft, tmp_path, configlib.model_config_from(sft, vocab_size=100))
    (tmp_path / "checkpoints" / "200").mkdir(parents=True)
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(configlib.ConfigError, match="checkpoints of a 'sft' run"):
        pipeline.run(_pipeline_cfg(), tmp_path)
    assert (tmp_path / "config.json").read_text() == before


def test_a_prompt_that_opens_think_keeps_the_continuations_that_close_it():
    # The template already wrote <think>: a good completion starts inside the thought. It was
    # rejected as 'format' while one that opened <think> again was kept and trained on as
    # '<think><think>...'.
    opens = {**RECORD, "prompt_opens_think": True}
    inside = GOOD[len("<think>") :]
    c = _collect_cfg()
    assert collect.rejection_reason(inside, opens, 20, False, c) is None
    assert collect.rejection_reason(GOOD, opens, 20, False, c) == "format"
    assert collect.rejection_reason(GOOD, RECORD, 20, False, c) is None
    rendered = collect.render(inside, opens, summary=True)
    assert rendered == "0 minus 5 gives 2. 2 times 4 gives 1. Result: 1.</think> <answer>1</answer>"
    assert ("<think>" + rendered).count("<think>") == 1


def test_the_repetition_check_passes_long_math_chains_and_stops_loops():
    # Defaults of the real configs: R1's own aha-moment chain repeats '\sqrt { a' 9 times and
    # half of MATH-500's reference solutions repeat some 4-gram more than 3 times.
    from configs import base

    c = base.get_config().collect
    chain = (
        "To solve \\sqrt{a - \\sqrt{a + x}} = x, square both sides: a - \\sqrt{a + x} = x^2. "
        "Then (a - x^2)^2 = a + x, so a^2 - 2ax^2 + x^4 = a + x. Wait, wait. Let's reevaluate: "
        "\\sqrt{a - \\sqrt{a + x}} = x, square: a - \\sqrt{a + x} = x^2, \\sqrt{a + x} = a - x^2."
    )
    record = {"prompt": "Solve for x.", "answer": "\\frac{\\sqrt{4a-3}-1}{2}", "task": "math"}
    good = f"<think>{chain}</think> <answer>\\frac{{\\sqrt{{4a-3}}-1}}{{2}}</answer>"
    assert collect.ngram_repeats(good, 4) > c.max_ngram_repeats  # the old 4-gram check
    assert collect.rejection_reason(good, record, 200, False, c) is None
    loop = f"<think>{chain} " + "So we square both sides again and simplify the terms. " * 6
    loop += "</think> <answer>\\frac{\\sqrt{4a-3}-1}{2}</answer>"
    assert collect.rejection_reason(loop, record, 300, False, c) == "repetition"


def _rs_cfg(**kw):
    small = dict(
        collect__model=WORLD_BASE,
        collect__num_prompts=24,
        collect__num_samples=2,
        collect__prompts_per_batch=8,
        collect__require_correct=False,
        collect__general_ratio=0.0,
        collect__general_data="",
        mesh__num_devices=1,
    )
    return configlib.load_config(
        os.path.join(REPO, "configs/rejection_sampling.py:tiny"), **{**small, **kw}
    )


def test_a_killed_collection_resumes_from_its_journal_to_the_same_dataset(tmp_path, monkeypatch):
    from r1jax import evaluation

    collect.collect(_rs_cfg(), tmp_path / "full")
    full = (tmp_path / "full" / collect.DATASET).read_bytes()
    assert not (tmp_path / "full" / collect.JOURNAL).exists()  # the dataset holds it all
    original, calls = evaluation.sample_completions, []

    def killed_at_the_third_call(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kw)

    monkeypatch.setattr(evaluation, "sample_completions", killed_at_the_third_call)
    with pytest.raises(KeyboardInterrupt):
        collect.collect(_rs_cfg(), tmp_path / "resumed")
    journal = tmp_path / "resumed" / collect.JOURNAL
    with open(journal, "ab") as f:
        f.write(b'{"batch": 2, "verd')  # a write the kill tore
    journal_bytes = journal.read_bytes()
    calls.clear()
    monkeypatch.setattr(evaluation, "sample_completions", original)
    counted = lambda *a, **k: calls.append(1) or original(*a, **k)  # noqa: E731
    monkeypatch.setattr(evaluation, "sample_completions", counted)
    collect.collect(_rs_cfg(), tmp_path / "resumed")
    assert len(calls) == 1  # the two calls journaled are not sampled again
    assert (tmp_path / "resumed" / collect.DATASET).read_bytes() == full
    # A finished dataset is reused only for the settings it was collected with.
    with pytest.raises(configlib.ConfigError, match=r"collect\.num_samples: 2 -> 4"):
        collect.collect(_rs_cfg(collect__num_samples=4), tmp_path / "full")
    assert collect.collect(_rs_cfg(), tmp_path / "full").read_bytes() == full
    # A kill between the dataset's write and the journal's removal: the rerun removes it.
    (tmp_path / "resumed" / collect.JOURNAL).write_bytes(journal_bytes)
    collect.collect(_rs_cfg(), tmp_path / "resumed")
    assert not (tmp_path / "resumed" / collect.JOURNAL).exists()
    # The same folders spelled otherwise (relative, through '..') are the same settings.
    other = os.path.join(os.path.relpath(WORLD_BASE), "..", "world_base")
    assert collect.collect(_rs_cfg(collect__model=other), tmp_path / "full").read_bytes() == full


def test_a_source_run_trained_on_is_not_reused_from_a_journal_or_dataset(tmp_path):
    # The journal and the finished dataset recorded the source run's folder, not its step: a
    # collection killed, its RL run trained on, then rerun replayed the older params' verdicts.
    saved = tmp_path / "rl" / "checkpoints"
    (saved / "4").mkdir(parents=True)
    (saved / "6.orbax-checkpoint-tmp-12").mkdir()  # a save in progress (or a kill's leftover)
    cfg = _rs_cfg(collect__model=str(tmp_path / "rl"))
    records = [RECORD]
    header = collect._journal_header(cfg, records)
    assert header["settings"]["source_step"] == 4
    provenance = {
        **collect._collection_settings(cfg),
        "prompts_sha256": collect._prompts_sha256(records),
    }
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / collect.PROVENANCE).write_text(json.dumps(provenance))
    collect._check_same_settings(cfg, tmp_path / "out", records)
    (saved / "6").mkdir()
    assert collect._journal_header(cfg, records) != header
    with pytest.raises(configlib.ConfigError, match=r"source_step: 4 -> 6"):
        collect._check_same_settings(cfg, tmp_path / "out", records)
    assert "source_step" not in collect._collection_settings(_rs_cfg())  # a Hugging Face folder


def test_the_teacher_is_sampled_with_its_own_tokenizer(tmp_path):
    # config.tokenizer is the student's (the model collect.sft trains): a 400-piece student
    # tokenizer sampled the 512-piece world base, and every sample came out truncated garbage.
    from r1jax import evaluation, sharding

    text.SentencePieceTokenizer.train(
        (r["prompt"] for r in world.dataset("train", n=300)), tmp_path / "student", vocab_size=400
    )
    cfg = _rs_cfg(tokenizer__path=str(tmp_path / "student.model"))
    src = collect._source_config(cfg)
    mesh = sharding.make_mesh({"num_devices": 1})
    _, _, tok, _ = evaluation.load_model(src, mesh)
    assert tok.vocab_size == 512


def test_prompts_the_rule_check_cannot_grade_are_refused_before_sampling(tmp_path, monkeypatch):
    # A prompt without its answer was sampled, then each of its samples rejected as
    # 'grading_error' (an answer null: 'incorrect'), logged once; RL and evaluation refuse it.
    from r1jax import evaluation

    records = world.dataset("train", n=3)
    del records[1]["answer"]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))

    def sampled(*args, **kw):
        raise AssertionError("the model was sampled")

    monkeypatch.setattr(evaluation, "sample_completions", sampled)
    cfg = _rs_cfg(data__format="jsonl", data__train=str(path), collect__require_correct=True)
    with pytest.raises(sources.DataError, match=r"prompts\.jsonl\): record 2: no 'answer'"):
        collect.collect(cfg, tmp_path / "run")
    skip = configlib.updated(cfg, data__on_error="skip")
    assert [r["prompt"] for r in collect._prompt_records(skip)] == [
        records[0]["prompt"],
        records[2]["prompt"],
    ]
    # Without the rule check (collect.require_correct False) no answer is needed.
    loose = configlib.updated(cfg, collect__require_correct=False)
    assert len(collect._prompt_records(loose)) == 3


def test_a_student_without_a_tokenizer_is_refused_before_the_teacher_is_sampled(
    tmp_path, monkeypatch
):
    # An empty student folder passed validation (it exists) and was refused by the SFT after
    # the whole collection (hours of sampling at scale).
    student = tmp_path / "student"
    student.mkdir()
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/distill.py:tiny"),
        model__init_from=str(student),
        collect__model=WORLD_BASE,
        collect__general_prompts="",
        collect__reward_model="",
        mesh__num_devices=1,
    )

    def sampled(*args, **kw):
        raise AssertionError("the teacher was sampled")

    monkeypatch.setattr(collect, "collect", sampled)
    with pytest.raises(configlib.ConfigError, match=r"init_from: .*student is not a model"):
        collect.run(cfg, tmp_path / "run")


def test_a_workdir_holding_another_run_is_refused_before_the_teacher_is_sampled(
    tmp_path, monkeypatch
):
    # --workdir naming the RL run sampled (collect.model's folder): the dataset was collected
    # into it, then its SFT refused the folder (it holds an 'rl' run's checkpoints).
    rl_cfg = configlib.load_config(os.path.join(REPO, "configs/reasoning_rl.py:tiny"))
    configlib.save_resolved(rl_cfg, tmp_path, configlib.model_config_from(rl_cfg, vocab_size=512))
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/cold_start.py:tiny"),
        collect__model=WORLD_BASE,
        mesh__num_devices=1,
    )

    def sampled(*args, **kw):
        raise AssertionError("the teacher was sampled")

    monkeypatch.setattr(collect, "collect", sampled)
    with pytest.raises(configlib.ConfigError, match=r"checkpoints of a 'rl' run"):
        collect.run(cfg, tmp_path)
    # Its own SFT's folder (a resumed distillation) is not refused.
    own = tmp_path / "own"
    sft = collect.sft_config(cfg, own / collect.DATASET)
    configlib.save_resolved(sft, own, configlib.model_config_from(sft, vocab_size=512))
    (own / "checkpoints" / "20").mkdir(parents=True)
    with pytest.raises(AssertionError, match="the teacher was sampled"):
        collect.run(cfg, own)


def _hf_student(folder, vocab_size: int):
    """A tiny Hugging Face folder: its own 400-piece tokenizer, `vocab_size` embedding rows."""
    import jax

    from r1jax.model import config as model_config
    from r1jax.model import hf_io, transformer

    prompts = (r["prompt"] for r in world.dataset("train", n=300))
    sp = text.SentencePieceTokenizer.train(prompts, folder / "sp", vocab_size=400)
    (folder / "tokenizer.json").write_text(sp.to_hf_json())
    (folder / "tokenizer_config.json").write_text(json.dumps(sp.special_tokens()))
    shape = dict(d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=8, d_ff=32)
    cfg = model_config.ModelConfig(vocab_size=vocab_size, tie_embeddings=True, **shape)
    hf_io.save_hf(folder, cfg, transformer.init_params(cfg, jax.random.key(0)))
    return folder


def test_the_table_evaluates_a_student_with_its_own_tokenizer(tmp_path, monkeypatch):
    # The pipeline config named the world base's tokenizer for every table row: a student with
    # its own tokenizer (and room for 512 ids) was evaluated on the teacher's token ids.
    from r1jax import evaluation, sharding

    student = _hf_student(tmp_path / "student", vocab_size=640)
    seen = []

    def tokenizer_seen(model_cfg, params, tokenizer, *args, **kwargs):  # the row's evaluation
        seen.append(tokenizer)
        return types.SimpleNamespace(metrics={})

    monkeypatch.setattr(evaluation, "evaluate", tokenizer_seen)
    cfg = _pipeline_cfg(mesh__num_devices=1)
    mesh = sharding.make_mesh({"num_devices": 1})
    for model in (str(student), WORLD_BASE):
        pipeline.evaluate_model(cfg, "row", model, mesh=mesh, scorer=None, reasoning=[], general=[])
    assert [t.vocab_size for t in seen] == [400, 512]
    assert isinstance(seen[0], text.HFTokenizer)


def test_general_prompts_in_the_table_are_sampled_as_the_reasoning_ones(monkeypatch):
    # Their sampling left out eval.top_k and eval.stop_strings.
    from r1jax import evaluation, sharding

    calls, real = [], evaluation.sample_completions

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(evaluation, "sample_completions", spy)
    cfg = _pipeline_cfg(
        mesh__num_devices=1,
        eval__top_k=5,
        eval__stop_strings=("</answer>",),
        eval__max_new_tokens=8,
    )
    cfg.pipeline.general_samples = 2
    mesh = sharding.make_mesh({"num_devices": 1})
    src = configlib.updated(cfg, model__init_from=WORLD_BASE)
    model_cfg, params, tokenizer, _ = evaluation.load_model(src, mesh)
    records = world.dataset("general_test")[:2]
    metrics = pipeline.general_metrics(cfg, model_cfg, params, tokenizer, None, records, mesh=mesh)
    assert 0 <= metrics["general/correct"] <= 1
    assert calls and all(kw["top_k"] == 5 for kw in calls)
    assert all(kw["stop_strings"] == ("</answer>",) for kw in calls)


def test_every_stage_config_is_checked_before_the_first_stage_runs(tmp_path):
    # A mistake in the 8th stage surfaced when it was reached (40 minutes in here, days at
    # scale); paths into stage folders that earlier stages write are not required yet.
    cfg = _pipeline_cfg()
    pipeline.check_stage_configs(cfg, tmp_path)  # the shipped pipeline is valid as is
    cfg.stages.student_rl.rl.algorithm = "grop"
    with pytest.raises(configlib.ConfigError, match=r"config\.stages\.student_rl\.rl\.algorithm"):
        pipeline.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    cfg = _pipeline_cfg(eval__temperature=0.0)  # the table's evaluation
    with pytest.raises(configlib.ConfigError, match=r"config\.eval\.temperature"):
        pipeline.run(cfg, tmp_path / "run")
    cfg = _pipeline_cfg()
    cfg.stages.sft_all.data.train = str(tmp_path / "nowhere.jsonl")  # not a stage's output
    with pytest.raises(configlib.ConfigError, match=r"stages\.sft_all\.data\.train: no such file"):
        pipeline.check_stage_configs(cfg, tmp_path)
