"""Datasets sampled from a model: cold-start chains of thought, rejection sampling, distillation.

The `collect` stage (configs/cold_start.py, configs/rejection_sampling.py, configs/distill.py):

1. Load the source model (collect.model: an r1jax run, checkpoint or Hugging Face folder) and
   the prompts (data.train, the first collect.num_prompts).
2. Sample collect.num_samples completions per prompt through the sampler (batched, on the mesh).
3. Keep a completion only if it passes every check (`rejection_reason`): not truncated, its
   text valid (no U+FFFD from token bytes that are not UTF-8), within the length bounds,
   reasoning in the R1 format, the task's rule check accepts the answer, its thought is in the
   prompt's language, it has no repetition loop, and (R1's other readability filters, when
   set) no paragraph over collect.max_paragraph_chars and no code block.
4. Render accepted ones in a readable pattern, a thought ending in a one-line summary, then the
   answer (`render`); deduplicate the sampled rows; keep up to collect.max_per_prompt per
   prompt.
   Prompts of collect.general_prompts (domain "general") are sampled too and kept when the
   reward model (collect.reward_model) scores them above collect.general_min_score (a raw
   score, or with collect.normalize_scores one in standard deviations from the reward model's
   mean score over its held-out responses), their text is valid and not empty, and their length
   within the bounds.
5. Mix in general (non-reasoning) SFT rows, collect.general_ratio per reasoning row (sampled
   general answers are neither), optionally only those the reward model scores above
   collect.general_min_score. They are taken as they are (duplicates included).
6. Write WORKDIR/dataset.jsonl, its rows in a seeded random order (so its first N rows, e.g.
   data.max_records, mix reasoning and general rows as the whole does), and provenance.json
   (written last: a run that finds both skips collection). With collect.sft the stage then
   fine-tunes model.init_from on the dataset in the same WORKDIR (an ordinary SFT run there:
   checkpoints, metrics, resumable).
"""

import collections
import hashlib
import json
import os
import pathlib
import random
import re
import time

import jax
import tqdm
from absl import logging

from r1jax import configlib, distributed, evaluation, files, sharding, text
from r1jax.rewards import format as format_reward
from r1jax.rewards import language as language_reward
from r1jax.rewards import registry, tasks
from r1jax.train import checkpoint, supervised

DATASET = "dataset.jsonl"
PROVENANCE = "provenance.json"
# The summary line that ends a rendered thought, by the prompt's language (R1's readable pattern:
# reasoning, then a summary). Short, so that world conversations stay inside a 128-token context.
SUMMARY = {
    "en": "Result: {answer}.",
    "zh": "结果是{answer}。",
    "ja": "結果は{answer}です。",
    "ko": "결과는 {answer}입니다.",
    "ru": "Ответ: {answer}.",
    "ar": "النتيجة: {answer}.",
}
_WORD = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")


def ngram_repeats(completion: str, n: int = 16) -> int:
    """How often the most frequent word n-gram occurs (CJK characters and symbols are words)."""
    words = _WORD.findall(completion)
    grams = collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return max(grams.values(), default=0)


_LOGGED_ERRORS: set[str] = set()


def _form_reason(completion: str, record: dict, length: int, truncated: bool, c) -> str | None:
    """The checks before the answer is graded: 'truncated', 'invalid_text', 'length',
    'format', or None."""
    if truncated:
        return "truncated"
    if invalid_text(completion, record):
        return "invalid_text"
    if _outside_length_bounds(length, c):
        return "length"
    full = _full_text(completion, record)
    think, answer = text.split_reasoning(full)
    if not think or answer is None or (full != completion and _opens_think(completion)):
        return "format"
    if any(tag in part for tag in text.REASONING_TAGS for part in (think, answer)):
        return "format"  # (collect.require_format off) rendered, a thought holding a tag again
    if c.require_format and registry.format_strict(completion, record) < 1.0:
        return "format"
    return None


def _outside_length_bounds(length: int, c) -> bool:
    """Whether a response of `length` tokens is outside collect.min_tokens..max_tokens."""
    return length < c.min_tokens or bool(c.max_tokens and length > c.max_tokens)


