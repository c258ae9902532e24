"""Reward functions by name, weighted sums, and a worker pool that survives hangs and crashes.

Config: `rewards = {"accuracy": 1.0, "format": 1.0, "language": 0.1}`. Every reward is
`fn(completion, record) -> float`. `RewardPool.score` runs each (completion, all functions) item
in a persistent worker process; a function that overruns `timeout_s` or kills its worker scores
0 and is counted in the metrics, the worker is replaced, and the rest of the batch goes on.
"""

import importlib
import logging
import math
import multiprocessing.connection
import os
import time

import numpy as np

from r1jax import text
from r1jax.data import sources
from r1jax.rewards import code, helper, tasks
from r1jax.rewards import format as format_reward
from r1jax.rewards import language as language_reward
from r1jax.rewards import math as math_reward

_WORKER_START_S = 60.0  # importing sympy on a loaded machine


def format_strict(completion: str, record: dict) -> float:
    """R1 format, strict: <think>…</think><answer>…</answer> and nothing else."""
    opens = bool(record.get("prompt_opens_think", False))
    return format_reward.strict_format(completion, prompt_opens_think=opens)


def format_lenient(completion: str, record: dict) -> float:
    """R1 format, lenient: a think block then an answer block, text around allowed."""
    opens = bool(record.get("prompt_opens_think", False))
    return format_reward.lenient_format(completion, prompt_opens_think=opens)


def tag_count(completion: str, record: dict) -> float:
    """0.25 per R1 tag that appears exactly once."""
    opens = bool(record.get("prompt_opens_think", False))
    return format_reward.tag_count(completion, prompt_opens_think=opens)


def language(completion: str, record: dict) -> float:
    """Share of chain-of-thought words in record["language"] (else the prompt's language)."""
    opens = bool(record.get("prompt_opens_think", False))
    return language_reward.consistency(
        format_reward.with_think_prefix(completion, opens), target_language(record)
    )


def target_language(record: dict) -> str:
    """record["language"] ('zh-CN' reads as 'zh'), else the language the prompt is written in;
    an unknown code raises (`record_problem` refuses such records before a run starts)."""
    field = record.get("language")
    if field is None or field == "":
        return language_reward.detect(record.get("prompt") or "")
    code = language_reward.normalize(field)
    if code is None:
        raise ValueError(_unknown_language(field))
    return code


def _unknown_language(field) -> str:
    return (
        f"unknown language {field!r} (known: {list(language_reward.LANGUAGES)}; the reward "
        "tells languages by script, so a Latin-script language counts as 'en')"
    )


def target_chars(completion: str, record: dict) -> float:
    """Share of the completion's non-space characters in record["target_chars"] (digits default).

    A smooth rule reward that a random tiny model can climb: it checks the RL machinery end to
    end (tests, `configs/grpo.py:tiny`), not reasoning.
    """
    chars = [c for c in completion if not c.isspace()]
    if not chars:
        return 0.0
    allowed = set(record.get("target_chars", "0123456789"))
    return sum(c in allowed for c in chars) / len(chars)


REWARDS = {
    "accuracy": tasks.accuracy,
    "format": format_strict,
    "format_lenient": format_lenient,
    "tag_count": tag_count,
    "language": language,
    "countdown": tasks.countdown,
    "gsm8k": tasks.gsm8k,
    "math": tasks.math_answer,
    "code": tasks.humaneval,
    "target_chars": target_chars,
}


def get(name: str):
    """The reward registered under `name`, or a "module:function" path (custom rewards); a
    module in a package may be written with "/" for "." (pkg/mod:fn), as a config key (a
    field name of config.rl.rewards) cannot hold a dot."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module.replace("/", ".")), attr)
    raise KeyError(f"unknown reward {name!r}; known: {sorted(REWARDS)} or 'module:function'")


# Built-in rewards that grade one task whatever record["task"] says.
_REWARD_TASK = {"gsm8k": "gsm8k", "math": "math", "countdown": "countdown", "code": "code"}


def _graded_task(name: str, record: dict) -> str | None:
    """The task a built-in reward grades `record` as (None for the others)."""
    if name == "accuracy":
        return record.get("task", "math")
    return _REWARD_TASK.get(name)


def time_needed(name: str, record: dict) -> float:
    """Seconds reward `name` may need on `record` by its task's own limits (`tasks.time_needed`)."""
    task = _graded_task(name, record)
    return tasks.time_needed(task, record) if task in tasks.TASKS else 0.0


