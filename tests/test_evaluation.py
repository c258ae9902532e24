"""Evaluation: pass@k and maj@k against brute force, vote keys, grading, evaluate, the eval stage.

N prompts, G samples per prompt.
"""

import dataclasses
import itertools
import json
import logging
import os
import random
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax import configlib, evaluation, sampler, sharding, text
from r1jax.data import world
from r1jax.model import config as config_lib
from r1jax.model import transformer as tf
from r1jax.rewards import math as math_reward
from r1jax.rewards import registry
from r1jax.train import checkpoint, supervised, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = world.WorldConfig()
SMALL = evaluation.EvalConfig(
    num_samples=4, ks=(1, 2, 4, 8), max_new_tokens=8, prompts_per_batch=4, seed=3
)


# ---- estimators ------------------------------------------------------------------------------


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            flags = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(flags, k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                assert evaluation.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert evaluation.pass_at_k(64, 1, 1) == pytest.approx(1 / 64)
    with pytest.raises(ValueError):
        evaluation.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        evaluation.pass_at_k(4, 1, 5)


def _maj_brute_force(votes, correct, k):
    """Mean over all size-k subsets of the expected score of a tie-broken majority vote."""
    by_answer = {}
    for v, c in zip(votes, correct, strict=True):
        if v is not None:
            by_answer.setdefault(v, []).append(float(c))
    score = {a: float(np.mean(cs)) for a, cs in by_answer.items()}
    total, subsets = 0.0, list(itertools.combinations(range(len(votes)), k))
    for subset in subsets:
        counts = {}
        for i in subset:
            if votes[i] is not None:
                counts[votes[i]] = counts.get(votes[i], 0) + 1
        if counts:
            top = max(counts.values())
            total += np.mean([score[a] for a, m in counts.items() if m == top])
    return total / len(subsets)


def test_maj_at_k_matches_brute_force_with_ties_and_none():
    rng = random.Random(0)
    for _ in range(150):
        n = rng.randint(1, 9)
        alphabet = "abcde"[: rng.randint(1, 5)]
        votes = [None if rng.random() < 0.25 else rng.choice(alphabet) for _ in range(n)]
        right = {a: rng.random() < 0.5 for a in alphabet}
        correct = [v is not None and right[v] for v in votes]
        if rng.random() < 0.2:  # a grader that disagrees within one vote key
            correct[rng.randrange(n)] ^= True
        for k in range(1, n + 1):
            got = evaluation.maj_at_k(votes, correct, k)
            assert got == pytest.approx(_maj_brute_force(votes, correct, k), abs=1e-12)


def test_maj_at_k_special_cases():
    votes = ["a", "a", "b", "b", None, "c"]
    correct = [True, True, False, False, False, False]
    # k = n: a and b tie at 2, the tie is broken uniformly -> 0.5.
    assert evaluation.maj_at_k(votes, correct, 6) == pytest.approx(0.5)
    # k = 1: the share of samples with an answer that are correct.
    assert evaluation.maj_at_k(votes, correct, 1) == pytest.approx(2 / 6)
    assert evaluation.maj_at_k([None, None], [False, False], 2) == 0.0
    assert evaluation.maj_at_k(["x"] * 3, [True] * 3, 2) == 1.0
    # 64 distinct answers, one right: every subset is a k-way tie -> 1/64 at every k.
    votes = [str(i) for i in range(64)]
    correct = [i == 7 for i in range(64)]
    for k in (1, 8, 64):
        assert evaluation.maj_at_k(votes, correct, k) == pytest.approx(1 / 64)
    with pytest.raises(ValueError):
        evaluation.maj_at_k(["a"], [True], 2)


# ---- vote keys and grading --------------------------------------------------------------------


def test_maj_at_k_in_floats_equals_the_exact_count():
    rng = np.random.RandomState(0)
    for n, answers in ((64, 5), (128, 40)):
        votes = [None if rng.rand() < 0.1 else str(rng.randint(answers)) for _ in range(n)]
        correct = [v == "0" for v in votes]
        for k in (1, 7, n // 2, n):
            fast = evaluation.maj_at_k(votes, correct, k)
            assert fast == pytest.approx(
                evaluation.maj_at_k(votes, correct, k, exact=True), rel=1e-12
            )


def test_maj_at_k_beyond_float64_subset_counts():
    # C(1030, 515) > 1.8e308: float64 subset counts raised OverflowError here, then Python
    # integers took a minute a problem (12 answers, k = n / 2); scaled floats take a second.
    votes = ["a"] * 1000 + [None] * 30
    assert evaluation.maj_at_k(votes, [True] * 1030, 515) == pytest.approx(1.0, rel=1e-12)
    assert evaluation.maj_at_k(votes, [False] * 1030, 515) == 0.0
    rng = np.random.RandomState(0)
    votes = [None if rng.rand() < 0.1 else str(rng.randint(3)) for _ in range(1100)]
    correct = [v == "1" for v in votes]
    for k in (40, 100):
        assert evaluation.maj_at_k(votes, correct, k) == pytest.approx(
            evaluation.maj_at_k(votes, correct, k, exact=True), rel=1e-11
        )
    votes = [None if rng.rand() < 0.1 else str(rng.randint(12)) for _ in range(1030)]
    assert 0.0 < evaluation.maj_at_k(votes, [v == "1" for v in votes], 515) < 0.01
    # Scaled-float rounding put this probability 3.9e-13 over 1.
    votes = ["a"] * 350 + ["b"] * 340 + ["c"] * 341
    assert 0.99 < evaluation.maj_at_k(votes, [v == "a" for v in votes], 1030) <= 1.0


def _ans(x):
    return f"<think>t</think> <answer>{x}</answer>"


def test_vote_key():
    key = evaluation.vote_key
    chain = {"task": "world", "kind": "chain", "answer": "3"}
    count = {"task": "world", "kind": "countdown", "numbers": [3, 2, 4], "target": 20}
    assert key(_ans(" 3 "), chain) == "3"
    assert key("<answer>3", chain) is None  # unclosed
    assert key(_ans("(3+2)*4"), count) == key(_ans("4*(2+3)"), count) == "20"
    assert key(_ans("4*2+3"), count) == "11"
    assert key(_ans("5*4"), count) is None  # the numbers are not used as given
    plain = {"task": "countdown", "numbers": [3, 2, 4], "target": 20}
    assert key(_ans("(3 + 2) \\times 4"), plain) == "20"
    gsm = {"task": "gsm8k", "answer": "1000"}
    assert key(_ans("1,000"), gsm) == key(_ans("1000"), gsm) == key(_ans("$1000"), gsm) == "1000"
    assert key("The answer is 1,000.", gsm) == "1000"
    math = {"task": "math", "answer": "\\frac{1}{2}"}
    halves = ["\\frac12", "\\frac{1}{2}", "\\dfrac{1}{2}", "1/2", "0.5", "\\boxed{0.50}"]
    assert {key(_ans(h), math) for h in halves} == {"1/2"}
    assert key(_ans("-\\frac{3}{6}"), math) == "-1/2"
    assert key(_ans("025"), {"task": "aime"}) == key(_ans("25"), {"task": "aime"}) == "25"
    assert key(_ans("x = 5"), math) == "5"
    assert key(_ans("90^\\circ"), math) == "90"
    assert key(_ans("\\sqrt{2}"), math) == "\\sqrt{2}"
    assert key("no answer here", math) is None
    # Forms the grader accepts as equal vote as one (maj@k would split them).
    for forms in (
        ["(1,2)", "(1, 2)"],
        ["\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}2"],
        ["2\\sqrt{2}", "2\\sqrt2", "2 \\sqrt 2"],
        ["\\frac 59", "\\frac{5}{9}", "\\cfrac{5}{9}"],  # MATH-500 writes "\\frac 59"
        ["14{,}916", "14916"],
        ["1, -2", "-2, 1", "-2,1"],  # a list of solutions is a set
        ["\\text{(A)}", "A", "(A)"],
        ["\\pi/2", "\\frac{\\pi}{2}", "\\frac\\pi2"],
        ["1e3", "1000", "1,000"],
        # Mixed numbers (MATH-500 golds): the key was 14/5, a wrong answer's, and 9/5 split.
        ["1\\frac{4}{5}", "\\frac{9}{5}", "1.8", "9/5"],
        ["137 \\frac{1}{2}", "\\frac{275}{2}", "137.5"],
        ["-1\\frac{4}{5}", "-\\frac{9}{5}"],
        ["11,\\! 111,\\! 111,\\! 100", "11111111100", "11,111,111,100"],
        ["1000", "x = 1,000", "1,000"],  # the key of "x = 1,000" was "0,1", a list
        ["\\text{east}", "East", "\\text{EAST}"],  # MATH-500's gold; words in any case
    ):
        keys = {key(_ans(f), math) for f in forms}
        assert len(keys) == 1, (forms, keys)
        assert all(math_reward.is_equiv(f, forms[0]) for f in forms), forms
    assert key(_ans("81, 256"), math) != key(_ans("81256"), math)  # a list, not thousands
    assert key(_ans("(1, 2)"), math) != key(_ans("(2, 1)"), math)  # ordered pairs keep order
    # A list of pairs is a set of pairs: its commas inside a pair do not cut it (cut at every
    # comma and sorted, "(1,4), (3,2)" and "(1,2), (3,4)" were one key).
    assert key(_ans("(1,2), (3,4)"), math) == key(_ans("(3, 4), (1, 2)"), math)
    assert key(_ans("(1,2), (3,4)"), math) != key(_ans("(1,4), (3,2)"), math)
    assert key(_ans("2ab"), math) != key(_ans("2"), math)  # variables are not a unit
    assert key(_ans("1\\frac{4}{5}"), math) != key(_ans("\\frac{14}{5}"), math)
    general = world.dataset("general_test", n=1)[0]  # graded on phrase runs, not <answer>
    good = "Sure! The answer is " + general["answer"] + "."
    assert evaluation.vote_key(good, general) == general["answer"]
    code = {"task": "code"}
    assert key("```python\nreturn 1\n```", code) == "return 1"


def test_a_vote_that_raises_is_counted_not_fatal():
    # A hand-written general world record without its language crashed the whole evaluation in
    # vote_key (the grader's own errors were already caught); the record checks now refuse it.
    record = {"task": "world", "kind": "general", "answer": "加3", "prompt": "p"}
    row = evaluation.grade_problem(record, "P", ["加3", "x"], [2, 1], [False, False])
    assert row["votes"] == [None, None] and row["scores"] == [0.0, 0.0]
    assert len(row["grading_errors"]) == 4 and "language" in row["grading_errors"][0]


def test_grading_workers_score_as_this_process_does(shared_data):
    # Math-verify and code runs graded in worker processes (in parallel, and no sandbox forked
    # from the process holding the model): the same scores, and the same errors reported.
    from r1jax.data import sources
    from r1jax.rewards import tasks

    maths = sources.math_records(shared_data / "math500_test.jsonl")[:2]
    (code,) = tasks.humaneval_records(shared_data / "HumanEval.jsonl.gz")[:1]
    odd = {"prompt": "p", "answer": "1", "task": "no_such_task"}  # its grader raises
    boxed = lambda r: f"<think>t</think> <answer>\\boxed{{{r['answer']}}}</answer>"  # noqa: E731
    texts = [[boxed(maths[0]), boxed(maths[1])], [boxed(maths[1]), "<answer>1/0</answer>"]]
    texts += [[code["canonical_solution"], "    return None\n"], ["x", "y"]]
    greedy_texts = [boxed(maths[0]), "", code["canonical_solution"], "z"]
    records = [*maths, code, odd]
    sampled = (sum(texts, []), [5] * 8, [False] * 8)
    greedy = (greedy_texts, [5] * 4, [False] * 4)
    here = [
        evaluation.grade_problem(r, "P", t, [5, 5], [False, False], (g, 5, False))
        for r, t, g in zip(records, texts, greedy_texts, strict=True)
    ]
    assert [row["scores"] for row in here] == [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]
    assert [row["greedy"]["score"] for row in here] == [1.0, 0.0, 1.0, 0.0]
    assert here[3]["grading_errors"][0].startswith("ValueError: unknown task 'no_such_task'")
    with registry.RewardPool({"accuracy": 1.0}, num_workers=2, timeout_s=10.0) as pool:
        accuracy = evaluation._grade_accuracy(pool, records, sampled, greedy, 2)
    graded = [
        evaluation.grade_problem(r, "P", t, [5, 5], [False, False], (g, 5, False), accuracy=a)
        for r, t, g, a in zip(records, texts, greedy_texts, accuracy, strict=True)
    ]
    assert graded == here


def test_grade_problem_and_summarize():
    record = {"task": "world", "kind": "chain", "answer": "3", "prompt": "p"}
    texts = [_ans("3"), _ans("3"), "<answer>4</answer>", "<think>cut off"]
    row = evaluation.grade_problem(
        record, "P", texts, [5, 5, 3, 8], [False, False, False, True], (_ans("4"), 5, False)
    )
    assert row["scores"] == [1.0, 1.0, 0.0, 0.0]
    assert row["votes"] == ["3", "3", "4", None]
    assert row["format"] == [1.0, 1.0, 0.0, 0.0]
    assert row["reasoning"] == [True, True, False, True]
    assert row["greedy"]["score"] == 0.0 and row["kind"] == "chain"
    assert not row.pop("grading_errors")
    metrics, curves = evaluation.summarize([row], ks=(1, 2, 4))
    assert metrics["pass@1"] == 0.5 and metrics["pass@1_greedy"] == 0.0
    assert metrics["pass@2"] == pytest.approx(1 - 1 / 6) and metrics["pass@4"] == 1.0
    assert metrics["maj@4"] == 1.0 and metrics["maj@1"] == 0.5
    assert metrics["format_rate"] == 0.5 and metrics["reasoning_rate"] == 0.75
    assert metrics["mean_length"] == 5.25 and metrics["truncation_rate"] == 0.25
    assert curves["k"] == [1.0, 2.0, 4.0] and curves["pass@k"][0] == 0.5


def test_maj_at_k_counts_every_answer_the_grader_found_right_as_one_vote():
    # 9 right answers in three forms canonical_answer keeps apart, 5 of one wrong answer: the
    # right answer's votes were split and "1" won maj@16 (0.0).
    record = {"task": "math", "answer": "\\frac{\\sqrt{2}}{2}"}
    answers = ["\\frac{\\sqrt{2}}{2}"] * 4 + ["\\sqrt{2}/2"] * 3 + ["\\frac{1}{\\sqrt{2}}"] * 2
    answers += ["1"] * 5 + [None] * 2
    texts = [f"<think>w</think><answer>{a}</answer>" if a else "<think>w</think>" for a in answers]
    row = evaluation.grade_problem(record, "P", texts, [9] * 16, [False] * 16)
    assert sum(row["scores"]) == 9 and len(set(row["votes"]) - {None}) == 4
    metrics, _ = evaluation.summarize([row], ks=(1, 16))
    assert metrics["maj@16"] == 1.0
    assert metrics["maj@1"] == pytest.approx(9 / 16)
    # A key graded both ways stays apart (scored by its mean), as do wrong ones.
    votes, correct = ["a", "a", "b", "c", "c", None], [True, False, True, False, False, False]
    gold = evaluation._GOLD_VOTE
    assert evaluation.grouped_votes(votes, correct) == ["a", "a", gold, "c", "c", None]


def test_a_prompt_that_opened_the_thought_counts_it_as_reasoning():
    # An R1-distill template ends the prompt in <think>: the model writes the thought's rest.
    # Format honoured it; reasoning did not, so the language of those thoughts went unmeasured.
    record = {"task": "math", "answer": "3", "language": "zh", "prompt_opens_think": True}
    texts = ["我们先计算一下，结果是三。</think><answer>3</answer>", "</think><answer>3</answer>"]
    row = evaluation.grade_problem(record, "...<think>", texts, [20, 5], [False, False])
    assert row["scores"] == [1.0, 1.0] and row["format"] == [1.0, 0.0]
    assert row["reasoning"] == [True, False] and row["language"] == [1.0, None]
    metrics, _ = evaluation.summarize([row], ks=(1,))
    assert metrics["reasoning_rate"] == 0.5 and metrics["language_consistency"] == 1.0


# ---- evaluate on a tiny random model ----------------------------------------------------------


def _random_params(model_cfg):
    """Random params drawn on the host (no init program to compile): weights 4x the 0.02 init,
    so sampling is far from uniform and seeds matter; norm scales 1, biases 0."""
    rng = np.random.default_rng(0)
    abstract = jax.eval_shape(lambda k: tf.init_params(model_cfg, k), jax.random.key(0))

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        if "scale" in name or "bias" in name:
            return np.full(x.shape, "scale" in name, x.dtype)
        return (0.08 * rng.standard_normal(x.shape)).astype(x.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A SentencePiece tokenizer on the world corpus, a tiny random model, held-out records."""
    folder = tmp_path_factory.mktemp("tiny_run")
    corpus = world.pretrain_corpus(WORLD, 600, seed=0)
    tok = text.SentencePieceTokenizer.train(
        (r["text"] for r in corpus), folder / "tokenizer", vocab_size=400
    )
    model_cfg = config_lib.ModelConfig(
        vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
        d_ff=64, qkv_bias=True, max_seq_len=256,
    )  # fmt: skip
    params = _random_params(model_cfg)
    records = world.rl_prompts(WORLD, 6, seed=2, split="test")
    # Placed as the eval stage places them, so the stage test reuses the compiled programs.
    mesh = sharding.make_mesh({"data": -1, "num_devices": 1})
    params = evaluation.place_params(model_cfg, params, mesh)
    return folder, tok, model_cfg, params, records, mesh


def _world_prompt(record):
    return text.apply_template("world", record["prompt"])


def test_evaluation_samples_with_the_runs_mesh_rules(tiny, monkeypatch):
    # The KV cache is laid out by config.mesh.rules, as the params are (it used the defaults).
    _, tok, model_cfg, params, records, mesh = tiny
    rules = sharding.rules_from_config([["kv_heads", None]])
    seen, real = [], sampler.generate_padded
    monkeypatch.setattr(
        sampler, "generate_padded", lambda *a, **kw: seen.append(kw["rules"]) or real(*a, **kw)
    )
    evaluation.evaluate(
        model_cfg, params, tok, records[:2], prompt_fn=_world_prompt, cfg=SMALL, mesh=mesh,
        rules=rules, progress=False,
    )  # fmt: skip
    assert seen and all(r == rules for r in seen)


def test_a_prompt_that_opens_the_thought_is_graded_as_its_continuation(tiny, monkeypatch):
    # An R1-distill style template ends the prompt in <think>: the format reward must read the
    # completion as the thought's continuation without a prompt_opens_think in every record.
    _, tok, model_cfg, params, records, mesh = tiny
    seen, real = [], registry.format_strict
    monkeypatch.setattr(
        registry,
        "format_strict",
        lambda c, r: seen.append(r.get("prompt_opens_think")) or real(c, r),
    )
    evaluation.evaluate(
        model_cfg, params, tok, records[:2], prompt_fn=lambda r: _world_prompt(r) + " <think>\n",
        cfg=SMALL, mesh=mesh, progress=False,
    )  # fmt: skip
    assert seen and all(seen)
    assert registry.opened_thought({"prompt": "q"}, "q <think>\n") == {
        "prompt": "q",
        "prompt_opens_think": True,
    }
    explicit = {"prompt": "q", "prompt_opens_think": False}  # the record's own say stands
    assert registry.opened_thought(explicit, "q <think>") is explicit
    assert "prompt_opens_think" not in registry.opened_thought({"prompt": "q"}, "q")


def test_evaluate_end_to_end_is_deterministic(tiny):
    _, tok, model_cfg, params, records, mesh = tiny
    run = lambda cfg: evaluation.evaluate(
        model_cfg, params, tok, records, prompt_fn=_world_prompt, cfg=cfg, mesh=mesh, progress=False
    )
    result = run(SMALL)
    assert len(result.samples) == len(records)
    for row, record in zip(result.samples, records, strict=True):
        assert row["prompt"] == _world_prompt(record) and row["kind"] == record["kind"]
        for name in ("completions", "scores", "votes", "lengths", "format", "reasoning"):
            assert len(row[name]) == SMALL.num_samples
        assert all(1 <= n <= SMALL.max_new_tokens for n in row["lengths"])
        assert set(row["greedy"]) >= {"completion", "score", "vote", "length"}
    m = result.metrics
    assert m["num_problems"] == len(records)
    for name in ("pass@1", "pass@1_greedy", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4"):
        assert 0.0 <= m[name] <= 1.0
    for name in ("format_rate", "reasoning_rate", "truncation_rate"):
        assert 0.0 <= m[name] <= 1.0
    assert 1.0 <= m["mean_length"] <= SMALL.max_new_tokens
    assert "pass@8" not in m  # k above num_samples is dropped
    kinds = {r["kind"] for r in records}
    assert {f"{kind}/pass@1" for kind in kinds} <= set(m)
    assert sum(m[f"{kind}/num_problems"] for kind in kinds) == len(records)
    assert result.curves["k"] == [1.0, 2.0, 4.0] and len(result.curves["maj@k"]) == 3
    assert run(SMALL).samples == result.samples  # a fixed seed gives the same samples
    workers = evaluation.EvalConfig(**{**SMALL.__dict__, "grade_workers": 2})
    assert run(workers).samples == result.samples  # graded by worker processes alike
    other = run(evaluation.EvalConfig(**{**SMALL.__dict__, "seed": 4}))
    assert [r["completions"] for r in other.samples] != [r["completions"] for r in result.samples]
    assert [r["greedy"] for r in other.samples] == [r["greedy"] for r in result.samples]


def _save_run(folder, model_cfg, params, step=0):
    """An r1jax run folder: config.json (model shape, sft with the world template), a checkpoint
    (of `step`)."""
    cfg = configlib.load_config(os.path.join(REPO, "configs/sft.py:tiny"), data__template="world")
    configlib.save_resolved(cfg, folder, model_cfg)
    optimizer = optax.sgd(0.1)
    mesh = sharding.make_mesh({"data": -1, "num_devices": 1})
    shardings = trainer.model_shardings(model_cfg, optimizer, mesh, sharding.DEFAULT_RULES)
    params = jax.tree.map(jnp.copy, params)  # state_from_params donates its params
    state = trainer.state_from_params(params, shardings, optimizer, jax.random.key(0))
    state = state.replace(step=jnp.asarray(step, state.step.dtype))
    mngr = checkpoint.manager(folder / "checkpoints")
    checkpoint.save(mngr, state, force=True)
    mngr.wait_until_finished()


def test_a_checkpoint_step_folder_loads_that_step(tiny, tmp_path):
    # configs/eval.py names "one of its checkpoint folders" as a model to evaluate: RUN/
    # checkpoints/STEP stopped on a missing tokenizer, and given one, found no checkpoint in it.
    tiny_run, _, model_cfg, params, _, _ = tiny
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(tiny_run / "tokenizer.model", folder)
    _save_run(folder, model_cfg, params)  # step 0
    later = jax.tree.map(lambda x: x + 1.0, params)
    _save_run(folder, model_cfg, later, step=5)
    mesh = sharding.make_mesh({"data": -1, "num_devices": 1})
    spec = os.path.join(REPO, "configs/eval.py:world")
    for source, want in (("checkpoints/0", params), ("checkpoints/5", later), ("", later)):
        cfg = configlib.load_config(spec, model__init_from=str(folder / source))
        _, got, tok, run_cfg = evaluation.load_model(cfg, mesh)
        assert run_cfg and tok.vocab_size == model_cfg.vocab_size, source
        same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), got, want)
        assert all(jax.tree.leaves(same)), source
    # A training stage starts from that step too (its tokenizer: the run's).
    sft = os.path.join(REPO, "configs/sft.py:tiny")
    cfg = configlib.load_config(sft, model__init_from=str(folder / "checkpoints/0"))
    assert supervised._init_from_tokenizer_dir(cfg) == folder
    _, start = supervised.initial_params(cfg, model_cfg)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), start, jax.device_get(params))
    assert all(jax.tree.leaves(same))


def test_eval_stage_writes_results(tiny, tmp_path):
    folder, _, model_cfg, params, records, _ = tiny
    _save_run(folder, model_cfg, params)
    data = tmp_path / "held_out.jsonl"
    world.write_jsonl(data, records + records[:2])
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/eval.py:world"),
        model__init_from=str(folder),
        data__eval=str(data),
        eval__template="",  # the run's own template ("world", from its config.json)
        eval__num_samples=SMALL.num_samples,
        eval__max_new_tokens=SMALL.max_new_tokens,
        eval__prompts_per_batch=SMALL.prompts_per_batch,
        eval__max_problems=len(records),
        mesh__num_devices=1,
        seed=SMALL.seed,
    )
    metrics = evaluation.run(cfg, tmp_path / "eval")
    out = tmp_path / "eval"
    saved = json.loads((out / "eval.json").read_text())
    assert saved["metrics"]["num_problems"] == len(records) == metrics["num_problems"]
    assert saved["curves"]["k"] == [1.0, 2.0, 4.0]  # ks above num_samples dropped
    rows = [json.loads(line) for line in (out / "eval_samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [_world_prompt(r) for r in records]
    assert (out / "test_time_compute.png").stat().st_size > 0
    assert json.loads((out / "eval_config.json").read_text())["template"] == "world"
    # The library call on the same params samples the same completions as the stage.
    _, tok, *_ = tiny
    direct = evaluation.evaluate(
        model_cfg,
        params,
        tok,
        records,
        prompt_fn=_world_prompt,
        cfg=evaluation.EvalConfig(**{**SMALL.__dict__, "ks": (1, 2, 4, 8, 16)}),
        mesh=tiny[5],
        progress=False,
    )
    assert [r["completions"] for r in rows] == [r["completions"] for r in direct.samples]


def test_a_prompt_past_the_models_context_is_named_before_sampling(tiny, monkeypatch, caplog):
    # A stray huge prompt showed only as an out-of-memory error from the sampler (26 GB for
    # 5 000 words on the world model): the warning names it first.
    _, tok, model_cfg, params, records, mesh = tiny
    long = {**records[1], "prompt": "the " * 400}
    monkeypatch.setattr(evaluation, "sample_completions", _interrupt)
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(
            model_cfg, params, tok, [records[0], long], prompt_fn=_world_prompt, cfg=SMALL,
            mesh=mesh, progress=False,
        )  # fmt: skip
    warned = [r.getMessage() for r in caplog.records if "passes the model's" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("evaluate: problem 2's prompt is "), warned
    assert f"max_seq_len {model_cfg.max_seq_len} (1 of 2 prompts do)" in warned[0]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_killed_eval_stage_resumes_from_its_journal(tiny, tmp_path, monkeypatch):
    # A killed evaluation started again from problem 0 (hours for aime24 / math500 configs).
    folder, _, model_cfg, params, records, _ = tiny
    if not (folder / "checkpoints").is_dir():
        _save_run(folder, model_cfg, params)
    data = tmp_path / "held_out.jsonl"
    world.write_jsonl(data, records)
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/eval.py:world"),
        model__init_from=str(folder),
        data__eval=str(data),
        eval__template="world",
        eval__num_samples=SMALL.num_samples,
        eval__max_new_tokens=SMALL.max_new_tokens,
        eval__prompts_per_batch=2,  # 3 batches
        mesh__num_devices=1,
        seed=SMALL.seed,
    )
    full = evaluation.run(cfg, tmp_path / "full")
    calls, sample = [], evaluation.sample_completions

    def killed_at_the_fourth_call(*args, **kwargs):  # two batches: sampled and greedy each
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return sample(*args, **kwargs)

    monkeypatch.setattr(evaluation, "sample_completions", killed_at_the_fourth_call)
    with pytest.raises(KeyboardInterrupt):
        evaluation.run(cfg, tmp_path / "killed")
    journal = tmp_path / "killed" / evaluation.JOURNAL
    assert len(journal.read_text().splitlines()) == 3  # the header and two batches
    with open(journal, "a") as f:
        f.write('{"batch": 2, "rows": [{"pro')  # and a line the kill cut short
    calls.clear()
    resumed = evaluation.run(cfg, tmp_path / "killed")
    assert len(calls) == 2  # only the last batch sampled again
    assert resumed == full  # (the wall time is eval.json's "seconds", not a metric)
    for name in ("eval_samples.jsonl",):
        assert (tmp_path / "killed" / name).read_text() == (tmp_path / "full" / name).read_text()
    saved = [json.loads((tmp_path / d / "eval.json").read_text()) for d in ("killed", "full")]
    assert saved[0]["metrics"] == saved[1]["metrics"] and saved[0]["seconds"] > 0
    assert not journal.exists()
    # The journal holds samples, graded again on replay: other ks (what is computed from the
    # samples) replay it; a journal of other params (a run trained further) is not replayed.
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        evaluation.run(cfg, tmp_path / "other")
    calls.clear()
    fewer_ks = evaluation.run(configlib.updated(cfg, eval__ks=(1, 2)), tmp_path / "other")
    assert len(calls) == 2 and fewer_ks["pass@1"] == full["pass@1"] and "pass@4" not in fewer_ks
    fingerprint = evaluation.params_fingerprint(params)
    assert fingerprint == evaluation.params_fingerprint(jax.tree.map(jnp.copy, params))
    bumped = jax.tree.map(lambda x: x + 1e-3, params)
    assert evaluation.params_fingerprint(bumped) != fingerprint


def test_eval_stage_cli_names_missing_model(tmp_path):
    data = tmp_path / "held_out.jsonl"
    world.write_jsonl(data, world.rl_prompts(WORLD, 2, seed=2, split="test"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "r1jax.main",
            "--config=configs/eval.py:world",
            f"--workdir={tmp_path / 'eval'}",
            f"--config.data.eval={data}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode != 0 and "config.model.init_from" in out.stderr, out.stderr[-2000:]


def test_plot_compares_labels(tmp_path):
    curves = {"k": [1.0, 2.0, 4.0], "pass@k": [0.1, 0.2, 0.3], "maj@k": [0.1, 0.15, 0.2]}
    before = evaluation.EvalResult(metrics={}, curves=curves, samples=[])
    after = evaluation.EvalResult(metrics={}, curves=curves, samples=[])
    evaluation.plot_test_time_compute({"before": before, "after": after}, tmp_path / "ttc.png")
    assert (tmp_path / "ttc.png").stat().st_size > 0
    table = evaluation.format_table({"num_problems": 2.0, "pass@1": 0.5, "chain/pass@1": 1.0})
    assert "all" in table and "chain" in table


def test_prompts_per_call_fill_every_row_shard(shared_data):
    """A call's prompts are padded to the mesh's row shards (data x fsdp), a prompt's samples on
    one device: AIME's 1 prompt per call sampled padding on 7 of 8 devices."""
    devices = jax.devices()
    mesh8 = sharding.make_mesh({"data": -1})
    mesh4 = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, devices[:8])
    assert evaluation.prompts_per_call(1, None) == 1
    assert evaluation.prompts_per_call(1, mesh8) == len(devices) == 8
    assert evaluation.prompts_per_call(5, mesh4) == 8  # 4 row shards; tensor splits heads
    assert evaluation.prompts_per_call(32, mesh8) == 32
    cfg = configlib.load_config(os.path.join(REPO, "configs/eval.py:aime24"))
    assert cfg.eval.prompts_per_batch == 1
    assert evaluation.eval_config(cfg).prompts_per_batch == 1
    assert evaluation.eval_config(cfg, mesh8).prompts_per_batch == 8


def test_eval_config_validation_names_the_field(shared_data):
    spec = os.path.join(REPO, "configs/eval.py:gsm8k")
    configlib.validate(configlib.load_config(spec, model__init_from=REPO), num_devices=1)
    with pytest.raises(configlib.ConfigError, match=r"config\.model\.init_from"):
        configlib.validate(configlib.load_config(spec), num_devices=1)
    bad = [("ks", (0, 2)), ("top_p", 0.0), ("template", "r1"), ("temperature", 0)]
    bad += [("grade_workers", -1), ("grade_timeout_s", 0.0)]
    for field, value in bad:
        cfg = configlib.load_config(spec, model__init_from=REPO, **{f"eval__{field}": value})
        with pytest.raises(configlib.ConfigError, match=rf"config\.eval\.{field}"):
            configlib.validate(cfg, num_devices=1)


def test_the_humaneval_variant_grades_whole_functions_written_for_its_prompts(shared_data):
    spec = os.path.join(REPO, "configs/eval.py:humaneval")
    cfg = configlib.load_config(spec, model__init_from=REPO, eval__max_problems=3)
    configlib.validate(cfg, num_devices=1)
    records = evaluation.load_eval_records(cfg)
    assert [r["task_id"] for r in records] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    answers = [
        f"<think>t</think> <answer>```python\n{r['stub']}{r['canonical_solution']}```</answer>"
        for r in records
    ]
    texts = [[a, "<answer>oops</answer>"] for a in answers]
    sampled = (sum(texts, []), [9] * 6, [False] * 6)
    with registry.RewardPool({"accuracy": 1.0}, num_workers=2, timeout_s=10.0) as pool:
        accuracy = evaluation._grade_accuracy(pool, records, sampled, None, 2)
    rows = [
        evaluation.grade_problem(r, r["prompt"], t, [9, 3], [False] * 2, accuracy=a)
        for r, t, a in zip(records, texts, accuracy, strict=True)
    ]
    assert [row["scores"] for row in rows] == [[1.0, 0.0]] * 3
    assert all(not row["grading_errors"] for row in rows)


def test_the_humaneval_completion_variant_gives_base_models_the_raw_stub(shared_data):
    # HumanEval as base models are scored: the stub is the prompt, untemplated, and the
    # continuation is graded up to HumanEval's stop sequences.
    spec = os.path.join(REPO, "configs/eval.py:humaneval_completion")
    cfg = configlib.load_config(spec, model__init_from=REPO, eval__max_problems=2)
    configlib.validate(cfg, num_devices=1)
    records = evaluation.load_eval_records(cfg)
    template = evaluation.resolve_template(cfg, {"data": {"template": "r1_zero"}})
    assert template == "none"
    for record in records:
        assert "stub" not in record and record["prompt"].startswith(("from typing", "def"))
        assert text.apply_template(template, record["prompt"]) == record["prompt"]
    texts = [
        [r["canonical_solution"] + "\n\ndef check(candidate):\n    assert candidate(", "    pass"]
        for r in records
    ]
    sampled = (sum(texts, []), [9] * 4, [False] * 4)
    with registry.RewardPool({"accuracy": 1.0}, num_workers=1, timeout_s=10.0) as pool:
        accuracy = evaluation._grade_accuracy(pool, records, sampled, None, 2)
    assert [[score for score, _ in a] for a in accuracy] == [[1.0, 0.0]] * 2
    # maj@k votes on the graded body: other text after the stop sequences is the same vote.
    body = records[0]["canonical_solution"]
    votes = {evaluation.vote_key(body + tail, records[0]) for tail in ("\nprint(1)", "\nif x")}
    assert votes == {body.strip()}


def test_a_kill_while_writing_the_results_leaves_no_summary_beside_cut_samples(
    tmp_path, monkeypatch
):
    # A run that finds {name}.json skips the evaluation: the samples must be whole by then.
    result = evaluation.EvalResult({"pass@1": 0.5}, {}, [{"id": i} for i in range(3)])
    calls = {"n": 0}
    real_dumps = json.dumps

    def killed_at_the_second_row(obj, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the kill, mid-way through the samples
        return real_dumps(obj, **kw)

    monkeypatch.setattr(evaluation.json, "dumps", killed_at_the_second_row)
    with pytest.raises(KeyboardInterrupt):
        evaluation.write_result(result, tmp_path, "eval_before")
    assert not (tmp_path / "eval_before.json").exists()  # so the evaluation reruns
    monkeypatch.setattr(evaluation.json, "dumps", real_dumps)
    evaluation.write_result(result, tmp_path, "eval_before")
    lines = (tmp_path / "eval_before_samples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == result.samples
    assert json.loads((tmp_path / "eval_before.json").read_text())["metrics"] == {"pass@1": 0.5}


def test_stop_strings_end_samples_at_their_first_stop_and_keep_its_text(tiny):
    _, tok, model_cfg, params, records, mesh = tiny
    stops = ("e", "t ")  # frequent in the random model's text
    run = lambda cfg: evaluation.evaluate(
        model_cfg, params, tok, records[:3], prompt_fn=_world_prompt, cfg=cfg, mesh=mesh,
        progress=False,
    )  # fmt: skip
    free, ended = run(SMALL), run(dataclasses.replace(SMALL, stop_strings=stops))
    count = 0
    for a, b in zip(free.samples, ended.samples, strict=True):
        pairs = list(zip(a["completions"], b["completions"], a["lengths"], b["lengths"]))
        pairs.append((a["greedy"]["completion"], b["greedy"]["completion"], 0, 0))
        truncated = b["truncated"] + [b["greedy"]["truncated"]]
        for (whole, cut, n_whole, n_cut), was_cut in zip(pairs, truncated, strict=True):
            first = min((i + len(s) for s in stops if (i := whole.find(s)) >= 0), default=None)
            assert whole.startswith(cut), (whole, cut)
            if first is None:
                assert cut == whole
                continue
            count += 1
            # The text keeps the stop string (to the end of the token that completes it).
            assert len(cut) >= first
            assert not was_cut and n_cut <= n_whole
    assert count >= 6, count
    assert ended.metrics["truncation_rate"] < free.metrics["truncation_rate"]
