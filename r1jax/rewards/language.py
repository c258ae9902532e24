"""Language consistency (R1): share of chain-of-thought words in the target language, by script.

R1 (§2.3.2) computes the reward "as the proportion of target language words in the CoT". Words
are told apart by script here: a run of Latin letters is one word (every Latin-script language
counts as "en"), and so is a run of Hangul syllables (Korean puts spaces between words); each
CJK ideograph or kana is one word (those scripts have no spaces between words). What is not
prose of any language is left out, so that reasoning about math or code in Chinese is Chinese:
- LaTeX command names (\\frac, \\sqrt, \\text: LaTeX's own, not any backslashed word) and
  single letters (x, n: variables);
- short all-capital runs (ABC, AB: points and segments; not three capital words in a row,
  which are shouted prose) and math function names (sin, gcd);
- inline code without spaces (`numpy.linalg.solve`);
- closed code fences that hold code: under a code or data language's label (```cpp, ```json),
  Python that parses, or unlabelled lines mostly of code punctuation; their comments, strings
  and lines that read as sentences (four words in a row) count as prose. A fence that is never
  closed, or holds prose (```text, ```markdown, unlabelled lines of words), counts as prose:
  one ``` must not hide a thought's mixed language, nor must a label (English sentences under
  ```json, or as JSON strings, are English).
The text is NFKC-normalized first (full-width Latin is Latin, half-width kana are kana).
"""

import ast
import io
import re
import tokenize
import unicodedata
import warnings

from r1jax.rewards import format as format_reward

