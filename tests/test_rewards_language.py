"""Tests for r1jax.rewards.language: script-based word counting, consistency and detection."""

import pytest

from r1jax.data import sources
from r1jax.rewards import language, registry


def test_word_counts_by_script():
    counts = language.word_counts("We compute 3 加 4 得到 7, so x = 7.")
    assert counts["en"] == 3  # "We", "compute", "so"; the variable x is not a word
    assert counts["zh"] == 3  # each ideograph is a word: 加 得 到
    assert language.word_counts("Ở đây có một con mèo")["en"] == 6  # 4 before: ở, một split


# (text, target, expected share)
CASES = [
    ("<think>First add the numbers.</think><answer>7</answer>", "en", 1.0),
    ("<think>先把数字相加。</think><answer>7</answer>", "zh", 1.0),
    ("<think>先把数字相加。</think><answer>7</answer>", "en", 0.0),
    ("<think>add 相加</think><answer>seven words here ignored</answer>", "en", 1 / 3),
    ("<think>add 相加</think>", "zh", 2 / 3),
    ("<think>1 + 2 = 3</think><answer>3</answer>", "en", 0.0),
    ("no tags means the whole text counts", "en", 1.0),
    ("<think>Сначала сложим</think>", "ru", 1.0),
    ("<think>Сначала сложим</think>", "en", 0.0),
    # LaTeX command names, code and the signs × ÷ are no language's words
    ("<think>因为 $\\frac{a}{b}\\cdot\\sqrt{x}$ 所以</think>", "zh", 1.0),
    ("<think>3 × 4 ÷ 2 等于六</think>", "zh", 1.0),
    # ... LaTeX's own command names: a backslashed English word is English (1.0 before).
    ("<think>我们来算。\\First \\we \\note \\that $\\mathbb{R}$</think>", "zh", 0.5),
    ("<think>先运行 ```python\nprint(sum([1, 2]))\n``` 得到三</think>", "zh", 1.0),
    ("<think>Café résumé</think>", "en", 1.0),
    # Japanese writes kanji beside kana: both count for "ja", only kanji for "zh"
    ("<think>これは日本語です</think>", "ja", 1.0),
    ("<think>これは日本語です</think>", "zh", 3 / 8),
    # ... but a sentence of ideographs alone is Chinese, also for a Japanese target.
    ("<think>我们需要计算三加四，结果是七。</think>", "ja", 0.0),
    ("<think>これは日本語です。我们需要计算三加四，结果是七。</think>", "ja", 8 / 21),
    # Headings and list items of kanji alone are Japanese too.
    ("<think>問題\nこれは日本語です。\n結論\n答えは七です。</think>", "ja", 1.0),
    # A fence hides code only: one unclosed ``` or prose in a closed fence hid the rest of a
    # mixed thought (0.010 -> 1.0 by adding ```).
    ("<think>我们来算。``` Let me add these numbers</think><answer>5</answer>", "zh", 4 / 9),
    ("<think>我们来算。\n```\nLet me add these numbers.\n```\n</think>", "zh", 4 / 9),
    ("<think>我们来算。\n```text\nLet me add these numbers.\n```\n</think>", "zh", 4 / 9),
    # A code label does not hide sentences written under it (English under ```cpp or ```json,
    # lines with = or ( ) in an unlabelled fence: 1.0 before); code's comments and strings are
    # prose too.
    ("<think>我们来算。\n```cpp\nLet me add these numbers.\n```\n</think>", "zh", 4 / 9),
    ("<think>我们来算。\n```json\nLet me add these numbers.\n```\n</think>", "zh", 4 / 9),
    (
        "<think>我们来算。\n```\nSo we get the sum (a + b) = 10\nand then we know b = 4\n```",
        "zh",
        4 / 13,
    ),
    # Korean puts spaces between words: a run of Hangul is one word, as a run of Latin is
    # (each syllable was one: 9 / 12 here).
    ("<think>이 문제를 풀어 봅시다 let us solve</think>", "ko", 4 / 7),
    ('<think>算。\n```json\n{"thought": "we add them all"}\n```\n</think>', "zh", 1 / 6),
    ('<think>算。\n```c\nprintf("sum is");  // add it\n```\n</think>', "zh", 1 / 5),
    ('<think>算。\n```python\nprint("sum is")\n```\n</think>', "zh", 1 / 3),
    ("<think>算。\n```js\nconst x = 1\n```\n</think>", "zh", 1.0),
    ("<think>算。\n```\nconst x = f(1);\nlet y = g(x);\n```\n</think>", "zh", 1.0),
    ("<think>算。\n```python\nn = total // base  # add it\n```\n</think>", "zh", 1 / 3),
    ("<think>算。\n```cpp\n#include <iostream>\n```\n</think>", "zh", 1.0),
    ('<think>算。\n```json\n{"x": 1, "y": [2]}\n```\n</think>', "zh", 1.0),
    ("<think>算。\n```bash\nls -la results\n```\n</think>", "zh", 1.0),
    # Arabic vowel marks are part of their word.
    ("<think>We add مُحَمَّدٌ now</think>", "en", 3 / 4),
    ("<think>算。\n```cpp\nint x = 1;  // add it\n```\n</think>", "zh", 1 / 3),
    ("<think>算。\n```python\n# add it\n'then check'\nx = 1\n```\n</think>", "zh", 1 / 5),
    # Points, segments and function names are math, not English; so is inline code.
    ("<think>在三角形ABC中，AB=AC，求角BAC。由 sin 和 gcd 得</think>", "zh", 1.0),
    ("<think>我们来算。 FIRST WE NOTE THAT, AB = 2</think>", "zh", 0.5),  # shouted: 0.8 before
    ("<think>我们调用 `numpy.linalg.solve` 函数求解。</think>", "zh", 1.0),
    # The tags are not words: an answer without a thought has no thought's words.
    ("<answer>5</answer>", "en", 0.0),
    ("<think>2+3=5</think><answer>5</answer>", "en", 0.0),
    ("Add them. <answer>5</answer>", "en", 1.0),
    # Full-width Latin is Latin (NFKC); Arabic digits and punctuation are no words.
    ("<think>ＡＢＣ是 Ｈｅｌｌｏ</think>", "en", 1 / 2),
    ("<think>We add ١٢ ، then stop</think>", "en", 1.0),
    # Vietnamese letters (Latin Extended Additional) are inside their words: "cần" split at ầ
    # into two dropped one-letter pieces, "Tiếng" into two words (3/7 here before).
    ("<think>Ta cần tính tổng 我们计算</think>", "en", 1 / 2),
    ("<think>Ở đây để 我们计算</think>", "zh", 4 / 7),
    # A letter with a combining mark NFKC cannot compose is one letter: a variable (x̂).
    ("<think>因为 x\u0302 = 2 所以</think>", "zh", 1.0),
]


