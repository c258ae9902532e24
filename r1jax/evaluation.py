"""Test-time evaluation as R1 reports it: pass@1 from n samples, pass@k, maj@k, greedy pass@1.

N prompts in a sampler call, G samples per prompt (n in the estimators), P prompt bucket,
T new tokens.

Usable as a library call (the RL stage evaluates before and after training) and as the `eval`
stage: `r1jax --config=configs/eval.py:gsm8k --workdir=runs/eval --config.model.init_from=DIR`.
"""

import collections
import dataclasses
import fractions
import functools
import hashlib
import json
import math
import pathlib
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from r1jax import configlib, distributed, files, sampler, sharding, text
from r1jax.data import world
from r1jax.model import config as model_config
from r1jax.model import hf_io, transformer
from r1jax.rewards import format as format_reward
from r1jax.rewards import language as language_reward
from r1jax.rewards import math as math_reward
from r1jax.rewards import registry, tasks
from r1jax.train import checkpoint, supervised


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How one evaluation samples; ks above num_samples are dropped (with a warning)."""

    num_samples: int = 16  # n samples per problem for pass@1 / pass@k / maj@k
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 256
    greedy: bool = True  # also one greedy sample per problem (pass@1_greedy)
    ks: tuple[int, ...] = (1, 2, 4, 8, 16)  # k values for the pass@k / maj@k curves
    prompts_per_batch: int = 32  # prompts per sampler call
    seed: int = 0
    # Task accuracy graded by this many worker processes (registry.RewardPool; capped at the
    # cores), 0 = in this process. Code runs and math-verify take 10-150 ms a completion.
    grade_workers: int = 0
    grade_timeout_s: float = 10.0  # a completion's grading past this scores 0 (code: its own)
    # A sample also ends at the token that completes one of these in its text (kept in the
    # text; where the tokenizer's tokens do not map to bytes, samples run on and are cut after).
    stop_strings: tuple[str, ...] = ()


@dataclasses.dataclass
class EvalResult:
    """Flat metrics, the pass@k / maj@k curves over k, and one row per problem."""

    metrics: dict[str, float]
    curves: dict[str, list[float]]
    samples: list[dict]


# ---------------------------------------------------------------------------------------------
# Estimators.


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c,k)/C(n,k).

    In the product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms a huge binomial.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def maj_at_k(votes: list[str | None], correct: list[bool], k: int, *, exact: bool = False) -> float:
    """Expected accuracy of a majority vote over a uniformly random size-k subset of n samples.

    Exact (no sampling). Definitions:
    - a None vote (no extractable answer) is never a candidate; a subset with only None scores 0;
    - ties at the top count are broken uniformly at random among the tied answers;
    - an answer scores the mean correctness of the samples carrying it (0 or 1 whenever the
      grader is a function of the vote key, as for world, countdown and numeric answers).
    So maj@n is the plain majority vote over all samples, and maj@1 is the share of the n samples
    that have an answer and are correct (pass@1 when every unanswered sample is wrong).

    Method: answer a wins a subset holding j of its samples when every other answer holds <= j,
    with weight 1/(1 + number of others holding exactly j). Counting subsets by size with a
    generating function per group of answers of equal count (answers with equal counts are
    interchangeable) gives, for each (count, j), the number of subsets per tie count. In float64
    (every term positive: a relative error near 1e-15), and from n = 1030, where C(n, n/2)
    leaves float64, each count scaled by p^k (1 - p)^(n - k), p = k / n (every sample a
    Bernoulli(p) pick: the coefficients are binomial probabilities); exact=True counts in Python
    integers instead (256 samples of 100 answers took 39 s a problem that way, 0.1 s in floats).
    """
    n = len(votes)
    if len(correct) != n:
        raise ValueError(f"{n} votes but {len(correct)} correctness flags")
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k needs 1 <= k <= n={n}, got k={k}")
    counts = collections.Counter(v for v in votes if v is not None)
    right = collections.Counter()
    for v, c in zip(votes, correct, strict=True):
        if v is not None:
            right[v] += float(c)
    n_none = n - sum(counts.values())
    if k == n:  # the one subset: a plain majority vote, ties shared
        top = max(counts.values(), default=0)
        tied = [a for a, m in counts.items() if m == top]
        return float(np.mean([right[a] / top for a in tied])) if tied else 0.0
    # count -> [number of answers with that count, summed answer scores]
    groups: dict[int, list] = {}
    for answer, m in counts.items():
        group = groups.setdefault(m, [0, fractions.Fraction(0)])
        group[0] += 1
        group[1] += fractions.Fraction(right[answer]) / m
    # Counts as they are while C(n, n/2) fits in float64 (n < 1030), scaled past it.
    scaled = not exact and math.comb(n, n // 2) > 1e307  # float64 ends near 1.8e308
    weight = functools.partial(_binomial_pmf, p=k / n) if scaled else math.comb
    total = fractions.Fraction(0) if exact else 0.0
    for m, (_, score) in groups.items():
        if score == 0:
            continue
        for j in range(1, min(m, k) + 1):
            ways = _tie_weighted_ways(groups, m, j, k - j, n_none, exact=exact, weight=weight)
            total += (score if exact else float(score)) * weight(m, j) * ways
    # A probability: float rounding of the scaled counts put it 4e-13 over 1 (n = 1031).
    return min(float(total / weight(n, k)), 1.0)


def _log_comb(m: int, i: int) -> float:
    return math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1)


def _binomial_pmf(m: int, i: int, p: float) -> float:
    """C(m, i) p^i (1 - p)^(m - i), from logarithms (C(m, i) alone leaves float64 near m = 1030)."""
    if not 0 <= i <= m:
        return 0.0
    if m == i:
        return p**i
    if p == 1.0:
        return 0.0
    return math.exp(_log_comb(m, i) + i * math.log(p) + (m - i) * math.log1p(-p))


def _truncated_product(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    return np.convolve(a, b)[:size]


def _poly(coefficients, exact: bool) -> np.ndarray:
    """A polynomial's coefficients: Python ints (object array, exact, no overflow) or floats."""
    if exact:
        return np.array(list(coefficients), dtype=object)
    return np.array([float(c) for c in coefficients], dtype=np.float64)


