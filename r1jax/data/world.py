"""The built-in small reasoning world: seeded problems, a pretraining corpus, RL prompts, a grader.

Two task kinds, both worded in English or Chinese:
- "chain": start from a digit and apply 4-5 operations mod 7 (plus, minus, times; at least two
  multiplications). Every operation is a bijection, so the answer depends on every step and the
  simple shortcuts guess 15-21% (chance 14%); each worked step is one fact of a 7 x 17 table,
  written right after the state it reads. See configs/world_notes.md for the measurements.
- "countdown": reach a target with given numbers, each used exactly once, with + - * and
  parentheses. Worked solutions may try a wrong combination first, then the right one.

A third, non-reasoning kind ("general", domain "general") asks for a translation of operation
phrases between the two languages ("Say times 4, plus 3 in Chinese." -> "乘4，加3"); a chat
model answers it directly, politely or rudely, rightly or wrongly. It feeds general SFT data and
preference pairs for the reward-model stage (helpful: right vs wrong; harmless: polite vs rude).

The corpus is a conversation in a short R1-Zero template (`TEMPLATE`): a share of rows are worked
(`<think>steps</think> <answer>x</answer>`, some with one wrong step), the rest answer directly
(`<answer>x</answer>`). A response *reasons* when it opens with a non-empty think block
(`is_reasoning`); the reasoning rate is the share of sampled responses that do.
"""

import argparse
import collections
import dataclasses
import hashlib
import json
import pathlib
import random
import re

from r1jax import files, text

KINDS = ("chain", "countdown")  # reasoning kinds (WorldConfig.task_mix)
GENERAL_KIND = "general"  # the non-reasoning kind: translate operation phrases
LANGUAGES = ("en", "zh")
DIRECT_FORMATS = ("answer_only", "empty_think")

# The R1-Zero structure in 20 words (text.WORLD_TEMPLATE, template name "world").
TEMPLATE = text.WORLD_TEMPLATE
TEMPLATES = {"short": TEMPLATE, "r1_zero": text.R1_ZERO_TEMPLATE}

# Forcing prefixes that measure accuracy when reasoning vs answering directly (notes: do this
# before RL; gain ~ (1 - reasoning rate) x (acc. reasoning - acc. direct)).
FORCE_REASONING_PREFIX = text.THINK_OPEN
FORCE_DIRECT_PREFIX = text.ANSWER_OPEN

CHAIN_MODULI = (5, 7)  # prime (every "times k" is a bijection) and every state one digit
MAX_EXPRESSION_CHARS = 200
MAX_NESTING = 16