@pytest.mark.parametrize(("text", "target", "expected"), CASES)
def test_consistency(text, target, expected):
    assert language.consistency(text, target) == pytest.approx(expected)


def test_consistency_rejects_unknown_language():
    with pytest.raises(ValueError):
        language.consistency("hello", "xx")


def test_record_language_codes():
    codes = ("zh-CN", "ZH", "en_US", "ja")
    assert [language.normalize(c) for c in codes] == ["zh", "zh", "en", "ja"]
    assert [language.normalize(c) for c in ("fr", "English", None, 3)] == [None] * 4
    # A record's unknown code stops the run up front (every completion raised and scored 0).
    records = [{"prompt": "Quelle est la somme ?", "language": "fr"}]
    with pytest.raises(sources.DataError, match="record 1: unknown language 'fr'"):
        registry.check_records(["language"], records, "prompts.jsonl")
    record = {"prompt": "3 加 4", "language": "zh-CN"}
    assert registry.language("<think>三加四</think><answer>7</answer>", record) == 1.0


def test_language_reward_reads_the_thought_the_prompt_opened():
    # The prompt ends in <think>: a <think> block written later (here inside the answer) is not
    # the thought; the English before </think> is.
    record = {"prompt": "3 加 4", "language": "zh", "prompt_opens_think": True}
    completion = "Three plus four is seven.</think><answer>7 <think>五</think></answer>"
    assert registry.language(completion, record) == 0.0


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("What is 3 + 4?", "en"),
        ("3 加 4 等于多少？", "zh"),
        ("Compute 3+4. 请用中文回答这个问题。", "zh"),
        ("3 たす 4 は何ですか", "ja"),
        ("Сколько будет 3 + 4?", "ru"),
        ("3 + 4 = ?", "en"),
        ("计算 $\\frac{\\sqrt{3}}{2}\\cdot\\frac{\\sqrt{2}}{2}$", "zh"),
        ("", "en"),
    ],
)
def test_detect(prompt, expected):
    assert language.detect(prompt) == expected
