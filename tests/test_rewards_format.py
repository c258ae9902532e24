"""Tests for r1jax.rewards.format: strict, lenient and tag-count rewards on the R1 format."""

import time

import pytest

from r1jax.rewards import format as format_reward

GOOD = "<think>\nadd them\n</think>\n<answer>\n4\n</answer>"

# (completion, strict, lenient, tag_count)
CASES = [
    (GOOD, 1.0, 1.0, 1.0),
    ("<think>a</think><answer>b</answer>", 1.0, 1.0, 1.0),
    ("  <think>a</think>  <answer>b</answer>\n", 1.0, 1.0, 1.0),
    ("<think>a</think><answer>b</answer> trailing", 0.0, 1.0, 1.0),
    ("preamble <think>a</think><answer>b</answer>", 0.0, 1.0, 1.0),
    ("<think>a</think> between <answer>b</answer>", 0.0, 1.0, 1.0),
    ("<think></think><answer>b</answer>", 0.0, 1.0, 1.0),
    ("<think>a</think><answer> </answer>", 0.0, 1.0, 1.0),
    ("<answer>b</answer><think>a</think>", 0.0, 0.0, 1.0),
    ("<think>a</think><think>a</think><answer>b</answer>", 0.0, 0.0, 0.5),
    ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0, 0.0, 0.5),
    ("<think>a<answer>b</answer></think>", 0.0, 0.0, 1.0),
    ("<think>a</think>", 0.0, 0.0, 0.5),
    ("<answer>b</answer>", 0.0, 0.0, 0.5),
    ("<think>a", 0.0, 0.0, 0.25),
    ("just text", 0.0, 0.0, 0.0),
    ("", 0.0, 0.0, 0.0),
    ("<THINK>a</THINK><ANSWER>b</ANSWER>", 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(("completion", "strict", "lenient", "tags"), CASES)
def test_format_rewards(completion, strict, lenient, tags):
    assert format_reward.strict_format(completion) == strict
    assert format_reward.lenient_format(completion) == lenient
    assert format_reward.tag_count(completion) == tags


def test_prompt_that_opens_think_is_accounted_for():
    completion = "reasoning</think><answer>4</answer>"
    assert format_reward.strict_format(completion) == 0.0
    assert format_reward.strict_format(completion, prompt_opens_think=True) == 1.0
    assert format_reward.tag_count(completion, prompt_opens_think=True) == 1.0
    # A completion that repeats the opening tag has two of them once the prompt's is counted.
    assert format_reward.strict_format("<think>" + completion, prompt_opens_think=True) == 0.0
    assert format_reward.tag_count("<think>" + completion, prompt_opens_think=True) < 1.0


def test_think_part():
    assert format_reward.think_part("<think>abc</think><answer>1</answer>") == "abc"
    assert format_reward.think_part("abc</think><answer>1</answer>") == "abc"
    assert format_reward.think_part("<think>unclosed") == "unclosed"
    assert format_reward.think_part("no tags") == "no tags"


def test_huge_input_is_linear():
    text = "<think>" + "a" * 1_000_000 + "</think><answer>1</answer>" + "<think>" * 10_000
    start = time.monotonic()
    assert format_reward.strict_format(text) == 0.0
    assert format_reward.lenient_format(text) == 0.0
    assert time.monotonic() - start < 1.0
