"""Tests for r1jax.rewards.tasks: Countdown, GSM8K, MATH, HumanEval and world graders."""

import json
import logging
import sys
import time

import pytest

from r1jax.data import sources
from r1jax.rewards import code, registry, tasks


def _countdown(answer, numbers, target):
    record = {"task": "countdown", "numbers": numbers, "target": target}
    return tasks.accuracy(f"<think>try</think><answer>{answer}</answer>", record)


@pytest.mark.parametrize(
    ("answer", "numbers", "target", "expected"),
    [
        ("7*3+5-2*1", [7, 3, 5, 2, 1], 24, 1.0),
        ("(7-3)*(5+1)", [7, 3, 5, 1], 24, 1.0),
        ("(7-3)*(5+1) = 24", [7, 3, 5, 1], 24, 1.0),
        ("(7 - 3) \\times (5 + 1)", [7, 3, 5, 1], 24, 1.0),
        ("(1+5)*(7-3)", [7, 3, 5, 1], 24, 1.0),
        ("8/(3-8/3)", [8, 3, 8, 3], 24, 1.0),  # needs exact fractions
        ("8/(3-8/3)", [8, 3, 8, 3], 23, 0.0),
        ("(7-3)*(5+1)", [7, 3, 5, 1, 9], 24, 0.0),  # 9 unused
        ("(7-3)*(5+1)+0", [7, 3, 5, 1], 24, 0.0),  # 0 not given
        ("(7-3)*(5+1)", [7, 3, 5], 24, 0.0),
        ("(7-3)*(6)", [7, 3, 5, 1], 24, 0.0),
        ("-(3-7)*(5+1)", [7, 3, 5, 1], 24, 0.0),  # unary minus not allowed
        ("(7-3)**(5+1)", [7, 3, 5, 1], 24, 0.0),
        ("int('24')", [24], 24, 0.0),
        ("__import__('os').system('true')", [1], 0, 0.0),
        ("24", [24], 24, 1.0),
        ("24.0", [24], 24, 0.0),  # a float literal is not one of the numbers
        ("1/(1-1)", [1, 1, 1], 0, 0.0),
        ("(" * 500 + "1" + ")" * 500, [1], 1, 0.0),
        ("1+" * 200 + "1", [1] * 201, 201, 0.0),  # longer than MAX_EXPRESSION_CHARS
    ],
)
def test_countdown(answer, numbers, target, expected):
    assert _countdown(answer, numbers, target) == expected


def test_countdown_without_answer_is_zero():
    record = {"task": "countdown", "numbers": [1, 2], "target": 3}
    assert tasks.countdown("I think 1+2", record) == 0.0
    assert tasks.countdown("The answer is 1+2.", record) == 1.0


def test_gsm8k_grader_on_raw_records(shared_data):
    lines = (shared_data / "gsm8k_train.jsonl").read_text().splitlines()[:50]
    for line in lines:
        row = json.loads(line)
        record = {"task": "gsm8k", "answer": row["answer"]}
        gold = tasks.gsm8k_gold(row["answer"])
        assert tasks.accuracy(f"<answer>{gold}</answer>", record) == 1.0
        assert tasks.accuracy(f"The answer is {int(float(gold)) + 1}.", record) == 0.0


def test_math_and_world_graders(shared_data):
    records = tasks.math_records(shared_data / "math500_test.jsonl")[:30]
    for record in records:
        assert tasks.accuracy(f"<answer>\\boxed{{{record['answer']}}}</answer>", record) == 1.0
    assert tasks.accuracy("<answer>not a number</answer>", records[0]) == 0.0
    world = {"task": "world", "answer": "17"}
    assert tasks.accuracy("<think>x</think><answer>17</answer>", world) == 1.0
    assert tasks.accuracy("<think>x</think><answer>017</answer>", world) == 0.0  # exact, as grade
    assert tasks.accuracy("<think>x</think><answer>18</answer>", world) == 0.0
    assert tasks.accuracy("<answer>1</answer>", {"task": "world", "kind": "chain", "answer": "1"})


def test_world_countdown_accepts_any_valid_expression():
    record = {"task": "world", "kind": "countdown", "numbers": [3, 2, 4], "target": 20}
    record["answer"] = "4*(2+3)"
    for answer, expected in [
        ("4*(2+3)", 1.0),
        ("(3+2)*4", 1.0),  # not the stored answer, still right
        ("(3+2)*4+0", 0.0),  # 0 is not one of the numbers
        ("5*4", 0.0),  # numbers not used as given
        ("4*2+3", 0.0),  # wrong value
    ]:
        assert tasks.accuracy(f"<think>t</think> <answer>{answer}</answer>", record) == expected
    assert tasks.accuracy("<answer>17</answer>", {"answer": "17"}) == 1.0  # default task is math