def invalid_text(completion: str, record: dict) -> bool:
    """Whether the completion holds U+FFFD its prompt does not: the sampled token bytes were
    not UTF-8 (a byte-fallback or byte-level token cut a character), so the text is not what
    the model wrote and a student would train on other tokens (a teacher's general answers were
    ~1/3 such gibberish in a tiny pipeline run)."""
    return "\ufffd" in completion and "\ufffd" not in str(record.get("prompt", ""))


def _accuracy_here(completion: str, record: dict) -> tuple[float, str | None]:
    """(task accuracy, None) or (0, what the grader raised), graded in this process."""
    try:
        return float(tasks.accuracy(completion, record)), None
    except Exception as exc:  # noqa: BLE001 - one grader failure must not stop a collection
        return 0.0, f"{type(exc).__name__}: {exc}"[:300]


def rejection_reason(completion: str, record: dict, length: int, truncated: bool, c) -> str | None:
    """The first check `completion` fails ('truncated', 'invalid_text', 'length', 'format',
    'incorrect', 'grading_error', 'language', 'repetition', 'readability'), or None when it is
    accepted. `c` is config.collect. A grader that raises (or times out in a grading worker)
    rejects the completion (logged once per kind of error) rather than stopping the collection:
    a resumed run would sample and raise again."""
    return _form_reason(completion, record, length, truncated, c) or _graded_reason(
        completion, record, c
    )


def _graded_reason(completion: str, record: dict, c, accuracy=None) -> str | None:
    """The checks after `_form_reason` passed: the answer ('incorrect', 'grading_error'), then
    language, repetition, readability. `accuracy`: the completion's (score, error or None) when
    graded elsewhere (`_judge`'s grading workers), else it is graded here."""
    if c.require_correct:
        score, error = accuracy if accuracy is not None else _accuracy_here(completion, record)
        if error is not None:
            kind = error.split(":", 1)[0]
            if kind not in _LOGGED_ERRORS:
                _LOGGED_ERRORS.add(kind)
                logging.warning("collect: a grader raised (logged once per kind): %s", error)
            return "grading_error"
        if score < 0.5:
            return "incorrect"
    full = _full_text(completion, record)
    think, _ = text.split_reasoning(full)
    if c.min_language_consistency > 0:
        if language_reward.consistency(full, language_of(record)) < c.min_language_consistency:
            return "language"
    if c.max_ngram_repeats and ngram_repeats(full, c.ngram_size) > c.max_ngram_repeats:
        return "repetition"
    if c.max_paragraph_chars and longest_paragraph(think) > c.max_paragraph_chars:
        return "readability"
    if c.reject_code_blocks and "```" in think:
        return "readability"
    return None


def longest_paragraph(text: str) -> int:
    """Characters of the longest paragraph (a line: models separate paragraphs by one newline
    as often as by a blank line)."""
    return max((len(p.strip()) for p in text.split("\n")), default=0)


def _full_text(completion: str, record: dict) -> str:
    """The completion with the <think> its prompt opened (record['prompt_opens_think'])."""
    return format_reward.with_think_prefix(completion, bool(record.get("prompt_opens_think")))


def _opens_think(completion: str) -> bool:
    return completion.lstrip().startswith(text.THINK_OPEN)


def language_of(record: dict) -> str:
    """The record's language ('zh-CN' reads as 'zh'), else the one its prompt is written in."""
    lang = language_reward.normalize(record.get("language"))
    return lang or language_reward.detect(record["prompt"])


def render(completion: str, record: dict, *, summary: bool) -> str:
    """'<think>thought[ summary]</think> <answer>answer</answer>' from an accepted completion
    (the summary line restates a one-line answer); without its '<think>' when the prompt opens
    it (prompt + response holds the tag once)."""
    think, answer = text.split_reasoning(_full_text(completion, record))
    if summary and "\n" not in answer.strip():  # (a program is no summary line)
        line = SUMMARY.get(language_of(record), SUMMARY["en"]).format(answer=answer)
        think = f"{think.rstrip()} {line}"
    rendered = text.format_reasoning(think, answer)
    if record.get("prompt_opens_think"):
        rendered = rendered[len(text.THINK_OPEN) :]
    return rendered


