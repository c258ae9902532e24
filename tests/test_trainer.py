"""Supervised trainer: exact resume after SIGKILL, gradient accumulation, bad-step guard."""

import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import configlib, evaluation, memory, sharding
from r1jax.model import config as model_config
from r1jax.model import transformer
from r1jax.train import checkpoint, supervised, trainer
from r1jax.train import metrics as metrics_lib
from r1jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHORT = dict(
    data__max_records=200,
    data__seq_len=64,
    data__batch_size=8,
    data__eval="",
    model__max_seq_len=64,
    tokenizer__train_vocab_size=512,
    train__steps=8,
    train__log_every=1,
    train__checkpoint_every=2,
    train__eval_every=0,
    metrics__tensorboard=False,
    metrics__peak_flops=1e9,
)


def _short_cfg(**extra):
    return configlib.load_config(os.path.join(REPO, "configs/sft.py:tiny"), **{**SHORT, **extra})


def _cli_args(workdir, **extra):
    args = [f"--config={os.path.join(REPO, 'configs/sft.py')}:tiny", f"--workdir={workdir}"]
    args += [f"--config.{k.replace('__', '.')}={v}" for k, v in {**SHORT, **extra}.items()]
    return args


def _losses(workdir):
    rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_data):
    """The folder of a _short_cfg() run from start to end (checkpoints at steps 2, 4, 6, 8;
    how often a run saves does not change its numbers)."""
    full = tmp_path_factory.mktemp("uninterrupted")
    supervised.run(_short_cfg(), full)
    return full


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
    full, killed = uninterrupted, tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "r1jax.main", *_cli_args(killed)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "4").is_dir() and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "4").is_dir(), "the run never wrote its step-4 checkpoint"
    with open(killed / "metrics.jsonl", "a") as f:  # as if killed in the middle of a row
        f.write('{"step": 5, "loss": 3.')
    supervised.run(_short_cfg(), killed)
    expected, got = _losses(full), _losses(killed)
    assert [s for s, *_ in expected] == list(range(1, 9))
    assert got == expected  # bit-exact on CPU
    assert expected[-1][1] < expected[0][1]


def _tiny_setup(grad_accum):
    cfg = _short_cfg(train__grad_accum=grad_accum)
    model_cfg = configlib.model_config_from(cfg, vocab_size=64)
    mesh = sharding.make_mesh({"data": -1}, jax.devices()[:1])
    opt = state_lib.make_optimizer(cfg.optim, 10)
    state, _ = trainer.init_state(
        model_cfg, opt, jax.random.PRNGKey(0), mesh, sharding.DEFAULT_RULES
    )
    rng = np.random.default_rng(0)
    batch = {
        "inputs": rng.integers(0, 64, (8, 16)).astype(np.int32),
        "targets": rng.integers(0, 64, (8, 16)).astype(np.int32),
        "loss_mask": (rng.random((8, 16)) < 0.6).astype(np.float32),
        "segment_ids": np.ones((8, 16), np.int32),
        "positions": np.tile(np.arange(16, dtype=np.int32), (8, 1)),
    }
    return model_cfg, opt, state, batch