def test_unknown_task_raises():
    with pytest.raises(ValueError):
        tasks.accuracy("1", {"task": "nope", "answer": "1"})


def test_extract_code():
    assert tasks.extract_code("text\n```python\nx = 1\n```\nmore\n```py\nx = 2\n```") == "x = 2\n"
    assert tasks.extract_code("<think>a</think><answer>\nreturn 1\n</answer>") == "return 1"
    assert tasks.extract_code("<think>a</think>    return 1\n") == "    return 1\n"
    # Fence spellings models write; other languages' blocks are not the program.
    for fence in ("```python3", "```Python", "``` python", "```python  # solution", "```PY", "```"):
        assert tasks.extract_code(f"a\n{fence}\nx = 1\n```\nb") == "x = 1\n", fence
    assert tasks.extract_code("```python\r\nx = 1\r\ny = 2\r\n```") == "x = 1\ny = 2\n"
    assert tasks.extract_code("```python\nx = 1\n```\n```output\n1\n```") == "x = 1\n"
    # An output block before the program: skipped whole (its closing fence is no opening one).
    assert tasks.extract_code("```output\n1\n```\n```python\nx = 1\n```") == "x = 1\n"


def test_extract_code_is_linear_on_a_fence_followed_by_spaces():
    # The fence regex backtracked quadratically: 48k spaces took 21 s, before any sandbox.
    text = "```python\nx = 1\n```\n```" + " " * 200_000 + "x"
    start = time.monotonic()
    assert tasks.extract_code(text) == "x = 1\n"
    assert time.monotonic() - start < 0.5


def test_extract_code_is_linear_on_many_unclosed_answer_tags():
    text = "<answer>x = 1</answer>" + "<answer>" * 20_000
    start = time.monotonic()
    assert tasks.extract_code(text) == "x = 1"
    assert time.monotonic() - start < 0.5


def test_humaneval_rows_that_are_malformed_name_their_line_or_are_skipped(tmp_path):
    # Its own reader raised json's error with no file, or a bare KeyError.
    row = {
        "task_id": "t/0",
        "prompt": "def f():\n",
        "test": "def check(c): pass",
        "entry_point": "f",
        "canonical_solution": "    return 1\n",
    }
    lines = [json.dumps(row), '{"task_id": "t/1"', json.dumps({**row, "test": None})]
    path = tmp_path / "he.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(sources.DataError, match=r"he\.jsonl:2: malformed JSON"):
        tasks.humaneval_records(path)
    stats = {}
    assert len(tasks.humaneval_records(path, on_error="skip", stats=stats)) == 1
    assert (
        stats["skipped"] == 2
        and "he.jsonl:3: required field 'test' is missing" in stats["errors"][1]
    )
    bad_name = json.dumps({**row, "entry_point": "f()"})
    path.write_text(bad_name + "\n")
    with pytest.raises(
        sources.DataError, match=r"he\.jsonl:1: field 'entry_point' must be a Python"
    ):
        sources.humaneval_records(path)


def test_humaneval_instruction_records_grade_the_program_against_their_stub(shared_data):
    # data.format="humaneval": the model sees an instruction around the code stub and answers
    # with the whole function; the grader prepends the stub (kept as `stub`), not the
    # instruction text, which as the program's first lines scored every answer 0.
    records = sources.humaneval_records(shared_data / "HumanEval.jsonl.gz")
    plain = tasks.humaneval_records(shared_data / "HumanEval.jsonl.gz")
    assert len(records) == len(plain) == 164
    for record, raw in zip(records, plain, strict=True):
        assert record["stub"] == raw["prompt"] and "stub" not in raw
        assert f"```python\n{raw['prompt'].rstrip()}\n```" in record["prompt"]
        assert record["task"] == "code" and record["task_id"] == raw["task_id"]
    assert registry.check_records(["accuracy"], records, "he") == records
    # HumanEval/38's stub defines the helper its function calls (encode_cyclic).
    for record in (records[0], records[38]):
        whole = record["stub"] + record["canonical_solution"]
        answer = f"<think>Write it.</think> <answer>```python\n{whole}```</answer>"
        assert tasks.accuracy(answer, record) == 1.0
        assert tasks.accuracy(record["canonical_solution"], record) == 1.0  # a bare body
        assert tasks.accuracy("<answer>```python\nx = 1\n```</answer>", record) == 0.0
    with pytest.raises(sources.DataError, match=r"he: record 1: field 'stub' must be a non-blank"):
        registry.check_records(["accuracy"], [{**records[0], "stub": " "}], "he")