def _source_config(cfg):
    """A copy of cfg whose model.init_from is the model to sample (for evaluation.load_model),
    with collect.tokenizer ('' = the source model's own): config.tokenizer is the tokenizer of
    the model collect.sft trains (a distilled student's may differ from its teacher's)."""
    return configlib.updated(
        cfg,
        model__init_from=cfg.collect.model,
        tokenizer__path=cfg.collect.tokenizer,
        tokenizer__train_vocab_size=0,
    )


def _template(c, run_cfg: dict) -> str:
    """collect.template, or ('') the template the source run trained with, else r1_zero; not
    config.eval.template, which is the evaluation's (it took precedence over the source run's)."""
    return c.template or configlib.trained_template(run_cfg) or "r1_zero"


def _load_scorer(c, mesh):
    """collect.reward_model's scorer; z-scored by its run's score statistics when
    collect.normalize_scores (a Bradley-Terry score's offset is arbitrary: a raw threshold of 0
    sat at z = -0.36 in a tiny pipeline run and kept 997 of 1000 general answers)."""
    from r1jax.rewards import preference  # a second model, loaded only when asked for

    return preference.RewardModelScorer.load(
        c.reward_model, mesh=mesh, normalize=c.normalize_scores
    )


def sample_accepted(cfg, records, *, mesh, progress=True, journal=None):
    """Samples every record; returns (accepted rows, stats). Rows keep the record's metadata.

    Reasoning records pass the rule checks (`rejection_reason`); records of domain "general"
    pass when they are not truncated, their text is valid, not empty and within the length
    bounds, and the reward model (collect.reward_model) scores them above
    collect.general_min_score; they are kept as sampled (no think block is required).

    With `journal` (a path), each sampler call's outcome is appended there as it finishes and a
    rerun with the same settings replays the calls it holds instead of sampling them again: a
    killed collection loses at most the call in flight, and gives the same dataset.
    """
    c = cfg.collect
    per_call = evaluation.prompts_per_call(c.prompts_per_batch, mesh)
    rows_per_call = min(per_call, len(records))
    starts = list(range(0, len(records), per_call))
    header = _journal_header(cfg, records)
    if per_call != c.prompts_per_batch:  # (recorded only then: older journals stay readable)
        header["prompts_per_call"] = per_call
    done = _read_journal(journal, header) if journal else {}
    if done:
        logging.info(
            "collect: %d of %d sampler calls done before; resuming", len(done), len(starts)
        )
    if len(done) < len(starts):
        scorer = None
        if any(r.get("domain") == "general" for r in records):
            if not c.reward_model:
                raise ValueError(
                    "collect: general prompts are judged by collect.reward_model; set it"
                )
            scorer = _load_scorer(c, mesh)
        rules = sharding.rules_from_config(cfg.mesh.rules)
        src = _source_config(cfg)
        try:
            model_cfg, params, tokenizer, run_cfg = evaluation.load_model(src, mesh, rules)
        except configlib.ConfigError as e:  # src.tokenizer is collect.tokenizer here
            message = str(e).replace("config.tokenizer.path", "config.collect.tokenizer")
            raise configlib.ConfigError(message) from None
        template = _template(c, run_cfg)
    else:
        template = next(iter(done.values()))["template"] if done else c.template
    root = jax.random.key(cfg.seed)
    bar = tqdm.tqdm(
        total=len(records),
        desc="collect",
        unit="prompt",
        disable=not progress or jax.process_index() != 0,
    )
    outcomes = []
    # Task accuracy graded by config.eval.grade_workers processes (none when every call is
    # replayed from the journal); 0 grades in this process.
    workers = cfg.eval.grade_workers if len(done) < len(starts) else 0
    grader = registry.RewardPool(
        {"accuracy": 1.0},
        num_workers=workers,
        timeout_s=cfg.eval.grade_timeout_s,
        log_errors=False,
    )
    with grader, bar:  # (the bar closes on an error too)
        for b, start in enumerate(starts):
            batch = records[start : start + per_call]
            if b not in done:
                prompts = [text.apply_template(template, r["prompt"]) for r in batch]
                batch = [registry.opened_thought(r, p) for r, p in zip(batch, prompts, strict=True)]
                ids = [evaluation.encode_prompt(tokenizer, p) for p in prompts]
                texts, lengths, truncated = evaluation.sample_completions(
                    model_cfg,
                    params,
                    tokenizer,
                    ids,
                    rows=rows_per_call,
                    key=jax.random.fold_in(root, b),
                    mesh=mesh,
                    rules=rules,
                    num_samples=c.num_samples,
                    max_new_tokens=c.max_new_tokens,
                    temperature=c.temperature,
                    top_p=c.top_p,
                )
                scores = _general_scores(scorer, batch, texts, c.num_samples)
                # Process 0's verdicts on every process: a grade past its deadline on one
                # process only would split the accepted rows (and what the processes do next).
                judged = _judge(c, batch, texts, lengths, truncated, scores, grader)
                done[b] = distributed.from_primary(judged if distributed.is_primary() else None)
                done[b].update(batch=b, template=template)
                with distributed.shared_errors():  # process 0's append (a full disk)
                    if journal and jax.process_index() == 0:
                        files.append_journal(journal, done[b])
            outcomes.append(done[b])
            bar.update(len(batch))
    return _gather(records, starts, outcomes, c, template)