_OP_WORDS = {
    "en": {"+": "plus", "-": "minus", "*": "times"},
    "zh": {"+": "加", "-": "减", "*": "乘"},
}
_WORDING = {
    "en": {
        "chain": "Work mod {m}. Start with {start}, then {ops}. Result?",
        "countdown": "Use {numbers} once each with + - * to make {target}.",
        "op": "{word} {arg}",
        "op_sep": ", ",
        "num_sep": ", ",
        "step": "{a} {word} {b} gives {c}.",
        "hit": "Got {target}.",
        "miss": "Not {target}.",
        "general": "Say {ops} in Chinese.",
    },
    "zh": {
        "chain": "按模{m}计算。从{start}开始，然后{ops}。结果是多少？",
        "countdown": "用{numbers}各一次，用+ - *凑出{target}。",
        "op": "{word}{arg}",
        "op_sep": "，",
        "num_sep": "、",
        "step": "{a}{word}{b}得{c}。",
        "hit": "正好是{target}。",
        "miss": "不是{target}。",
        "general": "用英文说：{ops}。",
    },
}
_POLITE = {
    "en": ("Sure! The answer is {a}.", "Happy to help: it is {a}.", "Good question. It is {a}."),
    "zh": ("好的！答案是{a}。", "很乐意帮忙：结果是{a}。", "好问题，答案是{a}。"),
}
_RUDE = {
    "en": (
        "Ugh, obviously {a}. Stop wasting my time.",
        "{a}. Even a child knows that.",
        "Figure it out yourself. Fine, {a}.",
    ),
    "zh": ("烦死了，显然是{a}。别浪费我时间。", "{a}。小孩都知道。", "自己算去。行吧，{a}。"),
}
_EXPR_TOKEN = re.compile(r"\s*(?:([0-9]+)|([-+*()]))")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Knobs of the world; the defaults keep every conversation under 128 tokens."""

    seed: int = 0  # root seed; corpus, prompts and pairs derive their streams from it
    task_mix: tuple[tuple[str, float], ...] = (("chain", 0.75), ("countdown", 0.25))
    languages: tuple[str, ...] = LANGUAGES  # question languages, drawn uniformly
    chain_modulus: int = 7  # one of CHAIN_MODULI: states are the digits 0..m-1
    chain_steps: tuple[int, int] = (4, 5)  # inclusive range of operations per chain
    chain_min_multiplications: int = 2  # fewer lets "ignore the x ops" guess more answers
    countdown_size: tuple[int, int] = (3, 3)  # inclusive range of how many numbers are given
    countdown_max_number: int = 9  # numbers are drawn from 1..max
    countdown_max_target: int = 99  # targets are kept in 2..max
    countdown_retry_rate: float = 0.5  # worked countdowns that try a wrong combination first
    worked_fraction: float = 0.3  # corpus rows with worked steps (the rest answer directly)
    mistake_rate: float = 0.1  # worked rows with one wrong step (so a wrong final answer)
    mix_language_rate: float = 0.1  # worked rows whose steps switch language part-way
    # answer_only: "<answer>x</answer>"; empty_think: "<think></think> <answer>x</answer>"
    direct_format: str = "answer_only"
    test_fraction: float = 0.1  # share of problems (by content hash) held out for the test split
    template: str = "short"  # a key of TEMPLATES
    general_ops: tuple[int, int] = (1, 3)  # inclusive range of op phrases in a general request
    general_max_arg: int = 9  # general requests use numbers 1..max
    general_rude_rate: float = 0.3  # general SFT rows answered rudely (RL with an RM removes it)

    def __post_init__(self):
        kinds = [k for k, _ in self.task_mix]
        if not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"WorldConfig.task_mix: kinds must be in {KINDS}, got {kinds}")
        if any(lang not in LANGUAGES for lang in self.languages) or not self.languages:
            raise ValueError(f"WorldConfig.languages: expected a subset of {LANGUAGES}")
        if self.direct_format not in DIRECT_FORMATS:
            raise ValueError(f"WorldConfig.direct_format: expected one of {DIRECT_FORMATS}")
        if self.template not in TEMPLATES:
            raise ValueError(f"WorldConfig.template: expected one of {tuple(TEMPLATES)}")
        if not 1 <= self.chain_steps[0] <= self.chain_steps[1] <= 12:
            raise ValueError("WorldConfig.chain_steps: need 1 <= low <= high <= 12")
        if self.chain_modulus not in CHAIN_MODULI:
            raise ValueError(f"WorldConfig.chain_modulus: expected one of {CHAIN_MODULI}")
        m = self.chain_modulus
        if self.chain_steps[1] > 3 * m - 4:  # distinct (op, arg) pairs: 2(m-1) + (m-2)
            raise ValueError(f"WorldConfig.chain_steps: at most {3 * m - 4} steps mod {m}")
        if not 0 <= self.chain_min_multiplications <= min(m - 2, self.chain_steps[0]):
            raise ValueError("WorldConfig.chain_min_multiplications: need 0..min(m-2, low)")
        if not 2 <= self.countdown_size[0] <= self.countdown_size[1]:
            raise ValueError("WorldConfig.countdown_size: need 2 <= low <= high")
        if self.countdown_max_number < 1 or self.countdown_max_target < 2:
            # No target in 2..max_target can be made: the generator would draw forever.
            raise ValueError(
                "WorldConfig.countdown_max_number must be >= 1 and countdown_max_target >= 2"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError("WorldConfig.test_fraction: need 0 < fraction < 1")
        if not 1 <= self.general_ops[0] <= self.general_ops[1] <= 3 * self.general_max_arg:
            raise ValueError("WorldConfig.general_ops: need 1 <= low <= high <= 3 x max_arg")
        if not 1 <= self.general_max_arg <= 9:
            raise ValueError("WorldConfig.general_max_arg: need 1..9 (one digit)")
        if not 0.0 <= self.general_rude_rate <= 1.0:
            raise ValueError("WorldConfig.general_rude_rate: need 0 <= rate <= 1")


# ---- chain ----------------------------------------------------------------------------------


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _step_text(language: str, a: int, op: str, b: int, c: int) -> str:
    w = _WORDING[language]
    return w["step"].format(a=a, word=_OP_WORDS[language][op], b=b, c=c)


def _chain_states(start, ops, modulus, *, wrong_at: int = -1, wrong_value: int = 0) -> list[int]:
    """States after each op (mod m); `wrong_at` replaces one result, later steps follow it."""
    states = [start]
    for i, (op, arg) in enumerate(ops):
        value = _apply(op, states[-1], arg) % modulus
        states.append(wrong_value if i == wrong_at else value)
    return states


def _chain_ops(rng: random.Random, n: int, m: int, min_mults: int) -> list[tuple[str, int]]:
    """`n` distinct (op, arg) pairs, op types uniform, at least `min_mults` multiplications."""
    # Without multiplications the chain is a signed digit sum, which a tiny model learns to
    # answer directly (notes: 58% direct on six-digit sums); with none, "ignore the x ops" and
    # "read x as negation" guess 29% and 36% mod 7, with two 19.5% and 21% (chance 14%).
    # Distinct pairs keep "which op comes next" unambiguous when a step copies it from the
    # question.
    args = {"+": range(1, m), "-": range(1, m), "*": range(2, m)}
    while True:
        ops = [(op, rng.choice(args[op])) for op in rng.choices("+-*", k=n)]
        if len(set(ops)) == n and sum(op == "*" for op, _ in ops) >= min_mults:
            return ops


def _make_chain(rng: random.Random, cfg: WorldConfig, language: str) -> dict:
    m = cfg.chain_modulus
    ops = _chain_ops(rng, rng.randint(*cfg.chain_steps), m, cfg.chain_min_multiplications)
    start = rng.randrange(m)
    w = _WORDING[language]
    op_text = w["op_sep"].join(
        w["op"].format(word=_OP_WORDS[language][op], arg=arg) for op, arg in ops
    )
    states = _chain_states(start, ops, m)
    steps = [
        _step_text(language, states[i], op, arg, states[i + 1]) for i, (op, arg) in enumerate(ops)
    ]
    return {
        "prompt": w["chain"].format(m=m, start=start, ops=op_text),
        "answer": str(states[-1]),
        "kind": "chain",
        "modulus": m,
        "start": start,
        "ops": [f"{op}{arg}" for op, arg in ops],
        "solution_steps": steps,
    }


def _parse_ops(record: dict) -> list[tuple[str, int]]:
    return [(s[0], int(s[1:])) for s in record["ops"]]


# ---- countdown ------------------------------------------------------------------------------


def _combine(rng: random.Random, pool: list[tuple[int, str]]):
    """Merges two random pool items with a random op: (new pool, (a, op, b, c)) or None."""
    i, j = rng.sample(range(len(pool)), 2)
    (a, ea), (b, eb) = pool[i], pool[j]
    op = rng.choice("+-*")
    if op == "-" and a < b:
        (a, ea), (b, eb) = (b, eb), (a, ea)
    c = _apply(op, a, b)
    if c <= 0:  # Countdown keeps intermediate results positive
        return None
    wrap = lambda e: e if e.isdigit() else f"({e})"
    rest = [item for k, item in enumerate(pool) if k not in (i, j)]
    return rest + [(c, f"{wrap(ea)}{op}{wrap(eb)}")], (a, op, b, c)


def _countdown_attempt(rng: random.Random, numbers: list[int]):
    """A random full combination of `numbers`: (value, expression, steps) or None."""
    pool = [(n, str(n)) for n in numbers]
    steps = []
    while len(pool) > 1:
        merged = _combine(rng, pool)
        if merged is None:
            return None
        pool, step = merged
        steps.append(step)
    return pool[0][0], pool[0][1], steps


def _countdown_step_texts(language: str, steps) -> list[str]:
    return [_step_text(language, a, op, b, c) for a, op, b, c in steps]


def _make_countdown(rng: random.Random, cfg: WorldConfig, language: str) -> dict:
    size = rng.randint(*cfg.countdown_size)
    while True:
        numbers = [rng.randint(1, cfg.countdown_max_number) for _ in range(size)]
        attempt = _countdown_attempt(rng, numbers)
        if attempt is None:
            continue
        target, expression, steps = attempt
        if 2 <= target <= cfg.countdown_max_target and target not in numbers:
            break
    w = _WORDING[language]
    return {
        "prompt": w["countdown"].format(
            numbers=w["num_sep"].join(map(str, numbers)), target=target
        ),
        "answer": expression,
        "kind": "countdown",
        "numbers": numbers,
        "target": target,
        "solution_steps": _countdown_step_texts(language, steps),
        "steps": [list(s) for s in steps],
    }


# ---- general (non-reasoning) requests -------------------------------------------------------


def _other_language(language: str) -> str:
    return "zh" if language == "en" else "en"


def _op_phrases(language: str, ops: list[tuple[str, int]]) -> str:
    """'times 4, plus 3' / '乘4，加3'."""
    w = _WORDING[language]
    return w["op_sep"].join(
        w["op"].format(word=_OP_WORDS[language][op], arg=arg) for op, arg in ops
    )


def _general_ops(rng: random.Random, cfg: WorldConfig) -> list[tuple[str, int]]:
    """1-3 distinct (op, arg) pairs, ops uniform, args 1..general_max_arg."""
    n = rng.randint(*cfg.general_ops)
    while True:
        ops = [(op, rng.randint(1, cfg.general_max_arg)) for op in rng.choices("+-*", k=n)]
        if len(set(ops)) == n:
            return ops


def make_general(rng: random.Random, cfg: WorldConfig, language: str) -> dict:
    """A translation request in `language`; the answer is the phrases in the other language."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    ops = _general_ops(rng, cfg)
    return {
        "task": "world",
        "domain": "general",
        "kind": GENERAL_KIND,
        "language": language,
        "prompt": _WORDING[language]["general"].format(ops=_op_phrases(language, ops)),
        "answer": _op_phrases(_other_language(language), ops),
        "ops": [f"{op}{arg}" for op, arg in ops],
    }


