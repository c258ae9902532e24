"""Language consistency (R1): share of chain-of-thought words in the target language, by script."""

import re

from r1jax.rewards import format as format_reward

# Script-based words: a run of Latin letters is one word; each CJK ideograph, kana or Hangul
# syllable counts as one word (Chinese has no spaces, and R1 counts characters there).
_SCRIPTS = {
    # Latin letters with accents; not the multiplication and division signs (U+00D7, U+00F7).
    "en": re.compile(r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f]+"),
    "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"),
    "ja": re.compile(r"[\u3040-\u30ff]"),
    "ko": re.compile(r"[\uac00-\ud7af]"),
    "ru": re.compile(r"[\u0400-\u04ff]+"),
    "ar": re.compile(r"[\u0600-\u06ff]+"),
}
LANGUAGES = tuple(_SCRIPTS)
# Single Latin letters are mostly math variables ("let x be"), not English words.
_MATH_VARIABLE = re.compile(r"^[A-Za-z]$")
# Not words of any language: LaTeX command names (\frac, \sqrt, \cdot) and fenced code.
_NOT_PROSE = re.compile(r"\\[A-Za-z]+|```.*?(?:```|$)", re.DOTALL)


def word_counts(text: str) -> dict[str, int]:
    """Number of words per language script in the text (Latin counts as "en"), LaTeX command
    names and fenced code blocks left out (Chinese reasoning about $\\frac{a}{b}$ is Chinese)."""
    text = _NOT_PROSE.sub(" ", text)
    counts = {}
    for lang, pattern in _SCRIPTS.items():
        words = pattern.findall(text)
        if lang == "en":
            words = [w for w in words if not _MATH_VARIABLE.match(w)]
        counts[lang] = len(words)
    return counts


def consistency(text: str, target_language: str) -> float:
    """Share of words in the target language over the <think> part when present; 0 if no words."""
    if target_language not in _SCRIPTS:
        raise ValueError(f"unknown language {target_language!r}; known: {LANGUAGES}")
    counts = word_counts(format_reward.think_part(text))
    if target_language == "ja":  # Japanese writes kanji beside kana: both are Japanese words
        counts["ja"] += counts.pop("zh")
    total = sum(counts.values())
    return counts[target_language] / total if total else 0.0


def detect(text: str) -> str:
    """The language whose script has the most words in the text ("en" when there are none)."""
    counts = word_counts(text)
    # Japanese mixes kanji with kana: any kana at all means Japanese rather than Chinese.
    if counts["ja"] and counts["ja"] * 5 >= counts["zh"]:
        counts["ja"] += counts["zh"]
    best = max(LANGUAGES, key=lambda lang: counts[lang])
    return best if counts[best] else "en"