def _judge(c, batch, texts, lengths, truncated, scores, grader) -> dict:
    """One sampler call's outcome: each sample's verdict ([record index in the call, response]
    for a sample that passes, else its reason). The reasoning samples that pass the checks
    before grading are graded in one `RewardPool.grade_pairs` call (its workers in parallel)."""
    owner = [record for record in batch for _ in range(c.num_samples)]
    form = {
        j: _form_reason(texts[j], record, lengths[j], truncated[j], c)
        for j, record in enumerate(owner)
        if record.get("domain") != "general"
    }
    todo = [j for j, reason in form.items() if reason is None] if c.require_correct else []
    graded = grader.grade_pairs("accuracy", [texts[j] for j in todo], [owner[j] for j in todo])
    accuracy = dict(zip(todo, graded, strict=True))
    verdicts = []
    for i, record in enumerate(batch):
        for j in range(i * c.num_samples, (i + 1) * c.num_samples):
            if record.get("domain") == "general":
                reason = "truncated" if truncated[j] else None
                if reason is None and invalid_text(texts[j], record):
                    reason = "invalid_text"
                # An empty answer (the stop token at once) trained the student to say nothing.
                if reason is None and (
                    not texts[j].strip() or _outside_length_bounds(lengths[j], c)
                ):
                    reason = "length"
                if reason is None and not scores[j] > c.general_min_score:
                    reason = "reward_model"
                response = texts[j].strip()
            else:
                reason = form[j] or _graded_reason(texts[j], record, c, accuracy.get(j))
                response = reason or render(texts[j], record, summary=c.summary)
            verdicts.append([i, None, reason] if reason else [i, response, None])
    return {"verdicts": verdicts}


def _gather(records, starts, outcomes, c, template):
    """Accepted rows (deduplicated, at most collect.max_per_prompt a prompt) and the stats, from
    the calls' outcomes in order."""
    seen, accepted = set(), []
    per_prompt = collections.Counter()
    stats = {"sampled": 0, "accepted": 0, "duplicates": 0, "over_max_per_prompt": 0}
    rejected_by = collections.Counter()
    by_group = collections.defaultdict(lambda: {"sampled": 0, "accepted": 0})
    for start, outcome in zip(starts, outcomes, strict=True):
        for i, response, reason in outcome["verdicts"]:
            record = records[start + i]
            group = f"{record.get('kind', 'all')}/{language_of(record)}"
            stats["sampled"] += 1
            by_group[group]["sampled"] += 1
            if reason is not None:
                rejected_by[reason] += 1
                continue
            key = (record["prompt"], response)
            if key in seen:
                stats["duplicates"] += 1
                continue
            if per_prompt[record["prompt"]] >= c.max_per_prompt:
                stats["over_max_per_prompt"] += 1
                continue
            seen.add(key)
            per_prompt[record["prompt"]] += 1
            stats["accepted"] += 1
            by_group[group]["accepted"] += 1
            meta = {k: v for k, v in record.items() if k not in ("prompt", "response")}
            accepted.append({"prompt": record["prompt"], "response": response, **meta})
    stats["rejected_by"] = dict(rejected_by)
    stats["by_group"] = {k: dict(v) for k, v in sorted(by_group.items())}
    stats["template"] = template
    stats["prompts"] = len(records)
    stats["prompts_with_a_row"] = len(per_prompt)
    return accepted, stats


