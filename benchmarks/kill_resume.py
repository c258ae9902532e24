"""Kills a run at random moments, resumes it with the same command, and compares what it leaves
with an uninterrupted run of that command: the README's "kill it at any moment" promise, checked.

  python benchmarks/kill_resume.py [--kills 6] [--seed 0] [--out DIR]
                                  [--preset main_job | pipeline | -- R1JAX_ARGS...]

Presets: `main_job` (the default), configs/r1_zero.py:tiny shortened to 8 steps with a checkpoint
every 2 and a 24-problem evaluation before and after (about a minute on 2 cores); `pipeline`,
configs/pipeline.py:tiny with every stage shortened to 6 steps (collections to 96 prompts) and a
16-problem table (about 4.5 minutes). Or any r1jax command's arguments after `--`.

1. `r1jax R1JAX_ARGS --workdir=OUT/reference`, timed: T seconds.
2. `r1jax R1JAX_ARGS --workdir=OUT/killed-1` started again and again, each run's process group
   sent SIGKILL (a machine that dies: no handler runs) after a time drawn uniformly from
   [1 s, T], until a run ends on its own (its kill would have come after its end: a resumed run
   has less left to do); then the same in OUT/killed-2, ..., until --kills kills have landed.
   So the kills fall anywhere in a run, its start-up, evaluations and saves included.
3. Each killed-N folder compared with the reference: every JSON / JSONL file (metrics, samples,
   summaries, evaluations, datasets, provenance, stage markers) as data, less its timing fields
   (`*_s`, `*seconds`, `*_per_s`, `*minutes`, `mfu`) and the `resumed` markers, with the
   workdir's path written the same; every other file byte for byte (tokenizers, data
   statistics), except checkpoints, TensorBoard events, data indexes, figures, Markdown tables
   (they print minutes) and logs; and, for every run folder in it (a pipeline's stages), the
   newest checkpoint's step and its whole training state (params, optimizer moments) bit for
   bit.
Prints each kill's moment and the last line the run logged before it, and the differences;
exits 1 when there is one. The runs' output is in OUT/<folder>.log.
"""

import argparse
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAGES_RL = ("r1_zero", "reasoning_rl", "all_domain_rl", "student_rl")
STAGES_COLLECTING = ("cold_start", "rejection_sampling", "distill")
STAGES_TRAINED = (*STAGES_RL, "reward_model", "cold_start", "sft_all", "distill")
MAIN_JOB_SHORT = (
    "--config=configs/r1_zero.py:tiny",
    "--config.train.steps=8",
    "--config.train.checkpoint_every=2",
    "--config.rl.prompts_per_step=8",
    "--config.rl.log_samples_every=3",
    "--config.eval.max_problems=24",
    "--config.eval.num_samples=8",
    "--config.eval.ks=(1,2,4,8)",
)
S = "--config.stages"
PIPELINE_SHORT = (
    "--config=configs/pipeline.py:tiny",
    *(f"{S}.{n}.train.steps=6" for n in STAGES_TRAINED),
    *(f"{S}.{n}.train.checkpoint_every=2" for n in STAGES_TRAINED if n != "reward_model"),
    f"{S}.reward_model.train.checkpoint_every=3",
    f"{S}.reward_model.train.eval_every=3",
    *(f"{S}.{n}.rl.prompts_per_step=8" for n in STAGES_RL),
    f"{S}.all_domain_rl.rl.general_from_step=2",
    *(f"{S}.{n}.collect.num_prompts=96" for n in STAGES_COLLECTING),
    *(f"{S}.{n}.collect.prompts_per_batch=32" for n in STAGES_COLLECTING),
    f"{S}.distill.collect.num_general_prompts=16",
    "--config.eval.max_problems=16",
    "--config.eval.num_samples=4",
    "--config.eval.ks=(1,2,4)",
    "--config.eval.prompts_per_batch=16",
    "--config.pipeline.general_problems=8",
    "--config.pipeline.general_samples=2",
)
PRESETS = {"main_job": MAIN_JOB_SHORT, "pipeline": PIPELINE_SHORT}
# Not compared: what a restart rewrites with other bytes by design.
SKIPPED_DIRS = {"checkpoints", "corrupt_checkpoints", "tensorboard", "data_index"}
SKIPPED_SUFFIXES = {".png", ".md", ".log", ".lock"}  # .lock: the pid holding the folder
TIMING = re.compile(r"(_s|seconds|_per_s|minutes)$|^mfu$")


