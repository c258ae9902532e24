"""Task rewards: Countdown, GSM8K, MATH, HumanEval and the built-in world, plus dataset loaders.

Every reward is `fn(completion: str, record: dict) -> float`; `accuracy` dispatches on
record["task"] (default "math").
"""

import ast
import fractions
import operator
import re

from r1jax.data import sources, world
from r1jax.rewards import code
from r1jax.rewards import math as math_reward

MAX_EXPRESSION_CHARS = 300
CODE_TIMEOUT_S = 10.0
_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
# The rest of a Python (or unlabelled) fence's line: ```python, ```Python3, ``` py,
# ```python  # comment, CRLF; not other languages' blocks (```output, ```text).
_PYTHON_FENCE = re.compile(r"[ \t]*(?:python3?|py)?(?:[ \t].*)?\r?", re.IGNORECASE)


def gsm8k_gold(answer_field: str) -> str:
    """The final number of a GSM8K worked solution ("... #### 1,234" -> "1234")."""
    return math_reward.normalize(answer_field.rsplit("####", 1)[-1])


def _evaluate(node: ast.AST, used: list[int]) -> fractions.Fraction:
    """Exact value of a + - * / expression over integer literals; anything else raises."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        return _BINARY_OPS[type(node.op)](left, right)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return fractions.Fraction(node.value)
    raise ValueError(f"not allowed in a Countdown expression: {type(node).__name__}")


def countdown_value(expression: str, numbers: list[int]) -> fractions.Fraction | None:
    """Value of the expression if it uses each given number exactly once, else None."""
    expression = expression.split("=")[0].replace("\\times", "*").replace("×", "*")
    expression = expression.replace("\\div", "/").replace("÷", "/").strip().strip("$")
    if not expression or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    used = []
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body, used)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None
    return value if sorted(used) == sorted(int(n) for n in numbers) else None


def countdown(completion: str, record: dict) -> float:
    """1.0 when the answer uses all record["numbers"] once each and equals record["target"]."""
    answer = math_reward.extract_answer(completion)
    if answer is None:
        return 0.0
    value = countdown_value(answer, record["numbers"])
    return float(value is not None and value == int(record["target"]))


def math_answer(completion: str, record: dict) -> float:
    """MATH / AIME / AMC: the extracted answer equals record["answer"]."""
    return math_reward.accuracy_reward(completion, str(record["answer"]))


def world_answer(completion: str, record: dict) -> float:
    """The built-in world (`world.grade`): a chain's exact answer, or any valid countdown."""
    # world.grade needs record["kind"]; a bare {"answer": ...} record is graded as a chain.
    return world.grade(completion, {"kind": "chain", **record})


def gsm8k(completion: str, record: dict) -> float:
    """GSM8K: accepts a raw record (worked solution ending in '#### n') or a bare answer."""
    gold = str(record["answer"])
    return math_reward.accuracy_reward(completion, gsm8k_gold(gold) if "####" in gold else gold)


def _python_blocks(text: str) -> list[str]:
    """The bodies of the text's Python fences, in order, by a scan linear in the text (a
    regex backtracked quadratically over a fence followed by spaces: 48k took 21 s, before
    any sandbox or deadline). Another language's block is skipped whole."""
    blocks, pos = [], 0
    while (start := text.find("```", pos)) >= 0:
        line_end = text.find("\n", start + 3)
        close = text.find("```", line_end + 1) if line_end >= 0 else -1
        if close < 0:
            break
        if _PYTHON_FENCE.fullmatch(text, start + 3, line_end):
            blocks.append(text[line_end + 1 : close])
        pos = close + 3
    return blocks


def extract_code(completion: str) -> str:
    """The program in a completion: the last ```python block, else the <answer> part, else all."""
    blocks = _python_blocks(completion)
    if blocks:
        return blocks[-1].replace("\r\n", "\n")
    tagged = math_reward.last_tagged(completion)
    if tagged is not None:
        return tagged.strip("\n")
    return completion.split("</think>", 1)[-1]


