"""Tests for r1jax.rewards.registry: names, weights, and a pool that survives hangs and crashes."""

import os
import time

import numpy as np
import pytest

from r1jax.data import sources
from r1jax.rewards import registry

RECORDS = [
    {"task": "math", "answer": "\\frac{1}{2}", "prompt": "What is half of one?"},
    {"task": "gsm8k", "answer": "#### 1,234", "prompt": "How many?"},
    {"task": "countdown", "numbers": [3, 5, 7], "target": 22, "prompt": "Use 3 5 7 to make 22."},
    {"task": "world", "answer": "17", "prompt": "计算 8 加 9。", "language": "zh"},
]
COMPLETIONS = [
    "<think>one over two</think><answer>\\boxed{0.5}</answer>",
    "<think>add</think><answer>1234</answer> extra",
    "<think>try</think><answer>3*5+7</answer>",
    "<think>八加九等于 seventeen</think><answer>18</answer>",
]
WEIGHTS = {"accuracy": 1.0, "format": 0.5, "language": 0.1}


def hang_on_marker(completion, record):
    """A reward that never returns on a marked completion (used by the pool tests)."""
    while "HANG" in completion:
        time.sleep(0.05)
    return 1.0


def crash_on_marker(completion, record):
    """A reward that kills its own worker process on a marked completion."""
    if "CRASH" in completion:
        os._exit(3)
    if "RAISE" in completion:
        raise RuntimeError("bad record")
    return 1.0


def not_finite_on_marker(completion, record):
    """A custom reward that returns NaN or inf on a marked completion."""
    return {"NAN": float("nan"), "INF": float("inf"), "-INF": -np.inf}.get(completion, 0.5)


def test_a_nan_or_infinite_reward_scores_0_and_is_counted_as_a_crash():
    # It went into the total as it was: the group's advantages and the step's loss were NaN (the
    # update skipped), and NaN, which marks another domain's rows, hid it from reward/<name>.
    name = "test_rewards_registry:not_finite_on_marker"
    completions = ["NAN", "INF", "-INF", COMPLETIONS[0]]
    for workers in (0, 1):
        with registry.RewardPool(
            {name: 1.0, "format": 0.5}, num_workers=workers, timeout_s=30
        ) as p:
            total_N, per_fn, metrics = p.score(completions, [RECORDS[0]] * 4)
            errors = p.grade(completions, [RECORDS[0]] * 4)[2][name]
        np.testing.assert_array_equal(per_fn[name], [0.0, 0.0, 0.0, 0.5])
        np.testing.assert_array_equal(total_N, [0.0, 0.0, 0.0, 1.0])
        assert metrics[f"rewards/crashes/{name}"] == 3.0, (workers, metrics)
        assert errors[0] == "NonFinite: the reward returned nan" and errors[3] is None


def math_past_deadline(completion, record):
    """A reward whose math check runs past its (tiny) deadline: ~0.4 s of sympy, 0.05 allowed
    (bare braces 8 deep: one more and math.is_dangerous refuses the answer unchecked)."""
    from r1jax.rewards import math as math_reward

    return float(math_reward.is_equiv("{" * 8 + "x+1" + "}" * 8, "x+2", timeout_s=0.05))


def test_a_math_check_past_its_deadline_is_counted_as_a_timeout():
    # It counted as "not equal" and nothing said so: a correct answer's check that ran out of
    # time (e.g. more reward workers than free cores) scored 0 silently.
    name = "test_rewards_registry:math_past_deadline"
    for workers in (0, 1):  # in process (the math child), in a worker (its interval timer)
        with registry.RewardPool(
            {name: 1.0, "format": 1.0}, num_workers=workers, timeout_s=30
        ) as p:
            _, per_fn, metrics = p.score(COMPLETIONS[:2], RECORDS[:2])
        assert metrics[f"rewards/timeouts/{name}"] == 2.0, (workers, metrics)
        assert metrics[f"rewards/crashes/{name}"] == 0.0 and metrics["rewards/timeouts/format"] == 0
        np.testing.assert_array_equal(per_fn[name], [0.0, 0.0])


def test_registry_names_and_lookup():
    for name in ("accuracy", "format", "format_lenient", "tag_count", "language"):
        assert name in registry.REWARDS
        assert callable(registry.get(name))
    assert registry.get("test_rewards_registry:hang_on_marker") is hang_on_marker
    # A module in a package, named as a config key can be (ConfigDict refuses dots in keys).
    import ml_collections

    from r1jax.rewards import tasks

    weights = ml_collections.ConfigDict({"r1jax/rewards/tasks:gsm8k": 1.0})
    assert [registry.get(name) for name in weights] == [tasks.gsm8k]
    with pytest.raises(KeyError):
        registry.get("no_such_reward")


def test_language_reward_uses_record_language_or_detects_prompt():
    zh_text = "<think>八加九</think><answer>17</answer>"
    assert registry.language(zh_text, {"language": "zh"}) == 1.0
    assert registry.language(zh_text, {"prompt": "计算 8 加 9"}) == 1.0
    assert registry.language(zh_text, {"prompt": "Compute 8 plus 9"}) == 0.0