def test_a_completion_protocol_continuation_is_cut_at_humaneval_stop_sequences(shared_data):
    # A base model continuing the raw stub goes on past the body (a test function, prints, a
    # __main__ block) until its tokens run out, often mid-statement; HumanEval's harnesses stop
    # at "\ndef", "\nif", "\nprint", ... so only the body is graded.
    record = tasks.humaneval_records(shared_data / "HumanEval.jsonl.gz")[0]
    body = record["canonical_solution"]
    trailing = [
        "\n\ndef test_has_close_elements():\n    assert has_close_elements([1.0, 2.0",  # cut
        "\nif __name__ == '__main__':\n    raise SystemExit(has_close_elements(",
        "\nprint(has_close_elements([1.0, 2.0], 0.5)\n",
        "\n# Tests\nassert has_close_elements([1.0], 0.1) is True\n",
        "\n@decorate\ndef f(",
        "\nclass Solution:\n    pass\n1/0\n",
        "\n```\n\nThe function loops over the pairs.",
    ]
    for tail in trailing:
        assert tasks.continuation(body + tail).rstrip("\n") == body.rstrip("\n")
        assert tasks.accuracy(body + tail, record) == 1.0, tail
    assert tasks.continuation(body.replace("\n", "\r\n") + "\r\nprint(1") == body
    assert tasks.continuation(body) == body  # nothing to cut
    # Nested code (indented comments, an inner if) is the body's own and stays.
    nested = "    # look at each pair\n    if not numbers:\n        return False\n" + body
    assert tasks.continuation(nested + "\ndef g(") == nested
    assert tasks.accuracy(nested + "\ndef g(", record) == 1.0
    # Fenced or tagged answers and instruction records (with a `stub`) are read as before.
    fenced = f"```python\n{record['prompt']}{body}```\nprint(oops"
    assert tasks.accuracy(fenced, record) == 1.0
    wrapped = sources.humaneval_records(shared_data / "HumanEval.jsonl.gz")[0]
    assert tasks.humaneval_program(body + trailing[0], wrapped).endswith(trailing[0])
    assert tasks.accuracy("    return False\n\ndef x():\n    return True\n", record) == 0.0


def test_every_humaneval_canonical_solution_passes(shared_data):
    records = tasks.humaneval_records(shared_data / "HumanEval.jsonl.gz")
    assert len(records) == 164
    # Scored as RL scores them, by the reward pool's worker processes (two here, one a core):
    # sandboxes forked from this test process, which holds JAX's memory, started ~2x slower.
    with registry.RewardPool({"code": 1.0}, num_workers=2, timeout_s=10.0) as pool:
        total, _, metrics = pool.score([r["canonical_solution"] for r in records], records)
    failed = [r["task_id"] for r, v in zip(records, total, strict=True) if v != 1.0]
    assert failed == [] and metrics["rewards/crashes/code"] == 0


def test_humaneval_empty_wrong_and_whole_function_answers(shared_data):
    records = tasks.humaneval_records(shared_data / "HumanEval.jsonl.gz")[:3]
    whole = (
        "<think>ok</think>\n```python\nfrom typing import List\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return any(abs(a - b) < threshold\n"
        "               for i, a in enumerate(numbers) for b in numbers[i + 1:])\n```"
    )
    assert tasks.accuracy(whole, records[0]) == 1.0
    for record in records:
        assert tasks.accuracy("", record) == 0.0
        assert tasks.accuracy("    pass\n", record) == 0.0
        assert tasks.accuracy("    return []\n", record) == 0.0


def test_a_sandbox_without_a_verdict_raises_instead_of_scoring_a_failure(
    shared_data, monkeypatch, caplog
):
    # A harness that dies without its verdict is the sandbox's failure, not the program's: the
    # grader raises, so the reward pool and evaluation count and log it (it read as a 0).
    record = tasks.humaneval_records(shared_data / "HumanEval.jsonl.gz")[0]
    silent = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    monkeypatch.setattr(code, "_command", lambda mode, uid, limits: silent)
    completion = "    return False\n"
    with pytest.raises(code.SandboxError, match="no verdict"):
        tasks.accuracy(completion, record)
    with registry.RewardPool({"accuracy": 1.0}, num_workers=0, timeout_s=10.0) as pool:
        with caplog.at_level(logging.WARNING):
            _, values, metrics = pool.score([completion] * 2, [record] * 2)
    assert metrics["rewards/crashes/accuracy"] == 2.0 and values["accuracy"].tolist() == [0, 0]
    logged = [r.getMessage() for r in caplog.records if "raised and scored 0" in r.getMessage()]
    assert len(logged) == 1 and "SandboxError" in logged[0] and "no verdict" in logged[0]
