"""Tests for r1jax.rewards.language: script-based word counting, consistency and detection."""

import pytest

from r1jax.rewards import language


def test_word_counts_by_script():
    counts = language.word_counts("We compute 3 加 4 得到 7, so x = 7.")
    assert counts["en"] == 3  # "We", "compute", "so"; the variable x is not a word
    assert counts["zh"] == 3  # each ideograph is a word: 加 得 到


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
    ("<think>先运行 ```python\nprint(sum([1, 2]))\n``` 得到三</think>", "zh", 1.0),
    ("<think>Café résumé</think>", "en", 1.0),
    # Japanese writes kanji beside kana: both count for "ja", only kanji for "zh"
    ("<think>これは日本語です</think>", "ja", 1.0),
    ("<think>これは日本語です</think>", "zh", 3 / 8),
]


@pytest.mark.parametrize(("text", "target", "expected"), CASES)
def test_consistency(text, target, expected):
    assert language.consistency(text, target) == pytest.approx(expected)


def test_consistency_rejects_unknown_language():
    with pytest.raises(ValueError):
        language.consistency("hello", "xx")


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