def _expected():
    accuracy = np.array([1, 1, 1, 0], np.float32)
    format_ = np.array([1, 0, 1, 1], np.float32)
    language = np.array([1, 1, 1, 5 / 6], np.float32)
    return accuracy, format_, language


def test_in_process_pool_scores_and_weights():
    accuracy, format_, language = _expected()
    with registry.RewardPool(WEIGHTS, num_workers=0, timeout_s=5.0) as pool:
        total_N, per_fn, metrics = pool.score(COMPLETIONS, RECORDS)
    np.testing.assert_allclose(per_fn["accuracy"], accuracy)
    np.testing.assert_allclose(per_fn["format"], format_)
    np.testing.assert_allclose(per_fn["language"], language, rtol=1e-6)
    np.testing.assert_allclose(total_N, accuracy + 0.5 * format_ + 0.1 * language, rtol=1e-6)
    assert total_N.dtype == np.float32 and total_N.shape == (4,)
    assert metrics["rewards/crashes/accuracy"] == 0.0


def test_worker_pool_matches_in_process_and_survives_hangs_and_crashes():
    weights = dict(WEIGHTS)
    weights["test_rewards_registry:hang_on_marker"] = 1.0
    weights["test_rewards_registry:crash_on_marker"] = 1.0
    completions = COMPLETIONS + ["HANG", "CRASH", "RAISE", COMPLETIONS[0]]
    records = RECORDS + [RECORDS[0]] * 4
    # 3 s: the other items' honest scoring must fit in it on a loaded machine (1 s did not at a
    # load average of 12).
    with registry.RewardPool(weights, num_workers=2, timeout_s=3.0) as pool:
        pool.score(COMPLETIONS[:1], RECORDS[:1])  # workers are up before the timing
        start = time.monotonic()
        per_fn, counts, errors = pool.grade(completions, records)  # score's values and counts
        elapsed = time.monotonic() - start
        # The pool keeps working after replacing workers.
        again_N, _, again_metrics = pool.score(COMPLETIONS, RECORDS)
    accuracy, format_, language = _expected()
    np.testing.assert_allclose(per_fn["accuracy"][:4], accuracy)
    np.testing.assert_allclose(per_fn["language"][:4], language, rtol=1e-6)
    hang = per_fn["test_rewards_registry:hang_on_marker"]
    crash = per_fn["test_rewards_registry:crash_on_marker"]
    np.testing.assert_array_equal(hang, [1, 1, 1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(crash, [1, 1, 1, 1, 1, 0, 0, 1])
    # Rewards scheduled after the hanging one on the same item were still computed.
    assert per_fn["accuracy"][7] == 1.0
    assert counts["timeouts/test_rewards_registry:hang_on_marker"] == 1
    assert counts["crashes/test_rewards_registry:crash_on_marker"] == 2
    assert counts["timeouts/accuracy"] == 0
    # Each item's error says why it scored 0 (evaluation reports them per completion).
    hang_errors = errors["test_rewards_registry:hang_on_marker"]
    assert hang_errors[4].startswith("timeout: no score within 3.0 s")
    assert [e is None for e in hang_errors] == [True] * 4 + [False] + [True] * 3
    crash_errors = errors["test_rewards_registry:crash_on_marker"]
    assert crash_errors[5] == "crash: the worker process died while scoring it"
    assert crash_errors[6].startswith("RuntimeError: ") and crash_errors[7] is None
    assert elapsed < 30.0
    assert again_metrics["rewards/timeouts/test_rewards_registry:hang_on_marker"] == 0.0
    total_N = sum(weight * per_fn[name] for name, weight in weights.items())
    np.testing.assert_allclose(again_N, total_N[:4], rtol=1e-6)


def test_pool_rejects_unknown_names_and_mismatched_lengths():
    with pytest.raises(KeyError):
        registry.RewardPool({"nope": 1.0}, num_workers=0, timeout_s=1.0)
    with registry.RewardPool(WEIGHTS, num_workers=0, timeout_s=1.0) as pool:
        with pytest.raises(ValueError):
            pool.score(["a"], [])


def test_records_the_rewards_cannot_grade_are_refused_up_front():
    """A record without what its reward reads would score 0 on every completion (a crash count
    in the metrics), so an RL or eval run refuses it before training, naming it."""
    assert registry.check_records(WEIGHTS, RECORDS, "data") == RECORDS
    bad = [
        ({"prompt": "2+2?"}, "no 'answer' field, which reward 'accuracy' \\(task 'math'\\)"),
        ({"prompt": "2+2?", "answer": None}, "no 'answer' field"),
        ({"prompt": "?", "task": "countdown", "numbers": [1, 2]}, "no 'target' field"),
        ({"prompt": "?", "task": "world", "kind": "countdown", "answer": "3"}, "no 'numbers'"),
        ({"prompt": "?", "task": "world", "kind": "general", "answer": "加3"}, "no 'language'"),
        ({"prompt": "?", "task": "algebra", "answer": "1"}, "unknown task 'algebra'"),
        ({"prompt": "?", "task": ["math"], "answer": "1"}, "unknown task \\['math'\\]"),
        ({"answer": "4"}, "no text 'prompt' field"),
        ({"prompt": 4, "answer": "4"}, "no text 'prompt' field"),
        ({"prompt": "  ", "answer": "4"}, "field 'prompt' is blank"),  # trained on nothing
        # Types (from the data audit): each scored every completion 0, read "123" as the
        # numbers 1, 2, 3, cut a target of 6.5 to 6, or crashed the run when graded.
        ({"prompt": "?", "answer": " "}, "field 'answer' is blank"),
        ({"prompt": "?", "answer": [4]}, "field 'answer' must be a string or a number"),
        ({"prompt": "?", "answer": float("nan")}, "field 'answer' must be a string or a number"),
        ({"prompt": "?", "task": "countdown", "numbers": "123", "target": 6}, "field 'numbers'"),
        ({"prompt": "?", "task": "countdown", "numbers": [1, 2], "target": 6.5}, "field 'target'"),
        (
            {"prompt": "def f():", "task": "code", "test": ["t"], "entry_point": "f"},
            "field 'test' must be a non-blank string",
        ),
        (
            {"prompt": "def f():", "task": "code", "test": "t", "entry_point": "f x"},
            "field 'entry_point' must be a Python function name",
        ),
        (
            {
                "prompt": "def f():",
                "task": "code",
                "test": "t",
                "entry_point": "f",
                "timeout_s": "ten",
            },
            "field 'timeout_s' must be a number in \\(0, 600\\]",
        ),
        (
            {
                "prompt": "def f():",
                "task": "code",
                "test": "t",
                "entry_point": "f",
                "timeout_s": 1e9,
            },
            "field 'timeout_s'",
        ),
    ]
    for record, reason in bad:
        with pytest.raises(sources.DataError, match=f"^data: record 2: {reason}"):
            registry.check_records(WEIGHTS, [RECORDS[0], record], "data")
        kept = registry.check_records(WEIGHTS, [RECORDS[0], record], "data", on_error="skip")
        assert kept == [RECORDS[0]]
    with pytest.raises(sources.DataError, match="no record the rewards"):
        registry.check_records(WEIGHTS, [bad[0][0]], "data", on_error="skip")
    # A reward bound to one task checks that task's fields whatever record["task"] says.
    with pytest.raises(sources.DataError, match="no 'entry_point' field, which reward 'code'"):
        registry.check_records({"code": 1.0}, [{"prompt": "def f():", "test": "x"}], "data")
    # Rewards that read nothing beyond the completion (and custom ones) pass any prompt.
    plain = [{"prompt": "say digits"}]
    assert registry.check_records({"target_chars": 1.0, "format": 1.0}, plain, "d") == plain
    custom = {f"{__name__}:hang_on_marker": 1.0}
    assert registry.check_records(custom, plain, "d") == plain


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_a_ctrl_c_or_sigterm_to_the_process_group_leaves_the_reward_helpers_scoring(signum):
    # The trainer saves after a first Ctrl-C or a SIGTERM (SLURM and preempted VMs send it to
    # every process); its workers and the math checker died of it and the step it saved had
    # those items scored 0 (crashes).
    import signal

    from r1jax.rewards import math as math_reward

    with registry.RewardPool(dict(WEIGHTS), num_workers=2, timeout_s=5.0) as pool:
        pool.score(COMPLETIONS, RECORDS)  # the workers are up
        math_reward._CHECKER.equal("x^2", "x*x", 30.0)  # and the math checker
        helpers = [w.proc for w in pool._workers] + [math_reward._CHECKER._proc]
        for proc in helpers:
            os.kill(proc.pid, getattr(signal, signum))
        time.sleep(0.5)
        assert all(proc.poll() is None for proc in helpers)
        _, per_fn, metrics = pool.score(COMPLETIONS, RECORDS)
    np.testing.assert_allclose(per_fn["accuracy"], _expected()[0])
    assert not any(v for k, v in metrics.items() if "crashes" in k or "restarts" in k)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize(
    "module, main",
    [("r1jax.rewards.registry", "_worker_main"), ("r1jax.rewards.math", "_checker_main")],
)
def test_a_ctrl_c_or_sigterm_while_a_reward_helper_starts_does_not_kill_it(module, main, signum):
    # The helpers ignored SIGINT only once their imports (seconds, sympy's) were done: a Ctrl-C
    # then killed a worker the pool was starting or replacing, and its items scored 0. They did
    # not ignore SIGTERM at all.
    import signal

    from r1jax.rewards import helper

    proc, requests, replies = helper.start(module, main)
    try:
        for _ in range(3):  # at once (the interpreter starting), then during the imports
            os.kill(proc.pid, getattr(signal, signum))
            time.sleep(0.05)
        assert replies.poll(120) and replies.recv() == "ready"
        assert proc.poll() is None
    finally:
        requests.close()
        assert proc.wait(30) == 0  # EOF on its requests: it exits cleanly
        replies.close()