def _timing(key: str) -> bool:
    leaf = key.split("/")[-1]
    return bool(TIMING.search(leaf)) or key.startswith("resumed")


def _without_timing(obj):
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if not _timing(k)}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _json_rows(path: pathlib.Path, workdir: pathlib.Path):
    text = path.read_text(encoding="utf-8").replace(str(workdir), "WORKDIR")
    if path.suffix == ".jsonl":
        return [_without_timing(json.loads(line)) for line in text.splitlines() if line.strip()]
    return _without_timing(json.loads(text))


def _first_difference(a, b, where: str = "") -> str:
    """Where two JSON values first differ, and both values there (shortened)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{where}/{k}")
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where or '/'}: {len(a)} entries against {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where or '/'}: {str(a)[:120]} against {str(b)[:120]}"


def _compared_files(root: pathlib.Path) -> set[pathlib.Path]:
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not SKIPPED_DIRS & set(rel.parts[:-1]):
            if path.suffix not in SKIPPED_SUFFIXES:
                out.add(rel)
    return out


def _run_folders(root: pathlib.Path) -> list[pathlib.Path]:
    """Folders holding a run's checkpoints (the workdir itself, or a pipeline's stages)."""
    return sorted(p.parent.relative_to(root) for p in root.rglob("checkpoints") if p.is_dir())


def _final_state(run: pathlib.Path) -> tuple[int | None, dict]:
    """The newest checkpoint's step and its whole training state (params, optimizer moments,
    step), leaf path -> (dtype, shape, bytes)."""
    import jax
    import orbax.checkpoint as ocp

    directory = run / "checkpoints"
    step = ocp.CheckpointManager(directory).latest_step()
    if step is None:
        return None, {}
    with warnings.catch_warnings():  # "Sharding info not provided": as saved, on this host
        warnings.simplefilter("ignore")
        tree = ocp.PyTreeCheckpointer().restore(directory / str(step) / "state")
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return step, {
        jax.tree_util.keystr(k): (str(v.dtype), v.shape, bytes(memoryview(jax.device_get(v))))
        for k, v in leaves
    }


def _state_difference(reference: pathlib.Path, killed: pathlib.Path) -> str | None:
    (step_a, a), (step_b, b) = _final_state(reference), _final_state(killed)
    if step_a != step_b:
        return f"newest checkpoint step {step_a} against {step_b}"
    if a.keys() != b.keys():
        return f"state entries {sorted(a.keys() ^ b.keys())[:4]} in one run only"
    changed = [k for k in a if a[k] != b[k]]
    return f"state differs at {changed[:4]} ({len(changed)} of {len(a)})" if changed else None


def compare(reference: pathlib.Path, killed: pathlib.Path) -> list[str]:
    """The differences between the two folders' results (empty when they agree)."""
    problems = []
    ref_files, got_files = _compared_files(reference), _compared_files(killed)
    problems += [f"{p}: only in the uninterrupted run" for p in sorted(ref_files - got_files)]
    problems += [f"{p}: only in the killed run" for p in sorted(got_files - ref_files)]
    for rel in sorted(ref_files & got_files):
        a, b = reference / rel, killed / rel
        if a.suffix in (".json", ".jsonl"):
            try:
                x, y = _json_rows(a, reference), _json_rows(b, killed)
            except (ValueError, UnicodeDecodeError) as e:
                problems.append(f"{rel}: does not parse ({e})")
                continue
            if x != y:
                problems.append(f"{rel}: {_first_difference(x, y)}")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{rel}: other bytes")
    for rel in _run_folders(reference):
        if not (killed / rel / "checkpoints").is_dir():
            problems.append(f"{rel}/checkpoints: only in the uninterrupted run")
        elif difference := _state_difference(reference / rel, killed / rel):
            problems.append(f"{rel}/checkpoints: {difference}")
    return problems