def _wrong_translation(rng: random.Random, cfg: WorldConfig, record: dict) -> str:
    """The translation with one op word or one number changed (so never the right one)."""
    ops = _parse_ops(record)
    i = rng.randrange(len(ops))
    op, arg = ops[i]
    if rng.random() < 0.5 or cfg.general_max_arg == 1:
        ops[i] = (rng.choice([o for o in "+-*" if o != op]), arg)
    else:
        ops[i] = (op, rng.choice([a for a in range(1, cfg.general_max_arg + 1) if a != arg]))
    return _op_phrases(_other_language(record["language"]), ops)


def make_problem(rng: random.Random, cfg: WorldConfig, *, task: str, language: str) -> dict:
    """One problem of kind `task` ("chain" | "countdown" | "general") in `language` (en | zh)."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if task == "chain":
        record = _make_chain(rng, cfg, language)
    elif task == "countdown":
        record = _make_countdown(rng, cfg, language)
    elif task == GENERAL_KIND:
        return make_general(rng, cfg, language)
    else:
        raise ValueError(f"task must be one of {KINDS + (GENERAL_KIND,)}, got {task!r}")
    return {"task": "world", "language": language, **record}


# ---- countdown verification (no eval) ---------------------------------------------------------


class _Reject(Exception):
    """The expression is not a valid Countdown answer."""


def _tokenize(expression: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(expression.rstrip()):
        match = _EXPR_TOKEN.match(expression, pos)
        if match is None:
            raise _Reject(f"unexpected character at {pos}")
        tokens.append(match.group(1) or match.group(2))
        pos = match.end()
    return tokens


def _parse(tokens: list[str], pos: int, depth: int, used: list[int]) -> tuple[int, int]:
    """(value, next position) of expr := term (+|- term)*; term := factor (* factor)*."""

    def factor(pos: int) -> tuple[int, int]:  # factor := int | ( expr )
        if pos >= len(tokens):
            raise _Reject("expression ends early")
        tok = tokens[pos]
        if tok == "(":
            if depth >= MAX_NESTING:
                raise _Reject("too deeply nested")
            value, pos = _parse(tokens, pos + 1, depth + 1, used)
            if pos >= len(tokens) or tokens[pos] != ")":
                raise _Reject("unbalanced parenthesis")
            return value, pos + 1
        if not tok.isdigit() or (len(tok) > 1 and tok[0] == "0"):
            raise _Reject(f"expected a number, got {tok!r}")
        used.append(int(tok))
        return int(tok), pos + 1

    def term(pos: int) -> tuple[int, int]:
        value, pos = factor(pos)
        while pos < len(tokens) and tokens[pos] == "*":
            rhs, pos = factor(pos + 1)
            value *= rhs
        return value, pos

    value, pos = term(pos)
    while pos < len(tokens) and tokens[pos] in "+-":
        op = tokens[pos]
        rhs, pos = term(pos + 1)
        value = value + rhs if op == "+" else value - rhs
    return value, pos


def countdown_value(expression: str, numbers) -> int | None:
    """Value of a + - * ( ) expression using each of `numbers` exactly once; None if invalid."""
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tokens = _tokenize(expression)
        used = []
        value, pos = _parse(tokens, 0, 0, used)
    except _Reject:
        return None
    if pos != len(tokens) or collections.Counter(used) != collections.Counter(numbers):
        return None
    return value


# ---- responses, grading ---------------------------------------------------------------------


def final_answer(completion: str) -> str | None:
    """Content of the last closed <answer> block, stripped; None when there is none."""
    found = text.last_tagged(completion) if isinstance(completion, str) else None
    return found.strip() if found is not None else None


def grade(completion: str, record: dict) -> float:
    """1.0 iff the completion's <answer> is right for the world record (exact check), else 0.0.

    General records (no <answer> tags) are graded by grade_general.
    """
    if record["kind"] == GENERAL_KIND:
        return grade_general(completion, record)
    answer = final_answer(completion)
    if answer is None:
        return 0.0
    if record["kind"] == "countdown":
        return float(countdown_value(answer, record["numbers"]) == int(record["target"]))
    return float(answer == str(record["answer"]))


def vote_key(completion: str, record: dict) -> str | None:
    """What maj@k votes on: the answer, a countdown expression's value, or a general (translation)
    problem's last run of op phrases in the target language (None if unusable)."""
    if record.get("kind") == "general":  # graded on runs of phrases, not on an <answer> tag
        runs = _PHRASE_RUN[_other_language(record["language"])].findall(completion or "")
        return runs[-1] if runs else None
    # Different expressions with the same value are one answer; the target is never consulted.
    answer = final_answer(completion)
    if answer is None or record["kind"] != "countdown":
        return answer
    value = countdown_value(answer, record["numbers"])
    return None if value is None else str(value)