def test_sigterm_saves_after_the_step_exits_143_and_resumes_to_the_same_numbers(
    tmp_path, uninterrupted
):
    # SLURM and TPU preemption send SIGTERM before the kill: the run saves where it stands.
    full, stopped = uninterrupted, tmp_path / "stopped"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "r1jax.main",
            *_cli_args(stopped),
            "--config.train.checkpoint_every=100",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not any(r.get("step", 0) >= 2 for r in metrics_lib.read_jsonl(stopped / "metrics.jsonl")):
        assert proc.poll() is None and time.time() < deadline, "the run ended before step 2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == trainer.PREEMPTED_EXIT_CODE, err[-2000:]
    steps = sorted(int(p.name) for p in (stopped / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 1 and 2 <= steps[0] < 8  # saved where it stopped, not at an interval
    assert f"stopped after step {steps[0]} with its checkpoint saved" in err
    supervised.run(_short_cfg(train__checkpoint_every=100), stopped)
    assert _losses(stopped) == _losses(full)


@contextlib.contextmanager
def _small_disk(path, size_bytes: int):
    """A tmpfs of `size_bytes` mounted at `path` (a full disk, for real); skips the test where
    this process may not mount one (not root, or no CAP_SYS_ADMIN)."""
    path.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _resize(path, size_bytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_bytes}", str(path)], check=True)


def _folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_a_full_disk_stops_the_run_in_one_line_and_a_rerun_resumes_to_the_same_numbers(
    tmp_path, uninterrupted
):
    # Room for two checkpoints and a half: steps 2 and 4 are saved, step 6 cannot fit. Before,
    # orbax's background write failed, the run trained on to its next save and then ended in
    # ~700 lines of tracebacks from orbax's threads.
    size = _folder_bytes(uninterrupted / "checkpoints" / "8")
    command = [sys.executable, "-m", "r1jax.main", *_cli_args(tmp_path / "disk" / "run")]
    with _small_disk(tmp_path / "disk", size // 4) as disk:
        # Too small for any checkpoint: refused before the first step, not at the first save.
        run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert run.returncode == 1, run.stderr[-3000:]
        last = run.stderr.strip().splitlines()[-1]
        assert "no space left for this run's checkpoints before it trains from step 0" in last
        assert "takes at least" in last and "none is complete" in last, last
        assert _losses(disk / "run") == []
        _resize(disk, int(2.5 * size))
        run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert run.returncode == 1, run.stderr[-3000:]
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("r1jax: ") and "Traceback" not in run.stderr, run.stderr[-3000:]
        assert "no space left to save the checkpoint of step 6" in last, last
        assert "the newest complete checkpoint is step 4" in last, last
        assert "run the same command again" in last, last
        steps = sorted(p.name for p in (disk / "run" / "checkpoints").iterdir())
        assert steps == ["2", "4"]  # refused before writing: no partial step-6 folder
        _resize(disk, 6 * size)  # space freed: the same command resumes from step 4
        supervised.run(_short_cfg(), disk / "run")
        assert _losses(disk / "run") == _losses(uninterrupted)


def test_a_full_disk_under_any_other_file_is_one_line_too(tmp_path):
    # Three pages: the lock and the tokenizer fit, the run's config.json does not.
    command = [sys.executable, "-m", "r1jax.main", *_cli_args(tmp_path / "disk" / "run")]
    with _small_disk(tmp_path / "disk", 12 << 10):
        run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("r1jax: [Errno 28] No space left on device (a run in --workdir="), last
    assert "run the same command again" in last, last


@flax.struct.dataclass
class _Stepped:
    step: jax.Array
    w: jax.Array


# Two processes (one host device each) save a replicated 2 MB array on one small disk: step 1
# fits, step 2 does not; each process prints what its saves did.
_TWO_PROCESS_SAVES = """
import sys
import flax, jax, numpy as np
from r1jax import distributed
from r1jax.train import checkpoint

@flax.struct.dataclass
class State:
    step: jax.Array
    w: jax.Array

folder, address, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
distributed.initialize(address, 2, index)
mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("all",))
everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
w = np.random.default_rng(0).normal(size=(512, 1024)).astype(np.float32)
mngr = checkpoint.manager(folder, writer=True)
for step in (1, 2):
    state = jax.device_put(State(step=np.asarray(step), w=w + step), everywhere)
    try:
        checkpoint.save(mngr, state)
        checkpoint.wait(mngr)
        print("saved", step, flush=True)
    except checkpoint.SaveError as e:
        print("refused", step, e, flush=True)
"""


def test_processes_of_a_run_refuse_a_save_that_cannot_fit_together(tmp_path):
    # A collective save is made by every process or by none: the check before it is agreed,
    # so no process goes into the save while another has given up.
    try:
        jax.config.jax_cpu_collectives_implementation  # noqa: B018  (gloo is selectable)
    except AttributeError:
        pytest.skip("this JAX has no gloo CPU collectives")
    with _small_disk(tmp_path / "disk", 3 << 20) as disk:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{s.getsockname()[1]}"
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _TWO_PROCESS_SAVES, str(disk / "ck"), address, str(i)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
        lines = [line for line in out.strip().splitlines() if not line.startswith("[Gloo]")]
        assert lines[0] == "saved 1" and lines[1].startswith("refused 2 "), out
        assert "no space left to save the checkpoint of step 2" in lines[1], out
        assert "the newest complete checkpoint is step 1" in lines[1], out


def test_an_export_to_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, uninterrupted):
    with _small_disk(tmp_path / "disk", 1 << 20) as disk:  # the weights take ~3 MB
        run = subprocess.run(
            [sys.executable, "-m", "r1jax.export", str(uninterrupted), str(disk / "hf")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("r1jax.export: no space left on the device writing "), last
        assert not list((disk / "hf").glob("*.safetensors*"))  # no partial weights file
        _resize(disk, 64 << 20)
        from r1jax import export

        export.export(uninterrupted, disk / "hf")
        assert (disk / "hf" / "model.safetensors").stat().st_size > 1 << 20


# TensorStore's writes that end after orbax gave the save up ("Event loop is closed"; r1jax.main
# drops them).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_background_save_that_runs_out_of_space_stops_the_run_at_its_next_step(tmp_path):
    # The first checkpoint cannot fit, though it passes the check made before it (half its
    # arrays' bytes): orbax's background write fails, and `check`, called after every step,
    # raises that as a SaveError.
    w = jnp.asarray(np.random.default_rng(0).normal(size=(512, 1024)), jnp.float32)  # 2 MB
    with _small_disk(tmp_path / "disk", w.nbytes * 3 // 4) as disk:
        mngr = checkpoint.manager(disk / "checkpoints", writer=True)
        assert checkpoint.save(mngr, _Stepped(step=jnp.asarray(3), w=w))
        deadline = time.time() + 60
        with pytest.raises(checkpoint.SaveError) as raised:
            while time.time() < deadline:
                checkpoint.check(mngr)
                time.sleep(0.05)
        message = str(raised.value)
        assert "no space left to save the checkpoint of step 3" in message, message
        assert "none is complete" in message and "No space left on device" in message, message
        assert checkpoint.is_out_of_space(raised.value.__cause__)
        checkpoint.wait(mngr)  # the failure was raised once; nothing is left pending
        assert mngr.all_steps() == []
        # One that cannot fit at all is refused before it writes (half of 2 MB in 1.5 MB less
        # the first attempt's leftovers: the writer removes those only when it starts).
        big = _Stepped(step=jnp.asarray(4), w=jnp.concatenate([w, w + 1.0]))
        with pytest.raises(checkpoint.SaveError, match=r"takes at least 2\.1 MB"):
            checkpoint.save(mngr, big)


def test_a_tokenizer_larger_than_the_model_vocab_is_refused(tmp_path, shared_data):
    # Ids past the embedding would be clamped to its last row, silently.
    with pytest.raises(ValueError, match="tokenizer has 512 ids but the model's vocab_size is 300"):
        supervised.run(_short_cfg(model__vocab_size=300), tmp_path)


def _jitted_step(state, batch, **static):
    """supervised_step jitted as a run jits it (un-jitted, each of its ops compiled alone: ~9 s
    of a test on 2 cores)."""
    return jax.jit(functools.partial(supervised.supervised_step, **static))(state, batch)


def test_grad_accumulation_equals_one_batch():
    model_cfg, opt, state, batch = _tiny_setup(1)
    one, m1 = _jitted_step(state, batch, model_cfg=model_cfg, optimizer=opt)
    four, m4 = _jitted_step(state, batch, model_cfg=model_cfg, optimizer=opt, grad_accum=4)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_non_finite_step_is_skipped():
    model_cfg, opt, state, batch = _tiny_setup(1)
    poisoned = jax.tree.map(lambda x: x, state.params)
    leaves, treedef = jax.tree.flatten(poisoned)
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
    bad_state = state.replace(params=jax.tree.unflatten(treedef, leaves))
    new, metrics = _jitted_step(bad_state, batch, model_cfg=model_cfg, optimizer=opt)
    assert not bool(metrics["finite"])
    assert int(new.step) == 1
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(bad_state.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(bad_state.opt_state)):
        np.testing.assert_array_equal(a, b)


def test_weight_decay_spares_norm_scales_and_biases_as_hugging_face():
    import ml_collections

    optim = ml_collections.ConfigDict(
        dict(lr=0.5, warmup_steps=0, schedule="constant", min_lr_ratio=1.0, b1=0.9, b2=0.95)
    )
    optim.update(eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    opt = state_lib.make_optimizer(optim, 10)
    model_cfg = configlib.model_config_from(_short_cfg(), vocab_size=64)
    assert model_cfg.qkv_bias
    params = transformer.init_params(model_cfg, jax.random.key(0))
    zeros = jax.tree.map(jnp.zeros_like, params)  # Adam moves nothing: only the decay acts
    update = jax.jit(functools.partial(state_lib.update_at_step, opt))  # as a step runs it
    updates, _ = update(zeros, opt.init(params), params, 0)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    spared = [jax.tree_util.keystr(k) for k, u in flat if not np.any(u)]
    assert spared and all("norm" in k or k.endswith("bias']") for k in spared), spared
    assert len(spared) == 3 + 3  # attn_norm, mlp_norm, final_norm; q/k/v biases
    for (key, u), w in zip(flat, jax.tree.leaves(params)):
        if jax.tree_util.keystr(key) not in spared:
            np.testing.assert_allclose(u, -0.5 * 0.1 * w, rtol=1e-6)


def test_a_warmup_ratio_takes_its_share_of_the_steps_and_excludes_warmup_steps():
    import ml_collections

    optim = ml_collections.ConfigDict(
        dict(lr=1.0, warmup_steps=0, warmup_ratio=0.1, schedule="constant", min_lr_ratio=1.0)
    )
    for total, warmup in ((200, 20), (37, 4), (4, 0)):  # round(0.1 * total)
        schedule = state_lib.learning_rate_schedule(optim, total)
        rates = [float(schedule(i)) for i in range(warmup + 2)]
        assert rates[warmup:] == [1.0, 1.0] and all(r < 1.0 for r in rates[:warmup])
    cfg = configlib.load_config(os.path.join(REPO, "configs", "sft.py:tiny"))
    cfg.optim.warmup_ratio = 0.05
    with pytest.raises(configlib.ConfigError, match=r"config\.optim\.warmup_ratio: .*set one"):
        configlib.validate(cfg, num_devices=1)
    cfg.optim.warmup_steps = 0
    configlib.validate(cfg, num_devices=1)
    cfg.optim.warmup_ratio = 1.0
    with pytest.raises(configlib.ConfigError, match=r"config\.optim\.warmup_ratio: must be in"):
        configlib.validate(cfg, num_devices=1)


def test_a_whole_run_warmup_warning_names_the_field_that_set_it(caplog):
    cfg = configlib.load_config(os.path.join(REPO, "configs", "sft.py:tiny"))
    cfg.train.steps, cfg.optim.warmup_steps, cfg.optim.warmup_ratio = 10, 0, 0.99
    configlib.warn_long_warmup(cfg)
    assert "config.optim.warmup_ratio=0.99 (10 steps) >= train.steps=10" in caplog.text


def test_after_skipped_steps_a_step_applies_the_rate_it_logs():
    # Three non-finite steps kept optax's schedule count at 0 while the step count went on:
    # step 3 logged schedule(3) and applied schedule(0), here 0 (warmup), training nothing.
    model_cfg, opt, state, batch = _tiny_setup(1)
    schedule = state_lib.learning_rate_schedule(_short_cfg().optim, 10)
    assert float(schedule(0)) == 0.0 < float(schedule(3))
    state = state.replace(step=jnp.asarray(3, state.step.dtype))  # opt_state as at step 0
    new, metrics = _jitted_step(
        state, batch, model_cfg=model_cfg, optimizer=opt, lr_schedule=schedule
    )
    assert bool(metrics["finite"]) and float(metrics["lr"]) == float(schedule(3))
    moved = [
        not np.array_equal(a, b) for a, b in zip(*map(jax.tree.leaves, (new.params, state.params)))
    ]
    assert all(moved)


def test_bad_steps_in_a_row_stop_the_run_and_save_the_batch(tmp_path):
    cfg = _short_cfg(train__max_bad_steps=2)
    model_cfg, opt, state, batch = _tiny_setup(1)
    loop = trainer.Loop(
        workdir=tmp_path,
        cfg=cfg,
        total_steps=5,
        start_step=0,
        ckpt_manager=None,
        peak_flops=1e9,
    )

    def always_nan(state, batch):
        return state.replace(step=state.step + 1), {"loss": jnp.nan, "finite": jnp.array(False)}

    with pytest.raises(trainer.BadStepsError, match="bad_batch_step"):
        loop.run(state, always_nan, iter([batch] * 5))
    saved = list(tmp_path.glob("bad_batch_step*.npz"))
    assert saved and np.load(saved[0])["inputs"].shape == (8, 16)


def test_eval_every_zero_evaluates_once_at_the_end_and_rates_cover_the_steps_logged(tmp_path):
    cfg = _short_cfg(train__eval_every=0, train__log_every=4)
    _, _, state, batch = _tiny_setup(1)
    loop = trainer.Loop(
        workdir=tmp_path, cfg=cfg, total_steps=6, start_step=0, ckpt_manager=None, peak_flops=1e9
    )
    evals = []

    def slow_step(state, batch):
        time.sleep(0.05)
        return state.replace(step=state.step + 1), {"loss": jnp.float32(1.0), "tokens": 100.0}

    def eval_fn(state):
        evals.append(int(state.step))
        return {"eval_loss": 0.5}

    loop.run(state, slow_step, iter([batch] * 6), eval_fn=eval_fn)
    assert evals == [6]  # eval_every 0 = only at the end
    rows = metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
    times = {r["step"]: r["step_time_s"] for r in rows if "step_time_s" in r}
    assert sorted(times) == [4, 6]
    # Step 6's row covers 2 steps, not log_every = 4 (2 steps' 0.1 s over 4 read 0.025 s a
    # step). Lower bounds only: a loaded machine makes a step slower, never faster (step 4's
    # row also carries the first step's start-up, 0.3 s a step under load).
    assert times[6] > 0.045 and times[4] > 0.045


def test_evaluation_time_is_not_charged_to_the_steps(tmp_path):
    # An evaluation between steps made the next row's step_time_s 20x a step (its mfu 20x low).
    cfg = _short_cfg(train__eval_every=2, train__log_every=1)
    _, _, state, batch = _tiny_setup(1)
    loop = trainer.Loop(
        workdir=tmp_path, cfg=cfg, total_steps=4, start_step=0, ckpt_manager=None, peak_flops=1e9
    )

    def slow_step(state, batch):
        time.sleep(0.05)
        return state.replace(step=state.step + 1), {"loss": jnp.float32(1.0), "tokens": 100.0}

    def slow_eval(state):
        time.sleep(1.0)
        return {"eval_loss": 0.5}

    loop.run(state, slow_step, iter([batch] * 4), flops_per_step=1e7, eval_fn=slow_eval)
    rows = metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")
    times = [r["step_time_s"] for r in rows if "step_time_s" in r]
    assert len(times) == 4 and all(0.04 < t < 0.5 for t in times), times


def test_mfu_counts_the_peak_once_per_host_on_cpu():
    # The probe's matmul already uses every core; host devices (8 here) share those cores.
    assert jax.device_count() == 8 and metrics_lib.peak_units() == jax.process_count() == 1


def test_init_params_match_transformer_init():
    model_cfg, opt, state, _ = _tiny_setup(1)
    expected = transformer.init_params(model_cfg, jax.random.split(jax.random.PRNGKey(0))[0])
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)


# orbax leaves the reads of a restore that failed as coroutines never awaited: expected here.
_ABANDONED_READS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_ABANDONED_READS
@pytest.mark.parametrize("damage", ["empty_iterator_state", "cut_array_file", "empty_metadata"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_restored(tmp_path, damage):
    _, _, state, batch = _tiny_setup(1)
    data = [{"x": np.arange(i, i + 4)} for i in range(50)]
    make_iter = lambda: iter(grain.MapDataset.source(data).to_iter_dataset())  # noqa: E731
    ckpt = checkpoint.manager(tmp_path / "checkpoints", max_to_keep=3)
    iterator = make_iter()
    for step in (2, 4):
        state = state.replace(step=jnp.asarray(step, state.step.dtype))
        next(iterator)
        checkpoint.save(ckpt, state, iterator, force=True)
        ckpt.wait_until_finished()
    newest = tmp_path / "checkpoints" / "4"
    if damage == "empty_iterator_state":
        next(newest.glob("data/*.json")).write_text("")
    elif damage == "cut_array_file":
        biggest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[:100])
    else:
        (newest / "state" / "_METADATA").write_text("")
    fresh = checkpoint.manager(tmp_path / "checkpoints", max_to_keep=3)
    restored, it, _ = checkpoint.restore_latest(fresh, state, make_iter())
    assert int(restored.step) == 2
    assert not newest.exists() and len(list((tmp_path / "corrupt_checkpoints").iterdir())) == 1
    assert fresh.all_steps() == [2]
    # ... and the run goes on: step 4 is saved again where the damaged one was.
    checkpoint.save(fresh, restored.replace(step=jnp.asarray(4, state.step.dtype)), it, force=True)
    fresh.wait_until_finished()
    assert fresh.all_steps() == [2, 4]


@_ABANDONED_READS
def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    _, _, state, _ = _tiny_setup(1)
    ckpt = checkpoint.manager(tmp_path / "checkpoints")
    checkpoint.save(ckpt, state.replace(step=jnp.asarray(1, state.step.dtype)), force=True)
    ckpt.wait_until_finished()
    (tmp_path / "checkpoints" / "1" / "state" / "_METADATA").write_text("")
    with pytest.raises(RuntimeError, match=r"no checkpoint could be restored .* step 1, failed"):
        checkpoint.restore_latest(checkpoint.manager(tmp_path / "checkpoints"), state)


def test_init_from_brings_its_tokenizer_and_shape(tmp_path, shared_data, caplog):
    # sft.py:tiny trains a 1024-piece tokenizer; with model.init_from that tokenizer's ids
    # would feed weights learned on the world base's 512 pieces (check_fits passes: 512 < 1024).
    base = os.path.join(REPO, "r1jax", "assets", "world_base")
    cfg = configlib.load_config(
        os.path.join(REPO, "configs/sft.py:tiny"),
        model__init_from=base,
        model__n_layers=2,
        model__max_seq_len=512,
    )
    assert cfg.tokenizer.train_vocab_size and not cfg.tokenizer.path
    records = [{"prompt": "Start with 5.", "response": "5"}]
    tok = supervised.resolve_tokenizer(cfg, tmp_path, records)
    with open(os.path.join(base, "tokenizer.model"), "rb") as f:
        assert tok.model_proto == f.read()
    # init_from may name a run's checkpoints folder: its tokenizer is the run's.
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "tokenizer.model"):
        (run / name).write_bytes(open(os.path.join(base, name), "rb").read())
    (run / "config.json").write_text(json.dumps({"config": {"stage": "sft"}, "model": {}}))
    in_run = configlib.updated(cfg, model__init_from=str(run / "checkpoints"))
    assert supervised.resolve_tokenizer(in_run, tmp_path / "w2", records).model_proto == (
        tok.model_proto
    )
    model_cfg = configlib.model_config_from(cfg, vocab_size=tok.vocab_size)
    with caplog.at_level("WARNING"):
        loaded, params = supervised.initial_params(cfg, model_cfg)
        supervised.warn_past_context(loaded, 600, "data.seq_len")
    # The base's 4 layers (the override cannot apply to its weights, and says so); the longer
    # context is a context extension, kept and later exported.
    assert (loaded.n_layers, loaded.max_seq_len) == (4, 512)
    assert "n_layers=2 (it has 4)" in caplog.text
    assert "data.seq_len = 600 tokens, past the model's max_seq_len 512" in caplog.text


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_a_bfloat16_hub_checkpoint_trains_in_the_configs_param_dtype(tmp_path, param_dtype):
    # Hub checkpoints are mostly stored in bfloat16: loaded as stored, the run trained
    # bfloat16 master weights under param_dtype float32 (Adam's small steps rounded away) while
    # its resolved config said float32.
    from r1jax.model import hf_io

    cfg = configlib.load_config(
        os.path.join(REPO, "configs/sft.py:tiny"), model__param_dtype=param_dtype
    )
    model_cfg = configlib.model_config_from(cfg, vocab_size=512)
    params = transformer.init_params(model_cfg, jax.random.key(0))
    stored = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    hf_io.save_hf(tmp_path / "hub", model_cfg, stored)
    cfg = configlib.updated(cfg, model__init_from=str(tmp_path / "hub"))
    loaded_cfg, loaded = supervised.initial_params(cfg, model_cfg)
    assert loaded_cfg.param_dtype == param_dtype
    assert {str(x.dtype) for x in jax.tree.leaves(loaded)} == {param_dtype}
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, stored))


def test_the_schedule_is_read_at_the_training_step_not_the_optimizers_count():
    # RL makes epochs x minibatches updates a step: indexed by update, warmup ended and the
    # cosine reached its floor that many times too early. A skipped (non-finite) update kept
    # optax's count, so every later step applied the rate of the step before the one it logged.
    import ml_collections

    optim = ml_collections.ConfigDict(
        dict(lr=1.0, warmup_steps=4, schedule="constant", min_lr_ratio=0.1, b1=0.0, b2=0.0)
    )
    optim.update(eps=1e-12, weight_decay=0.0, grad_clip=0.0)
    opt = state_lib.make_optimizer(optim, 10)
    params = jnp.zeros(())
    opt_state, lrs = opt.init(params), []
    for step, skipped in [(0, 0), (0, 0), (1, 0), (1, 0), (2, 1), (2, 1), (3, 0), (3, 0)]:
        updates, new_state = state_lib.update_at_step(opt, jnp.ones(()), opt_state, params, step)
        opt_state = opt_state if skipped else new_state  # as trainer.apply_if_finite
        lrs.append(-float(updates))  # Adam with b1 = b2 = 0 moves by lr * sign(grad)
    np.testing.assert_allclose(lrs, [0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75], atol=1e-6)


def _save_params(run_dir, params, steps=(1,)) -> None:
    """A checkpoint of `params` (empty optimizer state) at each of `steps` under run_dir."""
    ckpt = checkpoint.manager(run_dir / "checkpoints")
    for step in steps:
        state = state_lib.TrainState(
            step=jnp.asarray(step), params=params, opt_state={}, rng=jax.random.PRNGKey(1)
        )
        checkpoint.save(ckpt, state, force=True)
        ckpt.wait_until_finished()


def test_params_restore_in_the_configs_dtype_and_another_shape_is_named(tmp_path):
    # Restored as saved: a run started from a bfloat16 run under param_dtype float32 trained
    # bfloat16 master weights and moments; a config of another shape got the saved shapes, and
    # the first step's init failed on them (a flax traceback) instead of this message.
    cfg = model_config.ModelConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64
    )
    bf16 = dataclasses.replace(cfg, dtype="bfloat16", param_dtype="bfloat16")
    params = transformer.init_params(bf16, jax.random.PRNGKey(0))
    _save_params(tmp_path, params)

    def shapes(c):
        return jax.eval_shape(functools.partial(transformer.init_params, c), jax.random.key(0))

    restored = checkpoint.restore_params(tmp_path, shapes(cfg))
    assert {x.dtype for x in jax.tree.leaves(restored)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_array_equal(restored["embedding"], params["embedding"].astype(jnp.float32))
    narrower = dataclasses.replace(cfg, d_ff=48)
    with pytest.raises(
        checkpoint.ParamsError, match=r"\['gate_kernel'\] is \(2, 32, 64\) there, \(2, 32, 48\)"
    ):
        checkpoint.restore_params(tmp_path, shapes(narrower))


def test_saved_params_the_config_has_no_place_for_are_named(tmp_path):
    # A partial restore left them out: a bare checkpoint of an untied model with q/k/v biases,
    # started from under a tied config without biases, lost its lm_head and biases silently.
    cfg = model_config.ModelConfig(
        vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64
    )
    params = transformer.init_params(dataclasses.replace(cfg, qkv_bias=True), jax.random.PRNGKey(0))
    _save_params(tmp_path, params)
    abstract = jax.eval_shape(functools.partial(transformer.init_params, cfg), jax.random.key(0))
    with pytest.raises(
        checkpoint.ParamsError, match=r"\['attn'\]\['k_bias'\] is there, not in this config"
    ):
        checkpoint.restore_params(tmp_path, abstract)


@_ABANDONED_READS
def test_params_of_a_damaged_step_are_not_called_a_config_mismatch_alone(tmp_path):
    # The export of a run whose newest checkpoint cannot be read said only that its params do
    # not match the model config (model.init_from: in a traceback).
    cfg = model_config.ModelConfig(
        vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64
    )
    params = transformer.init_params(cfg, jax.random.PRNGKey(0))
    _save_params(tmp_path, params, steps=(1, 2))
    (tmp_path / "checkpoints" / "2" / "state" / "manifest.ocdbt").unlink()
    abstract = jax.eval_shape(lambda: params)
    damaged = r"step 2: .* or the checkpoint is damaged \(other steps here: \[1\]\)"
    with pytest.raises(checkpoint.ParamsError, match=damaged):
        checkpoint.restore_params(tmp_path, abstract)
    restored = checkpoint.restore_params(tmp_path, abstract, step=1)
    np.testing.assert_array_equal(restored["embedding"], params["embedding"])


def test_an_export_over_an_earlier_one_leaves_no_chat_template_of_it(tmp_path):
    # transformers reads chat_template.jinja (what its tokenizer.save_pretrained writes) before
    # tokenizer_config.json: exporting a run without a template (pretraining) over an earlier
    # export kept that export's template.
    import transformers

    from r1jax import export

    run, out = tmp_path / "run", tmp_path / "out"
    cfg = model_config.ModelConfig(
        vocab_size=512, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, d_ff=64
    )
    _save_params(run, transformer.init_params(cfg, jax.random.PRNGKey(0)))
    config = {"config": {"stage": "pretrain"}, "model": dataclasses.asdict(cfg)}
    (run / "config.json").write_text(json.dumps(config))
    base = os.path.join(REPO, "r1jax", "assets", "world_base", "tokenizer.model")
    (run / "tokenizer.model").write_bytes(open(base, "rb").read())
    out.mkdir()
    (out / "chat_template.jinja").write_text("{{ 'another run' }}")
    export.export(run, out)
    assert transformers.PreTrainedTokenizerFast.from_pretrained(out).chat_template is None


def test_a_run_saved_on_eight_devices_exports_on_one(tmp_path, shared_data):
    # Restored "as saved", the params named devices 0-7: on a one-device machine the export
    # (and model.init_from) failed, calling it a model-config mismatch.
    from safetensors.numpy import load_file

    from r1jax import export

    supervised.run(_short_cfg(mesh__data=1, mesh__fsdp=8, train__steps=1), tmp_path / "run")
    export.export(tmp_path / "run", tmp_path / "on8")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    out = subprocess.run(
        [sys.executable, "-m", "r1jax.export", str(tmp_path / "run"), str(tmp_path / "on1")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ERROR" not in out.stderr, out.stderr[-2000:]  # orbax's expected first-pass failures
    a = load_file(tmp_path / "on8" / "model.safetensors")
    b = load_file(tmp_path / "on1" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # The export's tokenizer gives transformers the ids the run trained on, BOS first.
    import transformers

    from r1jax import text

    ours = text.load_tokenizer(tmp_path / "run" / "tokenizer.model")
    # (transformers 5's AutoTokenizer picks Qwen2Tokenizer for a qwen2 config.json whatever
    # tokenizer_config.json says, and re-splits text byte-level: the README says to load it so.)
    ref = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "on1")
    prompt = "Natalia sold clips to 48 of her friends. 小明有五个苹果。"
    assert ref(prompt)["input_ids"] == [ours.bos_id] + ours.encode(prompt)
    assert ref.eos_token_id == ours.eos_id
    # Its chat template prompts as the run trained (data.template), as r1jax's eval does.
    cfg = _short_cfg()
    chat = ref.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    ids = chat["input_ids"] if hasattr(chat, "keys") else chat
    assert cfg.data.template == "chat"
    assert list(ids) == evaluation.encode_prompt(ours, text.apply_template("chat", prompt))
    # generate() stops at the run's EOS (without generation_config.json it never did).
    generation = transformers.GenerationConfig.from_pretrained(tmp_path / "on1")
    assert generation.eos_token_id == ours.eos_id and generation.bos_token_id == ours.bos_id


def test_a_qwen3_base_from_transformers_trains_and_exports_back(tmp_path, shared_data):
    # Qwen3 (q/k norms over each head, head_dim apart from hidden / heads) end to end: a folder
    # transformers saved -> model.init_from -> SFT steps -> export -> transformers' logits.
    import shutil

    import torch
    import transformers

    from r1jax import export
    from r1jax.model import hf_io

    torch.manual_seed(0)
    hf_cfg = transformers.Qwen3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    base = tmp_path / "base"
    transformers.Qwen3ForCausalLM(hf_cfg).save_pretrained(base)
    shutil.copy(os.path.join(REPO, "r1jax/assets/world_base/tokenizer.model"), base)
    cfg = _short_cfg(model__init_from=str(base), tokenizer__train_vocab_size=0, train__steps=2)
    supervised.run(cfg, tmp_path / "run")
    export.export(tmp_path / "run", tmp_path / "out")
    model_cfg, params = hf_io.load_hf(tmp_path / "out")
    assert model_cfg.family == "qwen3" and model_cfg.qk_norm and model_cfg.head_dim == 32
    _, before = hf_io.load_hf(base)
    for name in ("q_norm", "k_norm", "q_kernel"):  # trained, the norms' scales included
        assert not np.array_equal(params["layers"]["attn"][name], before["layers"]["attn"][name])
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    tokens = np.random.RandomState(0).randint(0, 512, (2, 20))
    with torch.no_grad():
        want = ref.eval()(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(transformer.forward(model_cfg, params, jnp.asarray(tokens, jnp.int32)))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_checkpoints_of_another_process_count_are_refused_in_one_line(tmp_path, shared_data):
    # grain keeps one position file per process: with another count every step failed and the
    # error advised moving the checkpoints away. Here: files as two processes name them.
    supervised.run(_short_cfg(train__steps=1), tmp_path)
    data = tmp_path / "checkpoints" / "1" / "data"
    (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
    (data / "process_1-of-2.json").write_text((data / "process_0-of-2.json").read_text())
    # Unfinished saves that kills left (what orbax's writer removes in a background thread):
    # the one-line error came out with that thread's traceback after it (1 run in 12 under
    # load; every run with this many).
    for step in range(100, 400):
        (tmp_path / "checkpoints" / f"{step}.orbax-checkpoint-tmp-{step}").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "r1jax.main", *_cli_args(tmp_path, train__steps=2)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("r1jax: ") and "saved by 2 processes and this run has 1" in last, last
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "checkpoints").glob("*.orbax-checkpoint-tmp-*"))
    assert (data / "process_0-of-2.json").exists()  # nothing moved aside


def test_a_first_ctrl_c_saves_after_the_step_a_second_stops_at_once(tmp_path):
    # Ctrl-C lost every step since the last interval checkpoint (a traceback, no save).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored in background
    try:
        with trainer.Preemption() as preemption:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert preemption.should_stop()
            with pytest.raises(SystemExit) as stopped:
                preemption.exit(3, tmp_path)
            assert stopped.value.code == 130
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_an_ignored_ctrl_c_stays_ignored_sigterm_still_saves():
    # A job a non-interactive shell put in the background starts with SIGINT ignored; Python
    # leaves it so, and the loop used to install its handler over it anyway.
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with trainer.Preemption() as preemption:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert not preemption.should_stop()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            assert preemption.should_stop() and preemption.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_train_epochs_run_the_steps_one_pass_of_the_data_fills(tmp_path, shared_data):
    cfg = _short_cfg(train__epochs=1.0, train__steps=1000)  # steps replaced
    supervised.run(cfg, tmp_path)
    stats = json.loads((tmp_path / "data_stats.json").read_text())
    want = -(-stats["rows_per_epoch"] // cfg.data.batch_size)
    assert stats["steps"] == want < 1000
    saved = json.loads((tmp_path / "config.json").read_text())["config"]
    assert saved["train"]["steps"] == want
    assert max(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == want


def _tensorboard_as_read(folder):
    """{tag: [(step, value)]} as TensorBoard's loader keeps them: files in order, and a
    SessionLog START at step s drops the events before it at steps >= s (a restart)."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            if i + 16 + length > len(data):
                break  # a torn last record: the end of what was written
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12 : i + 12 + length])
            if event.session_log.status == event_pb2.SessionLog.START:
                events = [(s, t, v) for s, t, v in events if s < event.step]
            events += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
            i += 16 + length
    out = {}
    for step, tag, value in events:
        out.setdefault(tag, []).append((step, value))
    return out


def test_a_resumed_run_replaces_the_killed_runs_tensorboard_events(tmp_path):
    # The killed run's events of steps after the checkpoint stayed beside the resumed run's:
    # two values at each redone step for TensorBoard (metrics.jsonl dropped them).
    killed = metrics_lib.MetricsWriter(tmp_path, total_steps=10)
    for step in range(1, 11):
        killed.write(step, {"loss": 100.0 - step + 0.5})
    killed._tb.close()  # its events on disk, as flush_secs leaves them in a longer run; killed
    time.sleep(1.1)  # the next events file is named by another second, as a later process's
    resumed = metrics_lib.MetricsWriter(tmp_path, total_steps=10, start_step=5)
    for step in range(6, 11):
        resumed.write(step, {"loss": 100.0 - step})
    resumed.close()
    want = [(s, 100.0 - s + (0.5 if s <= 5 else 0.0)) for s in range(1, 11)]
    assert _tensorboard_as_read(tmp_path / "tensorboard")["loss"] == want
    assert [r["loss"] for r in metrics_lib.read_jsonl(tmp_path / "metrics.jsonl")] == [
        v for _, v in want
    ]


def test_a_save_cut_by_a_kill_is_removed_by_the_next_run_not_by_a_reader(tmp_path, shared_data):
    # SIGTERM's save cut by a SIGKILL left checkpoints/2.orbax-checkpoint-tmp (a checkpoint's
    # size) for good: step 2 is not saved again.
    from r1jax import export

    supervised.run(_short_cfg(train__steps=1), tmp_path / "run")
    cut = tmp_path / "run" / "checkpoints" / "7.orbax-checkpoint-tmp"
    (cut / "state").mkdir(parents=True)
    (cut / "state" / "part").write_bytes(b"\0" * 1024)
    export.export(tmp_path / "run", tmp_path / "hf")  # a reader: another run may be saving it
    assert cut.is_dir()
    supervised.run(_short_cfg(train__steps=2), tmp_path / "run")
    assert not cut.exists()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1", "2"]


def test_a_training_state_beyond_memory_is_refused_before_it_is_made():
    cfg = _short_cfg()
    opt = state_lib.make_optimizer(cfg.optim, 10)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    # What the check counts is what the state holds: every device's shards, replicas included.
    model_cfg = configlib.model_config_from(cfg, vocab_size=64)
    state, shardings = trainer.init_state(
        model_cfg, opt, jax.random.PRNGKey(0), mesh, sharding.DEFAULT_RULES
    )
    held = sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards)
    assert memory.sharded_bytes(jax.eval_shape(lambda: state), shardings) == held
    # 2**30 x 128 embeddings (and as many output rows), float32, with Adam's two moments:
    # ~1.5 TiB even split over 4 fsdp shards (the init program waited forever on XLA:CPU).
    huge = configlib.model_config_from(cfg, vocab_size=2**30)
    with pytest.raises(memory.OutOfMemory, match=r"the training state of [0-9,]+ parameters"):
        trainer.init_state(huge, opt, jax.random.PRNGKey(0), mesh, sharding.DEFAULT_RULES)
    abstract = jax.eval_shape(lambda k: transformer.init_params(huge, k), jax.random.key(0))
    with pytest.raises(
        memory.OutOfMemory,
        match=r"more than this (host.s|process.s cgroup memory limit of) [0-9.]+ GiB",
    ):
        trainer.state_from_params(
            abstract,
            trainer.model_shardings(huge, opt, mesh, sharding.DEFAULT_RULES),
            opt,
            jax.random.PRNGKey(0),
        )
