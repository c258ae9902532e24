"""Reward throughput: math checks per second and sandboxed programs per second on this machine.

Run: python benchmarks/rewards.py [--data ../shared/data] [--workers 2]
"""

import argparse
import concurrent.futures
import os
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from r1jax.rewards import code, registry, tasks  # noqa: E402
from r1jax.rewards import math as math_reward  # noqa: E402

PHRASINGS = [
    "<think>work</think><answer>{}</answer>",
    "So the final answer is $\\boxed{{{}}}$.",
    "The answer is {}.",
]


def math_batch(data: pathlib.Path, size: int, seed: int = 0):
    """`size` (completion, record) pairs from GSM8K and MATH-500 golds, half of them wrong."""
    rng = random.Random(seed)
    records = tasks.gsm8k_records(data / "gsm8k_test.jsonl")
    records += tasks.math_records(data / "math500_test.jsonl")
    completions, chosen = [], []
    for _ in range(size):
        record, other = rng.choice(records), rng.choice(records)
        answer = record["answer"] if rng.random() < 0.5 else other["answer"]
        completions.append(rng.choice(PHRASINGS).format(answer))
        chosen.append(record)
    return completions, chosen


def bench_math(data: pathlib.Path, workers: int) -> None:
    completions, records = math_batch(data, 1000)
    start = time.monotonic()
    correct = sum(tasks.accuracy(c, r) for c, r in zip(completions, records, strict=True))
    elapsed = time.monotonic() - start
    print(
        f"math, in process      : {len(completions) / elapsed:8.0f} checks/s ({correct:.0f} right)"
    )
    completions, records = math_batch(data, 1000, seed=1)  # fresh answers: no parse cache hits
    with registry.RewardPool({"accuracy": 1.0}, num_workers=workers, timeout_s=10.0) as pool:
        pool.score(completions[:2], records[:2])  # start-up is not part of the rate
        start = time.monotonic()
        _, _, metrics = pool.score(completions, records)
        elapsed = time.monotonic() - start
    print(f"math, pool of {workers} workers: {len(completions) / elapsed:8.0f} checks/s")
    print(f"math, per check       : {1e3 * elapsed / len(completions):8.2f} ms wall in the pool")
    hard = ["9**9**9**9", "9^{9^{9^{9}}}", "{" * 10_000 + "}" * 10_000, "x" * 1_000_000]
    start = time.monotonic()
    assert not any(math_reward.is_equiv(h, "5") for h in hard)
    print(f"math, 4 pathological  : {1e3 * (time.monotonic() - start):8.1f} ms in total")


PROGRAMS = [
    ("def f(x):\n    return x * 2\n", "assert f(2) == 4\nassert f(-1) == -2\n"),
    ("def f(x):\n    return sorted(x)\n", "assert f([3, 1, 2]) == [1, 2, 3]\n"),
    ("def f(x):\n    return x + 1\n", "assert f(2) == 4\n"),  # wrong
    ("import math\ndef f(x):\n    return math.isqrt(x)\n", "assert f(17) == 4\n"),
]


def bench_code(count: int, threads: int) -> None:
    batch = [PROGRAMS[i % len(PROGRAMS)] for i in range(count)]
    mode = code.best_isolation()
    start = time.monotonic()
    results = [code.run_tests(p, t, timeout_s=5.0) for p, t in batch]
    elapsed = time.monotonic() - start
    passed = sum(r.passed for r in results)
    print(f"code ({mode}), serial      : {count / elapsed:6.1f} programs/s ({passed} passed)")
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda pt: code.run_tests(*pt, timeout_s=5.0), batch))
    elapsed = time.monotonic() - start
    print(f"code ({mode}), {threads} at a time : {count / elapsed:6.1f} programs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default_data = pathlib.Path(
        os.environ.get("R1JAX_DATA")
        or pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--data", type=pathlib.Path, default=default_data)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    bench_math(args.data, args.workers)
    bench_code(100, threads=4)


if __name__ == "__main__":
    main()