# A maximal run of op phrases in one language: "times 4, plus 3" / "乘4，加3". A number ends a
# phrase only where no digit, letter or decimal part follows ("plus 3.5" and "plus 3x" are
# not "plus 3").
_ARG = r"\d+(?![0-9A-Za-z_]|\.\d)"
_EN_PHRASE = rf"(?:plus|minus|times) {_ARG}"
_PHRASE_RUN = {
    "en": re.compile(rf"(?<![A-Za-z]){_EN_PHRASE}(?:, {_EN_PHRASE})*"),
    "zh": re.compile(rf"[加减乘]{_ARG}(?:，[加减乘]{_ARG})*"),
}


def grade_general(completion: str, record: dict) -> float:
    """1.0 iff the response's last run of op phrases is the right translation (what `vote_key`
    votes on: a hedge listing several translations, or a right one then a wrong one, fails).

    "times 4, plus 3" passes in "Sure! The answer is times 4, plus 3."; "times 4, plus 3, minus 2"
    and "times 45, plus 3" do not (a run of phrases must equal the answer exactly).
    """
    if not isinstance(completion, str):
        return 0.0
    return float(vote_key(completion, record) == record["answer"])


_CJK_PUNCTUATION = str.maketrans("，。！？", ",.!?")


def _rude_fragments():
    """The fixed words of every rude phrasing: the parts around "{a}", and each of their
    sentences long enough not to occur in a polite answer (2+ English words, 3+ Chinese
    characters), so one kept alone ("Figure it out yourself.") still counts. Not clauses: the
    lead-in "显然是" ("obviously it is") alone is polite."""
    for language, phrasings in _RUDE.items():
        for phrasing in phrasings:
            for part in phrasing.translate(_CJK_PUNCTUATION).lower().split("{a}"):
                pieces = [part.strip(" .,!?"), *re.split(r"[.!?]", part)]
                for piece in (p.strip(" .,!?") for p in pieces):
                    if len(piece.split()) >= 2 if language == "en" else len(piece) >= 3:
                        yield piece