# HumanEval's stop sequences (Codex paper; bigcode-evaluation-harness adds "\n@" and "\n```"):
# a base model's continuation of a stub ends where a top-level statement, decorator, comment or
# fence starts. r1jax's sampler stops on them too (configs/eval.py:humaneval_completion sets them
# as eval.stop_strings); `continuation` cuts the text at the first.
COMPLETION_STOPS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```")


def continuation(completion: str) -> str:
    """A completion-protocol answer cut at the first of COMPLETION_STOPS (its function body; a
    base model goes on with tests, prints or other functions until it runs out of tokens)."""
    text = completion.replace("\r\n", "\n")
    cuts = [i for stop in COMPLETION_STOPS if (i := text.find(stop)) >= 0]
    return text[: min(cuts)] if cuts else text


def code_stub(record: dict) -> str:
    """The code a code record's completion continues: its `stub` (an instruction-wrapped
    record, data.format="humaneval"), else its `prompt` (HumanEval's completion protocol)."""
    return record["prompt"] if record.get("stub") is None else record["stub"]


def _is_raw(completion: str) -> bool:
    """No ```python block, <answer> part or </think>: the text continues the prompt as it is."""
    return not (
        _python_blocks(completion)
        or math_reward.last_tagged(completion) is not None
        or "</think>" in completion
    )


def code_answer(completion: str, record: dict) -> str:
    """The code a completion answers `record` with (what is graded and voted on): its
    `extract_code`, or under the completion protocol (no `stub`: the prompt is the code) a raw
    continuation cut at HumanEval's stop sequences (`continuation`)."""
    if record.get("stub") is None and _is_raw(completion):
        return continuation(completion)
    return extract_code(completion)


def humaneval_program(completion: str, record: dict) -> str:
    """Stub + completion: a whole function replaces the stub; a bare body continues it."""
    stub = code_stub(record)
    body = code_answer(completion, record)
    if re.search(rf"^def\s+{re.escape(record['entry_point'])}\s*\(", body, re.MULTILINE):
        return stub + "\n    pass\n\n" + body
    return stub + body


def humaneval(completion: str, record: dict) -> float:
    """1.0 when the program passes the record's HumanEval `check` in the sandbox.

    A run without the harness's verdict raises code.SandboxError (the callers score it 0 and
    count and log it): a broken sandbox must not read as programs that fail."""
    result = code.run_tests(
        humaneval_program(completion, record),
        record["test"],
        entry_point=record["entry_point"],
        prelude=code_stub(record),
        timeout_s=float(record.get("timeout_s", CODE_TIMEOUT_S)),
        memory_mb=int(record.get("memory_mb", 512)),
    )
    if result.status == "sandbox_error":
        raise code.SandboxError(result.detail)
    return float(result.passed)


TASKS = {
    "math": math_answer,
    "aime": math_answer,
    "amc": math_answer,
    "world": world_answer,
    "gsm8k": gsm8k,
    "countdown": countdown,
    "code": humaneval,
    "humaneval": humaneval,
}


# The record fields each task's reward reads.
TASK_FIELDS = {
    "math": ("answer",),
    "aime": ("answer",),
    "amc": ("answer",),
    "world": ("answer",),
    "gsm8k": ("answer",),
    "countdown": ("numbers", "target"),
    "code": ("prompt", "test", "entry_point"),
    "humaneval": ("prompt", "test", "entry_point"),
}


def task_fields(task: str, record: dict) -> tuple[str, ...]:
    """The fields `record` needs to be graded as `task` (a world countdown needs its numbers)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    if task == "world" and record.get("kind") == "countdown":
        return ("numbers", "target")
    if task == "world" and record.get("kind") == "general":  # graded in the other language
        return ("answer", "language")
    if TASKS[task] is humaneval and record.get("stub") is not None:  # the prompt is free text
        return ("stub", "test", "entry_point")
    return TASK_FIELDS[task]


def time_needed(task: str, record: dict) -> float:
    """Seconds grading `record` as `task` may take by its own limits (0: none of its own). A
    code run may use its timeout, the sandbox's start-up margin and its clean-up; a reward pool
    waits at least that long before it counts a timeout (and kills the worker)."""
    if TASKS.get(task) is humaneval:
        timeout_s = float(record.get("timeout_s", CODE_TIMEOUT_S))
        return timeout_s + code.STARTUP_MARGIN_S + code.CLEANUP_S
    return 0.0


def accuracy(completion: str, record: dict) -> float:
    """Task accuracy, dispatched on record["task"] (default "math")."""
    task = record.get("task", "math")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    return TASKS[task](completion, record)


def gsm8k_records(path) -> list[dict]:
    """GSM8K jsonl rows as reward records (prompt, answer = final number, task); see sources."""
    return sources.gsm8k_records(path)


def math_records(path) -> list[dict]:
    """MATH-style jsonl rows (problem, answer) as reward records; see sources."""
    return sources.math_records(path)


def humaneval_records(path, *, on_error: str = "raise", stats: dict | None = None) -> list[dict]:
    """HumanEval rows as completion-protocol code records (`prompt` is the stub a completion
    continues; task="code"; data.format="humaneval_completion"); see sources.humaneval_records,
    which with instruction=True gives the records data.format="humaneval" reads (an instruction
    around the stub). A malformed row raises sources.DataError naming file:line or
    (on_error="skip") is skipped and counted."""
    return sources.humaneval_records(path, on_error=on_error, stats=stats, instruction=False)
