"""Tests for r1jax.rewards.math: extraction, equivalence, guards and the hard deadline."""

import json
import threading
import time

import pytest

from r1jax.rewards import math as math_reward
from r1jax.rewards import tasks

EXTRACTION = [
    ("<think>work</think><answer>42</answer>", "42"),
    ("<answer>first</answer> then <answer>\\boxed{7}</answer>", "7"),
    ("<answer> 3.5 </answer>", "3.5"),
    # a sentence in the tag gives what it names
    ("<answer>The answer is 42.</answer>", "42"),
    ("<answer>Answer: 42</answer>", "42"),
    ("<answer>So the final answer is $\\frac{1}{2}$.</answer>", "\\frac{1}{2}"),
    ("<answer>answers vary</answer>", "answers vary"),
    ("so \\boxed{\\frac{\\sqrt{3}}{2}} and finally \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\left\\{1, \\{2\\}\\right\\}}", "\\left\\{1, \\{2\\}\\right\\}"),
    ("$\\boxed{x^{2^{k}}}$.", "x^{2^{k}}"),
    ("\\fbox{12}", "12"),
    ("\\boxed 5.", "5"),
    ("\\boxed{unbalanced", None),
    ("\\boxed{3} then \\boxed{4", None),  # the last box never closes: no guess
    # a later mention of the command in prose boxes nothing
    ("\\boxed{42}. Remember to put answers in \\boxed.", "42"),
    ("Final: \\boxed{42} (I used \\boxed notation)", "42"),
    ("\\boxed{42}\nNote: \\fbox would also work.", "42"),
    ("blah\n#### 1,234\n", "1,234"),
    ("#### 3\n#### 4", "4"),
    ("<answer>#### 1,234</answer>", "1,234"),  # GSM8K's marker in the tag (it was "#### 1,234")
    ("The answer is 42.", "42"),
    ("So the answer is: **17**", "17"),
    ("Thus the final answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
    ("The answer is \\boxed{9} indeed", "9"),
    ("the Answer is (C)", "(C)"),
    ("no final answer here", None),
    ("<think>so the answer is 18</think>", "18"),  # up to the closing tag
    ("", None),
    # lm-eval's minerva format and a clause after the answer (the rest of the line was kept).
    ("Final Answer: The final answer is $5$. I hope it is correct.", "5"),
    ("The answer is $5$, since 2+3=5.", "5"),
    ("<answer>The final answer is 5. I hope it is correct.</answer>", "5"),
    ("So the answer is $\\$32,\\!348$.", "\\$32,\\!348"),  # a currency $, not a span
    # A trailing empty box is a mention, as a box of nothing is.
    ("So \\boxed{5}. Put the final answer within \\boxed{}.", "5"),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION)
def test_extract_answer(text, expected):
    assert math_reward.extract_answer(text) == expected


# (prediction, gold, equal): hand-written; each row is checked through is_equiv.
PAIRS = [
    # integers, signs, leading zeros, decimals
    ("42", "42", True),
    ("042", "42", True),
    ("025", "25", True),
    ("-7", "-7", True),
    ("+7", "7", True),
    ("7", "-7", False),
    ("41", "42", False),
    ("42.0", "42", True),
    ("42.00", "42", True),
    ("42.5", "42", False),
    ("0.5", "0.50", True),
    (".5", "0.5", True),
    ("1/2", "0.5", True),
    ("3/4", "0.75", True),
    ("1/3", "0.34", False),
    ("1000.0", "1000", True),
    ("100", "1000", False),
    ("0", "0", True),
    ("0", "1", False),
    # thousands separators (GSM8K); a comma and a space separate a list's items (PRM800K)
    ("1,000", "1000", True),
    ("256, 81", "81, 256", True),
    # LaTeX spaces as digit group separators
    ("1\\;000", "1000", True),
    ("1\\:000", "1000", True),
    ("1~000", "1000", True),
    # Unicode math
    ("½", "\\frac{1}{2}", True),
    ("1½", "1.5", True),
    ("√2", "\\sqrt{2}", True),
    ("3√(2)", "3\\sqrt{2}", True),
    ("(−∞, 3)", "(-\\infty, 3)", True),
    ("5·3", "15", True),
    ("–5", "-5", True),
    ("1–5", "-4", False),
    # scientific notation, either case
    ("1e3", "1000", True),
    ("1.5e3", "1500", True),
    ("2.5E-3", "0.0025", True),
    ("1e3", "1001", False),  # math_train_rllm.json's gold for "find all solutions"
    ("\\{81, 256\\}", "81, 256", True),
    ("81256", "81, 256", False),
    ("1, 234", "1234", False),
    ("1,234,567", "1234567", True),
    ("12,345.5", "12345.5", True),
    ("1,000", "100", False),
    ("10,000", "1000", False),
    # units and currency
    ("$18", "18", True),
    ("\\$18", "18", True),
    ("18 dollars", "18", True),
    ("18 dollars", "19", False),
    ("5 cm", "5", True),
    ("5 \\text{ cm}", "5", True),
    ("5\\text{ meters}", "5", True),
    ("30 minutes", "30", True),
    ("20\\%", "20", True),
    ("20%", "20", True),
    ("$1,200", "1200", True),
    ("$1,200", "120", False),
    ("76^\\circ", "76", True),
    ("76^\\circ", "77", False),
    ("\\text{5}", "5", True),
    # multiple choice letters
    ("C", "C", True),
    ("(C)", "C", True),
    ("c", "C", True),
    ("\\text{(C)}", "C", True),
    ("\\textbf{(C)}", "C", True),
    ("option C", "C", True),
    ("(B)", "C", False),
    ("D", "\\text{(D)}", True),
    ("A", "\\text{(D)}", False),
    ("E", "(E)", True),
    ("B", "(E)", False),
    # fractions and roots
    ("\\frac{1}{2}", "\\frac12", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\tfrac{1}{2}", "0.5", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("\\frac{1}{3}", "\\frac{1}{2}", False),
    ("\\frac{11}{2}", "5.5", True),
    ("\\frac{13}{4}", "3.25", True),
    ("\\frac{13}{4}", "3.5", False),
    ("-\\frac{1}{2}", "\\frac{-1}{2}", True),
    ("\\frac{-1}{2}", "\\frac{1}{2}", False),
    ("\\sqrt{200}", "10\\sqrt{2}", True),
    ("2\\sqrt{5}", "\\sqrt{20}", True),
    ("2 \\sqrt{5}", "2\\sqrt{5}", True),
    ("\\sqrt{5}", "2\\sqrt{5}", False),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}", False),
    ("16 \\sqrt{3}", "16\\sqrt{3}", True),
    ("1+2\\sqrt{3}", "2\\sqrt{3}+1", True),
    ("1+2\\sqrt{3}", "1-2\\sqrt{3}", False),
    ("\\sqrt[3]{8}", "2", True),
    ("\\sqrt{2}", "1.41", False),
    # pi, powers, exponents
    ("2\\pi", "2 \\pi", True),
    ("\\pi", "3.14", False),
    ("\\frac{\\pi}{2}", "\\frac{1}{2}\\pi", True),
    ("4\\pi", "2\\pi", False),
    ("2^{10}", "1024", True),
    ("2^10", "1024", True),
    ("2^{10}", "1000", False),
    ("2^{100}", "1267650600228229401496703205376", True),
    ("3^{4}", "81", True),
    ("10^{3}", "1000", True),
    ("10^{3}", "100", False),
    ("e^{0}", "1", True),
    # complex numbers
    ("6+9i", "6+9i", True),
    ("9i+6", "6+9i", True),
    ("6-9i", "6+9i", False),
    ("1+2i", "1 + 2i", True),
    ("i", "-i", False),
    # algebraic expressions
    ("x^2+2x+1", "(x+1)^2", True),
    ("(x+1)^2", "x^2+1", False),
    ("2x+3", "3+2x", True),
    ("2x+3", "2x-3", False),
    ("\\frac{x}{2}", "0.5x", True),
    ("x(x+1)", "x^2+x", True),
    ("a+b", "b+a", True),
    ("a-b", "b-a", False),
    ("y = 2x + 1", "y=2x+1", True),
    ("y = 2x + 1", "y=2x-1", False),
    ("x=3", "3", True),
    ("x=4", "3", False),
    ("x = 1,000", "1000", True),  # the named value normalized as a bare answer is
    ("n = \\$1,234", "1234", True),
    ("x = 1,001", "1000", False),
    # tuples, sets, lists, intervals
    ("(15,-29)", "(15, -29)", True),
    ("(15,-29)", "(-29,15)", False),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(2,12) \\cup (12,102)", "(2,12)\\cup(12,102)", True),
    ("(2,12) \\cup (12,102)", "(2,102)", False),
    ("[-2,7]", "[-2, 7]", True),
    ("[-2,7]", "(-2,7)", False),
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(-\\infty, 3]", "(-\\infty, 3)", False),
    ("-2,1", "1,-2", True),
    ("-2,1", "1,2", False),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("1, 2, 3", "3, 2, 1", True),
    # matrices and vectors
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", False),
    (
        "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}",
        True,
    ),
    (
        "\\begin{pmatrix} 1 & 0 \\\\ 0 & -1 \\end{pmatrix}",
        "\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}",
        False,
    ),
    # bases, text answers
    ("2516_8", "2516_8", True),
    ("2516_9", "2516_8", False),  # another base (math-verify drops the subscript: equal)
    ("2516_{8}", "2516_8", True),
    ("2516", "2516_8", True),
    ("\\text{Monday}", "Monday", True),
    ("\\text{Tuesday}", "Monday", False),
    ("\\text{even}", "\\text{even}", True),
    # percent, degrees written out
    ("50\\%", "50", True),
    ("50", "0.5", False),
    # whitespace and LaTeX spacing
    ("1\\,000", "1000", True),
    ("1\\!000", "1000", True),
    ("\\left(1,2\\right)", "(1,2)", True),
    ("  7  ", "7", True),
    ("7.", "7", True),
    # more arithmetic forms
    ("\\frac{6}{8}", "\\frac{3}{4}", True),
    ("1.5", "\\frac{3}{2}", True),
    ("1.5", "\\frac{2}{3}", False),
    ("-0.25", "-\\frac{1}{4}", True),
    ("0.25", "-\\frac{1}{4}", False),
    ("3\\cdot 4", "12", True),
    ("3\\times 4", "12", True),
    ("3\\times 4", "7", False),
    ("\\frac{1}{2}+\\frac{1}{3}", "\\frac{5}{6}", True),
    ("\\log_2 8", "3", True),
    ("\\binom{5}{2}", "10", True),
    ("5!", "120", True),
    ("5!", "24", False),
    ("\\sin(\\pi/6)", "\\frac12", True),
    ("|{-3}|", "3", True),
    ("1000000", "10^6", True),
    ("999999", "10^6", False),
    # empty and missing
    ("", "7", False),
    (None, "7", False),
    ("   ", "0", False),
    # answers that try to match anything
    ("x", "7", False),
    ("\\infty", "7", False),
    ("7 or 8", "7", False),
    ("7, 8", "7", False),
    ("anything", "7", False),
    ("\\text{all of them}", "7", False),
    # pathological inputs: never equal, never slow
    ("9**9**9**9", "5", False),
    ("9^{9^{9^{9}}}", "5", False),
    ("2^{10^{10}}", "5", False),
    ("10^{1000000}", "5", False),
    ("100000!", "5", False),
    ("{" * 10_000 + "1" + "}" * 10_000, "1", False),
    ("(" * 5_000 + "1" + ")" * 5_000, "1", False),
    ("1" * 1_000_000, "1", False),
    ("x" * 1_000_000, "1", False),
    ("\\frac{" * 3000 + "1", "1", False),
    # more: thousands separators, units and currency, letters, LaTeX forms, sets and intervals
    ("1,000", "1000", True),
    ("12,345,678", "12345678", True),
    ("1,234.5", "1234.5", True),
    ("1,000", "100", False),
    ("$18", "18", True),
    ("18 dollars", "18", True),
    ("\\$18.00", "18", True),
    ("18 cm", "18", True),
    ("19 cm", "18", False),
    ("50\\%", "50", True),
    ("49%", "50", False),
    ("(B)", "B", True),
    ("B", "b", True),
    ("C", "B", False),
    ("\\text{(D)}", "D", True),
    ("A", "D", False),
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{3}{4}", "\\frac34", True),
    ("\\frac{2}{3}", "\\frac{3}{2}", False),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\sqrt{2}", "\\sqrt{3}", False),
    ("2\\pi", "\\pi \\cdot 2", True),
    ("\\pi", "3.14", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2-1", "(x-1)(x+1)", True),
    ("x^2+1", "(x+1)^2", False),
    ("(1,2)", "(1, 2)", True),
    ("(2,1)", "(1,2)", False),
    ("[0,1)", "[0, 1)", True),
    ("3\\sqrt{3}", "\\sqrt{27}", True),
    ("10^3", "1000", True),
    ("2^{10}", "1024", True),
    ("2^{10}", "1000", False),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{-1}{2}", "-\\frac12", True),
    ("0.333", "\\frac13", False),
    ("7", "seven", False),
    ("\\infty", "\\infty", True),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("5.0", "5", True),
    ("5.01", "5", False),
    ("1/4", "\\frac{1}{4}", True),
    ("\\frac{1}{4}", "0.25", True),
    # a "unit" that is part of the value or a second candidate is not stripped
    ("7 or eight", "7", False),
    ("7 or x", "7", False),
    ("7\\text{ or 8}", "7", False),
    ("7\\text{ (or maybe 8)}", "7", False),
    ("\\text{7 or eight}", "7", False),
    ("5 million", "5", False),
    ("3 hundred", "3", False),
    ("5 thousand dollars", "5", False),
    ("5 squared", "5", False),
    ("2pi", "2", False),
    ("76°", "76", True),
    ("12 square feet", "12", True),
    ("60 miles per hour", "60", True),
    # the tolerance for written-out decimals never lets a near-miss integer through
    ("1234567891", "1234567890", False),
    ("1234567890.5", "1234567891", False),
    ("18446744073709551615", "18446744073709551616", False),
    ("0.3333333333", "1/3", True),
    ("0.5000000001", "\\frac12", True),
    # LaTeX's digit-group separator with a space after it (MATH-500's gold for one problem,
    # two MATH-train golds): a correct plain number scored 0 against it.
    ("11111111100", "11,\\! 111,\\! 111,\\! 100", True),
    ("11,111,111,100", "11,\\! 111,\\! 111,\\! 100", True),
    ("\\frac{1}{29322216}", "\\dfrac{1}{29,\\!322,\\!216}", True),
    ("1,\\! 2", "12", False),
    # AoPS's boxed \textbf{(113)} (AIME solutions) and units squared.
    ("\\textbf{(113)}", "113", True),
    ("\\textbf{(113)}", "114", False),
    ("113 \\textbf{(114)}", "113", False),  # a second number in text: a hedge
    ("12\\text{ (13)}", "12", False),
    ("9m^3", "9m^2", False),  # m a variable: "3m^2" is not 3 square metres
    ("3", "3m^2", False),
    ("15 cm^2", "15\\mbox{ cm}^2", True),
    ("15", "15\\mbox{ cm}^2", True),
    ("864 inches^2", "864", True),
    ("3 xy^2", "3", False),
    # From the outside-reference audit (Math-Verify's and Qwen's grader cases, lm-eval).
    ("\\text{East}", "\\text{east}", True),  # words in any case
    ("Ellipse", "\\text{ellipse}", True),
    ("x = 1 \\text{ or } x = 2", "1, 2", True),  # the gold lists both: no hedge
    ("1 \\text{ and } 2", "1, 2", True),
    ("2ab", "2", False),  # letters against a number are variables, not a unit
    ("6", "6xy", False),
    ("4 sevenths", "4", False),
    ("5cm", "5", True),  # ... unless they are a unit's abbreviation
    ("u_{16} = a", "a", True),  # a lowercase gold letter is a variable, not a choice
    ("\\textbf{(C)}\\ 7", "\\text{(C)}", True),  # the choice, then its value
    ("(C) 7", "(C)", True),
    ("(B) 7", "(C)", False),
    # A second choice after the first is a hedge, as "7 or 8" is (listing every choice scored 1
    # whenever the gold was the first listed).
    ("(C) or (D)", "\\text{(C)}", False),
    ("(A), (B), (C), (D), (E)", "\\text{(A)}", False),
    ("C. or D.", "C", False),
    ("(C) 7 or (D) 8", "(C)", False),
    ("(C) 7 (answer C)", "(C)", True),
    ("8^\\text{th}", "8", True),  # ordinal suffixes
    ("x=4 \\lor x=6", "6", False),  # a disjunction hedges
    ("\\cfrac{1}{3}", "\\frac13", True),
    ("14{,}916", "14916", True),
    # A gold equation that is not a name = value is the answer whole (math-verify credited
    # its right side: "0" for a plane through the origin).
    ("0", "x + y + z = 0", False),
    ("1", "x + y + z = 1", False),
    ("-4", "5x - 7y + 11z + 4 = 0", False),
    ("5x-7y+11z=-4", "5x - 7y + 11z + 4 = 0", True),
    ("z + y + x = 0", "x + y + z = 0", True),
    ("2x+3", "y = 2x + 3", True),  # a name = value gold is answered by the value
    ("x^2", "f(x) = x^2", True),
    ("3", "x_1 = 3", True),
    ("12+12\\sqrt{3}", "AB=12+12\\sqrt{3}", True),
    # Superscript digits are exponents; a repeating decimal is its exact value (both scored 0).
    ("x²-1", "x^2-1", True),
    ("10⁻³", "0.001", True),
    ("x²", "x^3", False),
    ("0.\\overline{3}", "\\frac13", True),
    ("1.2\\overline{45}", "\\frac{137}{110}", True),
    ("0.\\overline{3}", "0.3", False),
    ("\\frac23", "0.\\overline{6}", True),
    ("0.\\overline{" + "3" * 5000 + "}", "1/3", False),  # past int()'s 4300 digits: no error
    # A decimal against a LaTeX fraction: the plain numbers' 1e-9, as against "14/3" (it was
    # math-verify's 6 places).
    ("4.666667", "\\frac{14}{3}", False),
    ("4.666667", "14/3", False),
    ("0.3333333333", "\\frac13", True),
    ("-0.25", "-\\frac{1}{4}", True),
    ("0.25", "-\\frac{1}{4}", False),
]


def test_pair_table_is_large():
    assert len(PAIRS) >= 200
    assert sum(not equal for _, _, equal in PAIRS) >= 50


@pytest.mark.parametrize(("pred", "gold", "equal"), PAIRS)
def test_is_equiv_pairs(pred, gold, equal):
    # CPU time, not wall time: a loaded machine stretched an 88 ms check to 3.1 s of wall time.
    start = time.process_time()
    assert math_reward.is_equiv(pred, gold, timeout_s=2.0) is equal
    assert time.process_time() - start < 2.5


PHRASINGS = [
    "<think>Let me compute.</think>\n<answer>{}</answer>",
    "Some work.\nThe final answer is $\\boxed{{{}}}$.",
    "So the answer is {}.",
    "So the answer is ${}$.",
    "<think>hmm</think><answer>The answer is \\boxed{{{}}}</answer>",
]


def _round_trip_failures(golds):
    failures = []
    for gold in golds:
        for phrasing in PHRASINGS:
            completion = phrasing.format(gold)
            if math_reward.accuracy_reward(completion, gold) != 1.0:
                failures.append((gold, completion))
    return failures


def test_gsm8k_gold_answers_round_trip(shared_data):
    records = tasks.gsm8k_records(shared_data / "gsm8k_test.jsonl")
    assert len(records) == 1319
    golds = [r["answer"] for r in records]
    assert _round_trip_failures(golds) == []
    # The raw '#### n' line is itself a phrasing the checker must read.
    lines = (shared_data / "gsm8k_test.jsonl").read_text().splitlines()
    raw = [json.loads(line)["answer"] for line in lines]
    assert all(math_reward.accuracy_reward(text, g) == 1.0 for text, g in zip(raw, golds))


def test_math500_gold_answers_round_trip(shared_data):
    records = tasks.math_records(shared_data / "math500_test.jsonl")
    assert len(records) == 500
    assert _round_trip_failures([r["answer"] for r in records]) == []


def test_distinct_integer_golds_are_not_equal(shared_data):
    records = tasks.gsm8k_records(shared_data / "gsm8k_test.jsonl")
    golds = sorted({r["answer"] for r in records if r["answer"].lstrip("-").isdigit()}, key=int)
    assert len(golds) > 300
    assert not any(math_reward.is_equiv(a, b) for a, b in zip(golds, golds[1:]))


def test_extraction_is_linear_on_many_unclosed_answer_tags():
    # A (.*?) regex rescans to the end from every unclosed <answer>: ~12 s for this 160 kB text.
    text = "<answer>7</answer>" + "<answer>" * 20_000
    start = time.monotonic()
    assert math_reward.extract_answer(text) == "7"
    assert time.monotonic() - start < 0.5


def test_a_sentence_answer_is_graded_in_linear_time():
    # The word-answer check ran "[A-Za-z]{2,}(?: ?[A-Za-z]+)*" over normalize()'s space-free
    # letters, before the sympy deadline: exponential backtracking, 2.3 s with 29 letters before
    # the digit, twice that for every letter more (this one's 35: ~2 min; 43 letters: days).
    answer = "Every day Janet makes a total of all of them 18 dollars"
    tasks.accuracy("<answer>18</answer>", {"task": "gsm8k", "answer": "18"})  # imports, checker
    start = time.monotonic()
    assert tasks.accuracy(f"<answer>{answer}</answer>", {"task": "gsm8k", "answer": "18"}) == 0
    assert time.monotonic() - start < 8.0  # sympy's part is under its 5 s deadline
    assert math_reward.is_equiv("\\text{North East}", "north east")  # words, any case


def test_dangerous_answers_are_rejected_before_sympy():
    for answer in ("9**9**9**9", "9^{9^9}", "2^{99999}", "1000000!", "{" * 100 + "}" * 100):
        assert math_reward.is_dangerous(answer), answer
    for answer in ("2^{100}", "x^2+y^2", "\\frac{1}{2}", "5!", "e^{i\\pi}"):
        assert not math_reward.is_dangerous(answer), answer
    # Bare braces: math-verify's parse doubles about every level (12 deep 1.6 s, 14 deep 5.3 s,
    # the deadline). A command's argument, an exponent or a literal \{ is no bare brace; the
    # golds and solutions of shared/data nest them 3 deep at most.
    for answer in ("{" * 9 + "5" + "}" * 9, "{ " * 9 + "5" + " }" * 9, "{1+" * 9 + "5" + "}" * 9):
        assert math_reward.is_dangerous(answer), answer
    for answer in (
        "{" * 8 + "5" + "}" * 8,
        "1+\\cfrac{1}{" * 12 + "2" + "}" * 12,
        "\\sqrt {\\sqrt[3]{" * 6 + "2" + "}}" * 6,
        "\\{" * 12 + "1" + "\\}" * 12,
    ):
        assert not math_reward.is_dangerous(answer), answer


# The deadline the two tests below give `is_equiv`, well under what `_slow_pair` takes.
_SHORT_DEADLINE_S = 0.05


def _slow_pair():
    # Sympy work that passes every guard: ~4 s on the AMD EPYC VM of 2026-11, but only 0.45-0.55 s
    # on the Intel Xeon VM of 2026-12-05, where a 0.5 s deadline made these tests flaky. Hence
    # _SHORT_DEADLINE_S, 9x below the faster machine's time.
    expr = "+".join(f"\\frac{{x^{{{i}}}}}{{{i}+y}}" for i in range(1, 50))
    return expr, f"({expr})*(1+y)/(1+y)"


def test_deadline_on_main_thread_counts_as_not_equal():
    pred, gold = _slow_pair()
    math_reward.symbolic_equal("1", "1")  # (JAX is imported here: the checker child starts now)
    start = time.monotonic()
    assert math_reward.is_equiv(pred, gold, timeout_s=_SHORT_DEADLINE_S) is False
    assert time.monotonic() - start < 1.5


def test_deadline_off_main_thread_kills_the_checker_process():
    pred, gold = _slow_pair()
    out = {}

    def worker():
        math_reward.symbolic_equal("1", "1")  # start the checker process outside the timing
        start = time.monotonic()
        out["slow"] = math_reward.is_equiv(pred, gold, timeout_s=_SHORT_DEADLINE_S)
        out["slow_s"] = time.monotonic() - start
        out["after"] = math_reward.is_equiv("x^2+2x+1", "(x+1)^2")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert out == {"slow": False, "slow_s": out["slow_s"], "after": True}
    assert out["slow_s"] < 1.0