def _tie_weighted_ways(groups: dict, own: int, j: int, rest: int, n_none: int, *, exact, weight):
    """Sum over ways to pick `rest` more samples with every other answer holding <= j of them,
    of 1/(1 + number of other answers holding exactly j). One answer of count `own` is the
    candidate and is excluded from its group. `weight(m, i)`: the count (math.comb) or the
    scaled count (see maj_at_k) of the ways to pick i of an answer's m samples."""
    size = rest + 1
    coefficients = functools.partial(_poly, exact=exact)
    none_poly = coefficients(weight(n_none, i) for i in range(size))
    by_ties = {0: none_poly}  # ties t -> polynomial over the number of samples picked
    for m, (g, _) in groups.items():
        g -= m == own
        if g == 0:
            continue
        below = coefficients(weight(m, i) if i < j else 0 for i in range(size))
        tie = weight(m, j) if m >= j and j <= rest else 0
        # (below(x) + y * tie * x^j)^g: u of the g answers tie with the candidate.
        powers = [coefficients([1] + [0] * rest)]
        for _ in range(g):
            powers.append(_truncated_product(powers[-1], below, size))
        terms = []
        for u in range(0, g + 1 if tie else 1):
            if j * u > rest:
                break
            term = coefficients([0] * size)
            if weight is math.comb:
                factor = math.comb(g, u) * tie**u
            else:  # C(g, u) of up to n answers leaves float64 too
                factor = math.exp(_log_comb(g, u) + u * math.log(tie)) if u else 1.0
            term[j * u :] = powers[g - u][: size - j * u] * factor
            terms.append(term)
        new: dict[int, np.ndarray] = {}
        for t, poly in by_ties.items():
            for u, term in enumerate(terms):
                prod = _truncated_product(poly, term, size)
                new[t + u] = new[t + u] + prod if t + u in new else prod
        by_ties = new
    if exact:
        return sum(fractions.Fraction(int(poly[rest]), t + 1) for t, poly in by_ties.items())
    return sum(float(poly[rest]) / (t + 1) for t, poly in by_ties.items())


# ---------------------------------------------------------------------------------------------
# Answers to vote on.

_DEGREES = re.compile(r"\^\{?\\circ\}?$")
_ASSIGNMENT = re.compile(r"^[a-zA-Z]=(?!=)")
# \frac{a}{b} of two atoms (a number, a letter, a command such as \pi, optionally signed) as a/b.
_ATOM = r"[-+]?(?:\d+(?:\.\d+)?|\\[a-zA-Z]+|[a-zA-Z])"
# Not after a digit: "1\\frac{4}{5}" is a mixed number (9/5), not 14/5 (_MIXED reads it).
_ATOM_FRAC = re.compile(r"(?<!\d)\\frac\{(" + _ATOM + r")\}\{(" + _ATOM + r")\}")
_MIXED = re.compile(r"^([-+]?)(\d+)\\frac\{(\d+)\}\{(\d+)\}$")


def canonical_answer(answer: str) -> str | None:
    """A cheap canonical form of a final math answer, so that maj@k counts as one the forms the
    grader accepts as equal: '1,000' == '1000' == '1e3', '\\frac12' == '0.5', '(1, 2)' ==
    '(1,2)', '\\sqrt3' == '\\sqrt{3}', '\\frac{\\pi}{2}' == '\\pi/2', '\\text{(A)}' == 'A',
    'x = 1,000' == '1000', '\\text{East}' == 'east'."""
    s = math_reward.normalize(answer)
    named = _ASSIGNMENT.match(s)
    if named:  # "x = 1,000": the value, normalized as a bare answer is (as the grader reads it)
        s = math_reward.normalize(s[named.end() :])
    s = _DEGREES.sub("", s).replace(" ", "")  # "(1, 2)": a list's spaces
    if not s:
        return None
    letter = math_reward._choice_letter(s)
    if letter is not None:
        return letter
    if math_reward._WORDS.fullmatch(s):  # the grader compares words in any case
        return s.casefold()
    mixed = _MIXED.match(s)
    if mixed and int(mixed.group(4)):
        sign, whole, num, den = mixed.groups()
        value = int(whole) + fractions.Fraction(int(num), int(den))
        return str(-value if sign == "-" else value)
    s = _ATOM_FRAC.sub(r"\1/\2", s)  # normalize braced every \frac: \frac12 is \frac{1}{2}
    if math_reward._top_level_comma(s):  # "2, 1" answers "1, 2" (the grader's lists are sets)
        return ",".join(sorted(_number_key(x) for x in _top_level_items(s)))
    return _number_key(s)


