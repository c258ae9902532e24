"""Code sandbox: run untrusted Python against trusted tests; the verdict comes from the harness.

Isolation, best first: "bwrap" (no network, pid/ipc/uts namespaces, read-only /usr and Python,
nothing else of the host visible, size-capped tmpfs work dir, dies with its parent), "unshare"
(`unshare -n -p -i -f --kill-child`: no network, own pid and ipc namespaces, and the harness
chroots into the same file system view bwrap gives), "rlimits" (resource limits and a throwaway
uid only). In every mode the program runs under a fresh random uid with CPU, memory, file-size,
process-count and open-file limits, and every process of that uid is killed when the run ends.
See sandbox_harness.py for how tests call the program.

Run by a user who is not root, only bwrap (unprivileged, in a user namespace) isolates: the
program keeps the user's uid (sandbox_harness.py says what still separates it from the tests),
and "unshare" is unavailable. Where neither bwrap nor unshare works, code rewards raise
SandboxUnavailable at the start of a run (`require_isolation`) rather than grade with nothing
between the program and the host's files and network (its uid aside, "rlimits" leaves a program
every world-readable file: a program that read HumanEval's canonical solutions from the dataset
passed); R1JAX_SANDBOX=rlimits accepts that.
"""

import ctypes
import dataclasses
import functools
import glob
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from r1jax.rewards import sandbox_harness

_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_harness.py")
_BWRAP_HARNESS = "/r1jax/sandbox_harness.py"  # where bwrap mounts it inside the sandbox
ISOLATION_MODES = ("bwrap", "unshare", "rlimits")
STARTUP_MARGIN_S = 3.0  # interpreter start inside the sandbox, on a loaded 2-core machine
CLEANUP_S = 3.0  # killing the sandbox's processes and removing its work dir, loaded machine
WORKDIR_BYTES = 16 << 20
OUTPUT_FILE_BYTES = 1 << 20
MAX_PROCESSES = 16
MAX_OPEN_FILES = 64
_PR_SET_PDEATHSIG = 1


WORKDIR_PREFIX = "r1jax-sandbox-"  # then the starting process's pid


class SandboxUnavailable(RuntimeError):
    """No isolation mode this process can use for untrusted programs."""


class SandboxError(RuntimeError):
    """A run ended without the harness's verdict (`TestResult.status` "sandbox_error")."""


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclasses.dataclass(frozen=True)
class TestResult:
    """Outcome of one sandboxed run; `passed` is the only field that earns credit."""

    passed: bool
    status: str  # passed | failed | error | timeout | sandbox_error
    isolation: str
    elapsed_s: float
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    uid: int = -1


