"""Math answer extraction and equivalence: math-verify plus extraction rules, guards, a deadline."""

import fractions
import logging
import multiprocessing
import multiprocessing.connection
import re
import signal
import sys
import threading

import math_verify

from r1jax.rewards import helper
from r1jax.text import last_tagged

# math-verify warns on every call with its own (signal-based) timeout disabled; we bound time here.
logging.getLogger("math_verify").setLevel(logging.ERROR)

DEFAULT_TIMEOUT_S = 5.0
# Checks of this process that ran past their deadline and counted as not equal (a correct
# answer then scores 0): the reward pool reports each as a timeout of the reward that ran it.
deadline_hits = 0
MAX_ANSWER_CHARS = 1000  # longer "answers" are never sent to sympy
MAX_NESTING = 24  # bracket depth above which parsing gets super-linear in latex2sympy
# Depth of bare braces (a group no command, ^, _ or earlier group takes as its argument) above
# which math-verify's parse gets exponential: {{...5...}} 8 deep 0.4 s, 10 0.7 s, 12 1.6 s,
# 14 5.3 s, past the deadline (nested \frac, \sqrt, ^ or parentheses stay under 0.6 s at 14).
MAX_BARE_BRACES = 8
MAX_EXPONENT = 10_000  # a literal exponent above this can make sympy build a giant integer
MAX_FACTORIAL = 2_000
# A plain-number comparison allows 1e-9 relative error (a repeating decimal written out), but never
# more than this: "1234567891" must not equal "1234567890".
MAX_ABS_ERROR = fractions.Fraction(1, 10**6)
_CHECKER_START_S = 60.0

