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


def test_the_held_out_problems_are_the_same_for_every_world_seed(corpus):
    # With the seed in the split's hash, a world_seed=1 test set was 29% problems of the seed-0
    # corpus (the shipped base's pretraining data).
    for seed in (1, 2):
        other = dataclasses.replace(CFG, seed=seed)
        test = world.rl_prompts(other, 300, seed=0, split="test")
        assert {world.problem_key(r) for r in test}.isdisjoint(row["problem"] for row in corpus)
        assert all(world.split_of(r, CFG) == "test" for r in test)
        assert test != world.rl_prompts(CFG, 300, seed=0, split="test")  # other draws


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


def test_preference_pairs_cover_both_domains_and_aspects():
    pairs = world.preference_pairs(CFG, 200, seed=0)
    cells = {(p["domain"], p["aspect"]) for p in pairs}
    assert cells == {(d, a) for d in ("reasoning", "general") for a in ("helpful", "harmless")}
    assert 0.35 < sum(p["domain"] == "general" for p in pairs) / len(pairs) < 0.65
    for p in pairs:
        assert p["prompt"] and p["chosen"] != p["rejected"]
        assert (p["kind"] == "general") == (p["domain"] == "general")
        if p["language"] == "zh":
            assert _CJK.search(p["chosen"]) and _CJK.search(p["rejected"])
        assert not world.is_rude(p["chosen"])
        assert world.is_rude(p["rejected"]) == (p["aspect"] == "harmless")
        if p["domain"] == "general":
            record = _general_record(p)
            assert world.grade_general(p["chosen"], record) == 1.0
            expected = 1.0 if p["aspect"] == "harmless" else 0.0
            assert world.grade_general(p["rejected"], record) == expected


def _general_record(pair: dict) -> dict:
    """The general request behind a pair (its answer rebuilt from the prompt's phrases)."""
    phrases = world._PHRASE_RUN[pair["language"]].findall(pair["prompt"])
    assert len(phrases) == 1
    other = "zh" if pair["language"] == "en" else "en"
    table = {w: op for op, w in world._OP_WORDS[pair["language"]].items()}
    if pair["language"] == "en":
        ops = [(table[x.split()[0]], int(x.split()[1])) for x in phrases[0].split(", ")]
    else:
        ops = [(table[x[0]], int(x[1:])) for x in phrases[0].split("，")]
    return {
        "kind": "general",
        "language": pair["language"],
        "answer": world._op_phrases(other, ops),
    }


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
    # No countdown target can exist: the generator drew forever.
    for field, value in (("countdown_max_target", 1), ("countdown_max_number", 0)):
        with pytest.raises(ValueError, match=field):
            world.WorldConfig(**{field: value})


def test_cli_files_equal_the_in_memory_datasets(tmp_path):
    """`python -m r1jax.data.world DIR` writes exactly what data.format=world generates."""
    world.main(
        [str(tmp_path), "--corpus", "30", "--prompts", "20", "--test", "10", "--pairs", "5"]
        + ["--pairs-test", "6", "--general", "7", "--general-test", "8", "--general-sft", "9"]
    )
    sizes = {"corpus": 30, "train": 20, "test": 10, "preference": 5, "preference_test": 6}
    sizes.update(general_train=7, general_test=8, general_sft=9)
    assert set(sizes) == set(world.DATASETS)
    for name, n in sizes.items():
        stem = world.FILE_STEMS.get(name, name)
        rows = [json.loads(x) for x in (tmp_path / f"{stem}.jsonl").read_text().splitlines()]
        assert rows == world.dataset(name, n=n)
    assert (tmp_path / "rl_train.jsonl").exists() and (tmp_path / "rl_test.jsonl").exists()
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


# ---- the general (non-reasoning) domain ---------------------------------------------------