JOURNAL = "collect_journal.jsonl"


def _prompt_records(cfg) -> list[dict]:
    """The records sampled: data.train's first collect.num_prompts, then collect.general_prompts'
    (domain "general")."""
    # A record the rule check cannot grade (no answer, an unknown task, a blank prompt) stops
    # the collection now, naming it, or with data.on_error="skip" is dropped: its samples were
    # all rejected ('grading_error', or 'incorrect' for an answer null) after the sampling.
    records = registry.check_records(
        ["accuracy"] if cfg.collect.require_correct else [],
        supervised.load_records(cfg, cfg.data.train),
        f"config.data.train ({cfg.data.train})",
        on_error=cfg.data.on_error,
    )
    if cfg.collect.num_prompts:
        records = records[: cfg.collect.num_prompts]
    if cfg.collect.general_prompts:  # sampled too, and judged by the reward model
        general = supervised.load_records(
            cfg, cfg.collect.general_prompts, generic=True, required=(("prompt",),)
        )
        n = cfg.collect.num_general_prompts or len(general)
        records = records + [{**r, "domain": "general"} for r in general[:n]]
    return records


def _prompts_sha256(records) -> str:
    return hashlib.sha256(
        json.dumps([r["prompt"] for r in records], ensure_ascii=False).encode("utf-8")
    ).hexdigest()


def _journal_header(cfg, records) -> dict:
    """What a journal's calls depend on: a rerun with other settings or prompts starts over."""
    return {"settings": _collection_settings(cfg), "prompts_sha256": _prompts_sha256(records)}


def _read_journal(path, header) -> dict[int, dict]:
    """The calls a journal holds, when it was written with `header`'s settings (else none, and
    it is started over)."""
    entries = distributed.open_journal(path, header, "collect-journal")
    return {int(e["batch"]): e for e in entries}


def _collection_settings(cfg) -> dict:
    """The settings a collected dataset depends on (collect.sft and the SFT that follows aside);
    paths as absolute paths, however the config spelled them (a pipeline's @stage folders follow
    --workdir's spelling)."""
    c = {k: _same_path(v) for k, v in cfg.collect.to_dict().items() if k != "sft"}
    # The source run's newest step: once it trained on, a journal or dataset of its older
    # params is not reused (recorded only where collect.model is an r1jax run).
    step = checkpoint.newest_step(cfg.collect.model)
    return configlib.json_form(
        {
            **({} if step is None else {"source_step": step}),
            "source_model": _same_path(str(cfg.collect.model)),
            "prompts_from": _same_path(str(cfg.data.train)),
            "seed": int(cfg.seed),
            "collect": c,
            # What picks the general rows (the world's general_sft is made from world_seed).
            "general_data_from": {"world_seed": int(cfg.data.world_seed)},
        }
    )


def _same_path(value):
    """An existing path as its resolved absolute form; any other value as it is."""
    if isinstance(value, str) and value and os.path.exists(value):
        return str(pathlib.Path(value).resolve())
    return value