_MC_LETTER = re.compile(r"^\(?([A-Ea-e])\)?$")
# A choice letter followed by the option's value: "(C) 7", "C) 7", "\textbf{(C)}\ 7", "C. 7".
_LEADING_CHOICE = re.compile(r"^(?:\\text(?:bf)?\{)?\s*(?:\(([A-E])\)|([A-E])[).])")
# Choice marks: another letter's after a leading choice ("(A) or (B)", "A. or B.") is a hedge.
_CHOICE_MARK = re.compile(r"([A-E])[).]")
# Ordinal suffixes: "8^\text{th}", "2^{\rm nd}".
_ORDINAL = re.compile(r"\^\{?\s*(?:\\(?:text|mathrm|rm)\s*\{?\s*)?(?:st|nd|rd|th)\}?\}?")
# Disjunctions: "x=4 \lor x=6" names two candidates.
_DISJUNCTION = re.compile(r"\\(?:lor|vee)(?![a-zA-Z])")
# A sentence or clause after an answer given in prose ("is $5$. I hope it is correct",
# "is 5, since ..."): cut there.
_SENTENCE_END = re.compile(
    r"\.\s+(?=[A-Z])|\s*\bI hope it is correct|,\s+(?:since|because|as|which|so|and|but|where)\b"
)
_DOLLAR_SPAN = re.compile(r"(?<!\\)\$\$?((?:\\\$|[^$])+?)(?<!\\)\$\$?")  # not at "\$" (currency)
_GSM8K = re.compile(r"####\s*([^\n]*)")
# Up to the line's end or a closing tag ("... the answer is 18</think>").
_THE_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*((?:(?!</)[^\n])*)", re.IGNORECASE)
_ANSWER_SENTENCE = re.compile(
    r"\s*(?:(?:so|thus|therefore|hence),?\s+)?"
    r"(?:the\s+(?:final\s+)?answer\s+is\s*:?|(?:final\s+)?answer\s*:)\s*(.+?)\s*$",
    re.IGNORECASE | re.DOTALL,
)
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")
# A plain number: integer, decimal, fraction a/b, or scientific notation "1.5e3" (a lowercase
# e would otherwise reach math-verify as Euler's number; the exponent is kept small).
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d{1,3}|(/\d+)?)$")
_UNIT_TAIL = re.compile(
    r"^([-+]?[\d.,]*\d)(\s*(?:\\%|%|°|\\text\{[^{}]*\}|\\mbox\{[^{}]*\})"
    r"|\s+[a-zA-Z]{2,}[a-zA-Z .\-/]*"
    # written against the number, only unit abbreviations: "2ab" keeps its variables
    r"|(?:cm|mm|km|kg|mg|ml|mL|ft|lbs?|oz|hrs?|sec|mph|cents?|dollars?)(?:[ .\-/][a-zA-Z .\-/]*)?)$"
)
# A number in a base ("2516_8", "A3_{16}"): math-verify drops the subscript, so "52_9" was "52_8".
_IN_BASE = re.compile(r"[0-9A-Za-z]+_\{?(\d{1,4})\}?")
# A number with letters against it ("2ab"): an expression, never a plain number's equal.
_NUMBER_TIMES_LETTERS = re.compile(r"[-+]?[\d.]*\d[a-zA-Z]{2,}")
# The left side of a gold that names its value ("x = 3", "x_1 = 3", "f(x) = x^2", "AB = 12",
# "\theta = 30"): answering with the value alone is right. Any other equation ("x + y + z = 0",
# a plane) is the answer itself; math-verify would credit its right side alone ("0").
_NAMED_VALUE = re.compile(r"(?:[a-zA-Z]|[A-Z]{2,3}|\\[a-zA-Z]+)'*(?:_\{?\w+\}?)?(?:\([^()=]*\))?'*")
# A unit squared or cubed: "15\mbox{ cm}^2" (MATH-500's gold), "864 inches^2": a \text/\mbox
# group, or a unit name of two letters or more after a space ("3m^2" keeps its variable m).
_AREA_TAIL = re.compile(
    r"^([-+]?[\d.,]*\d)(\s*\\text\{[^{}]*\}|\s*\\mbox\{[^{}]*\}|\s+(?:square\s+)?(?:[ckm]m|in"
    r"|inch(?:es)?|ft|feet|foot|yards?|yd|(?:centi|milli|kilo)?met(?:er|re)s?|units?))\^\{?[23]\}?$"
)
# Words that make a trailing "unit" part of the value or a second candidate ("5 million",
# "7 or eight", "3 squared", "2 pi", "7\text{ or 8}"): such a tail is never stripped.
_NOT_UNITS = frozenset(
    """or and nor not no but plus minus over divided than to either neither maybe perhaps
    possibly probably except zero one two three four five six seven eight nine ten eleven twelve
    thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty
    seventy eighty ninety hundred hundreds thousand thousands million millions billion billions
    trillion trillions dozen dozens half halves quarter quarters third thirds fourth fourths
    fifth fifths sixth sixths seventh sevenths eighth eighths ninth ninths tenth tenths
    hundredth hundredths thousandth thousandths squared cubed
    factorial pi mod sqrt root""".split()
)
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}$")
_LONE_NUMBER = re.compile(r"\s*\(?\s*[-+]?[\d.,]*\d\s*\)?\s*")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_POWER = re.compile(r"(\^|\*\*)")
_EXPONENT_LITERAL = re.compile(r"(?:\^|\*\*)\s*\{?\s*\(?\s*(\d+)")
_FACTORIAL_LITERAL = re.compile(r"(\d+)\s*!")
_PARSE_CONFIG = [
    math_verify.LatexExtractionConfig(boxed_match_priority=0),
    math_verify.ExprExtractionConfig(),
]


class _Deadline(BaseException):
    """Raised by the interval timer; a BaseException so sympy's `except Exception` can't eat it."""


_deadline_armed = threading.Event()


_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BOXES_TRIED = 8  # the last few boxes only: each scan may run to the end of the text
_UNBALANCED = object()
_BARE_BOX_TOKEN = re.compile(r"[-+]?(\d[\d.,/]*|\\?[A-Za-z])")