_SCRIPTS = {
    # Latin letters with accents, Latin Extended Additional among them (Vietnamese ệ ở ầ: a
    # word split at each of them, its one-letter pieces dropped as variables), and combining
    # marks after a letter (one NFKC cannot compose); not the signs × ÷ (U+00D7, U+00F7).
    "en": re.compile(
        r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff]"
        r"[A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\u0300-\u036f]*"
    ),
    # CJK ideographs: extension A, the unified block, compatibility, extensions B-F.
    "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]"),
    "ja": re.compile(r"[\u3040-\u309f\u30a1-\u30fa\u30fc-\u30ff]"),  # kana (not the ・ dot)
    "ko": re.compile(r"[\uac00-\ud7af]+"),
    "ru": re.compile(r"[\u0400-\u04ff]+"),
    # Arabic letters and their vowel marks (not its digits or punctuation: ١٢ ، ؟).
    "ar": re.compile(
        r"[\u0620-\u065f\u066e-\u066f\u0670-\u06d3\u06d5\u06df-\u06e8\u06ea-\u06ed"
        r"\u06fa-\u06fc\u06ff]+"
    ),
}
LANGUAGES = tuple(_SCRIPTS)
# Latin runs that are math, not English: one letter (a variable), up to 4 capitals (triangle
# ABC, segment AB), the names of functions and operators written without a backslash.
_MATH_WORD = re.compile(r"^(?:[A-Za-z]|[A-Z]{2,4})[\u0300-\u036f]*$")  # x̂ too
_MATH_FUNCTIONS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln lg exp gcd lcm max min "
    "mod det lim sup inf arg deg dim ker sgn".split()
)
_LATEX_COMMAND = re.compile(r"\\([A-Za-z]+)")
# Three or more capital words in a row are shouted prose ("FIRST WE NOTE"), not points (ABC).
_SHOUTED = re.compile(r"(?<![A-Za-z])[A-Z]{2,}+(?:[ \t]+[A-Z]{2,}+){2,}(?![A-Za-z])")
# LaTeX's and its math packages' command names (those of MATH's problems and solutions among
# them): math, no language's words. Any other \name is its letters ("\we \note" is English).
_LATEX_NAMES = frozenset(
    """
    alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi
    omicron pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta
    Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega ell hbar imath jmath aleph wp Re Im
    frac dfrac tfrac cfrac sqrt root of binom dbinom tbinom choose over atop pmod bmod mod
    cdot cdots ldots dots dotsb dotsm dotsc dotsi dotso vdots ddots times div pm mp ast star
    circ bullet oplus ominus otimes oslash odot bigcirc dagger ddagger amalg cup cap sqcup sqcap
    vee wedge bigcup bigcap bigvee bigwedge bigoplus bigotimes biguplus setminus smallsetminus
    le leq leqslant ge geq geqslant ne neq lt gt ll gg lesssim gtrsim prec succ preceq succeq
    approx equiv cong sim simeq asymp propto doteq models perp parallel mid nmid
    in notin ni subset subseteq subsetneq supset supseteq supsetneq emptyset varnothing
    forall exists nexists neg lnot land lor implies impliedby iff therefore because
    to gets mapsto rightarrow leftarrow Rightarrow Leftarrow leftrightarrow Leftrightarrow
    longrightarrow longleftarrow Longrightarrow Longleftarrow longleftrightarrow
    Longleftrightarrow uparrow downarrow Uparrow Downarrow updownarrow nearrow searrow
    swarrow nwarrow hookrightarrow rightharpoonup leadsto
    infty partial nabla prime backslash angle measuredangle sphericalangle triangle
    bigtriangleup bigtriangledown triangleleft triangleright square Box blacksquare diamond
    Diamond lozenge clubsuit diamondsuit heartsuit spadesuit top bot flat natural sharp bowtie
    degree checkmark surd
    sum prod coprod int iint iiint oint lim limsup liminf sup inf max min arg det dim ker hom
    deg gcd lcm exp log ln lg sin cos tan cot sec csc arcsin arccos arctan arccot sinh cosh
    tanh coth Pr operatorname
    left right big Big bigg Bigg bigl bigr Bigl Bigr biggl biggr Biggl Biggr middle
    lfloor rfloor lceil rceil langle rangle lvert rvert lVert rVert vert Vert lbrace rbrace
    lbrack rbrack
    text textbf textit textrm textsf texttt textnormal textup textsc emph mbox hbox fbox
    boxed mathrm mathbf mathit mathsf mathtt mathcal mathbb mathfrak mathscr mathop mathbin
    mathrel mathord bm boldsymbol bf it rm sf tt cal bold displaystyle textstyle
    scriptstyle scriptscriptstyle limits nolimits
    overline underline overbrace underbrace overrightarrow overleftarrow overleftrightarrow
    overarc widehat widetilde hat tilde bar vec dot ddot dddot acute grave breve check
    mathring cancel cancelto bcancel xcancel not stackrel overset underset frown smile
    begin end matrix pmatrix bmatrix Bmatrix vmatrix Vmatrix smallmatrix cases dcases array
    align aligned gather gathered split equation eqnarray tabular hline cline multicolumn
    multirow noalign arraystretch
    quad qquad hspace vspace space enspace thinspace negthinspace phantom hphantom vphantom
    smallskip medskip bigskip newline linebreak allowbreak nobreak indent noindent cr
    label tag notag nonumber ref eqref item tiny scriptsize footnotesize small normalsize
    large Large LARGE huge Huge parbox renewcommand newcommand def let
    """.split()
)
_INLINE_CODE = re.compile(r"`[^`\s]+`")
# A fence: ``` and its info string, the body, the closing ``` (a fence never closed is prose).
_FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)
_PYTHON = frozenset(("python", "py", "python3", "ipython", "pycon"))
# Code and data languages by how their comments start: '#', '//' (C family), neither.
_HASH_COMMENTS = frozenset(
    "bash sh shell zsh console shell-session r julia ruby rb perl yaml yml toml ini "
    "dockerfile makefile make cmake elixir nim powershell ps1 tcl coffee".split()
)
_SLASH_COMMENTS = frozenset(
    "c cpp c++ cc cxx h hpp java javascript js jsx typescript ts tsx go rust rs kotlin kt swift "
    "scala csharp cs c# dart php groovy objc objective-c zig solidity proto graphql scss less "
    "cuda".split()
)
_NO_COMMENTS = frozenset(
    "json jsonc sql haskell hs lua matlab octave ocaml fortran lisp scheme clojure erlang html "
    "xml css latex tex diff patch csv asm nasm prolog vhdl verilog wasm".split()
)
_CODE_PUNCTUATION = re.compile(r"[;{}()\[\]=<>]")
# From a word's start only, words taken whole (possessive): linear in a line of any length.
_LETTER = r"[A-Za-z\u00c0-\u024f\u1e00-\u1eff\u0400-\u04ff]"
_SENTENCE_RUN = re.compile(
    rf"(?<!{_LETTER}){_LETTER}{{2,}}+(?: {_LETTER}{{2,}}+){{3}}"
    r"|[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]{4}"
)
_DOUBLE_QUOTED = re.compile(r'"((?:[^"\\\n]|\\.)*)"')
_COMMENTS = {
    "#": re.compile(r"(?:^|\s)#(?!include|define|if|endif|pragma|import)(.*)$", re.MULTILINE),
    "//": re.compile(r"(?:^|\s)//(.*)$", re.MULTILINE),
}


