"""R1 format rewards: <think>…</think> then <answer>…</answer>, strict, lenient, tag counting."""

import re

TAGS = ("<think>", "</think>", "<answer>", "</answer>")

_STRICT = re.compile(r"^<think>(.+?)</think>\s*<answer>(.+?)</answer>$", re.DOTALL)
_LENIENT = re.compile(r"<think>(.*?)</think>.*?<answer>(.*?)</answer>", re.DOTALL)


def _each_tag_once(text: str) -> bool:
    return all(text.count(tag) == 1 for tag in TAGS)


def with_think_prefix(completion: str, prompt_opens_think: bool) -> str:
    """The text the model wrote after the prompt's opening <think>, with that tag put back: a
    completion that opens <think> again has two (and fails the one-tag-each checks)."""
    return "<think>" + completion if prompt_opens_think else completion


def strict_format(completion: str, *, prompt_opens_think: bool = False) -> float:
    """1.0 iff the text is <think>X</think><answer>Y</answer>, each tag once, nothing after."""
    text = with_think_prefix(completion, prompt_opens_think).strip()
    if not _each_tag_once(text):
        return 0.0
    match = _STRICT.match(text)
    if match is None or not match.group(1).strip() or not match.group(2).strip():
        return 0.0
    return 1.0


def lenient_format(completion: str, *, prompt_opens_think: bool = False) -> float:
    """1.0 iff a think block precedes an answer block, each tag once; text around is allowed."""
    text = with_think_prefix(completion, prompt_opens_think)
    if not _each_tag_once(text):
        return 0.0
    return float(_LENIENT.search(text) is not None)


def tag_count(completion: str, *, prompt_opens_think: bool = False) -> float:
    """Partial credit: 0.25 for each of the four tags that appears exactly once."""
    text = with_think_prefix(completion, prompt_opens_think)
    return 0.25 * sum(text.count(tag) == 1 for tag in TAGS)


def think_part(completion: str) -> str:
    """The chain of thought: text inside <think>…</think>, before </think>, or the whole text."""
    start = completion.find("<think>")
    begin = start + len("<think>") if start >= 0 else 0
    end = completion.find("</think>", begin)
    if start < 0 and end < 0:
        return completion
    return completion[begin:] if end < 0 else completion[begin:end]
