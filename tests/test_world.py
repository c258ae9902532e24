"""The built-in small world: determinism, splits, the grader, wording, the Countdown parser."""

import dataclasses
import json
import random
import re

import pytest

from r1jax import text
from r1jax.data import world

CFG = world.WorldConfig()
_CJK = re.compile(r"[\u4e00-\u9fff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


def _response(conversation: str) -> str:
    return conversation.split("Assistant: ", 1)[1]


@pytest.fixture(scope="module")
def corpus():
    return world.pretrain_corpus(CFG, 2000, seed=0)


@pytest.fixture(scope="module")
def problems():
    return world.rl_prompts(CFG, 400, seed=7, split="train")


def test_same_seed_same_data_other_seed_other_data(corpus):
    assert world.pretrain_corpus(CFG, 2000, seed=0) == corpus
    assert world.pretrain_corpus(CFG, 50, seed=1) != corpus[:50]
    assert world.pretrain_corpus(dataclasses.replace(CFG, seed=1), 50, seed=0) != corpus[:50]
    for split in ("train", "test"):
        assert world.rl_prompts(CFG, 30, seed=3, split=split) == world.rl_prompts(
            CFG, 30, seed=3, split=split
        )
    assert world.preference_pairs(CFG, 30, seed=2) == world.preference_pairs(CFG, 30, seed=2)
    a = world.make_problem(random.Random(5), CFG, task="countdown", language="en")
    assert a == world.make_problem(random.Random(5), CFG, task="countdown", language="en")


def test_problem_fields(problems):
    kinds = {r["kind"] for r in problems}
    assert kinds == {"chain", "countdown"}
    for r in problems:
        assert r["task"] == "world" and r["language"] in ("en", "zh")
        assert isinstance(r["answer"], str) and r["prompt"] and r["solution_steps"]
        if r["kind"] == "countdown":
            assert world.countdown_value(r["answer"], r["numbers"]) == r["target"]
        else:
            lo, hi = CFG.chain_steps
            assert lo <= len(r["solution_steps"]) <= hi
            assert sum(op[0] == "*" for op in r["ops"]) >= CFG.chain_min_multiplications


def test_test_split_is_disjoint_from_the_corpus_and_train_prompts(corpus):
    test = world.rl_prompts(CFG, 300, seed=1, split="test")
    train = world.rl_prompts(CFG, 300, seed=1, split="train")
    test_keys = {world.problem_key(r) for r in test}
    assert {r["kind"] for r in test} == {"chain", "countdown"}
    assert all(world.split_of(r, CFG) == "test" for r in test)
    assert test_keys.isdisjoint(row["problem"] for row in corpus)
    assert test_keys.isdisjoint(world.problem_key(r) for r in train)
    # The key ignores the language: the same problem in Chinese is the same (held-out) problem.
    rec = test[0]
    other = dict(rec, language="zh" if rec["language"] == "en" else "en")
    assert world.split_of(other, CFG) == "test"


def test_grader_passes_correct_solutions_and_fails_mistakes(problems):
    rng = random.Random(0)
    for r in problems:
        assert world.grade(world.worked_response(rng, CFG, r, mistake=False), r) == 1.0
        assert world.grade(world.direct_response(r, CFG), r) == 1.0
        assert world.grade(world.worked_response(rng, CFG, r, mistake=True), r) == 0.0
        steps = " ".join(r["solution_steps"])
        assert world.grade(text.format_reasoning(steps, r["answer"]), r) == 1.0


def test_grader_edge_cases():
    chain = world.make_problem(random.Random(1), CFG, task="chain", language="en")
    right, wrong = chain["answer"], str((int(chain["answer"]) + 1) % CFG.chain_modulus)
    assert world.grade(f"<answer> {right} </answer>", chain) == 1.0
    assert world.grade(f"<answer>{wrong}</answer> <answer>{right}</answer>", chain) == 1.0
    assert world.grade(f"<answer>{right}</answer> <answer>{wrong}</answer>", chain) == 0.0
    assert world.grade(f"<think>{right}</think>", chain) == 0.0
    assert world.grade(f"<answer>{right}", chain) == 0.0
    assert world.grade(f"<answer>{right}0</answer>", chain) == 0.0


def test_corpus_mix_reasoning_rate_and_lengths(corpus, tmp_path):
    styles = [row["style"] for row in corpus]
    reasoning = [world.is_reasoning(_response(row["text"])) for row in corpus]
    assert reasoning == [s != "direct" for s in styles]
    assert abs(sum(reasoning) / len(corpus) - CFG.worked_fraction) < 0.04
    mistakes = styles.count("mistake") / max(1, len(corpus) - styles.count("direct"))
    assert abs(mistakes - CFG.mistake_rate) < 0.05
    for row in corpus:
        assert "\n" not in row["text"]
        assert row["text"].startswith(world.TEMPLATE.split("{prompt}")[0])
    # Every conversation fits a 128-token context with BOS and EOS, under a tokenizer trained on
    # the corpus (the paper's 70-word template alone would take ~190 of those tokens).
    tok = text.SentencePieceTokenizer.train(
        (row["text"] for row in corpus), tmp_path / "tok", vocab_size=512
    )
    assert max(len(tok.encode(row["text"])) for row in corpus) + 2 <= 128


def test_is_reasoning():
    assert world.is_reasoning("<think>2 plus 3 gives 5.</think> <answer>5</answer>")
    assert world.is_reasoning(" <think>2 plus 3")  # cut off: still reasoning
    assert not world.is_reasoning("<think></think> <answer>5</answer>")
    assert not world.is_reasoning("<think> <answer>5</answer>")
    assert not world.is_reasoning("<answer>5</answer>")
    assert not world.is_reasoning("5 <think>x</think>")


def test_chinese_wording_and_language_mixing():
    rng = random.Random(3)
    no_mix = dataclasses.replace(CFG, mix_language_rate=0.0)
    for task in world.KINDS:
        zh = world.make_problem(rng, CFG, task=task, language="zh")
        en = world.make_problem(rng, CFG, task=task, language="en")
        assert _CJK.search(zh["prompt"]) and not _LATIN_WORD.search(zh["prompt"])
        assert _LATIN_WORD.search(en["prompt"]) and not _CJK.search(en["prompt"])
        think, _ = text.split_reasoning(world.worked_response(rng, no_mix, zh, mistake=False))
        assert _CJK.search(think) and not _LATIN_WORD.search(think)
    always_mix = dataclasses.replace(CFG, mix_language_rate=1.0, task_mix=(("chain", 1.0),))
    mixed = 0
    for _ in range(20):
        zh = world.make_problem(rng, always_mix, task="chain", language="zh")
        think, _ = text.split_reasoning(world.worked_response(rng, always_mix, zh, mistake=False))
        mixed += bool(_LATIN_WORD.search(think))
    assert mixed == 20


@pytest.mark.parametrize(
    "expression, value",
    [("(4*7)+5", 33), ("5+4*7", 33), (" 5 + ( 7 * 4 ) ", 33), ("((5))+(4*7)", 33)],
)
def test_countdown_parser_accepts(expression, value):
    assert world.countdown_value(expression, [4, 7, 5]) == value


def test_countdown_parser_precedence_and_associativity():
    assert world.countdown_value("9-5-3", [9, 5, 3]) == 1
    assert world.countdown_value("9-(5-3)", [9, 5, 3]) == 7
    assert world.countdown_value("2+3*4", [2, 3, 4]) == 14
    assert world.countdown_value("4*4", [4, 4]) == 16  # repeated numbers, each used once


@pytest.mark.parametrize(
    "expression",
    [
        "4*7+5+5",  # reuses 5
        "4*7+6",  # 6 is not given
        "4*7",  # 5 unused
        "47+5",  # digits glued into a new number
        "-4+7*5",  # unary minus
        "4*7+05",  # leading zero
        "4**7+5",
        "4*7/1+5",
        "(4*7+5",
        "4*7)+5",
        "4 7 5",
        "",
        "__import__('os').system('true')",
        "4*7+5 if 1 else 0",
        "4*7+5;",
        "0x4*7+5",
        "4e0*7+5",
        "\u0664*7+5",  # an Arabic-Indic four
        "(" * 40 + "4" + ")" * 40 + "*7+5",
        "+".join(["4"] * 200),
    ],
)
def test_countdown_parser_rejects(expression):
    assert world.countdown_value(expression, [4, 7, 5]) is None


def test_countdown_grade_uses_the_parser():
    record = {"kind": "countdown", "numbers": [4, 7, 5], "target": 33, "answer": "(4*7)+5"}
    assert world.grade("<answer>5+7*4</answer>", record) == 1.0
    assert world.grade("<answer>4*7+5+0</answer>", record) == 0.0
    assert world.grade("<answer>33</answer>", record) == 0.0


def test_vote_key_merges_equal_countdown_values():
    record = {"kind": "countdown", "numbers": [4, 7, 5], "target": 33, "answer": "(4*7)+5"}
    assert world.vote_key("<answer>5+7*4</answer>", record) == "33"
    assert world.vote_key("<answer>(4*7)+5</answer>", record) == "33"
    assert world.vote_key("<answer>4+7+5</answer>", record) == "16"
    assert world.vote_key("<answer>4+7</answer>", record) is None
    assert world.vote_key("no answer", record) is None
    chain = {"kind": "chain", "answer": "3"}
    assert world.vote_key("<think>x</think> <answer> 5 </answer>", chain) == "5"


def test_preference_pairs():
    pairs = world.preference_pairs(CFG, 60, seed=0)
    assert {p["aspect"] for p in pairs} == {"helpful", "harmless"}
    for p in pairs:
        assert p["prompt"] and p["chosen"] != p["rejected"]
        if p["language"] == "zh":
            assert _CJK.search(p["chosen"]) and _CJK.search(p["rejected"])


def test_write_corpus_round_trip(tmp_path):
    path = tmp_path / "sub" / "corpus.jsonl"
    assert world.write_corpus(path, CFG, 20, seed=4) == 20
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == world.pretrain_corpus(CFG, 20, seed=4)


def test_config_validation():
    with pytest.raises(ValueError, match="task_mix"):
        world.WorldConfig(task_mix=(("sudoku", 1.0),))
    with pytest.raises(ValueError, match="chain_modulus"):
        world.WorldConfig(chain_modulus=10)
    with pytest.raises(ValueError, match="language"):
        world.make_problem(random.Random(0), CFG, task="chain", language="fr")


def test_cli_files_equal_the_in_memory_datasets(tmp_path):
    """`python -m r1jax.data.world DIR` writes exactly what data.format=world generates."""
    world.main([str(tmp_path), "--corpus", "30", "--prompts", "20", "--test", "10", "--pairs", "5"])
    files = {"corpus": 30, "rl_train": 20, "rl_test": 10, "preference": 5}
    names = {"corpus": "corpus", "rl_train": "train", "rl_test": "test", "preference": "preference"}
    for file, n in files.items():
        rows = [json.loads(x) for x in (tmp_path / f"{file}.jsonl").read_text().splitlines()]
        assert rows == world.dataset(names[file], n=n)
    with pytest.raises(ValueError, match="unknown world dataset"):
        world.dataset("validation")


def test_world_template_is_a_text_template():
    prompt = text.apply_template("world", "Work mod 7. Start with 1, then plus 2. Result?")
    assert prompt == world.format_prompt("Work mod 7. Start with 1, then plus 2. Result?", CFG)
    assert prompt.endswith("Result? Assistant:")


def test_data_format_world_reads_a_dataset_name_or_a_file(tmp_path):
    """data.format=world: a world.DATASETS name is generated in memory; a JSONL file of world
    records (the CLI's output) is read; anything else stops at start-up naming the field."""
    import os

    from r1jax import configlib
    from r1jax.train import supervised

    repo = os.path.join(os.path.dirname(__file__), "..")
    path = tmp_path / "rl_test.jsonl"
    world.write_jsonl(path, world.dataset("test", n=7))
    for data_eval, n in (("test", 500), (str(path), 7)):
        cfg = configlib.load_config(
            os.path.join(repo, "configs/eval.py:world"), data__eval=data_eval
        )
        records = supervised.load_records(cfg, cfg.data.eval)
        assert len(records) == n and records[:7] == world.dataset("test", n=7)
    cfg = configlib.load_config(os.path.join(repo, "configs/eval.py:world"), data__eval="nope")
    with pytest.raises(configlib.ConfigError, match="data.eval: .*got 'nope'"):
        configlib.validate(cfg, num_devices=1)
