"""Two local processes (4 host devices each) under jax.distributed give one 8-device process's
GRPO and PPO numbers, through a collective checkpoint save and restore, and its evaluation; an
error on one of them stops both (distributed.shared_errors).

The test starts this file as a script: `python tests/test_multiprocess.py WORKDIR OUT.json
PROCESS_ID NUM_PROCESSES ADDRESS [key=value ...]`.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# The mesh spans both processes on every axis: FSDP and tensor shards live in both, and each
# process holds half of the batch (data x fsdp = 4 rows of prompts, 2 per process).
OVERRIDES = dict(
    mesh__data=2,
    mesh__fsdp=2,
    mesh__tensor=2,
    rl__prompts_per_step=4,
    rl__num_samples=4,
    rl__max_new_tokens=12,
    data__max_records=200,
    train__steps=4,
    train__grad_accum=2,  # micro-batches: each data replica sums its own, reduced once a step
    metrics__tensorboard=False,
    metrics__peak_flops=1e9,
    rl__log_samples_every=0,
)
TIMING_KEYS = ("_s", "tokens_per_s", "mfu", "rewards/seconds")


def _worker(workdir, out, process_id, num_processes, address, extra):
    """Steps 1-2, a collective save, step 3, a restore of step 2, step 3 again; then a save of
    step 3 whose last process's iterator file is damaged, a restore (falls back to step 2),
    step 3 a third time."""
    import jax

    from r1jax import configlib, distributed
    from r1jax.train import rl

    if num_processes > 1:
        distributed.initialize(address, num_processes, process_id)
    assert jax.device_count() == 8, jax.devices()
    stage = extra.pop("stage_config", "grpo")
    if stage == "eval":
        return _eval_worker(workdir, out)
    if stage == "errors":
        return _errors_worker(workdir, out, extra)
    cfg = configlib.load_config(
        str(REPO / f"configs/{stage}.py") + ":tiny", **{**OVERRIDES, **extra}
    )
    t0 = time.perf_counter()
    run = rl.RLRun(cfg, workdir)
    print(f"init {time.perf_counter() - t0:.1f} s", flush=True)
    rows = [run.step_once()[0] for _ in range(2)]
    print(f"steps 1-2 {time.perf_counter() - t0:.1f} s", flush=True)
    run.save(force=True)
    run.ckpt.wait_until_finished()
    print(f"save {time.perf_counter() - t0:.1f} s", flush=True)
    rows.append(run.step_once()[0])
    print(f"step 3 {time.perf_counter() - t0:.1f} s", flush=True)
    run._restore()  # back to step 2: params, optimizer, reference, KL coefficient, prompt stream
    print(f"restore {time.perf_counter() - t0:.1f} s", flush=True)
    assert int(run.state.step) == 2
    rows.append(run.step_once()[0])
    print(f"step 3 again {time.perf_counter() - t0:.1f} s", flush=True)
    # Step 3 saved, then only the last process's iterator file of it damaged: every process
    # must fall back to step 2 together (one restoring step 3 alone hung in orbax's sync).
    run.save(force=True)
    run.ckpt.wait_until_finished()
    distributed.barrier("test-saved-3")
    last = jax.process_count() - 1
    if jax.process_index() == last:
        data = pathlib.Path(workdir) / "checkpoints" / "3" / "data"
        (data / f"process_{last}-of-{jax.process_count()}.json").write_text("")
    distributed.barrier("test-damaged-3")
    run._restore()
    assert int(run.state.step) == 2
    rows.append(run.step_once()[0])
    print(f"step 3 after a fallback {time.perf_counter() - t0:.1f} s", flush=True)
    run.close()
    stable = [{k: v for k, v in r.items() if not any(t in k for t in TIMING_KEYS)} for r in rows]
    pathlib.Path(out).write_text(json.dumps({"rows": stable, "processes": jax.process_count()}))


def _eval_worker(workdir, out):
    """The eval stage on the world base: 7 problems x 4 samples, 4 prompts a sampler call,
    samples ending at their first </answer> (the sampler's stop strings on a mesh of two)."""
    import jax

    from r1jax import configlib, distributed, evaluation

    # Host-side decisions taken from process 0 (collect's verdicts): process 1 passes None.
    mine = {"from": jax.process_index(), "v": [0.1, None, "\u00e9", float("nan")], "t": "x" * 9}
    shared = distributed.from_primary(mine if distributed.is_primary() else None)
    cfg = configlib.load_config(
        str(REPO / "configs/eval.py") + ":world",
        model__init_from=str(REPO / "r1jax/assets/world_base"),
        eval__max_problems=7,
        eval__num_samples=4,
        eval__ks=(1, 2, 4),
        eval__prompts_per_batch=4,
        eval__max_new_tokens=24,
        eval__stop_strings=("</answer>",),
        metrics__tensorboard=False,
    )
    metrics = evaluation.run(cfg, workdir)
    stable = {k: v for k, v in metrics.items() if not k.endswith("_seconds")}
    result = {"metrics": stable, "processes": jax.process_count(), "shared": shared}
    pathlib.Path(out).write_text(json.dumps(result))


# Pretraining runs too small to train anything: each case fails on one process only.
ERROR_CASE_OVERRIDES = dict(
    data__format="jsonl",
    data__eval="",
    model__d_model=32,
    model__n_layers=1,
    model__n_heads=2,
    model__n_kv_heads=1,
    model__head_dim=16,
    model__d_ff=64,
    model__max_seq_len=32,
    data__seq_len=32,
    data__batch_size=8,
    train__steps=2,
    metrics__tensorboard=False,
    metrics__peak_flops=1e9,
)


def _errors_worker(workdir, out, extra):
    """Pretraining runs (a folder each) that fail on one process only; every process must stop
    with an error, not wait for the one that stopped. Records what each case raised."""
    import jax

    from r1jax import configlib, memory
    from r1jax.train import supervised

    data, me = pathlib.Path(extra["data"]), jax.process_index()
    cases = {
        # Process 1's rows (the odd ones) are all empty texts: its shard has nothing to train.
        "empty_shard": dict(data__train=str(data / "half_empty.jsonl")),
        # A data file process 1 cannot see (another host's disk).
        "unreadable": dict(data__train=str(data / ("ok.jsonl" if me == 0 else "gone.jsonl"))),
        # Process 0 cannot copy the tokenizer into the run, or write metrics.jsonl (a folder in
        # the way: a disk error of its own).
        "tokenizer": dict(data__train=str(data / "ok.jsonl")),
        "metrics": dict(data__train=str(data / "ok.jsonl")),
        # Process 1's host has too little memory for the training state (memory.check_fits).
        "small_host": dict(data__train=str(data / "ok.jsonl")),
    }
    cgroup_memory_limit, seen = memory.cgroup_memory_limit, {}
    for name, overrides in cases.items():
        cfg = configlib.load_config(
            str(REPO / "configs/pretrain.py") + ":gsm8k",
            **ERROR_CASE_OVERRIDES,
            tokenizer__path=str(data / "no_bos"),
            **overrides,
        )
        t0 = time.perf_counter()
        if name == "small_host" and me == 1:
            memory.cgroup_memory_limit = lambda: 1000  # (its container)
        try:
            supervised.run(cfg, pathlib.Path(workdir) / name)
            seen[name] = "finished"
        except Exception as e:
            seen[name] = f"{type(e).__name__}: {e}"
        finally:
            memory.cgroup_memory_limit = cgroup_memory_limit
        print(f"{name} {time.perf_counter() - t0:.1f} s: {seen[name]}", flush=True)
    pathlib.Path(out).write_text(json.dumps({"errors": seen}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path, name, num_processes, extra=()):
    """Starts the processes of one run; returns (name, [(process, log path, out path)])."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        # Cheap compiles (LLVM optimisation and XLA:CPU's fusion emitters off: five times
        # faster, and the runs' compiles share two cores): the test checks numbers across
        # layouts, not speed.
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // num_processes} "
        "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
    }
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    address = f"127.0.0.1:{_free_port()}"
    started = []
    for i in range(num_processes):
        out, log = tmp_path / f"{name}-{i}.json", tmp_path / f"{name}-{i}.log"
        args = [str(tmp_path / name), str(out), str(i), str(num_processes), address, *extra]
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, __file__, *args], cwd=REPO, env=env, stdout=f, stderr=f
            )
        started.append((proc, log, out))
    return name, started


def _finish(run, timeout=400):
    name, started = run
    try:
        codes = [proc.wait(timeout=timeout) for proc, _, _ in started]
    finally:
        for proc, _, _ in started:
            if proc.poll() is None:
                proc.kill()
    for i, (code, (_, log, _)) in enumerate(zip(codes, started)):
        assert code == 0, f"{name} process {i} failed:\n{log.read_text()[-4000:]}"
    return [json.loads(out.read_text()) for _, _, out in started]


def _assert_rows_close(got, expected, rtol):
    assert len(got) == len(expected)
    for step, (g, e) in enumerate(zip(got, expected), 1):
        assert g.keys() == e.keys(), step
        for key in e:
            # A clip fraction counts tokens past a threshold: a value at the boundary may fall
            # on the other side, and the samples of a group that share a prefix share its
            # values, so they flip together (PPO's vf_clip_frac moved by 1/368 from step 3
            # on, and since the attention masks are compared per block by 4/380, one group
            # of 4, with every loss, norm and mean equal to 1.2e-6).
            tol = 0.025 if key.endswith("_frac") else rtol * max(1.0, abs(e[key]))
            assert abs(g[key] - e[key]) <= tol, (step, key, g[key], e[key])


@pytest.mark.parametrize("stage, prompts, per_call", [("ppo", 4, 0), ("grpo", 4, 2)])
def test_two_processes_match_one_process_through_save_and_restore(
    tmp_path, shared_data, stage, prompts, per_call
):
    # GRPO with rl.sample_prompts_per_call=2: each rollout in two sampler calls of 2 prompts,
    # one per process, each padded to its share of the (data x fsdp = 4) rows, so padding sits
    # between the processes' prompts (their draws must not move). (A case of 2 prompts in one
    # call, the same layout, took 41 s of a suite over its 10-minute goal.)
    # PPO: the critic's GAE over every process's scores (they were this process's alone: a
    # broadcasting error at the first step); its rollout is one sampler call, as GRPO's by
    # default (a separate GRPO case of that took 22 s of a suite at the 10-minute limit).

    try:
        import jax

        jax.config.jax_cpu_collectives_implementation  # noqa: B018  (gloo is selectable)
    except AttributeError:
        pytest.skip("this JAX has no gloo CPU collectives")
    # Both runs read one tokenizer (trained here once), and run at the same time.
    from r1jax import configlib
    from r1jax.train import supervised

    cfg = configlib.load_config(str(REPO / f"configs/{stage}.py") + ":tiny", **OVERRIDES)
    supervised.resolve_tokenizer(cfg, tmp_path, supervised.load_records(cfg, cfg.data.train))
    extra = [f"tokenizer__path={tmp_path / 'tokenizer.model'}", f"rl__prompts_per_step={prompts}"]
    extra += [f"stage_config={stage}", f"rl__sample_prompts_per_call={per_call}"]
    single_run = _start(tmp_path, "single", 1, extra)
    multi_run = _start(tmp_path, "multi", 2, extra)
    (single,), multi = _finish(single_run), _finish(multi_run)
    assert single["processes"] == 1 and multi[0]["processes"] == 2
    # Both processes log the same (global) metrics.
    assert multi[0]["rows"] == multi[1]["rows"]
    rows = single["rows"]
    # The restored run repeats step 3 exactly, in either layout.
    assert rows[3] == rows[2] == rows[4]
    assert multi[0]["rows"][3] == multi[0]["rows"][2] == multi[0]["rows"][4]
    # Same programs on the same (2, 2, 2) mesh; only the cross-process all-reduces (gloo) may
    # add float32 partial sums in another order: relative 1e-5 leaves a margin of ~100 ulp.
    _assert_rows_close(multi[0]["rows"], rows, rtol=1e-5)
    assert rows[0]["reward"] > 0 and rows[2]["kl_ref" if stage == "grpo" else "kl_ref_k3"] > 0


def test_evaluation_splits_its_prompts_over_two_processes(tmp_path):
    # Every process sampled every prompt (twice the work of one process, and process 1 logged
    # other samples and metrics; rejection sampling hung when the processes disagreed).
    try:
        import jax

        jax.config.jax_cpu_collectives_implementation  # noqa: B018  (gloo is selectable)
    except AttributeError:
        pytest.skip("this JAX has no gloo CPU collectives")
    extra = ["stage_config=eval"]
    single_run = _start(tmp_path, "single", 1, extra)
    multi_run = _start(tmp_path, "multi", 2, extra)
    (single,), multi = _finish(single_run), _finish(multi_run)
    assert multi[0]["processes"] == 2 and single["metrics"]["num_problems"] == 7
    assert multi[0]["metrics"] == multi[1]["metrics"] == single["metrics"]
    assert multi[0]["shared"] == multi[1]["shared"] == {**multi[0]["shared"], "from": 0}
    assert (
        multi[1]["shared"]["v"][:3] == [0.1, None, "\u00e9"] and multi[1]["shared"]["t"] == "x" * 9
    )
    lines = lambda name: (tmp_path / name / "eval_samples.jsonl").read_text()  # noqa: E731
    assert lines("multi") == lines("single")


def test_an_error_on_one_process_stops_every_process(tmp_path):
    # Each case stopped one process while the other waited in its next collective until the
    # test's timeout (a pod's job: for good): process 1's shard with nothing to train (its
    # DataError came from the first batch), a data file only process 1 lacks, process 0
    # failing to copy the tokenizer (resolve_tokenizer) or to write metrics.jsonl, process 1's
    # host too small for the training state. Now each process stops, the one that failed with
    # its own error, the other naming it.
    try:
        import jax

        jax.config.jax_cpu_collectives_implementation  # noqa: B018  (gloo is selectable)
    except AttributeError:
        pytest.skip("this JAX has no gloo CPU collectives")
    from r1jax import text

    data = tmp_path / "data"
    data.mkdir()
    rows = [f"the number {i} plus {i} is {2 * i}." for i in range(16)]
    lines = lambda texts: "".join(json.dumps({"text": t}) + "\n" for t in texts)  # noqa: E731
    (data / "ok.jsonl").write_text(lines(rows))
    (data / "half_empty.jsonl").write_text(
        lines(t if i % 2 == 0 else "" for i, t in enumerate(rows))
    )
    sp = text.SentencePieceTokenizer.train(rows * 4, tmp_path / "sp", vocab_size=320)
    spec = json.loads(sp.to_hf_json())
    spec["post_processor"] = None  # no BOS (as Qwen's): an empty text has no token to train
    (data / "no_bos").mkdir()
    (data / "no_bos" / "tokenizer.json").write_text(json.dumps(spec))
    (tmp_path / "errors" / "tokenizer" / "tokenizer_config.json").mkdir(parents=True)
    (tmp_path / "errors" / "metrics" / "metrics.jsonl").mkdir(parents=True)
    run = _start(tmp_path, "errors", 2, ["stage_config=errors", f"data={data}"])
    first, second = (r["errors"] for r in _finish(run, timeout=150))
    for name, (culprit, error) in {
        "empty_shard": (1, "DataError: none of the 8 pretraining records has a token to train"),
        "unreadable": (1, "ConfigError: config.data.train: no such file or directory"),
        "tokenizer": (0, "IsADirectoryError: [Errno 21] Is a directory"),
        "metrics": (0, "IsADirectoryError: [Errno 21] Is a directory"),
        "small_host": (1, "OutOfMemory: the training state of"),
    }.items():
        own, other = (first, second)[culprit][name], (second, first)[culprit][name]
        assert own.startswith(error), (name, own)
        assert other.startswith(f"PeerError: process {culprit} of 2 stopped the run: {error}"), (
            name,
            other,
        )


def _main(argv):
    workdir, out, process_id, num_processes, address, *rest = argv
    extra = {}
    for item in rest:
        key, value = item.split("=", 1)
        extra[key] = int(value) if value.isdigit() else value
    _worker(workdir, out, int(process_id), int(num_processes), address, extra)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _main(sys.argv[1:])