def _top_level_items(s: str) -> list[str]:
    """`s` cut at its commas outside brackets: "(1,2),(3,4)" is "(1,2)" and "(3,4)" (cut at
    every comma, its pieces sorted as one key with "(1,4),(3,2)")."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            items.append(s[start:i])
            start = i + 1
    return items + [s[start:]]


def _number_key(s: str) -> str:
    """A plain number as its exact value ("0.50" and "1/2" as "1/2"), else `s`."""
    if math_reward._NUMBER.match(s) and len(s) <= 100:
        try:
            value = fractions.Fraction(s)
        except (ValueError, ZeroDivisionError):
            return s
        return str(value.numerator) if value.denominator == 1 else str(value)
    return s


def vote_key(completion: str, record: dict) -> str | None:
    """What maj@k votes on for the record's task; None when the completion has no usable answer.

    world: `world.vote_key` (a countdown expression's value); countdown: the expression's value;
    code: the answer's code (`tasks.code_answer`); math / gsm8k / aime / amc: `canonical_answer`.
    """
    task = record.get("task", "math")
    if task == "world":
        return world.vote_key(completion, {"kind": "chain", **record})
    if task in ("code", "humaneval"):
        return tasks.code_answer(completion, record).strip() or None
    answer = math_reward.extract_answer(completion)
    if answer is None:
        return None
    if task == "countdown":
        value = tasks.countdown_value(answer, record["numbers"])
        return None if value is None else str(value)
    return canonical_answer(answer)


# ---------------------------------------------------------------------------------------------
# Sampling and grading.


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt text, BOS first when the tokenizer has one."""
    return text.bos_ids(tokenizer) + text.without_bos(tokenizer, tokenizer.encode(prompt))


def sample_completions(
    model_cfg, params, tokenizer, prompt_ids, *, rows, key, mesh, num_samples, rules=None, **kw
):
    """Texts (stop token dropped), lengths (stop token counted) and truncation of each row.

    `prompt_ids` (at most `rows` prompts) are padded to `rows` so one program serves every
    batch of a run; samples of one prompt are adjacent. `kw` are sampler.generate's options.
    `rules` lay out the KV cache on the mesh (the run's config.mesh.rules, as its params).

    Every process passes the same prompts and gets every row back; under several processes
    each samples its own block of them (process p rows [p*k, (p+1)*k)), so the draws are a
    single process's and the work is split (`sampler.generate_local`), then the rows are
    gathered.
    """
    count = 1 if mesh is None else jax.process_count()
    block = -(-rows // count)  # each process's share of the call's rows
    bucket = sampler.prompt_bucket(max(map(len, prompt_ids)))
    tokens_NxP, lens_N = sampler.pad_prompts(prompt_ids, bucket, block * count, tokenizer.pad_id)
    kw.update(num_samples=num_samples, eos_ids=text.stop_ids(tokenizer), pad_id=tokenizer.pad_id)
    if mesh is None:
        out = sampler.generate_padded(
            model_cfg, params, jnp.asarray(tokens_NxP), jnp.asarray(lens_N), key, **kw
        )
        out = {name: np.asarray(x) for name, x in vars(out).items()}
    else:
        mine = slice(jax.process_index() * block, (jax.process_index() + 1) * block)
        out = sampler.generate_local(
            model_cfg, params, tokens_NxP[mine], lens_N[mine], key, mesh=mesh, rules=rules, **kw
        )
        out = {
            name: distributed.gather_rows(out[name]) for name in ("tokens", "lengths", "stopped")
        }
    keep = len(prompt_ids) * num_samples
    tokens, lengths, stopped = (out[name][:keep] for name in ("tokens", "lengths", "stopped"))
    # The stop token is dropped when it is an EOS id (one that completed a stop string is text).
    ends = set(kw["eos_ids"])
    texts = [
        tokenizer.decode(row[: n - bool(s and row[n - 1] in ends)])
        for row, n, s in zip(tokens, lengths, stopped)
    ]
    return texts, lengths.tolist(), (~stopped).tolist()


def _safe(fn, completion: str, record: dict, errors: list) -> float:
    try:
        return float(fn(completion, record))
    except Exception as e:  # noqa: BLE001 - one odd record must not stop a long evaluation
        errors.append(f"{type(e).__name__}: {e}")
        return 0.0


def _safe_vote(completion: str, record: dict, errors: list) -> str | None:
    try:
        return vote_key(completion, record)
    except Exception as e:  # noqa: BLE001 - as _safe: no vote, counted, the evaluation goes on
        errors.append(f"{type(e).__name__}: {e}")
        return None


def _graded(accuracy, i: int, completion: str, record: dict, errors: list) -> float:
    """Completion i's task accuracy: from `accuracy` ((score, error) pairs graded elsewhere),
    or graded here."""
    if accuracy is None:
        return _safe(tasks.accuracy, completion, record, errors)
    score, error = accuracy[i]
    if error is not None:
        errors.append(error)
    return float(score)


def grade_problem(
    record: dict, prompt: str, texts, lengths, truncated, greedy=None, *, accuracy=None
) -> dict:
    """One problem's row: completions with scores, votes, format and reasoning flags.

    accuracy: (score, error or None) of each completion, the greedy one last, when graded
    elsewhere (`evaluate`'s grading workers); else each is graded here."""
    errors: list[str] = []
    opens_think = bool(record.get("prompt_opens_think", False))
    row = {
        "prompt": prompt,
        "answer": record.get("answer"),
        "completions": list(texts),
        "scores": [_graded(accuracy, i, t, record, errors) for i, t in enumerate(texts)],
        "votes": [_safe_vote(t, record, errors) for t in texts],
        "lengths": [int(n) for n in lengths],
        "truncated": [bool(x) for x in truncated],
        "format": [_safe(registry.format_strict, t, record, errors) for t in texts],
        # A prompt ending in <think> (an R1-distill template) opened the thought for the model.
        "reasoning": [
            bool(world.is_reasoning(format_reward.with_think_prefix(t, opens_think))) for t in texts
        ],
    }
    if "kind" in record:
        row["kind"] = record["kind"]
    if language_reward.normalize(record.get("language")):  # of the thoughts, when there are any
        row["language"] = [
            registry.language(t, record) if thinks else None
            for t, thinks in zip(texts, row["reasoning"], strict=True)
        ]
    if greedy is not None:
        g_text, g_length, g_truncated = greedy
        row["greedy"] = {
            "completion": g_text,
            "score": _graded(accuracy, len(texts), g_text, record, errors),
            "vote": _safe_vote(g_text, record, errors),
            "length": int(g_length),
            "truncated": bool(g_truncated),
        }
    row["grading_errors"] = errors
    return row


_GOLD_VOTE = "\x00equal to the gold"


def grouped_votes(votes: list[str | None], correct: list[bool]) -> list[str | None]:
    """`votes` with every key whose samples all graded correct made one: the grader found each
    equal to the gold, so to one another. canonical_answer's cheap forms miss some equal pairs
    (\\sqrt{2}/2 and \\frac{1}{\\sqrt{2}}, 2x+3 and 3+2x); split, the right answer's votes
    lost to a wrong one written one way. Keys graded both ways stay apart (maj_at_k scores
    them by their mean)."""
    verdicts: dict[str, set] = {}
    for v, c in zip(votes, correct, strict=True):
        if v is not None:
            verdicts.setdefault(v, set()).add(bool(c))
    return [_GOLD_VOTE if v is not None and verdicts[v] == {True} else v for v in votes]


def summarize(rows: list[dict], ks) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Metrics and curves over problem rows (scores >= 0.5 count as correct for pass@k/maj@k)."""
    ks = sorted(set(ks))
    metrics: dict[str, float] = {"num_problems": float(len(rows))}
    if not rows:
        return metrics, {"k": [], "pass@k": [], "maj@k": []}
    correct = [[s >= 0.5 for s in r["scores"]] for r in rows]
    metrics["pass@1"] = float(np.mean([np.mean(r["scores"]) for r in rows]))
    if all("greedy" in r for r in rows):
        metrics["pass@1_greedy"] = float(np.mean([r["greedy"]["score"] for r in rows]))
    curves = {"k": [float(k) for k in ks], "pass@k": [], "maj@k": []}
    votes = [grouped_votes(r["votes"], c) for r, c in zip(rows, correct, strict=True)]
    for k in ks:
        p = np.mean([pass_at_k(len(c), sum(c), k) for c in correct])
        m = np.mean([maj_at_k(v, c, k) for v, c in zip(votes, correct, strict=True)])
        curves["pass@k"].append(float(p))
        curves["maj@k"].append(float(m))
        if k > 1:  # pass@1 is the mean score above (equal for 0/1 scores)
            metrics[f"pass@{k}"] = float(p)
        metrics[f"maj@{k}"] = float(m)
    flat = lambda name: [x for r in rows for x in r[name]]
    metrics["mean_length"] = float(np.mean(flat("lengths")))
    metrics["format_rate"] = float(np.mean(flat("format")))
    metrics["reasoning_rate"] = float(np.mean(flat("reasoning")))
    metrics["truncation_rate"] = float(np.mean(flat("truncated")))
    consistency = [x for r in rows for x in r.get("language", []) if x is not None]
    if consistency:  # R1's language consistency: share of thought words in the prompt's language
        metrics["language_consistency"] = float(np.mean(consistency))
        metrics["language_mixed_rate"] = float(np.mean([x < 1.0 for x in consistency]))
    return metrics, curves


def _check(cfg: EvalConfig, records) -> tuple[int, ...]:
    if not records:
        raise ValueError("evaluate: no records")
    if cfg.num_samples < 1 or cfg.max_new_tokens < 1 or cfg.prompts_per_batch < 1:
        raise ValueError(f"EvalConfig: num_samples, max_new_tokens, prompts_per_batch >= 1: {cfg}")
    if cfg.temperature <= 0:
        raise ValueError("EvalConfig.temperature must be positive (greedy=True adds greedy)")
    ks = tuple(sorted({k for k in cfg.ks if 1 <= k <= cfg.num_samples} | {1}))
    dropped = sorted(set(cfg.ks) - set(ks))
    if dropped:
        logging.warning("evaluate: dropping ks %s (need 1 <= k <= %d)", dropped, cfg.num_samples)
    return ks


def evaluate(
    model_cfg,
    params,
    tokenizer,
    records: list[dict],
    *,
    prompt_fn,
    cfg: EvalConfig,
    mesh=None,
    rules=None,
    progress: bool = True,
    journal: tuple[pathlib.Path, dict] | None = None,
) -> EvalResult:
    """Samples, grades and scores `records`; the metrics are `summarize`'s.

    journal: (path, header). Each batch's samples are appended there as they finish, and a
    rerun with the same header (sampling settings, prompts, model) grades them again instead of
    sampling: a killed evaluation loses at most the batch in flight, and gives the same numbers.

    1. Template and tokenize every prompt (BOS first when the tokenizer has one).
    2. Per batch of prompts_per_batch prompts (padded rows keep one program per bucket): sample
       G = num_samples completions at temperature, and one greedy completion if asked.
    3. Grade each completion (task accuracy, strict format, reasoning) and take its vote key.
    4. Estimate pass@1, pass@k, maj@k per problem, average, and break down by record "kind".
    """
    ks = _check(cfg, records)
    # (1)
    prompts = [prompt_fn(r) for r in records]
    records = [registry.opened_thought(r, p) for r, p in zip(records, prompts, strict=True)]
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    _warn_past_context(ids, records, cfg.max_new_tokens, model_cfg.max_seq_len)
    rows = min(cfg.prompts_per_batch, len(records))  # the last call is padded to this many
    root = jax.random.key(cfg.seed)
    stops = sampler_stops(cfg, tokenizer)
    out_rows, errors, first_error = [], 0, None
    done = {}
    if journal:
        done = {int(e["batch"]): e for e in distributed.open_journal(*journal, "eval-journal")}
    if done:
        logging.info("evaluate: %d batches sampled before; resuming", len(done))
    bar = tqdm.tqdm(
        total=len(records),
        desc="eval",
        unit="prompt",
        disable=not progress or jax.process_index() != 0,
    )
    grader = registry.RewardPool(
        {"accuracy": 1.0},
        num_workers=cfg.grade_workers,
        timeout_s=cfg.grade_timeout_s,
        log_errors=False,
    )
    with grader, bar:  # (workers start while the first batch samples)
        for b, start in enumerate(range(0, len(records), cfg.prompts_per_batch)):
            batch = slice(start, start + cfg.prompts_per_batch)
            # (2)
            if b in done:
                sampled, greedy = done[b]["sampled"], done[b]["greedy"]
            else:
                sampled, greedy = _sample_batch(
                    model_cfg,
                    params,
                    tokenizer,
                    ids[batch],
                    cfg,
                    b,
                    root,
                    rows,
                    (mesh, rules),
                    stops,
                )
                # Process 0's append (a full disk) stops every process before the next batch.
                with distributed.shared_errors():
                    if journal and jax.process_index() == 0:
                        entry = {"batch": b, "sampled": sampled, "greedy": greedy}
                        files.append_journal(journal[0], entry)
            # (3)
            accuracy = _grade_accuracy(grader, records[batch], sampled, greedy, cfg.num_samples)
            for i, record in enumerate(records[batch]):
                part = slice(i * cfg.num_samples, (i + 1) * cfg.num_samples)
                texts, lengths, truncated = (x[part] for x in sampled)
                g = None if greedy is None else tuple(x[i] for x in greedy)
                row = grade_problem(
                    record, prompts[start + i], texts, lengths, truncated, g, accuracy=accuracy[i]
                )
                row_errors = row.pop("grading_errors")
                errors += len(row_errors)
                first_error = first_error or (row_errors[0] if row_errors else None)
                out_rows.append(row)
            bar.update(len(records[batch]))
    if errors:
        logging.warning(
            "evaluate: %d grader calls raised and scored 0; the first: %s", errors, first_error
        )
    # (4)
    metrics, curves = summarize(out_rows, ks)
    for kind in sorted({r["kind"] for r in out_rows if "kind" in r}):
        kind_metrics, _ = summarize([r for r in out_rows if r.get("kind") == kind], ks)
        metrics.update({f"{kind}/{name}": v for name, v in kind_metrics.items()})
    return EvalResult(metrics=metrics, curves=curves, samples=out_rows)


def _grade_accuracy(grader, records, sampled, greedy, num_samples) -> list[list[tuple]]:
    """Per record, the (score, error) of its samples' task accuracy, then its greedy
    completion's: one `RewardPool.grade` call for the batch (its workers grade in parallel)."""
    texts, owners = [], []
    for i, record in enumerate(records):
        mine = sampled[0][i * num_samples : (i + 1) * num_samples]
        mine += [greedy[0][i]] if greedy is not None else []
        texts += mine
        owners += [record] * len(mine)
    pairs = grader.grade_pairs("accuracy", texts, owners)
    per = num_samples + (greedy is not None)
    return [pairs[i * per : (i + 1) * per] for i in range(len(records))]


def sampler_stops(cfg: EvalConfig, tokenizer) -> dict:
    """The sampler's stop-string options for cfg.stop_strings ({} without them, or when the
    tokenizer's tokens do not map to bytes: the samples then run on, and are cut after)."""
    if not cfg.stop_strings:
        return {}
    token_bytes = text.token_bytes(tokenizer)
    if token_bytes is None:
        logging.warning(
            "evaluate: this tokenizer's tokens do not map to bytes one by one; samples do not "
            "stop at eval.stop_strings (they run to max_new_tokens; the grader still cuts them)"
        )
        return {}
    return {"stop_strings": cfg.stop_strings, "token_bytes": token_bytes}


def _sample_batch(model_cfg, params, tokenizer, prompt_ids, cfg, b, root, rows, layout, stops):
    """Step 2 for batch b: (texts, lengths, truncated) of its samples, and of its greedy
    completions when cfg.greedy (else None). `layout` is (mesh, rules); `stops` the sampler's
    stop-string options (`sampler_stops`)."""
    mesh, rules = layout
    common = dict(rows=rows, key=jax.random.fold_in(root, b), mesh=mesh, rules=rules)
    common.update(max_new_tokens=cfg.max_new_tokens, **stops)
    sampled = sample_completions(
        model_cfg,
        params,
        tokenizer,
        prompt_ids,
        num_samples=cfg.num_samples,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        **common,
    )
    greedy = None
    if cfg.greedy:
        greedy = sample_completions(
            model_cfg, params, tokenizer, prompt_ids, num_samples=1, temperature=0.0, **common
        )
    return sampled, greedy


def _warn_past_context(ids, records, max_new_tokens: int, max_seq_len: int) -> None:
    """A warning naming the longest prompt when it and max_new_tokens pass the model's context:
    positions beyond it were never trained, and the KV cache (every row of the batch is as
    long) grows with it; a stray huge prompt otherwise shows only as an out-of-memory error."""
    i = max(range(len(ids)), key=lambda j: len(ids[j]))
    if len(ids[i]) + max_new_tokens > max_seq_len:
        name = records[i].get("task_id") or records[i].get("id") or f"problem {i + 1}"
        logging.warning(
            "evaluate: %s's prompt is %d tokens; with %d new ones it passes the model's "
            "max_seq_len %d (%d of %d prompts do)",
            name,
            len(ids[i]),
            max_new_tokens,
            max_seq_len,
            sum(len(x) + max_new_tokens > max_seq_len for x in ids),
            len(ids),
        )


def params_fingerprint(params) -> str:
    """A digest of the params' values (the sum and the sum of squares of every leaf): a
    journal of another checkpoint's samples is not replayed."""
    stats = jax.jit(
        lambda p: jax.tree.map(
            lambda x: jnp.stack(
                [jnp.sum(x, dtype=jnp.float32), jnp.sum(jnp.square(x.astype(jnp.float32)))]
            ),
            p,
        )
    )(params)
    values = [np.asarray(jax.device_get(x)).tolist() for x in jax.tree.leaves(stats)]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()


def journal_header(cfg: EvalConfig, prompts: list[str], model_cfg, params) -> dict:
    """What an evaluation journal's samples depend on (`evaluate`'s `journal`): the sampling
    settings, the prompts, the model shape and the params' values."""
    sampling = dataclasses.asdict(cfg)
    sampling.pop("ks")  # what is computed from the samples, not how they are drawn
    if not sampling["stop_strings"]:  # (recorded only then: older journals stay readable)
        sampling.pop("stop_strings")
    return {
        "eval": sampling,
        "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
        "model": dataclasses.asdict(model_cfg),
        "params": params_fingerprint(params),
    }


# ---------------------------------------------------------------------------------------------
# Output.


def plot_test_time_compute(results: dict[str, EvalResult], path) -> None:
    """pass@k and maj@k against k (log2 axis), one line per label (e.g. before / after RL)."""
    import matplotlib  # only plotting needs it (as train/metrics.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, name in zip(axes, ("pass@k", "maj@k"), strict=True):
        for label, result in results.items():
            ax.plot(result.curves["k"], result.curves[name], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ks = sorted({k for result in results.values() for k in result.curves["k"]})
        ax.set_xticks(ks, [f"{k:g}" for k in ks])
        ax.set_xlabel("k (samples)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0.0, 1.0)
    axes[1].legend()
    fig.tight_layout()
    files.save_figure(fig, path, dpi=100)
    plt.close(fig)


def write_result(result: EvalResult, workdir, name: str, *, seconds: float | None = None) -> None:
    """Writes WORKDIR/{name}.json (metrics, curves[, seconds: the wall time, kept out of the
    metrics, which a resumed evaluation reproduces exactly]) and {name}_samples.jsonl (one row a
    problem)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    summary = {"metrics": result.metrics, "curves": result.curves}
    if seconds is not None:
        summary["seconds"] = seconds
    # The samples first, each file whole or absent: a run that finds {name}.json skips the
    # evaluation, so a kill between the two must not leave the samples cut short for good.
    rows = (json.dumps(row, ensure_ascii=False) + "\n" for row in result.samples)
    files.write_lines_atomic(workdir / f"{name}_samples.jsonl", rows)
    files.write_json(workdir / f"{name}.json", summary)


def format_table(metrics: dict[str, float]) -> str:
    """A short text table: one line per group (all, then each kind), the headline columns."""
    prefixes = [""] + sorted({k.split("/")[0] + "/" for k in metrics if "/" in k})
    ks = sorted(int(k.split("@")[1]) for k in metrics if k.startswith("maj@"))
    top = ks[-1] if ks else 1
    columns = [
        ("n", "num_problems", "{:.0f}"),
        ("pass@1", "pass@1", "{:.3f}"),
        ("greedy", "pass@1_greedy", "{:.3f}"),
        (f"pass@{top}", f"pass@{top}", "{:.3f}"),
        (f"maj@{top}", f"maj@{top}", "{:.3f}"),
        ("format", "format_rate", "{:.3f}"),
        ("reason", "reasoning_rate", "{:.3f}"),
        ("len", "mean_length", "{:.1f}"),
        ("lang", "language_consistency", "{:.3f}"),
        ("trunc", "truncation_rate", "{:.3f}"),
    ]
    lines = ["group      " + " ".join(f"{title:>8}" for title, _, _ in columns)]
    for prefix in prefixes:
        cells = []
        for _, key, fmt in columns:
            value = metrics.get(prefix + key)
            cells.append(f"{'-' if value is None else fmt.format(value):>8}")
        lines.append(f"{(prefix.rstrip('/') or 'all'):<10} " + " ".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The `eval` stage.


def prompts_per_call(requested: int, mesh) -> int:
    """Prompts per sampler call: `requested`, rounded up to a multiple of the mesh's row shards.

    The sampler keeps a prompt's samples on one device and pads a call's prompts to a multiple
    of the row shards (data x fsdp); below that, devices sample padding (AIME's 1 prompt x 64
    samples on 8 devices: 7 of 8 idle). Rounded up, each device samples as many rows as it
    would have, all of them real."""
    shards = 1 if mesh is None else sharding.batch_divisor(mesh)
    rounded = -(-int(requested) // shards) * shards
    if rounded != requested:
        logging.log_first_n(
            logging.INFO,
            "%d prompts per sampler call, not %d: the mesh splits a call's prompts over %d row "
            "shards (the same rows per device, none of them padding)",
            1,
            rounded,
            requested,
            shards,
        )
    return rounded


def eval_config(cfg, mesh=None) -> EvalConfig:
    """The frozen EvalConfig of a config's `eval` section; on `mesh`, its prompts per call
    rounded up to the mesh's row shards (`prompts_per_call`)."""
    e = cfg.eval
    return EvalConfig(
        num_samples=int(e.num_samples),
        temperature=float(e.temperature),
        top_p=float(e.top_p),
        top_k=int(e.top_k),
        max_new_tokens=int(e.max_new_tokens),
        greedy=bool(e.greedy),
        ks=tuple(int(k) for k in e.ks),
        prompts_per_batch=prompts_per_call(e.prompts_per_batch, mesh),
        seed=int(cfg.seed),
        grade_workers=int(e.grade_workers),
        grade_timeout_s=float(e.grade_timeout_s),
        stop_strings=tuple(str(x) for x in e.get("stop_strings", ())),
    )


def run_model_config(run_dir) -> tuple[model_config.ModelConfig, dict]:
    """(ModelConfig, resolved config dict) that an r1jax run wrote to its config.json."""
    return configlib.load_resolved(run_dir, language_model=True)


def place_params(model_cfg, params, mesh, rules=sharding.DEFAULT_RULES):
    """Params sharded on the mesh by their logical axes (as the training stages place them)."""
    logical = transformer.logical_axes(model_cfg)
    return jax.device_put(params, sharding.param_shardings(logical, mesh, rules, shapes=params))


def _restore(path, model_cfg, mesh, rules, step=None):
    """A run's params from its checkpoint of `step` (None: the newest), straight onto the mesh."""
    shapes = jax.eval_shape(lambda k: transformer.init_params(model_cfg, k), jax.random.key(0))
    logical = transformer.logical_axes(model_cfg)
    shardings = sharding.param_shardings(logical, mesh, rules, shapes=shapes)
    abstract = jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, shardings
    )
    return checkpoint.restore_params(path, abstract, step=step)


def _load_model(cfg, mesh, rules=sharding.DEFAULT_RULES):
    """(model_cfg, params on the mesh, tokenizer, run config or {}) from config.model.init_from.

    An r1jax run (or its checkpoints folder, or one step's, RUN/checkpoints/STEP) brings its own
    model shape and tokenizer; a Hugging Face folder its config.json and tokenizer.json.
    config.tokenizer.path overrides either.
    """
    path, step = configlib.checkpoint_step(cfg.model.init_from)
    numerics = dict(
        dtype=cfg.model.dtype,
        param_dtype=cfg.model.param_dtype,
        remat="none",
        attention_chunk=int(cfg.model.get("attention_chunk", 0)),
    )
    run_dir = next((d for d in (path, path.parent) if configlib.is_run_dir(d)), None)
    if (path / "config.json").is_file() and run_dir != path:
        hf_cfg, params = hf_io.load_hf(path, dtype=cfg.model.param_dtype)
        model_cfg = dataclasses.replace(hf_cfg, **numerics)
        tokenizer = text.load_tokenizer(cfg.tokenizer.path or path)
        return model_cfg, place_params(model_cfg, params, mesh, rules), tokenizer, {}
    if run_dir is not None:
        model_cfg, run_cfg = run_model_config(run_dir)
        model_cfg = dataclasses.replace(model_cfg, **numerics)
        tokenizer = text.load_tokenizer(cfg.tokenizer.path or run_dir)
        return model_cfg, _restore(path, model_cfg, mesh, rules, step), tokenizer, run_cfg
    # A bare checkpoint folder: the shape comes from this config.
    if not cfg.tokenizer.path:
        raise configlib.ConfigError(
            f"config.tokenizer.path: {path} has no run config.json; give the tokenizer"
        )
    tokenizer = text.load_tokenizer(cfg.tokenizer.path)
    model_cfg = configlib.model_config_from(cfg, vocab_size=tokenizer.vocab_size)
    return model_cfg, _restore(path, model_cfg, mesh, rules), tokenizer, {}


def load_model(cfg, mesh, rules=sharding.DEFAULT_RULES):
    """(model_cfg, params on the mesh, tokenizer, run config or {}) from config.model.init_from
    (`_load_model`), the tokenizer checked against the model's vocabulary."""
    model_cfg, params, tokenizer, run_cfg = _load_model(cfg, mesh, rules)
    text.check_fits(tokenizer, model_cfg.vocab_size)
    return model_cfg, params, tokenizer, run_cfg


def resolve_template(cfg, run_cfg: dict) -> str:
    """config.eval.template, or ('') the template the run was trained with, else r1_zero."""
    return cfg.eval.template or configlib.trained_template(run_cfg) or "r1_zero"


def load_eval_records(cfg) -> list[dict]:
    """config.data.eval in config.data.format, cut to config.eval.max_problems."""
    records = registry.check_records(
        ["accuracy"],
        supervised.load_records(cfg, cfg.data.eval),
        f"config.data.eval ({cfg.data.eval})",
        on_error=cfg.data.on_error,
    )
    if cfg.eval.max_problems:
        records = records[: cfg.eval.max_problems]
    return records


JOURNAL = "eval_journal.jsonl"  # a running evaluation's finished batches (see `evaluate`)


def run(cfg, workdir) -> dict:
    """The `eval` stage: evaluate config.model.init_from on config.data.eval; returns metrics.
    A killed evaluation resumes from its journal (WORKDIR/eval_journal.jsonl)."""
    workdir = pathlib.Path(workdir)
    with distributed.shared_errors():  # a data file one process cannot read stops them all
        configlib.validate(cfg)
        records = load_eval_records(cfg)
    mesh = sharding.make_mesh(cfg.mesh.to_dict())
    rules = sharding.rules_from_config(cfg.mesh.rules)
    model_cfg, params, tokenizer, run_cfg = load_model(cfg, mesh, rules)
    template = resolve_template(cfg, run_cfg)
    resolved = {"config": cfg.to_dict(), "model": dataclasses.asdict(model_cfg)}
    resolved["template"] = template
    with distributed.shared_errors():  # process 0's write (a full disk) stops them all
        workdir.mkdir(parents=True, exist_ok=True)
        if jax.process_index() == 0:
            files.write_json(workdir / "eval_config.json", resolved, default=str)
    logging.info(
        "evaluating %s on %d problems of %s (template %s)",
        cfg.model.init_from,
        len(records),
        cfg.data.eval,
        template,
    )
    t0 = time.perf_counter()
    prompt_fn = lambda r: text.apply_template(template, r["prompt"])  # noqa: E731
    eval_cfg = eval_config(cfg, mesh)
    header = journal_header(eval_cfg, [prompt_fn(r) for r in records], model_cfg, params)
    result = evaluate(
        model_cfg,
        params,
        tokenizer,
        records,
        prompt_fn=prompt_fn,
        cfg=eval_cfg,
        mesh=mesh,
        rules=rules,
        journal=(workdir / JOURNAL, header),
    )
    seconds = time.perf_counter() - t0  # (a resumed evaluation's: since its restart)
    with distributed.shared_errors():  # (a pipeline's next stage waits for this one)
        if jax.process_index() == 0:
            write_result(result, workdir, "eval", seconds=seconds)
            plot_test_time_compute({"eval": result}, workdir / "test_time_compute.png")
            (workdir / JOURNAL).unlink(missing_ok=True)  # the results hold it all now
    logging.info(
        "evaluation of %s (%.0f s):\n%s", cfg.model.init_from, seconds, format_table(result.metrics)
    )
    return result.metrics