# English fragments match whole words only ("fine" is not in "define").
_RUDE_PATTERN = re.compile(
    "|".join(
        rf"(?<![a-z]){re.escape(f)}(?![a-z])" if f.isascii() else re.escape(f)
        for f in sorted(set(_rude_fragments()), key=len, reverse=True)
    )
)


def is_rude(completion: str) -> bool:
    """True iff the response uses one of the world's rude phrasings, or one of their sentences
    (either language; ASCII and CJK punctuation read alike)."""
    if not isinstance(completion, str):
        return False
    return bool(_RUDE_PATTERN.search(completion.translate(_CJK_PUNCTUATION).lower()))


def is_reasoning(completion: str) -> bool:
    """True iff the response opens with <think> and writes something before </think>/<answer>."""
    body = completion.lstrip()
    if not body.startswith(text.THINK_OPEN):
        return False
    body = body[len(text.THINK_OPEN) :]
    ends = [i for i in (body.find(text.THINK_CLOSE), body.find(text.ANSWER_OPEN)) if i >= 0]
    return bool(body[: min(ends, default=len(body))].strip())


def format_prompt(question: str, cfg: WorldConfig) -> str:
    """The question inside the world's template (ends with 'Assistant:')."""
    return TEMPLATES[cfg.template].format(prompt=question.strip())


def direct_response(record: dict, cfg: WorldConfig) -> str:
    """The answer alone, in the configured direct format."""
    answer = f"{text.ANSWER_OPEN}{record['answer']}{text.ANSWER_CLOSE}"
    if cfg.direct_format == "empty_think":
        return f"{text.THINK_OPEN}{text.THINK_CLOSE} {answer}"
    return answer