def _box_at(text: str, start: int, command: str) -> str | None:
    """The content of the box command at `start`: None when it boxes nothing (a mention of the
    command in prose), _UNBALANCED when its braces never close."""
    open_at = text.find("{", start)
    if open_at < 0 or text[start:open_at].strip() != command:
        # "\boxed 5" (no braces) is valid LaTeX for a single token; prose that names the
        # command ("put it in \boxed notation") is not an answer.
        rest = text[start:].split(None, 2)
        token = rest[1].rstrip(".$") if len(rest) > 1 and rest[0] == command else ""
        return token if _BARE_BOX_TOKEN.fullmatch(token) else None
    depth = 0
    for i in range(open_at, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return _UNBALANCED


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (nested braces matched), skipping a
    trailing mention of the command that boxes nothing ("... in \\boxed."); None if none."""
    end = len(text)
    for _ in range(_BOXES_TRIED):
        start, command = max((text.rfind(c, 0, end), c) for c in _BOX_COMMANDS)
        if start < 0:
            return None
        content = _box_at(text, start, command)
        if content is _UNBALANCED:  # the last box never closes: no answer rather than a guess
            return None
        if content is not None and content.strip():  # an empty \boxed{} is a mention too
            return content
        end = start
    return None


def _strip_sentence(ans: str) -> str:
    """Trim phrasing around an answer given in prose ("is $42$.", "is **42**", "is $5$. I hope
    it is correct", "is 5, since ..."): one $...$ span is the answer (two stay, a hedge)."""
    spans = _DOLLAR_SPAN.findall(ans)
    if len(spans) == 1:
        ans = spans[0]
    else:
        cut = _SENTENCE_END.search(ans)
        ans = ans[: cut.start()] if cut else ans
    ans = ans.strip().rstrip(".").strip()
    ans = ans.strip("*").strip()
    if len(ans) >= 2 and ans[0] == "$" and ans[-1] == "$":
        ans = ans.strip("$").strip()
    return ans


def extract_answer(text: str) -> str | None:
    """Final answer: <answer> tag, else last \\boxed{}, else "#### x", else "the answer is x"."""
    if not isinstance(text, str):
        return None
    inner = last_tagged(text)
    if inner is not None:
        boxed = _last_boxed(inner)
        if boxed is not None:
            return boxed.strip()
        gsm = _GSM8K.findall(inner)  # "<answer>#### 18</answer>", GSM8K's own marker
        if gsm:
            return _strip_sentence(gsm[-1])
        # A sentence in the tag ("The answer is 42.", "Answer: 42") gives what it names.
        said = _ANSWER_SENTENCE.match(inner)
        return _strip_sentence(said.group(1) if said else inner).strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    gsm = _GSM8K.findall(text)
    if gsm:
        return _strip_sentence(gsm[-1])
    said = _THE_ANSWER_IS.findall(text)
    if said:
        inner = _strip_sentence(said[-1])
        boxed = _last_boxed(inner)
        return boxed.strip() if boxed is not None else inner
    return None


# Unicode math a model may write, as the LaTeX the later steps read ("1½" a mixed number).
_UNICODE_MATH = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\u00b7": "\\cdot ",
        "\u22c5": "\\cdot ",
        "\u221e": "\\infty ",
        "\u221a": "\\sqrt",
        "\u00bd": "\\frac{1}{2}",
        "\u2153": "\\frac{1}{3}",
        "\u2154": "\\frac{2}{3}",
        "\u00bc": "\\frac{1}{4}",
        "\u00be": "\\frac{3}{4}",
    }
)
# Superscript digits and signs ("x²", "10⁻³") as an exponent.
_SUPERSCRIPT = re.compile("[\u2070\u00b9\u00b2\u00b3\u2074-\u2079\u207a\u207b]+")
_FROM_SUPERSCRIPT = str.maketrans(
    "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207a\u207b", "0123456789+-"
)
# A repeating decimal, "0.\overline{3}" or "1.2\overline{45}": its exact value.
_REPEATING = re.compile(r"([-+]?)(\d{0,50})\.(\d{0,50})\\overline\{(\d{1,50})\}")
_ROOT_PARENS = re.compile(r"\\sqrt\(([^()]*)\)")
# LaTeX arguments of one token may go without braces: \sqrt3, \frac12, \frac\pi2, \frac{\sqrt3}2.
_TOKEN = r"(\\[a-zA-Z]+|[a-zA-Z0-9])"
_ARG = (
    r"(\{(?:[^{}]|\{[^{}]*\})*\}|\\[a-zA-Z]+|[a-zA-Z0-9])"  # braced (one level nested) or a token
)
_BARE_SQRT = re.compile(r"\\sqrt\s*" + _TOKEN)
_ANY_FRAC = re.compile(r"\\frac\s*" + _ARG + r"\s*" + _ARG)