def _root_binds() -> list[str]:
    """bwrap arguments that expose /usr, the merged-/usr links and the Python installation."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    made = set()
    for prefix in sorted({sys.base_prefix, sys.prefix}):
        if prefix.startswith("/usr/"):
            continue
        # bwrap would create the parents 0700 (root only), hiding Python from the program's uid.
        parts = prefix.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:depth])
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", parent]
        args += ["--ro-bind", prefix, prefix]
    return args


def _tool(name: str) -> str:
    """The path `_mode_works` found the tool at: the sandbox's PATH (/usr/bin:/bin) may lack it
    (bwrap built from source is in /usr/local/bin: every run raised FileNotFoundError)."""
    return shutil.which(name) or name


def _sandbox_prefix(mode: str) -> list[str]:
    """The command that wraps the harness interpreter for an isolation mode."""
    if mode == "bwrap":
        sandbox = [_tool("bwrap"), "--unshare-net", "--unshare-pid", "--unshare-ipc"]
        sandbox += ["--unshare-uts", "--unshare-cgroup-try", "--die-with-parent", "--new-session"]
        sandbox += ["--clearenv"] + _root_binds() + ["--proc", "/proc", "--dev", "/dev"]
        sandbox += ["--perms", "1777", "--size", str(WORKDIR_BYTES), "--tmpfs", "/tmp"]
        sandbox += ["--perms", "0777", "--size", str(WORKDIR_BYTES), "--tmpfs", "/sandbox"]
        # The harness at a fixed path: a checkout under /tmp would be hidden by the tmpfs above.
        sandbox += ["--perms", "0755", "--dir", "/r1jax", "--ro-bind", _HARNESS, _BWRAP_HARNESS]
        return sandbox + ["--chdir", "/sandbox", "--setenv", "PATH", "/usr/bin:/bin", "--"]
    if mode == "unshare":
        # --ipc: SysV shared memory segments outlive their process, but not their namespace.
        unshare = [_tool("unshare"), "--net", "--pid", "--ipc", "--fork", "--kill-child"]
        return unshare + ["--mount-proc"]
    return []


def _command(mode: str, uid: int, limits: dict[str, int]) -> list[str]:
    harness = _BWRAP_HARNESS if mode == "bwrap" else _HARNESS
    python = [sys.executable, "-I", "-S", harness, str(uid), json.dumps(limits)]
    if mode in ("bwrap", "unshare"):  # an IPC namespace of its own: the harness caps it
        python.append(sandbox_harness.OWN_IPC_FLAG)
    if mode == "bwrap" and uid >= 0:  # root: H may chroot (the program gets no user namespace)
        python.append(sandbox_harness.NO_USERNS_FLAG)
    if mode == "unshare":  # the harness builds what bwrap's arguments give (`_root_binds`)
        python += [sandbox_harness.PRIVATE_FS_FLAG, sys.base_prefix, sys.prefix]
    return _sandbox_prefix(mode) + python


@functools.cache
def _mode_works(mode: str) -> bool:
    """Whether this machine can run the harness interpreter under the given isolation."""
    if mode == "rlimits":
        return True
    tool = "bwrap" if mode == "bwrap" else "unshare"
    if shutil.which(tool) is None or (mode == "unshare" and not _is_root()):
        return False
    probe = _sandbox_prefix(mode) + [sys.executable, "-I", "-S", "-c", "pass"]
    if mode == "unshare":  # the harness must also be able to mount its private file system
        check = "import sys; sys.path.append(sys.argv[1]); import sandbox_harness as h; "
        check += f"h.private_filesystem([{sys.base_prefix!r}, {sys.prefix!r}])"
        python = [sys.executable, "-I", "-S", "-c", check, os.path.dirname(_HARNESS)]
        probe = _sandbox_prefix(mode) + python
    try:
        with tempfile.TemporaryDirectory() as cwd:  # the harness mounts over its work dir
            done = subprocess.run(probe, capture_output=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def best_isolation() -> str:
    """The strongest isolation mode that works here (the R1JAX_SANDBOX env var can force one).

    Raises SandboxUnavailable where neither bwrap nor unshare works: "rlimits" would run
    programs with the host's world-readable files (the tests' datasets) and the network, and for
    a user who is not root with that user's files (force it with R1JAX_SANDBOX=rlimits where
    that is acceptable, e.g. trusted programs inside a throwaway container)."""
    forced = os.environ.get("R1JAX_SANDBOX")
    if forced:
        if forced not in ISOLATION_MODES:
            raise ValueError(f"R1JAX_SANDBOX={forced!r}; expected one of {ISOLATION_MODES}")
        return forced
    mode = next(mode for mode in ISOLATION_MODES if _mode_works(mode))
    if mode == "rlimits" and not _is_root():
        raise SandboxUnavailable(
            f"code rewards: no sandbox for a user who is not root (uid {os.getuid()}): bwrap "
            "(bubblewrap) is missing or cannot create namespaces here, and 'unshare' needs "
            "root. Install bubblewrap, run as root (e.g. in a container), or set "
            "R1JAX_SANDBOX=rlimits to run programs under your own uid with resource limits only"
        )
    if mode == "rlimits":
        raise SandboxUnavailable(
            "code rewards: no sandbox: neither bwrap (bubblewrap) nor 'unshare' can create "
            "namespaces here, and without them a program reads the host's world-readable files "
            "(the tests' datasets) and reaches the network. Install bubblewrap, allow namespaces "
            "(e.g. a container with CAP_SYS_ADMIN), or set R1JAX_SANDBOX=rlimits to run programs "
            "under a throwaway uid with resource limits only"
        )
    return mode


def require_isolation() -> str:
    """The mode `run_tests` will use; raises SandboxUnavailable now rather than on every
    program (a run whose code rewards all fail to start would train on zeros)."""
    return best_isolation()


def _limits(timeout_s: float, memory_mb: int) -> dict[str, int]:
    return {
        "RLIMIT_AS": int(memory_mb) << 20,
        "RLIMIT_CPU": int(math.ceil(timeout_s)) + 1,
        "RLIMIT_FSIZE": OUTPUT_FILE_BYTES,
        "RLIMIT_NPROC": MAX_PROCESSES,
        "RLIMIT_NOFILE": MAX_OPEN_FILES,
        "RLIMIT_CORE": 0,
    }


def kill_uid(uid: int) -> None:
    """SIGKILL every process owned by `uid` (kill(-1) from a child that became that uid)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child process
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) pids whose real uid is `uid` (`_cleanup` waits until there are none;
    tests check for leftovers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(status["Uid"].split()[0]) == uid and not status["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


def _verdict(stdout: bytes, nonce: str) -> dict:
    try:
        verdict = json.loads(stdout.decode("utf-8", "replace"))
    except ValueError:
        return {"status": "sandbox_error", "detail": "no verdict from the harness"}
    if not isinstance(verdict, dict) or verdict.get("nonce") != nonce:
        return {"status": "sandbox_error", "detail": "verdict without the run's nonce"}
    return verdict


def run_tests(
    program: str,
    tests: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    entry_point: str | None = None,
    prelude: str = "",
    isolation: str | None = None,
) -> TestResult:
    """Run `program` in the sandbox, then the trusted `tests` (plus `check(entry_point)`)."""
    mode = isolation or best_isolation()
    # A fresh uid needs root; otherwise the harness runs the program under this uid (-1).
    uid = 200_000 + secrets.randbelow(1_000_000_000) if _is_root() else -1
    nonce = secrets.token_hex(16)
    request = {"program": program, "tests": tests, "entry_point": entry_point, "prelude": prelude}
    request.update(nonce=nonce, timeout_s=timeout_s)
    workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-")
    os.chmod(workdir, 0o777)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            _command(mode, uid, _limits(timeout_s, memory_mb)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,
            # The sandbox dies with this thread's process (a pool worker killed on its timeout):
            # bwrap --die-with-parent and unshare --kill-child pass it on to the harness, whose
            # pid namespace takes the program with it.
            preexec_fn=_die_with_parent,
        )
    except BaseException:  # no sandbox started (a missing tool, no memory to fork): no work dir
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        stdout, stderr = proc.communicate(
            json.dumps(request).encode(), timeout_s + STARTUP_MARGIN_S
        )
        verdict = _verdict(stdout, nonce)
        if verdict["status"] == "sandbox_error":
            tail = stderr[-300:].decode(errors="replace")
            verdict["detail"] += f" (exit {proc.returncode}: {tail})"
    except subprocess.TimeoutExpired:
        verdict = {"status": "timeout", "detail": f"killed after {timeout_s + STARTUP_MARGIN_S}s"}
    finally:
        _cleanup(proc, uid, workdir)
    return TestResult(
        passed=verdict["status"] == "passed",
        status=verdict["status"],
        isolation=mode,
        elapsed_s=time.monotonic() - start,
        detail=str(verdict.get("detail", "")),
        stdout=str(verdict.get("stdout", "")),
        stderr=str(verdict.get("stderr", "")),
        uid=uid if uid >= 0 else os.getuid(),
    )


def remove_workdirs_of(pid: int) -> None:
    """Remove the work dirs of runs started by process `pid`, which is dead (a reward worker
    killed on its timeout never reaches its runs' clean-up)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{WORKDIR_PREFIX}{pid}-*")):
        shutil.rmtree(path, ignore_errors=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _cleanup(proc: subprocess.Popen, uid: int, workdir: str) -> None:
    """Kill the sandbox's process group, every process of its uid, and remove its work dir."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if uid >= 0:  # the program's own uid (root only); otherwise its pid namespace ends it
        kill_uid(uid)
    proc.communicate()
    # SIGKILL is delivered asynchronously; wait (briefly) until no process of the uid lives.
    deadline = time.monotonic() + 2.0
    while uid >= 0 and processes_of_uid(uid) and time.monotonic() < deadline:
        time.sleep(0.01)
        kill_uid(uid)
    shutil.rmtree(workdir, ignore_errors=True)