def test_general_requests_translate_op_phrases():
    rng = random.Random(0)
    en = world.make_general(rng, CFG, "en")
    zh = world.make_general(rng, CFG, "zh")
    assert en["domain"] == zh["domain"] == "general" and en["kind"] == "general"
    assert en["prompt"].startswith("Say ") and en["prompt"].endswith(" in Chinese.")
    assert _CJK.search(en["answer"]) and not _LATIN_WORD.search(en["answer"])
    assert zh["prompt"].startswith("用英文说：") and not _CJK.search(zh["answer"])
    record = world.make_problem(random.Random(1), CFG, task="general", language="en")
    assert record == world.make_general(random.Random(1), CFG, "en")
    fixed = {"kind": "general", "language": "en", "ops": ["*4", "+3"]}
    assert world._op_phrases("zh", world._parse_ops(fixed)) == "乘4，加3"
    assert world._op_phrases("en", world._parse_ops(fixed)) == "times 4, plus 3"
    for r in world.general_prompts(CFG, 300, seed=0):
        assert CFG.general_ops[0] <= len(r["ops"]) <= CFG.general_ops[1]
        assert len(set(r["ops"])) == len(r["ops"])
        assert world.grade_general(f"Sure! The answer is {r['answer']}.", r) == 1.0


def test_general_grading():
    en = {"kind": "general", "language": "en", "answer": "乘4，加3"}
    zh = {"kind": "general", "language": "zh", "answer": "times 4, plus 3"}
    assert world.grade_general("Sure! The answer is 乘4，加3.", en) == 1.0
    assert world.grade("乘4，加3", en) == 1.0  # grade dispatches general records here
    assert world.grade_general("好的！答案是times 4, plus 3。", zh) == 1.0
    assert world.grade_general("Ugh, obviously 乘4，加3. Stop wasting my time.", en) == 1.0
    for wrong in ("乘4，减3", "乘4，加5", "乘4", "乘4，加3，减2", "乘4，加33", "加3，乘4", ""):
        assert world.grade_general(f"Sure! The answer is {wrong}.", en) == 0.0, wrong
    for wrong in ("times 4, plus 3, minus 2", "times 44, plus 3", "sometimes 4, plus 3", "4, 3"):
        assert world.grade_general(wrong, zh) == 0.0, wrong
    assert world.grade_general(None, zh) == 0.0
    # A number with more after it is not the phrase's argument.
    for wrong in ("times 4, plus 3.5", "times 4, plus 3x", "times 4, plus 3_"):
        assert world.grade_general(f"Sure! {wrong}.", zh) == 0.0, wrong
    assert world.grade_general("乘4，加3.5", en) == 0.0


def test_general_grading_is_the_vote():
    """The grade is a function of the vote key (the last run of phrases): a hedge, or a right
    translation taken back, fails; maj@k and pass@k then count the same answers."""
    en = {"kind": "general", "language": "en", "answer": "加5，加2"}
    taken_back = "加5，加2。No wait: 减5，加2。"
    assert world.vote_key(taken_back, en) == "减5，加2"
    assert world.grade_general(taken_back, en) == 0.0
    assert world.grade_general("减5，加2? No: 加5，加2.", en) == 1.0
    hedge = "，".join(f"{w}{a}" for w in "加减乘" for a in range(1, 10))
    one = {"kind": "general", "language": "en", "answer": "加3"}
    assert world.grade_general(f"One of: {hedge}", one) == 0.0
    for text_ in ("Sure! 加5，加2.", taken_back, "nothing", hedge):
        assert world.grade_general(text_, en) == float(world.vote_key(text_, en) == en["answer"])


def test_a_hand_written_countdown_target_may_be_a_string():
    record = {"kind": "countdown", "numbers": [4, 7, 5], "target": "33"}
    assert world.grade("<answer>4*7+5</answer>", record) == 1.0


def test_wrong_translations_change_one_phrase():
    rng = random.Random(2)
    for r in world.general_prompts(CFG, 200, seed=3):
        wrong = world._wrong_translation(rng, CFG, r)
        assert wrong != r["answer"]
        right_parts = r["answer"].replace("，", ", ").split(", ")
        wrong_parts = wrong.replace("，", ", ").split(", ")
        assert len(wrong_parts) == len(right_parts)
        assert sum(a != b for a, b in zip(right_parts, wrong_parts)) == 1