def opened_thought(record: dict, prompt_text: str) -> dict:
    """`record` with prompt_opens_think set when its templated prompt ends in <think> (an
    R1-distill style chat template) and the record does not say: the rewards then read the
    completion as the thought's continuation (without it, strict format scored 0 every time)."""
    if "prompt_opens_think" in record or not prompt_text.rstrip().endswith(text.THINK_OPEN):
        return record
    return {**record, "prompt_opens_think": True}


def record_problem(names, record: dict) -> str | None:
    """Why the rewards `names` cannot grade `record` (a field they read is missing, an unknown
    task), or None. A run checks its records up front: otherwise every completion of such a
    record scores 0 and the run trains on nothing but a crash count."""
    if not isinstance(record, dict):
        return f"a record must be a JSON object, got {type(record).__name__}"
    if "language" in names and record.get("language") not in (None, ""):
        if language_reward.normalize(record["language"]) is None:
            return _unknown_language(record["language"])
    for name in names:
        if name == "accuracy":
            task = record.get("task", "math")
            if not isinstance(task, str) or task not in tasks.TASKS:
                return f"unknown task {task!r} (known: {sorted(tasks.TASKS)})"
        elif name in _REWARD_TASK:
            task = _REWARD_TASK[name]
        else:
            continue
        fields = tasks.task_fields(task, record)
        missing = [f for f in fields if record.get(f) is None]
        if missing:
            return f"no {missing[0]!r} field, which reward {name!r} (task {task!r}) needs"
        for field in fields:
            problem = _field_problem(field, record[field])
            if problem:
                return f"field {field!r} {problem} (reward {name!r}, task {task!r})"
        if tasks.TASKS[task] is tasks.humaneval:
            for field, upper in (("timeout_s", MAX_CODE_TIMEOUT_S), ("memory_mb", 1 << 20)):
                value = record.get(field)
                if value is not None and not (_is_number(value) and 0 < value <= upper):
                    return f"field {field!r} must be a number in (0, {upper}], got {value!r:.40}"
    return None


# The longest a record may let its program run (timeout_s): the reward pool waits that long
# before it counts a timeout.
MAX_CODE_TIMEOUT_S = 600