def _general_scores(scorer, batch, texts, num_samples):
    """Reward-model scores of the samples of general records (NaN for the others)."""
    scores = [float("nan")] * len(texts)
    rows = [
        j
        for i, r in enumerate(batch)
        if r.get("domain") == "general"
        for j in range(i * num_samples, (i + 1) * num_samples)
    ]
    if rows:
        values = scorer.score(
            [batch[j // num_samples]["prompt"] for j in rows], [texts[j] for j in rows]
        )
        for j, v in zip(rows, values, strict=True):
            scores[j] = float(v)
    return scores


def load_general_data(cfg) -> list[dict]:
    """collect.general_data's rows in a seeded order (the rows a collection mixes in are read
    and checked before its sampling: a file of another schema stopped it after hours)."""
    with distributed.shared_errors():  # a file one process cannot read stops them all
        rows = list(
            supervised.load_records(
                cfg, cfg.collect.general_data, generic=True, required=(("prompt", "response"),)
            )
        )
    random.Random(f"r1jax-collect|{cfg.seed}").shuffle(rows)
    return rows


def general_rows(cfg, n: int, *, mesh, rows=None) -> tuple[list[dict], dict]:
    """Up to `n` general SFT rows from collect.general_data (optionally reward-model filtered);
    `rows`: its rows as `load_general_data` gave them (else read here)."""
    c = cfg.collect
    if n <= 0 or not c.general_data:
        return [], {"general_rows": 0}
    rows = load_general_data(cfg) if rows is None else rows
    stats = {"general_available": len(rows)}
    if c.reward_model:
        scorer = _load_scorer(c, mesh)
        scores = scorer.score([r["prompt"] for r in rows], [r["response"] for r in rows])
        kept = [r for r, s in zip(rows, scores, strict=True) if s > c.general_min_score]
        stats["general_filtered_out"] = len(rows) - len(kept)
        rows = kept
    rows = [{**r, "domain": "general"} for r in rows[:n]]
    stats["general_rows"] = len(rows)
    if len(rows) < n:
        logging.warning("collect: wanted %d general rows, %d available", n, len(rows))
    return rows, stats


def _write_dataset(workdir: pathlib.Path, rows: list[dict], provenance: dict) -> None:
    """dataset.jsonl then provenance.json, each through a temporary file and a rename."""
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    provenance["sha256"] = files.write_lines_atomic(workdir / DATASET, lines)
    files.write_json(workdir / PROVENANCE, provenance, ensure_ascii=False)


def is_complete(workdir) -> bool:
    """True when WORKDIR holds a finished dataset (provenance.json is written last)."""
    workdir = pathlib.Path(workdir)
    return (workdir / PROVENANCE).is_file() and (workdir / DATASET).is_file()


def _check_same_settings(cfg, workdir: pathlib.Path, records) -> None:
    """Refuses a finished dataset collected with other settings than cfg's (another source
    model, prompts, seed or collect.* value): reusing it would go unnoticed. The prompts are
    compared by content (another data.world_seed, data.max_records or file picks others)."""
    try:
        provenance = json.loads((workdir / PROVENANCE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise configlib.ConfigError(f"{workdir / PROVENANCE}: unreadable ({e})") from None
    was = {k: _same_path(provenance.get(k)) for k in ("source_model", "prompts_from", "seed")}
    was["collect"] = {k: _same_path(v) for k, v in (provenance.get("collect") or {}).items()}
    if "general_data_from" in provenance:
        was["general_data_from"] = provenance["general_data_from"]
    if "prompts_sha256" in provenance:
        was["prompts_sha256"] = provenance["prompts_sha256"]
    if "source_step" in provenance:
        was["source_step"] = provenance["source_step"]
    was = configlib.flatten(configlib.json_form(was))
    now = configlib.flatten(
        {**_collection_settings(cfg), "prompts_sha256": _prompts_sha256(records)}
    )
    # Fields a dataset written before they existed does not record are not compared.
    diff = [f"{k}: {was[k]!r} -> {now[k]!r}" for k in now if k in was and was[k] != now[k]]
    if diff:
        raise configlib.ConfigError(
            f"{workdir} holds a dataset collected with other settings ({'; '.join(diff)}): use "
            f"a new workdir, or move {DATASET} and {PROVENANCE} away to collect again"
        )


def collect(cfg, workdir) -> pathlib.Path:
    """Steps 1-6 of the module docstring (without the SFT); returns the dataset's path."""
    workdir = pathlib.Path(workdir)
    if is_complete(workdir):
        _check_same_settings(cfg, workdir, _prompt_records(cfg))
        if jax.process_index() == 0:  # a kill came between the dataset and the journal's removal
            (workdir / JOURNAL).unlink(missing_ok=True)
        logging.info("collect: %s already holds a dataset; not sampling again", workdir)
        return workdir / DATASET
    t0 = time.perf_counter()
    c = cfg.collect
    # A prompt file one process cannot read, or a folder process 0 cannot make, stops every
    # process (the agreement is the barrier the others wait in until the folder exists).
    with distributed.shared_errors():
        records = _prompt_records(cfg)
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
        # General rows mixed in and their reward model: read (and checked) now, not after the
        # sampling.
        general_data = load_general_data(cfg) if c.general_ratio and c.general_data else []
        if c.reward_model and general_data:  # (it judges them after the sampling)
            from r1jax.rewards import preference

            preference.read_run(c.reward_model, normalize=c.normalize_scores)
    mesh = sharding.make_mesh(cfg.mesh.to_dict())
    accepted, stats = sample_accepted(cfg, records, mesh=mesh, journal=workdir / JOURNAL)
    reasoning = sum(r.get("domain") != "general" for r in accepted)
    # (Sampled general answers alone made a distillation set without one reasoning row.)
    # ConfigError: the command prints it in one line (a RuntimeError was a traceback).
    if not accepted or (not reasoning and any(r.get("domain") != "general" for r in records)):
        raise configlib.ConfigError(
            f"collect: no sample of {cfg.collect.model} for a reasoning prompt passed the "
            f"checks (rejected by: {stats['rejected_by']}); see config.collect"
        )
    n_general = round(cfg.collect.general_ratio * reasoning)  # per reasoning row, as documented
    general, general_stats = general_rows(cfg, n_general, mesh=mesh, rows=general_data)
    stats.update(general_stats)
    rows = accepted + general
    random.Random(f"r1jax-collect-order|{cfg.seed}").shuffle(rows)
    step = checkpoint.newest_step(cfg.collect.model)
    provenance = {
        **({} if step is None else {"source_step": step}),
        "source_model": str(cfg.collect.model),
        "prompts_from": str(cfg.data.train),
        "prompts_sha256": _prompts_sha256(records),
        "general_data_from": {"world_seed": int(cfg.data.world_seed)},
        "collect": cfg.collect.to_dict(),
        "seed": int(cfg.seed),
        "rows": len(rows),
        "reasoning_rows": reasoning,
        "general_sampled_rows": len(accepted) - reasoning,
        "acceptance_rate": stats["accepted"] / max(stats["sampled"], 1),
        "seconds": time.perf_counter() - t0,
        **stats,
    }
    # The SFT that follows reads the file on every process: the agreement is their barrier.
    with distributed.shared_errors():
        if jax.process_index() == 0:
            _write_dataset(workdir, rows, provenance)
            (workdir / JOURNAL).unlink(missing_ok=True)  # the dataset and provenance hold it all
    logging.info(
        "collect: %d of %d samples accepted (%.1f%%) from %d prompts; rejected by %s; "
        "%d general rows; %s",
        stats["accepted"],
        stats["sampled"],
        100 * provenance["acceptance_rate"],
        len(records),
        stats["rejected_by"],
        len(general),
        workdir / DATASET,
    )
    return workdir / DATASET


def sft_config(cfg, dataset: pathlib.Path):
    """The SFT run on the collected dataset: this config with stage sft and data.train set."""
    return configlib.updated(
        cfg,
        stage="sft",
        data__format="jsonl",
        data__train=str(dataset),
        data__eval="",
        data__max_records=0,
    )


def run(cfg, workdir) -> dict:
    """The collect stage: the dataset, then (collect.sft) an SFT run on it in WORKDIR."""
    configlib.validate(cfg)
    if cfg.collect.sft:  # the student's tokenizer, before the teacher is sampled (hours at scale)
        supervised.check_tokenizer(cfg)
        # and a WORKDIR holding another run (the source model's own folder), refused by the SFT
        configlib.check_resumable(sft_config(cfg, pathlib.Path(workdir) / DATASET), workdir)
    dataset = collect(cfg, workdir)
    out = {"dataset": str(dataset)}
    if cfg.collect.sft:
        out.update(supervised.run(sft_config(cfg, dataset), workdir))
    return out