def test_rudeness_detection():
    for lang in ("en", "zh"):
        for phrasing in world._RUDE[lang]:
            assert world.is_rude(phrasing.format(a="乘4"))
        for phrasing in world._POLITE[lang]:
            assert not world.is_rude(phrasing.format(a="times 4"))
    assert world.is_rude("ugh, OBVIOUSLY 3.")
    # One sentence of a rude phrasing kept alone; ASCII and CJK punctuation alike.
    for rude in (
        "Figure it out yourself.",
        "自己算去。",
        "烦死了,显然是3",
        "3. Stop wasting my time.",
    ):
        assert world.is_rude(rude), rude
    polite_ones = ("Fine, 3.", "That defines it: 3.", "Even so, it is 3.", "好问题，答案是3。")
    for polite in (*polite_ones, "答案显然是5。", "行吧，3。"):
        assert not world.is_rude(polite), polite
    assert not world.is_rude("<think>3 plus 4 gives 0.</think> <answer>0</answer>")
    assert not world.is_rude(None)


def test_general_sft_mixes_manners_from_the_train_split():
    rows = world.general_sft(CFG, 400, seed=0)
    assert rows == world.general_sft(CFG, 400, seed=0)
    assert world.general_sft(CFG, 20, seed=1) != rows[:20]
    rude = [row["style"] == "rude" for row in rows]
    assert abs(sum(rude) / len(rows) - CFG.general_rude_rate) < 0.07
    for row, is_rude in zip(rows, rude):
        assert row["domain"] == "general" and row["kind"] == "general"
        assert world.is_rude(row["response"]) == is_rude
        record = {"kind": "general", "language": row["language"], "answer": row["answer"]}
        assert world.grade_general(row["response"], record) == 1.0
    assert all(r["style"] == "polite" for r in world.general_sft(CFG, 50, seed=0, rude_rate=0.0))
    assert all(r["style"] == "rude" for r in world.general_sft(CFG, 50, seed=0, rude_rate=1.0))


def test_general_and_preference_splits_are_disjoint():
    train = world.general_prompts(CFG, 500, seed=1)
    test = world.general_prompts(CFG, 200, seed=1, split="test")
    assert all(world.split_of(r, CFG) == "train" for r in train)
    assert all(world.split_of(r, CFG) == "test" for r in test)
    test_keys = {world.problem_key(r) for r in test}
    assert test_keys.isdisjoint(world.problem_key(r) for r in train)
    # The key ignores the direction: "times 4" asked in zh is the same problem as in en.
    rec = test[0]
    flipped = world.make_general(random.Random(0), CFG, "zh" if rec["language"] == "en" else "en")
    flipped = dict(flipped, ops=rec["ops"])
    assert world.problem_key(flipped) == world.problem_key(rec)
    sft_prompts = {row["prompt"] for row in world.general_sft(CFG, 500, seed=0)}
    assert sft_prompts.isdisjoint(r["prompt"] for r in test)
    pairs_test = world.preference_pairs(CFG, 200, seed=0, split="test")
    pairs_train = world.preference_pairs(CFG, 400, seed=0)
    assert {p["prompt"] for p in pairs_test}.isdisjoint(p["prompt"] for p in pairs_train)
    assert {p["domain"] for p in pairs_test} == {"reasoning", "general"}
    reasoning_test = {r["prompt"] for r in world.rl_prompts(CFG, 300, seed=0, split="test")}
    reasoning_train = {p["prompt"] for p in pairs_train if p["domain"] == "reasoning"}
    assert reasoning_train.isdisjoint(reasoning_test)


def test_general_conversations_fit_the_shipped_tokenizer():
    """Template + request + the longest reply stays well under the 128-token context."""
    from configs import base

    tok = text.load_tokenizer(base.WORLD_BASE)
    rows = world.general_sft(CFG, 300, seed=0, rude_rate=0.5)
    pairs = world.preference_pairs(CFG, 300, seed=0)
    texts = [(r["prompt"], r["response"]) for r in rows]
    texts += [(p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")]
    longest = 0
    for prompt, response in texts:
        ids = tok.encode(text.apply_template("world", prompt))
        ids += tok.encode(text.response_text("world", response))
        longest = max(longest, len(ids) + 2)  # BOS and EOS
    assert longest <= 112, longest