def _languages_per_step(rng: random.Random, cfg: WorldConfig, language: str, n: int) -> list[str]:
    """The prompt's language, or (mix_language_rate) a switch to the other one part-way."""
    if n == 0 or rng.random() >= cfg.mix_language_rate:
        return [language] * n
    other = "zh" if language == "en" else "en"
    switch = rng.randrange(n)
    return [language] * switch + [other] * (n - switch)


def _chain_worked(rng, cfg, record, mistake: bool) -> tuple[list[str], str]:
    ops, m = _parse_ops(record), record["modulus"]
    wrong_at, wrong_value = -1, 0
    if mistake:
        # Every op is a bijection, so one wrong state always makes the final answer wrong.
        wrong_at = rng.randrange(len(ops))
        right = _chain_states(record["start"], ops, m)[wrong_at + 1]
        wrong_value = rng.choice([d for d in range(m) if d != right])
    states = _chain_states(record["start"], ops, m, wrong_at=wrong_at, wrong_value=wrong_value)
    langs = _languages_per_step(rng, cfg, record["language"], len(ops))
    steps = [
        _step_text(langs[i], states[i], op, arg, states[i + 1]) for i, (op, arg) in enumerate(ops)
    ]
    return steps, str(states[-1])


def _countdown_failed_attempt(rng, record):
    """A full combination of the numbers that misses the target, or None (after a few tries)."""
    for _ in range(20):
        attempt = _countdown_attempt(rng, record["numbers"])
        if attempt is not None and attempt[0] != record["target"]:
            return attempt
    return None


def _countdown_worked(rng, cfg, record, mistake: bool) -> tuple[list[str], str]:
    target = record["target"]
    langs = _languages_per_step(rng, cfg, record["language"], 2)
    lines = []
    failed = _countdown_failed_attempt(rng, record)
    if failed is not None and (mistake or rng.random() < cfg.countdown_retry_rate):
        steps = [tuple(s) for s in failed[2]]
        if mistake:
            # A slip in the last step claims the target: the answer is the wrong expression.
            steps[-1] = (*steps[-1][:3], target)
            lines += _countdown_step_texts(langs[0], steps)
            return lines + [_WORDING[langs[0]]["hit"].format(target=target)], failed[1]
        lines += _countdown_step_texts(langs[0], steps)
        lines.append(_WORDING[langs[0]]["miss"].format(target=target))
    lines += _countdown_step_texts(langs[1], [tuple(s) for s in record["steps"]])
    lines.append(_WORDING[langs[1]]["hit"].format(target=target))
    if mistake:  # no missing combination exists (never seen at the default sizes)
        return lines, f"{record['answer']}+{target}"
    return lines, record["answer"]


def worked_response(rng: random.Random, cfg: WorldConfig, record: dict, *, mistake: bool) -> str:
    """'<think>steps</think> <answer>x</answer>'; with `mistake`, one wrong step and answer."""
    worked = _chain_worked if record["kind"] == "chain" else _countdown_worked
    steps, answer = worked(rng, cfg, record, mistake)
    return text.format_reasoning(" ".join(steps), answer)


# ---- splits and datasets ---------------------------------------------------------------------


def problem_key(record: dict) -> str:
    """Language-free identity of a problem (the same question in en and zh is one problem)."""
    if record["kind"] == "chain":
        return f"chain|{record['modulus']}|{record['start']}|{','.join(record['ops'])}"
    if record["kind"] == GENERAL_KIND:  # either direction: a test answer is never a train prompt
        return f"general|{','.join(record['ops'])}"
    return f"countdown|{sorted(record['numbers'])}|{record['target']}"


# The split's hash salt, the same for every cfg.seed (it is the one seed 0 used, so the shipped
# base model's splits are unchanged): with the seed in the hash, a world_seed=1 test set was 29%
# problems of the seed-0 pretraining corpus the base had learned.
_SPLIT_SALT = "0"