def _last_line(log: pathlib.Path, since: int) -> str:
    """What the run was doing when it stopped: its last log message (absl's format), and the
    progress bar drawn after it, if any."""
    with open(log, "rb") as f:
        f.seek(since)
        lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines() if x.strip()]
    records = [i for i, x in enumerate(lines) if re.match(r"[IWEF]\d{4} ", x)]
    if not records:
        return lines[-1][-150:] if lines else "(nothing logged)"
    message = lines[records[-1]].split("] ", 1)[-1][:150]
    bar = lines[-1] if records[-1] < len(lines) - 1 else ""
    return f"{message} | {bar[:80]}" if bar else message


def _start(args, workdir: pathlib.Path, log) -> subprocess.Popen:
    # Its own process group, so a kill takes any worker processes with it, as a dying host does.
    return subprocess.Popen(
        ["r1jax", *args, f"--workdir={workdir}"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    parser.add_argument("--out", default=None, help="folder for both runs (default: a temp dir)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("r1jax_args", nargs="*", help="after --: the r1jax command's arguments")
    ns = parser.parse_args(argv)
    if ns.kills < 1:
        parser.error("--kills must be at least 1")
    if ns.preset and ns.r1jax_args:
        parser.error("give --preset or the r1jax arguments after --, not both")
    args = ns.r1jax_args or list(PRESETS[ns.preset or "main_job"])
    if any(a.startswith("--workdir") for a in args):
        parser.error("leave --workdir out: the runs go to OUT/reference and OUT/killed-N")
    out = pathlib.Path(ns.out or tempfile.mkdtemp(prefix="kill_resume_"))
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty; give an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    print(f"r1jax {' '.join(args)}\nruns in {out}", flush=True)

    t0 = time.perf_counter()
    with open(out / "reference.log", "wb") as log:
        code = _start(args, out / "reference", log).wait()
    total = time.perf_counter() - t0
    if code != 0:
        print(f"the uninterrupted run failed (exit {code}): {_last_line(out / 'reference.log', 0)}")
        return 2
    print(f"uninterrupted: {total:.1f} s", flush=True)

    rng = random.Random(ns.seed)
    n_files, n_runs = len(_compared_files(out / "reference")), len(_run_folders(out / "reference"))
    checked = f"{n_files} files and {n_runs} final training states"
    landed, chain, failed = 0, 0, False
    while landed < ns.kills:
        chain += 1
        name = f"killed-{chain}"
        log_path = out / f"{name}.log"
        log_path.touch()
        kills_here = 0
        while True:
            wait = rng.uniform(1.0, total) if landed < ns.kills else None
            since = log_path.stat().st_size
            with open(log_path, "ab") as log:
                proc = _start(args, out / name, log)
                try:
                    code = proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    landed, kills_here = landed + 1, kills_here + 1
                    last = _last_line(log_path, since)
                    print(f"{name}: SIGKILL at {wait:.1f} s, after: {last}", flush=True)
                    continue
            if code != 0:
                print(f"{name}: a run failed (exit {code}): {_last_line(log_path, since)}")
                return 2
            when = "" if wait is None else f" before its kill at {wait:.1f} s"
            print(f"{name}: a run ended{when}", flush=True)
            break
        problems = compare(out / "reference", out / name)
        for p in problems:
            print(f"DIFFERENT ({name})", p)
        verdict = f"{len(problems)} differences" if problems else "identical"
        print(f"{name}: {verdict} after {kills_here} kills ({checked} compared)", flush=True)
        failed |= bool(problems)
    print(f"{'DIFFERENT' if failed else 'identical'}: {ns.kills} kills in {chain} run folders")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