def _braced(s: str) -> str:
    """\\sqrt and \\frac arguments in braces: '\\frac\\pi2' -> '\\frac{\\pi}{2}'."""
    brace = lambda arg: arg if arg.startswith("{") else "{" + arg + "}"  # noqa: E731
    s = _BARE_SQRT.sub(r"\\sqrt{\1}", s)
    return _ANY_FRAC.sub(lambda m: "\\frac" + brace(m.group(1)) + brace(m.group(2)), s)


def normalize(ans: str) -> str:
    """Cheap canonical form: no $, spaces, \\left, thousands separators, units or \\text{}."""
    s = ans.translate(_UNICODE_MATH)
    s = _SUPERSCRIPT.sub(lambda m: "^{" + m.group(0).translate(_FROM_SUPERSCRIPT) + "}", s)
    s = re.sub(r"(?<![\w)}])\u2013", "-", s)  # an en dash used as a minus ("–5"), not "1–5"
    s = _ROOT_PARENS.sub(r"\\sqrt{\1}", s)  # "√(2)"
    s = s.strip().strip("$").strip()
    # LaTeX's digit-group separator ",\!" (MATH: "11,\! 111,\! 100"), with any space after it,
    # as PRM800K's grader drops it: else the space made the number a list.
    s = re.sub(r"(?<=\d),\\!\s*(?=\d{3}(?!\d))", "", s)
    # LaTeX spaces (\\, \\! \\: \\; \\  and ~); a "\\ " that ends a "\\\\" row break is not one.
    s = re.sub(r"(?<!\\)\\[!,:; ]|(?<!\\)~", "", s).replace("\\dfrac", "\\frac")
    s = s.replace("\\tfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("\\cfrac", "\\frac")
    s = _braced(s)
    s = _ORDINAL.sub("", s)  # "8^\text{th}"
    s = re.sub(r"(?<=\d)\{,\}(?=\d{3})", "", s)  # "14{,}916": a digit group separator
    s = re.sub(r"^\\\$\s*|^\$", "", s).strip()  # a leading currency sign
    s = re.sub(r"\s+", " ", s).rstrip(".").strip()
    unwrapped = _TEXT_WRAP.match(s)
    if unwrapped:
        s = unwrapped.group(1).strip()
    unit = _UNIT_TAIL.match(s) or _AREA_TAIL.match(s)
    if unit and _plain_unit(unit.group(2)):
        s = unit.group(1)
    # "1,234" is one number; "81, 256" (a space after the comma) is a list of two, as in the
    # MATH graders (PRM800K strips only commas with no space after them). The space stays so
    # that no later reading (math-verify's) takes "81,256" for 81256.
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = re.sub(r"(?<!\d,) | (?!\d)", "", s)
    repeating = _REPEATING.fullmatch(s)
    if repeating:
        sign, whole, fixed, period = repeating.groups()
        tail = fractions.Fraction(int(period), 10 ** len(period) - 1)
        value = int(whole or 0) + (int(fixed or 0) + tail) / 10 ** len(fixed)
        s = str(-value if sign == "-" else value)
    return s


def _plain_unit(tail: str) -> bool:
    """Whether a trailing word group is a unit to drop, not more of the value or another answer."""
    words = re.findall(r"[a-zA-Z]+", tail)
    return not any(c.isdigit() for c in tail) and not any(w.lower() in _NOT_UNITS for w in words)


def _hedged_text(s: str) -> bool:
    """A \\text{} group that holds a number or a connective ("7\\text{ or 8}"): math-verify
    would drop it as a unit. An answer that is only such a group holding only a number
    ("\\textbf{(113)}", AoPS's way to state an answer) hedges nothing."""
    if _TEXT_WRAP.match(s.strip()) and _LONE_NUMBER.fullmatch(_TEXT_WRAP.match(s.strip())[1]):
        return False
    return any(not _plain_unit(group) for group in _TEXT_GROUP.findall(s))


def _as_fraction(s: str) -> fractions.Fraction | None:
    if not _NUMBER.match(s) or len(s) > 100:
        return None
    try:
        return fractions.Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


_LATEX_FRACTION = re.compile(r"([-+]?)\\frac\{(\d{1,50})\}\{(\d{1,50})\}")


def _latex_fraction(s: str) -> fractions.Fraction | None:
    """'\\frac{14}{3}' (normalize braced it; signed or not) as 14/3, else None."""
    m = _LATEX_FRACTION.fullmatch(s)
    if m is None or int(m.group(3)) == 0:
        return None
    value = fractions.Fraction(int(m.group(2)), int(m.group(3)))
    return -value if m.group(1) == "-" else value


def _choice_letter(s: str) -> str | None:
    s = re.sub(r"^(option|choice)\s*", "", s.strip(), flags=re.IGNORECASE)
    unwrapped = _TEXT_WRAP.match(s)
    if unwrapped:
        s = unwrapped.group(1).strip()
    m = _MC_LETTER.match(s)
    return m.group(1).upper() if m else None


def _max_nesting(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth = max(depth - 1, 0)
    return deepest


_LATEX_TOKEN = re.compile(r"\\[a-zA-Z]+|\\.|\s+|.", re.DOTALL)


def _max_bare_braces(s: str) -> int:
    """Deepest nesting of bare braces: groups not taken as an argument, i.e. not straight after
    a command name (\\frac), ^, _, } or ] (spaces skipped; \\{ is a literal brace)."""
    stack, deepest, before = [], 0, ""  # stack: bare braces open up to and including each
    for m in _LATEX_TOKEN.finditer(s):
        token = m.group(0)
        if token == "{":
            takes = before in ("^", "_", "}", "]") or (before[:1] == "\\" and before[1:].isalpha())
            stack.append((stack[-1] if stack else 0) + (not takes))
            deepest = max(deepest, stack[-1])
        elif token == "}" and stack:
            stack.pop()
        if not token.isspace():
            before = token
    return deepest


def is_dangerous(ans: str) -> bool:
    """True for answers that could make sympy build huge integers or parse super-linearly."""
    if len(ans) > MAX_ANSWER_CHARS or _max_nesting(ans) > MAX_NESTING:
        return True
    if _max_bare_braces(ans) > MAX_BARE_BRACES:
        return True
    if any(int(d) > MAX_EXPONENT for d in _EXPONENT_LITERAL.findall(ans) if len(d) < 12):
        return True
    if any(len(d) >= 12 for d in _EXPONENT_LITERAL.findall(ans)):
        return True
    if any(len(d) > 6 or int(d) > MAX_FACTORIAL for d in _FACTORIAL_LITERAL.findall(ans)):
        return True
    # A power inside an exponent (towers such as 9^{9^{9}} or 9**9**9) is never a sane answer.
    for m in _POWER.finditer(ans):
        tail = ans[m.end() :].lstrip()
        exponent = _leading_group(tail)
        if _POWER.search(exponent):
            return True
    return False


def _leading_group(s: str) -> str:
    """The exponent that follows a power operator: a {...} or (...) group, or the next token."""
    if s[:1] in "{(":
        close = {"{": "}", "(": ")"}[s[0]]
        depth = 0
        for i, ch in enumerate(s):
            depth += ch == s[0]
            depth -= ch == close
            if depth == 0:
                return s[: i + 1]
        return s
    m = re.match(r"[\w.\\]+\s*(\^|\*\*)?", s)
    return m.group(0) if m else ""


def _mv_equal(pred: str, gold: str) -> bool:
    """math-verify parse + verify with its signal timeouts off (the caller bounds time)."""
    gold_parsed = math_verify.parse(
        "\\boxed{" + gold + "}", extraction_config=_PARSE_CONFIG, parsing_timeout=None
    )
    pred_parsed = math_verify.parse(
        "\\boxed{" + pred + "}", extraction_config=_PARSE_CONFIG, parsing_timeout=None
    )
    if not gold_parsed or not pred_parsed:
        return False
    return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _raise_deadline(signum, frame):
    if _deadline_armed.is_set():
        raise _Deadline()


def _with_itimer(pred: str, gold: str, timeout_s: float) -> bool:
    """Run math-verify under SIGALRM (main thread only); the deadline counts as not equal."""
    previous = signal.signal(signal.SIGALRM, _raise_deadline)
    _deadline_armed.set()
    # Re-fire every 50 ms in case some library code swallows the first interruption.
    signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.05)
    try:
        return _mv_equal(pred, gold)
    except _Deadline:
        _count_deadline()
        return False
    finally:
        _deadline_armed.clear()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _checker_main(read_fd: int, write_fd: int) -> None:
    """Child process: answer (pred, gold) requests until the parent closes the pipe. SIGINT and
    SIGTERM are ignored (`helper.start`): it keeps checking for the step a stopped trainer saves."""
    requests = multiprocessing.connection.Connection(read_fd, writable=False)
    replies = multiprocessing.connection.Connection(write_fd, readable=False)
    replies.send("ready")
    while True:
        try:
            pred, gold = requests.recv()
        except (EOFError, OSError):
            return
        try:
            replies.send(_mv_equal(pred, gold))
        except Exception:  # noqa: BLE001 - any parser failure means "not equal"
            replies.send(False)


class _Checker:
    """A persistent child process running math-verify; killed and replaced when a call overruns."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc = None

    def _start(self):
        self._proc, self._requests, self._replies = helper.start(
            "r1jax.rewards.math", "_checker_main"
        )
        # Imports (sympy) take a second or more; that wait is not charged to the first check.
        if not self._replies.poll(_CHECKER_START_S) or self._replies.recv() != "ready":
            self._kill()
            raise RuntimeError("math checker process failed to start")

    def _kill(self):
        self._proc.kill()
        self._proc.wait()
        self._requests.close()
        self._replies.close()
        self._proc = None

    def equal(self, pred: str, gold: str, timeout_s: float) -> bool:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            try:
                self._requests.send((pred, gold))
                if self._replies.poll(timeout_s):
                    return bool(self._replies.recv())
                _count_deadline()
            except (EOFError, OSError):
                pass
            self._kill()
            return False


_CHECKER = _Checker()


def _count_deadline() -> None:
    global deadline_hits
    deadline_hits += 1


def symbolic_equal(pred: str, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """math-verify equivalence under a hard deadline (itimer on the main thread, else a child).

    A process that has imported JAX (the trainer with in-process rewards) also uses the child:
    an exception raised from a signal handler can land inside JAX's own callbacks, which
    swallow it (seen here: the deadline then overran).
    """
    if is_dangerous(pred) or is_dangerous(gold):
        return False
    if threading.current_thread() is threading.main_thread() and "jax" not in sys.modules:
        try:
            return _with_itimer(pred, gold, timeout_s)
        except Exception:  # noqa: BLE001 - sympy raises many types on odd input
            return False
    return _CHECKER.equal(pred, gold, timeout_s)


def is_equiv(pred: str | None, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when the predicted answer equals the gold answer (numbers, letters, LaTeX, sympy)."""
    if pred is None or gold is None:
        return False
    pred, gold = str(pred), str(gold)
    p, g = normalize(pred), normalize(gold)
    if "=" not in g and p.count("=") == 1 and _NAMED_VALUE.fullmatch(p.split("=")[0]):
        # "x = 1,000" answers "1000" with its value, read as a bare answer is (math-verify
        # takes the right side, but "1,000" there as the set {1, 0}).
        p = normalize(p.split("=")[1])
    if not p or not g:
        return False
    if p == g:
        return True
    # A choice is an uppercase letter ("(C)"); a lowercase one is a variable ("a", "e").
    gold_letter = _choice_letter(g) if not re.fullmatch(r"\(?[a-e]\)?", g) else None
    if gold_letter is not None:
        leading = _LEADING_CHOICE.match(p)
        if len(set(_CHOICE_MARK.findall(pred))) > 1:  # as written: normalize drops a final "."
            leading = None
        letter = _choice_letter(p) or (leading and (leading.group(1) or leading.group(2)))
        return letter == gold_letter
    pf, gf = _as_fraction(p), _as_fraction(g)
    # A LaTeX fraction of integers is a plain number too: against a decimal, the same 1e-9
    # (math-verify rounds to 6 places: "4.666667" was \frac{14}{3}, though not 14/3).
    if (pf is None) != (gf is None):
        pf = pf if pf is not None else _latex_fraction(p)
        gf = gf if gf is not None else _latex_fraction(g)
    if pf is not None and gf is not None:
        return abs(pf - gf) <= min(fractions.Fraction(1, 10**9) * max(1, abs(gf)), MAX_ABS_ERROR)
    base_p, base_g = _IN_BASE.fullmatch(p), _IN_BASE.fullmatch(g)
    if base_p and base_g and int(base_p.group(1)) != int(base_g.group(1)):
        return False  # another base (a bare "52" still answers "52_8")
    if (gf is None) != (pf is None) and _NUMBER_TIMES_LETTERS.fullmatch(p if gf else g):
        return False  # math-verify reads "2ab" as 2
    if _WORDS.fullmatch(p) and _WORDS.fullmatch(g):  # "\text{East}" is "east": words, any case
        return p.casefold() == g.casefold()
    # Two candidates where the gold has one ("7\text{ or }8", "x=4 \lor x=6"); a gold that
    # lists several values is answered by "1 or 2" / "1 and 2".
    hedged = lambda s: _hedged_text(s) or bool(_DISJUNCTION.search(s))  # noqa: E731
    if hedged(pred) and not hedged(gold) and not _top_level_comma(gold):
        return False
    if g.count("=") == 1 and "=" not in p and not _NAMED_VALUE.fullmatch(g.split("=")[0]):
        return False
    return symbolic_equal(p, g, timeout_s=timeout_s)


_WORDS = re.compile(r"[A-Za-z]{2,}(?: [A-Za-z]+)*")  # one way to match: no backtracking blow-up


def _top_level_comma(s: str) -> bool:
    """Whether `s` is a list of values: a comma outside every bracket ("1, 2", not "(1, 2)")."""
    depth = 0
    for ch in s:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            return True
    return False


def accuracy_reward(completion: str, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> float:
    """1.0 when the completion's extracted final answer equals the gold answer, else 0.0."""
    return float(is_equiv(extract_answer(completion), gold, timeout_s=timeout_s))