def _python(body: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in a string: SyntaxWarning
            return ast.parse(body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _python_prose(tree: ast.Module, body: str) -> str:
    """A parsed Python block's comments and strings (docstrings, messages, data)."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(body).readline)
        comments = [t.string[1:] for t in tokens if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, SyntaxError):
        comments = []
    strings = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    return " ".join(comments + strings)


def _sentence(line: str) -> bool:
    """Whether a line in a fence reads as a sentence, not code: four words in a row (Latin,
    Cyrillic) or four ideographs / kana / Hangul syllables."""
    return bool(_SENTENCE_RUN.search(line))


def _code_line_prose(line: str, comment_starts) -> str:
    """A code line's prose: the line itself when it is a sentence, else its comments and its
    double-quoted strings (C-family and JSON strings; Python's come from its parse)."""
    if _sentence(line):
        return line
    parts = [m for start in comment_starts for m in _COMMENTS[start].findall(line)]
    return " ".join(parts + _DOUBLE_QUOTED.findall(line))


def _code_prose(info: str, body: str) -> str | None:
    """The prose in a closed fence that holds code, or None when the fence holds prose. Code: a
    code or data language's label (the label's first word), Python that parses, or, unlabelled,
    mostly lines of code punctuation; prose: its own label (```text, ```markdown), or unlabelled
    lines of words. Of code, its comments and strings are prose, and so is every line that
    reads as a sentence: a label does not hide the English written under it."""
    lang = (info.split() or [""])[0].lower()
    if lang in _PYTHON or not lang:
        tree = _python(body)
        if tree is not None:
            return _python_prose(tree, body)
    if lang in _PYTHON or lang in _HASH_COMMENTS:
        starts = ("#",)
    elif lang in _SLASH_COMMENTS:
        starts = ("//",)
    elif lang in _NO_COMMENTS:
        starts = ()
    elif lang:
        return None  # ```text, ```markdown, an unknown label: prose
    else:
        lines = [line for line in body.splitlines() if line.strip()]
        punctuated = sum(
            bool(_CODE_PUNCTUATION.search(line)) and not _sentence(line) for line in lines
        )
        if not lines or 2 * punctuated < len(lines):
            return None  # unlabelled lines of words
        starts = ("//", "#")  # unlabelled code of some language
    return " ".join(_code_line_prose(line, starts) for line in body.splitlines())


def _drop_code(match: re.Match) -> str:
    kept = _code_prose(match.group(1), match.group(2))
    return " " + (match.group(2) if kept is None else kept) + " "


def prose(text: str) -> str:
    """The text with what is no language's words taken out (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text)
    text = _FENCE.sub(_drop_code, text)
    text = _INLINE_CODE.sub(" ", text)
    text = _LATEX_COMMAND.sub(_latex_name, text)
    return _SHOUTED.sub(lambda m: m.group(0).lower(), text)


def _latex_name(match: re.Match) -> str:
    return " " if match.group(1) in _LATEX_NAMES else f" {match.group(1)} "


def word_counts(text: str) -> dict[str, int]:
    """Number of words per language script in the text (Latin counts as "en"), math and code
    left out (`prose`)."""
    return _script_counts(prose(text))


def _script_counts(text: str) -> dict[str, int]:
    """`word_counts` of text that is prose already."""
    counts = {}
    for lang, pattern in _SCRIPTS.items():
        words = pattern.findall(text)
        if lang == "en":
            words = [w for w in words if not _MATH_WORD.match(w) and w not in _MATH_FUNCTIONS]
        counts[lang] = len(words)
    return counts


def normalize(code) -> str | None:
    """A record's language field as one of LANGUAGES ('zh-CN' and 'ZH' read as 'zh'), else None."""
    if not isinstance(code, str):
        return None
    base = re.split(r"[-_]", code.strip().lower(), maxsplit=1)[0]
    return base if base in _SCRIPTS else None


def thought(text: str) -> str:
    """The chain of thought without the R1 tags: the <think> part (or the text before </think>);
    with no think tag, the text before <answer> (an answer alone has no thought); with no tag at
    all, the whole text."""
    if "<think>" in text or "</think>" in text:
        part = format_reward.think_part(text)
    else:
        part = text.split("<answer>", 1)[0]
    for tag in format_reward.TAGS:
        part = part.replace(tag, " ")
    return part


# Ideographs a kana-free sentence may have and still count as Japanese for a Japanese target.
JA_KANJI_ONLY_MAX = 8
# Sentences, for telling a Japanese sentence (kana among its kanji) from a Chinese one.
_SENTENCE = re.compile(r"[^。！？!?.\n]+")


def consistency(text: str, target_language: str) -> float:
    """Share of the thought's words (`thought`) in the target language; 0 if it has no words."""
    if target_language not in _SCRIPTS:
        raise ValueError(f"unknown language {target_language!r}; known: {LANGUAGES}")
    part = thought(text)
    if target_language != "ja":
        counts = word_counts(part)
    else:
        # Japanese writes kanji beside kana: a sentence with kana counts its ideographs as
        # Japanese words, and so does a short one without (a heading: 問題, 解法); a sentence
        # of JA_KANJI_ONLY_MAX ideographs or more and no kana is Chinese.
        counts = dict.fromkeys(LANGUAGES, 0)
        for sentence in _SENTENCE.findall(prose(part)):
            sentence_counts = _script_counts(sentence)  # prose(part) was taken above
            if sentence_counts["ja"] or sentence_counts["zh"] < JA_KANJI_ONLY_MAX:
                sentence_counts["ja"] += sentence_counts.pop("zh")
            for lang, n in sentence_counts.items():
                counts[lang] += n
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
