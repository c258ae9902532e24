"""Files a killed run must find whole when it resumes.

A run can be killed at any moment, also in the middle of writing a file that its resumption reads
(config.json, a stage's done-marker, the tokenizer it trained, metrics.jsonl when it drops the
rows after its checkpoint). `write_atomic` writes such a file through a temporary file and a
rename, so a reader sees the old file or the new one, never a part. An append-only JSONL log
can still end in a line the kill cut short: `read_jsonl` drops that one line.
"""

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import pathlib
import re
import socket
import time
from collections.abc import Iterable

from absl import logging


@contextlib.contextmanager
def _replacing(path):
    """Yields `path`.tmp<pid>.<host> to write; on success renames it over `path` (parents are
    created), and removes it whatever happens, and the ones of this host's dead processes."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    _remove_stale(path, host)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{host}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale(path: pathlib.Path, host: str) -> None:
    """Removes `path`'s temporary files that a process of this host killed mid-write left (the
    pid no longer runs): each resume writes under another pid, and a dataset's is gigabytes.
    Other hosts' are left: their processes may be writing (a shared run folder)."""
    pattern = re.compile(re.escape(path.name) + r"\.tmp(\d+)\." + re.escape(host))
    for tmp in path.parent.glob(glob.escape(path.name) + ".tmp*"):
        found = pattern.fullmatch(tmp.name)
        if found and not _running(int(found.group(1))):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    return True


def write_atomic(path, data: str | bytes, *, encoding: str = "utf-8") -> None:
    """Writes `data` to `path` through a temporary file and a rename (parents are created)."""
    with _replacing(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding=encoding)


def write_lines_atomic(path, lines: Iterable[str]) -> str:
    """Writes `lines` (UTF-8) to `path` as write_atomic does, one line at a time: a dataset of
    many GB is not first joined into one string and encoded (three copies at the peak).
    Returns the sha256 of the bytes written."""
    digest = hashlib.sha256()
    with _replacing(path) as tmp, open(tmp, "wb", buffering=1 << 20) as f:
        for line in lines:
            data = line.encode("utf-8")
            digest.update(data)
            f.write(data)
    return digest.hexdigest()


def save_figure(fig, path, **savefig_kwargs) -> None:
    """Saves a matplotlib figure as write_atomic writes: a stop in the middle leaves the old
    image (or none), never a cut one. The format follows `path`'s suffix (png if none)."""
    path = pathlib.Path(path)
    with _replacing(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)


def give_default_mode(path) -> None:
    """chmod `path` to what open() would have given a new file (0666 less the umask); for files
    written by libraries that create them owner-only (safetensors: 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_json(path, obj, **dumps_kwargs) -> None:
    """`obj` as indented JSON (keys sorted unless told) and a newline, through write_atomic."""
    dumps_kwargs = {"indent": 2, "sort_keys": True, **dumps_kwargs}
    write_atomic(path, json.dumps(obj, **dumps_kwargs) + "\n")


def read_jsonl(path) -> list[dict]:
    """The rows of a JSONL log ([] when there is none).

    A last line that does not parse and has no newline after it was cut short by a kill: it is
    dropped (with a warning). A bad line anywhere else raises ValueError naming file:line.
    """
    path = pathlib.Path(path)
    if not path.exists():
        return []
    content = path.read_text(encoding="utf-8", errors="replace")
    lines = content.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):  # no newline after it: the write was cut short
                logging.warning("%s:%d: dropped a line cut short (%s)", path, number, e.msg)
                continue
            raise ValueError(f"{path}:{number}: malformed JSON line ({e.msg})") from e
    return rows


def open_journal(path, header: dict) -> list[dict]:
    """The entries of a journal (a JSONL file: `header`, then one entry a line) that a killed
    run left, when it was written with the same header (JSON-equal); else none, with a warning.
    The file is rewritten whole with the header and those entries (a torn last line, cut by the
    kill, and anything after it dropped), ready for `append_journal`. One process writes it."""
    path = pathlib.Path(path)
    lines = path.read_bytes().split(b"\n") if path.is_file() else []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            break  # the torn tail of a killed write; everything after it is dropped too
    header = json.loads(json.dumps(header, default=str))
    if entries and entries[0] != header:
        logging.warning("%s was written with other settings; starting over", path)
        entries = []
    body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries or [header])
    write_atomic(path, body)
    return entries[1:]


def append_journal(path, entry: dict) -> None:
    """Appends one entry to a journal and syncs it to disk (a kill after this keeps it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# Held by the run writing in a folder (`workdir_lock`).
WORKDIR_LOCK = ".r1jax.lock"


class WorkdirBusy(RuntimeError):
    """Another r1jax run is writing in this run folder; the message names it."""


@contextlib.contextmanager
def workdir_lock(workdir):
    """Holds WORKDIR/.r1jax.lock while a run writes in WORKDIR: a second run started on the same
    folder (the command launched twice, a requeued job while the old one still runs) is refused
    with a WorkdirBusy naming the first, instead of both resuming from one checkpoint and
    interleaving their metrics, samples and saves. The lock is the kernel's (flock): it goes
    when the process ends, however it ends, so a killed run never leaves its folder locked. The
    file keeps the holder's pid, host and start time. On a filesystem without locks (some
    network mounts) the run goes on with a warning."""
    path = pathlib.Path(workdir) / WORKDIR_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip() or "its pid unknown"
            raise WorkdirBusy(
                f"--workdir {workdir} is in use by another r1jax run ({holder}): wait for it to "
                "end, or use another --workdir"
            ) from None
        except OSError as e:
            # (Lustre without -o flock says ENOSYS; FUSE and NFS mounts without a lock
            # manager the others.)
            no_locks = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)
            if e.errno not in no_locks:
                raise
            logging.warning(
                "%s: this filesystem takes no locks (%s); a second run started on this folder "
                "would not be refused",
                path.parent,
                e.strerror,
            )
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            holder = f"pid {os.getpid()} on {socket.gethostname()}, started {stamp}\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)