def _is_number(value) -> bool:
    """An int or a finite float, not a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def _field_problem(field: str, value) -> str | None:
    """What is wrong with a task field's value, or None (a code test that is a list scored
    every completion 0; countdown numbers "123" read as digits; a target 6.5 was cut to 6)."""
    if field == "answer":
        if isinstance(value, str):
            return None if value.strip() else "is blank"
        return None if _is_number(value) else f"must be a string or a number, got {value!r:.40}"
    if field == "numbers":
        ints = isinstance(value, list) and bool(value)
        ints = ints and all(isinstance(n, int) and not isinstance(n, bool) for n in value)
        return None if ints else f"must be a list of integers, got {value!r:.40}"
    if field == "target":
        whole = _is_number(value) and float(value).is_integer()
        return None if whole else f"must be an integer, got {value!r:.40}"
    if not isinstance(value, str) or not value.strip():
        return f"must be a non-blank string, got {value!r:.40}"
    if field == "entry_point" and not value.isidentifier():
        return f"must be a Python function name, got {value!r:.40}"
    return None


def check_records(names, records: list[dict], where: str, *, on_error: str = "raise") -> list:
    """The records the rewards `names` can grade, each with a text `prompt`.

    A record that cannot be graded raises DataError (a ValueError) naming `where`, its number
    and the problem, or with on_error="skip" is dropped (the count is logged)."""
    names, kept = list(names), []
    for i, record in enumerate(records):
        problem = record_problem(names, record)
        if problem is None and not isinstance(record.get("prompt"), str):
            problem = "no text 'prompt' field"
        elif problem is None and not record["prompt"].strip():  # sampled from nothing
            problem = "field 'prompt' is blank"
        if problem is None:
            kept.append(record)
        elif on_error != "skip":
            raise sources.DataError(f"{where}: record {i + 1}: {problem}")
    if len(kept) < len(records):
        skipped = len(records) - len(kept)
        logging.warning("%s: skipped %d records the rewards cannot grade", where, skipped)
    if not kept:
        raise sources.DataError(f"{where}: no record the rewards {names} can grade")
    graded = {_graded_task(name, r) for r in kept for name in names}
    if any(tasks.TASKS.get(task) is tasks.humaneval for task in graded):
        code.require_isolation()  # SandboxUnavailable now, not a zero for every program
    return kept


# The error of a reward whose math check ran past its deadline (counted as a timeout).
MATH_DEADLINE = "MathDeadline: a math-verify check ran past its deadline and counted as not equal"


def score_item(names: list[str], completion: str, record: dict):
    """Yield (name, value, error) for each reward, in order; an exception or a NaN or infinite
    value is (name, 0, why), a math check past its deadline (name, value, MATH_DEADLINE)."""
    for name in names:
        hits = math_reward.deadline_hits
        try:
            value = float(get(name)(completion, record))
        except Exception as exc:  # noqa: BLE001 - one bad reward must not stop the others
            yield name, 0.0, f"{type(exc).__name__}: {exc}"[:300]
            continue
        if not math.isfinite(value):  # its group's advantages, its step's update were NaN
            yield name, 0.0, f"NonFinite: the reward returned {value}"
            continue
        yield name, value, MATH_DEADLINE if math_reward.deadline_hits != hits else None


def _worker_main(read_fd: int, write_fd: int) -> None:
    """Worker process: score (index, names, completion, record) requests until EOF. SIGINT
    and SIGTERM are ignored (`helper.start`): it keeps scoring the step a stopped trainer saves."""
    requests = multiprocessing.connection.Connection(read_fd, writable=False)
    replies = multiprocessing.connection.Connection(write_fd, readable=False)
    replies.send("ready")
    while True:
        try:
            index, names, completion, record = requests.recv()
        except (EOFError, OSError):
            return
        for name, value, error in score_item(names, completion, record):
            replies.send((index, name, value, error))


class _Worker:
    """One persistent worker process and the item it is working on."""

    def __init__(self):
        self.proc, self.requests, self.replies = helper.start(
            "r1jax.rewards.registry", "_worker_main"
        )
        self.ready = False
        self.task = None  # (index, names still to score)
        self.deadline = self.started = 0.0  # of the function being scored

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self.requests.close()
        self.replies.close()
        code.remove_workdirs_of(self.proc.pid)  # a code run it was in never cleaned up


class RewardPool:
    """Weighted rewards over a batch, scored by persistent workers with per-function timeouts."""

    def __init__(
        self, weights: dict[str, float], *, num_workers: int, timeout_s: float, log_errors=True
    ):
        """log_errors=False leaves reporting errors to the caller (`grade`'s per-item errors):
        evaluation and collection name them their own way, not as rewards/ metrics."""
        for name in weights:
            get(name)
        self.weights = dict(weights)
        self.names = list(weights)
        self.timeout_s = float(timeout_s)
        self.num_workers = int(num_workers)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if self.num_workers > (cores or 1):
            # More workers than cores share them, and the math checks' deadlines are wall-clock
            # time: a correct answer's check could run out of time waiting for a core.
            logging.info("reward workers: %d, one a core (config: %d)", cores, self.num_workers)
            self.num_workers = cores or 1
        self._workers = [_Worker() for _ in range(self.num_workers)]
        self._restarts = 0
        self._logged = set()  # (reward, exception type) pairs already logged
        self._log_errors = log_errors

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop the workers."""
        for worker in self._workers:
            worker.kill()
        self._workers = []

    def score(self, completions: list[str], records: list[dict], names=None):
        """(total_N float32, {name: values_N}, metrics) for a batch of completions. `names`
        (optional, one per completion) grades each with those of the pool's rewards alone; an
        ungraded reward's value is 0 and adds nothing to the total."""
        start = time.monotonic()
        n = len(completions)
        values, counts, _ = self.grade(completions, records, names)
        total_N = sum((self.weights[k] * values[k] for k in self.names), np.zeros(n, np.float32))
        metrics = {f"rewards/{k}": float(v) for k, v in counts.items()}
        metrics.update(
            {f"rewards/mean/{k}": float(v.mean()) if n else 0.0 for k, v in values.items()}
        )
        metrics["rewards/worker_restarts"] = float(self._restarts)
        metrics["rewards/seconds"] = time.monotonic() - start
        return total_N.astype(np.float32), values, metrics

    def grade(self, completions: list[str], records: list[dict], names=None):
        """({name: values_N}, {"timeouts/<name>" | "crashes/<name>": count}, {name: errors_N})
        for a batch; errors_N[i] is None, or why completion i scored 0 for `name` (what it
        raised, a timeout, a worker that died). `names`: as in `score`."""
        if len(completions) != len(records):
            raise ValueError(f"{len(completions)} completions but {len(records)} records")
        n = len(completions)
        names = self._item_names(names, n)
        values = {name: np.zeros(n, np.float32) for name in self.names}
        counts = {f"{kind}/{name}": 0 for name in self.names for kind in ("timeouts", "crashes")}
        self._errors = {name: [None] * n for name in self.names}
        if self.num_workers == 0:
            self._score_in_process(completions, records, names, values, counts)
        else:
            self._score_in_workers(completions, records, names, values, counts)
        return values, counts, self._errors

    def _item_names(self, names, n: int) -> list[list[str]]:
        """Each item's rewards, in the pool's order (all of them when `names` is None)."""
        if names is None:
            return [list(self.names)] * n
        if len(names) != n:
            raise ValueError(f"{n} completions but {len(names)} lists of reward names")
        out = []
        for item in names:
            unknown = set(item) - set(self.names)
            if unknown:
                raise ValueError(f"rewards {sorted(unknown)} are not in this pool {self.names}")
            out.append([name for name in self.names if name in item])
        return out

    def grade_pairs(self, name: str, completions: list[str], records: list[dict]):
        """[(score, error or None)] of reward `name` per completion, errors as in-process
        grading reports them: a math check past its deadline is "not equal", not an error."""
        values, _, errors = self.grade(completions, records)
        return [
            (float(v), None if e == MATH_DEADLINE else e)
            for v, e in zip(values[name].tolist(), errors[name], strict=True)
        ]

    def _score_in_process(self, completions, records, names, values, counts):
        for i, (completion, record) in enumerate(zip(completions, records, strict=True)):
            for name, value, error in score_item(names[i], completion, record):
                values[name][i] = value
                self._count_error(name, i, error, counts)

    def _score_in_workers(self, completions, records, names, values, counts):
        pending = [(i, names[i]) for i in range(len(completions)) if names[i]][::-1]
        while pending or any(w.task for w in self._workers):
            for worker in self._workers:
                if worker.task is None and pending and worker.ready:
                    worker.task = pending.pop()
                    index, names = worker.task
                    worker.requests.send((index, names, completions[index], records[index]))
                    worker.started = time.monotonic()
                    worker.deadline = self._deadline(names[0], records[index])
            self._collect(values, counts, pending, records)

    def _deadline(self, name: str, record: dict) -> float:
        """When scoring `name` on `record` counts as a timeout: timeout_s, or longer where the
        record's task has a longer limit of its own (a code run's timeout and sandbox)."""
        return time.monotonic() + max(self.timeout_s, time_needed(name, record))

    def _collect(self, values, counts, pending, records):
        """Wait for replies; record values; replace workers that time out or die."""
        now = time.monotonic()
        waits = [w.deadline - now for w in self._workers if w.task] or [_WORKER_START_S]
        ready = multiprocessing.connection.wait(
            [w.replies for w in self._workers], timeout=max(0.0, min(waits))
        )
        for slot, worker in enumerate(self._workers):
            if worker.replies in ready:
                try:
                    self._receive(worker, values, counts, records)
                    continue
                except (EOFError, OSError):
                    reason = "crashes"
            elif worker.task and time.monotonic() > worker.deadline:
                reason = "timeouts"
            elif not worker.ready and worker.proc.poll() is not None:
                raise RuntimeError("reward worker failed to start")
            else:
                continue
            self._replace(slot, reason, counts, pending)

    def _receive(self, worker, values, counts, records):
        message = worker.replies.recv()
        if message == "ready":
            worker.ready = True
            return
        index, name, value, error = message
        values[name][index] = value
        self._count_error(name, index, error, counts)
        remaining = worker.task[1][1:]
        worker.task = (index, remaining) if remaining else None
        if remaining:
            worker.started = time.monotonic()
            worker.deadline = self._deadline(remaining[0], records[index])

    def _count_error(self, name, index, error, counts):
        """Count a reward that raised; log the first error of each kind (the metrics count all)."""
        if error is None:
            return
        self._errors[name][index] = error
        what = "timeouts" if error == MATH_DEADLINE else "crashes"
        counts[f"{what}/{name}"] += 1
        kind = (name, error.split(":", 1)[0])
        if self._log_errors and kind not in self._logged:
            self._logged.add(kind)
            logging.warning(
                "reward %r %s (counted in rewards/%s/%s; each kind of error is logged once): %s",
                name,
                "timed out" if what == "timeouts" else "raised and scored 0",
                what,
                name,
                error,
            )

    def _replace(self, slot, reason, counts, pending):
        """The function being scored gets 0 and a count; the item's other functions are requeued."""
        worker = self._workers[slot]
        if worker.task:
            index, names = worker.task
            counts[f"{reason}/{names[0]}"] += 1
            self._errors[names[0]][index] = (
                f"timeout: no score within {worker.deadline - worker.started:.1f} s"
                if reason == "timeouts"
                else "crash: the worker process died while scoring it"
            )
            if names[1:]:
                pending.append((index, names[1:]))
        worker.kill()
        self._workers[slot] = _Worker()
        self._restarts += 1
