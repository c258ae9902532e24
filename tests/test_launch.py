"""launch/: every script is valid bash, and the r1jax command lines it builds (printed under
DRY_RUN=1) parse with r1jax's own flags, with the values the script means."""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(p.name for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
CONFIG, WORKDIR, OVERRIDE = "configs/grpo.py:tiny", "/shared/runs/a b", "--config.rl.kl_coef=0.25"
SLURM = {"SLURM_JOB_NODELIST": "gpu01,gpu02", "SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8"}
# (script, leading arguments, environment) -> the r1jax command lines it runs.
CASES = {
    "local_cpu": ("local_cpu.sh", [], {}),
    "single_gpu": ("single_gpu.sh", [], {}),
    "multi_gpu": ("multi_gpu.sh", [], {}),
    "multi_gpu_per_gpu": ("multi_gpu.sh", [], {"MODE": "per-gpu", "NUM_GPUS": "2"}),
    "tpu_pod": ("tpu_pod.sh", ["run"], {"TPU_NAME": "r1", "ZONE": "us-central2-b"}),
    "slurm_per_gpu": ("slurm.sbatch", [], SLURM),
    "slurm_per_node": (
        "slurm.sbatch",
        [],
        {**SLURM, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4"},
    ),
}
SHELL_OPERATORS = {"|", "||", "&&", ";", "2>&1", "&"}


def _script(name, args, env, dry_run=True):
    env = {**os.environ, **(env or {}), "DRY_RUN": "1" if dry_run else "0"}
    return subprocess.run(
        ["bash", str(LAUNCH / name), *args], env=env, capture_output=True, text=True, cwd=REPO
    )


def _r1jax_argvs(stdout: str) -> list[list[str]]:
    """The argument lists of every r1jax call in the printed commands (ssh --command included)."""
    argvs = []
    for line in stdout.splitlines():
        tokens = shlex.split(line)
        for token in tokens:
            if token.startswith("--command="):
                tokens = shlex.split(token.split("=", 1)[1])
        if "r1jax" in tokens:
            rest = tokens[tokens.index("r1jax") + 1 :]
            end = next((i for i, t in enumerate(rest) if t in SHELL_OPERATORS), len(rest))
            argvs.append(rest[:end])
    return argvs


_PARSE = """
import json, os, sys
from absl import flags
from r1jax import configlib, main

NAMES = ("workdir", "distributed", "coordinator_address", "num_processes", "process_id",
         "local_device_ids")


def parse(argv):
    configlib.add_config_root_to_path(argv[0].split("=", 1)[1].split(":", 1)[0])
    sys.argv = ["r1jax", *argv]  # config_flags reads the --config.* overrides from sys.argv
    rest = flags.FLAGS(sys.argv)  # raises on an unknown flag or a bad value
    row = {name: flags.FLAGS[name].value for name in NAMES}
    row.update(rest=rest[1:], stage=flags.FLAGS.config.stage, kl=flags.FLAGS.config.rl.kl_coef)
    return row


out = []
for argv in json.load(sys.stdin):
    # A forked child per command line: absl registers the overrides once per process.
    read, write = os.pipe()
    if os.fork() == 0:
        os.close(read)
        with os.fdopen(write, "w") as f:
            f.write(json.dumps(parse(argv)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    _, status = os.wait()
    if status:
        sys.exit(f"r1jax flags rejected {argv}")
    out.append(json.loads(text))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def parsed():
    """{case: [parsed r1jax flags of each command line it runs]}, parsed in one subprocess."""
    argvs = {}
    for case, (name, lead, env) in CASES.items():
        done = _script(name, [*lead, CONFIG, WORKDIR, OVERRIDE], env)
        assert done.returncode == 0, (case, done.stderr)
        argvs[case] = _r1jax_argvs(done.stdout)
        assert argvs[case] and all(a[0] == f"--config={CONFIG}" for a in argvs[case]), case
    flat = [a for case in CASES for a in argvs[case]]
    out = subprocess.run(
        [sys.executable, "-c", _PARSE],
        input=json.dumps(flat),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = iter(json.loads(out.stdout.strip().splitlines()[-1]))
    return {case: [next(rows) for _ in argvs[case]] for case in CASES}


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_is_valid_bash(name):
    done = subprocess.run(["bash", "-n", str(LAUNCH / name)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_target_has_a_script():
    expected = {"local_cpu.sh", "single_gpu.sh", "multi_gpu.sh", "tpu_pod.sh", "slurm.sbatch"}
    assert expected <= set(SCRIPTS)
    assert {name for name, _, _ in CASES.values()} == set(SCRIPTS)


def test_command_lines_parse_with_the_flags_they_mean(parsed):
    for case, rows in parsed.items():
        for row in rows:
            assert row["workdir"] == WORKDIR and row["kl"] == 0.25, case  # quoting survives
            assert row["stage"] == "rl" and row["rest"] == [], case
    for case in ("local_cpu", "single_gpu", "multi_gpu"):
        assert [r["distributed"] for r in parsed[case]] == ["off"], case
    per_gpu = parsed["multi_gpu_per_gpu"]
    assert [(r["process_id"], r["local_device_ids"]) for r in per_gpu] == [(0, "0"), (1, "1")]
    assert {(r["distributed"], r["num_processes"]) for r in per_gpu} == {("on", 2)}
    assert {r["coordinator_address"] for r in per_gpu} == {"127.0.0.1:12355"}
    (tpu,) = parsed["tpu_pod"]  # jax.distributed reads the rest from the TPU metadata
    assert tpu["distributed"] == "on" and tpu["coordinator_address"] == ""
    (per_task,) = parsed["slurm_per_gpu"]  # srun starts it once per task
    assert per_task["coordinator_address"] == "gpu01:12355" and per_task["num_processes"] == 16
    assert (
        per_task["process_id"] == -1 and per_task["local_device_ids"] == ""
    )  # SLURM_PROCID/LOCALID
    (per_node,) = parsed["slurm_per_node"]
    assert per_node["num_processes"] == 2 and per_node["local_device_ids"] == "0,1,2,3"


@pytest.mark.parametrize(
    "name, lead, env, message",
    [
        ("local_cpu.sh", [], {}, "config spec"),
        ("multi_gpu.sh", [CONFIG, WORKDIR], {"MODE": "all"}, "expected single or per-gpu"),
        ("multi_gpu.sh", [CONFIG, WORKDIR], {"MODE": "per-gpu", "NUM_GPUS": "x"}, "not a count"),
        ("tpu_pod.sh", ["run", CONFIG, WORKDIR], {"TPU_NAME": ""}, "set TPU_NAME"),
        ("tpu_pod.sh", ["run"], {"TPU_NAME": "r1", "ZONE": "z"}, "config spec"),
        ("tpu_pod.sh", ["create"], {"TPU_NAME": "r1", "ZONE": "z"}, "set ACCELERATOR_TYPE"),
        ("slurm.sbatch", [CONFIG, WORKDIR], {"SLURM_JOB_NODELIST": ""}, "run this with sbatch"),
    ],
)
def test_missing_or_bad_settings_fail_with_a_clear_message(name, lead, env, message):
    env = {"ACCELERATOR_TYPE": "", **env}
    done = _script(name, lead, env)
    assert done.returncode != 0 and message in done.stderr, done.stderr


_FAKE_R1JAX = """#!/usr/bin/env python3
# A stand-in r1jax for the launcher: process i sleeps FAKE_SLEEP_i s then exits FAKE_RC_i; on
# SIGTERM it notes it (as r1jax saves and exits 143).
import os, pathlib, signal, sys, time
i = [a for a in sys.argv if a.startswith("--process_id=")][0].split("=")[1]
def term(*_):
    pathlib.Path(os.environ["FAKE_DIR"], f"term_{i}").write_text("")
    sys.exit(143)
signal.signal(signal.SIGTERM, term)
pathlib.Path(os.environ["FAKE_DIR"], f"started_{i}").write_text(str(os.getpid()))
time.sleep(float(os.environ.get(f"FAKE_SLEEP_{i}", "30")))
sys.exit(int(os.environ.get(f"FAKE_RC_{i}", "0")))
"""


def _fake_env(tmp_path, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "r1jax").write_text(_FAKE_R1JAX)
    (bin_dir / "r1jax").chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return {
        **os.environ,
        "PATH": path,
        "MODE": "per-gpu",
        "NUM_GPUS": "2",
        "FAKE_DIR": str(tmp_path),
        "DRY_RUN": "0",
        **env,
    }


# Runs a command with SIGINT at its default, as a terminal's foreground job has it: a suite run
# in the background of a shell (or by a runner that ignores SIGINT) passes it on ignored, and
# bash cannot trap a signal that was ignored when it started.
_SIGINT_DEFAULT = (
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
)


def test_per_gpu_launcher_passes_ctrl_c_on_and_reports_every_failure(tmp_path):
    import signal
    import time

    # Ctrl-C: background jobs of a script ignore SIGINT, so the launcher exited and left every
    # process running; it now sends them SIGTERM (r1jax saves and exits) and exits 130.
    env = _fake_env(tmp_path)
    p = subprocess.Popen(
        [*_SIGINT_DEFAULT, "bash", str(LAUNCH / "multi_gpu.sh"), CONFIG, str(tmp_path / "run")],
        env=env,
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while not all((tmp_path / f"started_{i}").exists() for i in (0, 1)):
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)
    assert p.wait(timeout=20) == 130
    assert (tmp_path / "term_0").exists() and (tmp_path / "term_1").exists()
    for i in (0, 1):
        pid = int((tmp_path / f"started_{i}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # A process failing just after another finished was dropped unread (exit 0) 2-3 times in 10.
    for _ in range(4):
        env = _fake_env(tmp_path, FAKE_SLEEP_0="0.3", FAKE_SLEEP_1="0.302", FAKE_RC_1="1")
        out = subprocess.run(
            ["bash", str(LAUNCH / "multi_gpu.sh"), CONFIG, str(tmp_path / "run")],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1, out.stderr


# Sourced through BASH_ENV: `wait` as bash before 5.1 has it (Ubuntu 20.04's 5.0, RHEL 8's
# 4.4), without the -p option.
_WAIT_BEFORE_BASH_5_1 = """
wait() {
  local a
  for a in "$@"; do
    if [[ $a == -p ]]; then echo "wait: -p: invalid option" >&2; return 2; fi
  done
  builtin wait "$@"
}
"""


def test_per_gpu_launcher_runs_on_bash_before_5_1(tmp_path):
    # `wait -n -p` failed at once there: every run stopped as "a process failed".
    shim = tmp_path / "wait.sh"
    shim.write_text(_WAIT_BEFORE_BASH_5_1)
    env = _fake_env(tmp_path, BASH_ENV=str(shim), FAKE_SLEEP_0="0.5", FAKE_SLEEP_1="1")
    command = ["bash", str(LAUNCH / "multi_gpu.sh"), CONFIG, str(tmp_path / "run")]
    out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    env.update(FAKE_RC_1="1")  # and a failure still stops the run
    out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "a process failed" in out.stderr, out.stderr


def _cli(args, cwd, **env):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run(
        [sys.executable, "-m", "r1jax.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_start_up_mistakes_are_one_line(tmp_path):
    config = f"--config={REPO / 'configs/sft.py'}:tiny"
    # --workdir=$RUN with RUN unset trained into the current folder.
    out = _cli([config, "--workdir="], tmp_path)
    assert out.returncode != 0 and out.stderr.strip().endswith(
        "r1jax: --workdir is empty; name the run folder"
    )
    assert list(tmp_path.iterdir()) == []
    # Misconfigured multi-process runs: jax's ValueError / int() tracebacks before.
    out = _cli(
        [config, f"--workdir={tmp_path / 'a'}", "--distributed=on"],
        tmp_path,
        R1JAX_NUM_PROCESSES="two",
    )
    assert out.stderr.strip().splitlines()[-1] == (
        "r1jax: --distributed=on: R1JAX_NUM_PROCESSES='two' is not a whole number"
    )
    assert "Traceback" not in out.stderr
    # A job's batch script (SLURM_NTASKS of the job, no srun step) runs a bare r1jax alone.
    from r1jax import distributed

    slurm_batch = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8", "SLURM_PROCID": "0"}
    os.environ.update(slurm_batch)
    try:
        assert not distributed.cluster_detected()
        os.environ["SLURM_STEP_NUM_TASKS"] = "8"
        assert distributed.cluster_detected()
    finally:
        for name in (*slurm_batch, "SLURM_STEP_NUM_TASKS"):
            os.environ.pop(name, None)


def test_a_stray_argument_is_one_line(tmp_path):
    # `--config.model.init_from= DIR` leaves DIR as an argument: absl printed its whole usage.
    config = f"--config={REPO / 'configs/sft.py'}:tiny"
    out = _cli(
        [config, f"--workdir={tmp_path / 'a'}", "--config.model.init_from=", "DIR"], tmp_path
    )
    assert out.returncode != 0 and "USAGE" not in out.stderr, out.stderr
    assert out.stderr.strip().startswith("r1jax: unexpected arguments ['DIR']: ")


def test_a_multi_process_run_leaves_sigterm_to_r1jax(monkeypatch):
    # JAX's preemption service caught SIGTERM and ignored it: a two-process eval stage sent
    # SIGTERM ran on to its end (41 s); r1jax's training loops handle it themselves.
    import jax

    from r1jax import distributed

    seen = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        jax.distributed,
        "initialize",
        lambda **kw: seen.append((kw, jax.config.jax_enable_preemption_service)),
    )
    names = ("jax_enable_preemption_service", "jax_cpu_collectives_implementation")
    before = {name: getattr(jax.config, name) for name in names}
    try:
        assert distributed.initialize("127.0.0.1:1234", 2, 1)
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
    assert seen == [
        (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1), False)
    ]


def test_cli_refuses_what_it_cannot_honour(tmp_path):
    config = f"--config={REPO / 'configs/sft.py'}:tiny"
    # A gs:// workdir became a local folder "gs:" (every pod worker its own); mesh.rules (a
    # list before) could not be set on the command line at all.
    rules = '--config.mesh.rules=(("embed", None), ("mlp", ("fsdp", "tensor")))'
    out = _cli([config, rules, "--workdir=gs://bucket/run"], tmp_path)
    assert out.returncode != 0 and "mount the bucket" in out.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []
    # A process count or index without a coordinator ran each process as a lone process 0.
    out = _cli(
        [config, f"--workdir={tmp_path / 'a'}", "--num_processes=2", "--process_id=1"], tmp_path
    )
    assert out.returncode != 0 and "need --coordinator_address" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "a").exists()
    # No --config: say it is required (it read "no such config file ''").
    out = _cli([f"--workdir={tmp_path / 'b'}"], tmp_path)
    assert "r1jax: --config is required: --config=configs/<stage>.py:<variant>" in out.stderr
    # A Hugging Face folder whose config.json disagrees with its weights: one line, not a
    # traceback ending in the same message.
    folder = tmp_path / "hf"
    shutil.copytree(REPO / "r1jax" / "assets" / "world_base", folder)
    hf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**hf, "intermediate_size": 384}))
    out = _cli(
        [config, f"--workdir={tmp_path / 'c'}", f"--config.model.init_from={folder}"], tmp_path
    )
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert last.startswith(f"r1jax: {folder}: tensor 'model.layers.0.mlp.gate_proj.weight'"), last
    # A folder where the run writes a file: the OSError's own line names it (was a traceback).
    (tmp_path / "d" / "metrics.jsonl").mkdir(parents=True)
    out = _cli([config, f"--workdir={tmp_path / 'd'}", "--config.train.steps=1"], tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"r1jax: [Errno 21] Is a directory: '{tmp_path / 'd' / 'metrics.jsonl'}'"
    )


def test_slurm_refuses_tasks_per_node_that_leave_gpus_idle():
    env = {**SLURM, "SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_GPUS_PER_NODE": "8"}
    out = _script("slurm.sbatch", [CONFIG, WORKDIR], env)
    assert out.returncode == 2 and "2 tasks per node for 8 GPUs per node" in out.stderr


def test_slurm_reads_tasks_per_node_where_ntasks_per_node_was_not_given():
    # Without --ntasks-per-node SLURM sets only SLURM_TASKS_PER_NODE: eight tasks per node read
    # as one, and each claimed all of its node's GPUs (--local_device_ids=0,...,7).
    env = {**SLURM, "SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_GPUS_PER_NODE": "8"}
    del env["SLURM_NTASKS_PER_NODE"]
    out = _script("slurm.sbatch", [CONFIG, WORKDIR], env)
    assert out.returncode == 0, out.stderr
    assert "--num_processes=16" in out.stdout and "--local_device_ids" not in out.stdout
    env["SLURM_TASKS_PER_NODE"] = "2(x2)"  # two tasks for eight GPUs: refused, as before
    out = _script("slurm.sbatch", [CONFIG, WORKDIR], env)
    assert out.returncode == 2 and "2 tasks per node for 8 GPUs per node" in out.stderr


def test_helpshort_of_the_console_script_lists_the_flags():
    import shutil

    script = shutil.which("r1jax")
    if script is None:
        pytest.skip("the r1jax console script is not installed")
    out = subprocess.run([script, "--helpshort"], capture_output=True, text=True, timeout=300)
    assert "--workdir" in out.stdout and "--distributed" in out.stdout, out.stdout[-1000:]


def test_tpu_runtime_follows_the_accelerator_and_install_makes_a_311_env():
    env = {"TPU_NAME": "r1", "ZONE": "z"}
    for accel, runtime in [
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ]:
        out = _script("tpu_pod.sh", ["create"], {**env, "ACCELERATOR_TYPE": accel})
        assert f"--version={runtime}" in out.stdout, out.stdout
    # The runtimes' python3 is 3.10; r1jax needs 3.11 (pip install -e failed on every worker).
    out = _script("tpu_pod.sh", ["install"], env)
    assert "uv venv -q -p 3.11" in out.stdout.replace("\\", "")
    assert "--exclude=./.venv" in out.stdout  # a local venv is not shipped into the workers' one


_DUMP_ENV = """#!/usr/bin/env python3
import json, os, sys
names = ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES")
with open(os.path.join(os.environ["FAKE_DIR"], os.path.basename(sys.argv[0]) + ".json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "env": {n: os.environ.get(n) for n in names}}, f)
"""


def _run_with_fakes(tmp_path, name, env, *fakes):
    """Runs launch/`name` (not a dry run) with `fakes` (r1jax, srun, ...) on PATH that record
    their arguments and the environment the script gives them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for fake in fakes:
        (bin_dir / fake).write_text(_DUMP_ENV)
        (bin_dir / fake).chmod(0o755)
    recorded = ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "CUDA_VISIBLE_DEVICES")
    env = {**{k: v for k, v in os.environ.items() if k not in recorded}, **env}
    env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_DIR=str(tmp_path))
    env["DRY_RUN"] = "0"
    done = subprocess.run(
        ["bash", str(LAUNCH / name), CONFIG, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return json.loads((tmp_path / f"{fakes[0]}.json").read_text())


@pytest.mark.parametrize(
    "name, env, fake, platform",
    [
        ("local_cpu.sh", {}, "r1jax", "cpu"),
        ("single_gpu.sh", {}, "r1jax", "cuda"),
        ("multi_gpu.sh", {}, "r1jax", "cuda"),
        ("slurm.sbatch", SLURM, "srun", "cuda"),
        ("single_gpu.sh", {"JAX_PLATFORMS": "rocm"}, "r1jax", "rocm"),
    ],
)
def test_scripts_pin_the_platform_they_are_for(tmp_path, name, env, fake, platform):
    # Without JAX_PLATFORMS a GPU job on a node without the GPU plugin trained on the CPU.
    seen = _run_with_fakes(tmp_path, name, env, fake)
    assert seen["env"]["JAX_PLATFORMS"] == platform
    if platform != "cpu":
        assert seen["env"]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.92"
    if name == "single_gpu.sh":
        assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_slurm_coordinator_is_the_first_node_scontrol_lists(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu01\\ngpu02\\ngpu03\\ngpu04\\n'\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {
        **SLURM,
        "SLURM_JOB_NODELIST": "gpu[01-04]",
        "SLURM_NTASKS": "32",
        "SLURM_CPUS_PER_TASK": "8",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    out = _script("slurm.sbatch", [CONFIG, WORKDIR], env)
    assert out.returncode == 0, out.stderr
    line = shlex.split(out.stdout)
    assert "--coordinator_address=gpu01:12355" in line and "--num_processes=32" in line
    assert line[:3] == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=8"]


def test_tpu_workers_get_the_data_root_and_the_tpu_platform():
    env = {"TPU_NAME": "r1", "ZONE": "us-central2-b", "R1JAX_DATA": "/mnt/data sets"}
    out = _script("tpu_pod.sh", ["run", CONFIG, WORKDIR], env)
    command = next(t for t in shlex.split(out.stdout) if t.startswith("--command="))
    assert "export R1JAX_DATA=/mnt/data\\ sets" in command and "JAX_PLATFORMS=tpu" in command


def test_out_of_device_memory_is_one_line_naming_the_stages_settings(tmp_path):
    config = f"--config={REPO / 'configs/pretrain.py'}:tiny"
    quick = ["--config.train.steps=1", "--config.metrics.tensorboard=False"]
    quick += ["--config.metrics.peak_flops=1e9", "--config.mesh.num_devices=1"]
    # The shipped base's tokenizer and a part of the corpus (generating all 50 000 rows took 8 s
    # of each run); 8 000 rows still fill the batch of 2 x 131 072 tokens that does not fit.
    quick += [f"--config.tokenizer.path={REPO / 'r1jax/assets/world_base/tokenizer.model'}"]
    quick += ["--config.data.max_records=8000"]
    # Params no host holds: the init program waited forever on XLA:CPU (an output it could not
    # allocate never raised); now refused before it runs.
    out = _cli(
        [config, f"--workdir={tmp_path / 'a'}", *quick, "--config.model.vocab_size=1073741824"],
        tmp_path,
    )
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    # (Nor the two lines every run printed: no libtpu here, orbax's handler registered again.)
    assert "libtpu" not in out.stderr and "Type handler registry" not in out.stderr
    assert re.search(
        r"^r1jax: stage pretrain does not fit in device memory: the training state of "
        r"137,440,004,736 parameters .* needs at least [0-9.]+ GiB.*, more than this host's .* "
        r"\(the settings that size it: data\.batch_size=64, data\.seq_len=128, ",
        last,
    ), last
    # A step whose attention scores no host holds: XLA's RESOURCE_EXHAUSTED traceback before.
    long_rows = ["--config.data.seq_len=131072", "--config.model.max_seq_len=131072"]
    out = _cli(
        [config, f"--workdir={tmp_path / 'b'}", *quick, *long_rows, "--config.data.batch_size=2"],
        tmp_path,
    )
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert re.search(
        r"r1jax: stage pretrain does not fit in device memory \(raised at train/\w+\.py:\d+, "
        r"\w+\): RESOURCE_EXHAUSTED: Out of memory allocating \d+ bytes\. \(the settings that "
        r"size it: data\.batch_size=2, data\.seq_len=131072, train\.grad_accum=1, ",
        last,
    ), last


def test_shared_errors_agree_once_when_they_end_and_nest(monkeypatch):
    # Process 0 of two (the collectives stubbed with process 1's side): a section agrees once
    # when it ends; another process's error is a PeerError naming it; this process's own error
    # is raised as it is, after the broadcast every process joins; a section inside another
    # (and raise_together there) agrees nothing, the outer one does.
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from r1jax import distributed
    from r1jax.data import sources

    calls, peer = [], {"message": b""}

    def allgather(size):
        calls.append("gather")
        other = len(peer["message"]) if peer["message"] else -1
        return np.asarray([int(size), other], np.int32)

    def broadcast(words, is_source):
        calls.append(("broadcast", bool(is_source)))
        if is_source:
            return words
        out = np.zeros(len(words), np.uint32)
        out.view(np.uint8)[: len(peer["message"])] = np.frombuffer(peer["message"], np.uint8)
        return out

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
    with distributed.shared_errors():
        with distributed.shared_errors():
            distributed.raise_together(None)
    assert calls == ["gather"]
    peer["message"] = b"DataError: no rows"
    with pytest.raises(distributed.PeerError, match="^process 1 of 2 stopped the run: DataError"):
        with distributed.shared_errors():
            pass
    assert calls[1:] == ["gather", ("broadcast", False)]
    peer["message"], calls[:] = b"", []
    with pytest.raises(sources.DataError, match="^mine$"):
        with distributed.shared_errors():
            with distributed.shared_errors():
                raise sources.DataError("mine")
    assert calls == ["gather", ("broadcast", True)]