def split_of(record: dict, cfg: WorldConfig) -> str:
    """'test' for a fixed hash-chosen share of problems (cfg.test_fraction), else 'train'. The
    seed picks which problems are drawn, never which are held out."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}|{problem_key(record)}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2.0**64
    return "test" if bucket < cfg.test_fraction else "train"


def _stream(cfg: WorldConfig, seed: int, name: str) -> random.Random:
    # String seeds hash with SHA-512 inside `random`: stable across runs and PYTHONHASHSEED.
    return random.Random(f"r1jax-world|{cfg.seed}|{seed}|{name}")


def sample_problem(rng: random.Random, cfg: WorldConfig, *, split: str) -> dict:
    """A problem of a kind drawn from cfg.task_mix, in a random language, from `split`."""
    kinds, weights = zip(*cfg.task_mix)
    while True:
        task = rng.choices(kinds, weights=weights)[0]
        record = make_problem(rng, cfg, task=task, language=rng.choice(cfg.languages))
        if split_of(record, cfg) == split:
            return record


def pretrain_corpus(cfg: WorldConfig, n: int, *, seed: int) -> list[dict]:
    """`n` conversations from the train split: worked (some with a mistake) or direct answers."""
    rng = _stream(cfg, seed, "corpus")
    rows = []
    for _ in range(n):
        record = sample_problem(rng, cfg, split="train")
        style = "direct"
        if rng.random() < cfg.worked_fraction:
            style = "mistake" if rng.random() < cfg.mistake_rate else "worked"
        if style == "direct":
            response = direct_response(record, cfg)
        else:
            response = worked_response(rng, cfg, record, mistake=style == "mistake")
        conversation = f"{format_prompt(record['prompt'], cfg)} {response}"
        rows.append(
            {
                "text": conversation,
                "kind": record["kind"],
                "language": record["language"],
                "style": style,
                "problem": problem_key(record),
            }
        )
    return rows


def rl_prompts(cfg: WorldConfig, n: int, *, seed: int, split: str = "train") -> list[dict]:
    """`n` problem records from `split`; 'test' never shares a problem with the corpus."""
    _check_split(split)
    rng = _stream(cfg, seed, f"rl-{split}")
    return [sample_problem(rng, cfg, split=split) for _ in range(n)]


def _wrong_answer(rng: random.Random, record: dict) -> str:
    if record["kind"] == "chain":
        wrong = [d for d in range(record["modulus"]) if str(d) != record["answer"]]
        return str(rng.choice(wrong))
    failed = _countdown_failed_attempt(rng, record)
    return failed[1] if failed is not None else f"{record['answer']}+1"


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def sample_general(rng: random.Random, cfg: WorldConfig, *, split: str) -> dict:
    """A general (translation) request in a random language, from `split`."""
    while True:
        record = make_general(rng, cfg, rng.choice(cfg.languages))
        if split_of(record, cfg) == split:
            return record


def general_prompts(cfg: WorldConfig, n: int, *, seed: int, split: str = "train") -> list[dict]:
    """`n` general request records from `split` (answers are the right translations)."""
    _check_split(split)
    rng = _stream(cfg, seed, f"general-{split}")
    return [sample_general(rng, cfg, split=split) for _ in range(n)]


def general_response(rng: random.Random, record: dict, *, style: str, answer: str | None = None):
    """A direct reply to a general request: 'polite' or 'rude', around `answer` (default right)."""
    phrasings = {"polite": _POLITE, "rude": _RUDE}[style][record["language"]]
    return rng.choice(phrasings).format(a=record["answer"] if answer is None else answer)


def general_sft(
    cfg: WorldConfig, n: int, *, seed: int, rude_rate: float | None = None
) -> list[dict]:
    """`n` SFT rows of train-split requests, right but of mixed manners (as web SFT data is).

    rude_rate (default cfg.general_rude_rate) is the share of rude replies; the all-domain RL
    stage, rewarded by a harmlessness reward model, is what should remove them.
    """
    rate = cfg.general_rude_rate if rude_rate is None else rude_rate
    rng = _stream(cfg, seed, "general-sft")
    rows = []
    for _ in range(n):
        record = sample_general(rng, cfg, split="train")
        style = "rude" if rng.random() < rate else "polite"
        rows.append(
            {
                "prompt": record["prompt"],
                "response": general_response(rng, record, style=style),
                "answer": record["answer"],
                "domain": "general",
                "kind": GENERAL_KIND,
                "language": record["language"],
                "style": style,
            }
        )
    return rows


def _pair(record: dict, chosen: str, rejected: str, aspect: str, domain: str) -> dict:
    return {
        "prompt": record["prompt"],
        "chosen": chosen,
        "rejected": rejected,
        "aspect": aspect,
        "domain": domain,
        "language": record["language"],
        "kind": record["kind"],
    }


def _reasoning_pair(rng: random.Random, cfg: WorldConfig, split: str) -> dict:
    """Chosen: polite right answer; rejected: polite wrong (helpful) or rude right (harmless)."""
    record = sample_problem(rng, cfg, split=split)
    lang, right = record["language"], record["answer"]
    chosen = rng.choice(_POLITE[lang]).format(a=right)
    aspect = rng.choice(("helpful", "harmless"))
    if aspect == "helpful":
        rejected = rng.choice(_POLITE[lang]).format(a=_wrong_answer(rng, record))
    else:
        rejected = rng.choice(_RUDE[lang]).format(a=right)
    return _pair(record, chosen, rejected, aspect, "reasoning")


def _general_pair(rng: random.Random, cfg: WorldConfig, split: str) -> dict:
    """Chosen: polite right translation; rejected: polite wrong one or rude right one."""
    record = sample_general(rng, cfg, split=split)
    chosen = general_response(rng, record, style="polite")
    aspect = rng.choice(("helpful", "harmless"))
    if aspect == "helpful":
        wrong = _wrong_translation(rng, cfg, record)
        rejected = general_response(rng, record, style="polite", answer=wrong)
    else:
        rejected = general_response(rng, record, style="rude")
    return _pair(record, chosen, rejected, aspect, "general")


def preference_pairs(
    cfg: WorldConfig, n: int, *, seed: int, split: str = "train", general_fraction: float = 0.5
) -> list[dict]:
    """`n` pairs over both domains: a polite right reply (chosen) against a polite wrong one
    (aspect "helpful") or a rude right one ("harmless"); `general_fraction` are general requests,
    the rest reasoning problems. Every pair has "domain" (reasoning | general) and "aspect"."""
    _check_split(split)
    rng = _stream(cfg, seed, "preference" if split == "train" else f"preference-{split}")
    pairs = []
    for _ in range(n):
        general = rng.random() < general_fraction
        pairs.append((_general_pair if general else _reasoning_pair)(rng, cfg, split))
    return pairs


def write_jsonl(path, rows) -> int:
    """Writes rows as JSON lines (UTF-8, Chinese kept readable) through a temporary file and a
    rename (a stop mid-write leaves no cut file); returns the row count."""
    files.write_lines_atomic(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return len(rows)


def write_corpus(path, cfg: WorldConfig | None = None, n: int = 50_000, *, seed: int = 0) -> int:
    """Writes `pretrain_corpus(cfg, n, seed=seed)` to a JSONL file; returns the row count."""
    return write_jsonl(path, pretrain_corpus(cfg or WorldConfig(), n, seed=seed))


# name -> (generator, default rows, stream seed); the CLI below writes the same rows to files.
DATASETS = {
    "corpus": (lambda cfg, n, seed: pretrain_corpus(cfg, n, seed=seed), 50_000, 0),
    "train": (lambda cfg, n, seed: rl_prompts(cfg, n, seed=seed, split="train"), 2_000, 1),
    "test": (lambda cfg, n, seed: rl_prompts(cfg, n, seed=seed, split="test"), 500, 2),
    "preference": (lambda cfg, n, seed: preference_pairs(cfg, n, seed=seed), 2_000, 3),
    "general_train": (lambda cfg, n, seed: general_prompts(cfg, n, seed=seed), 2_000, 4),
    "general_test": (
        lambda cfg, n, seed: general_prompts(cfg, n, seed=seed, split="test"),
        200,
        5,
    ),
    "general_sft": (lambda cfg, n, seed: general_sft(cfg, n, seed=seed), 2_000, 6),
    "preference_test": (
        lambda cfg, n, seed: preference_pairs(cfg, n, seed=seed, split="test"),
        500,
        7,
    ),
}
# The CLI's file name (OUT_DIR/<stem>.jsonl) of each dataset.
FILE_STEMS = {"train": "rl_train", "test": "rl_test"}


def dataset(name: str, *, seed: int = 0, n: int = 0) -> list[dict]:
    """One of DATASETS generated in memory (n = 0: its default size), as data.format=world reads."""
    if name not in DATASETS:
        raise ValueError(f"unknown world dataset {name!r}; expected one of {sorted(DATASETS)}")
    make, default_n, stream = DATASETS[name]
    return make(WorldConfig(seed=seed), n or default_n, stream)


def main(argv=None) -> None:
    """`python -m r1jax.data.world OUT_DIR`: every dataset of DATASETS as OUT_DIR/<stem>.jsonl."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", type=int, default=50_000)
    parser.add_argument("--prompts", type=int, default=2_000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=2_000)
    parser.add_argument("--pairs-test", type=int, default=500)
    parser.add_argument("--general", type=int, default=2_000, help="general_train requests")
    parser.add_argument("--general-test", type=int, default=200)
    parser.add_argument("--general-sft", type=int, default=2_000)
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out_dir)
    sizes = {
        "corpus": args.corpus,
        "train": args.prompts,
        "test": args.test,
        "preference": args.pairs,
        "preference_test": args.pairs_test,
        "general_train": args.general,
        "general_test": args.general_test,
        "general_sft": args.general_sft,
    }
    for name, n in sizes.items():
        stem = FILE_STEMS.get(name, name)
        write_jsonl(out / f"{stem}.jsonl", dataset(name, seed=args.seed, n=n))


if __name__ == "__main__":
    main()
