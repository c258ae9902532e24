"""r1jax.files: what a run killed at any moment leaves behind is whole when it resumes."""

import errno
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from r1jax import files


def test_read_jsonl_drops_only_a_last_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert files.read_jsonl(path) == []
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')  # killed mid-append
    assert files.read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_bytes('{"step": 1}\n{"text": "caf\u00e9"}\n{"text": "caf\u00e9'.encode()[:-1])
    assert files.read_jsonl(path) == [{"step": 1}, {"text": "caf\u00e9"}]
    # Anything else is damage the run did not do: it stops, naming file and line.
    path.write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: malformed JSON"):
        files.read_jsonl(path)
    path.write_text('{"step": 1}\n{"step": 2\n')  # a whole line (newline written) that is bad
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        files.read_jsonl(path)


def test_write_atomic_leaves_the_old_file_whole_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "run" / "config.json"
    files.write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    files.write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"

    def killed(*args):
        raise KeyboardInterrupt  # the moment between the data written and the rename

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        files.write_json(path, {"new": True})
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]  # no temporary left


def test_temporaries_of_writers_killed_on_this_host_are_removed_by_the_next_write(tmp_path):
    # A SIGKILL between the write and the rename left NAME.tmp<pid> for good, one more at each
    # resume (a new pid): gigabytes for a dataset. A dead process's is removed; a live one's,
    # or another host's (a shared run folder), is left.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    path = tmp_path / "dataset.jsonl"
    stale = tmp_path / f"dataset.jsonl.tmp{dead.pid}.{host}"
    live = tmp_path / f"dataset.jsonl.tmp{os.getppid()}.{host}"
    elsewhere = tmp_path / f"dataset.jsonl.tmp{dead.pid}.other-host"
    other_file = tmp_path / f"data.jsonl.tmp{dead.pid}.{host}"
    for p in (stale, live, elsewhere, other_file):
        p.write_text("part of a write")
    files.write_lines_atomic(path, ["a\n"])
    assert path.read_text() == "a\n" and not stale.exists()
    assert live.exists() and elsewhere.exists() and other_file.exists()


def test_write_lines_atomic_streams_the_lines_and_returns_their_sha256(tmp_path):
    import hashlib

    path = tmp_path / "data" / "dataset.jsonl"
    lines = ['{"text": "caf\u00e9"}\n', '{"text": "\u601d\u8003"}\n']
    digest = files.write_lines_atomic(path, iter(lines))
    body = "".join(lines).encode("utf-8")
    assert path.read_bytes() == body and digest == hashlib.sha256(body).hexdigest()

    def cut_short():  # the rows' producer fails (or the run is killed) half-way
        yield '{"text": "new"}\n'
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_lines_atomic(path, cut_short())
    assert path.read_bytes() == body  # the old file, whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["dataset.jsonl"]


def test_save_figure_leaves_the_old_image_whole_when_interrupted(tmp_path, monkeypatch):
    # Plots were saved in place: a run killed while matplotlib wrote one left a cut PNG.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "plots" / "curves.png"
    files.save_figure(fig, path, dpi=50)
    image = path.read_bytes()
    assert image.startswith(b"\x89PNG") and image.rstrip().endswith(b"IEND\xaeB`\x82")

    def cut(target, **kwargs):  # a stop after the first bytes
        pathlib.Path(target).write_bytes(image[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(fig, "savefig", cut)
    with pytest.raises(KeyboardInterrupt):
        files.save_figure(fig, path, dpi=50)
    assert path.read_bytes() == image and os.listdir(path.parent) == ["curves.png"]
    monkeypatch.undo()
    files.save_figure(fig, tmp_path / "table.svg")  # the suffix picks the format
    assert b"<svg" in (tmp_path / "table.svg").read_bytes()
    plt.close(fig)


def test_a_second_run_on_a_busy_workdir_is_refused_in_one_line_and_a_kill_frees_it(tmp_path):
    # The command launched twice (or a requeued job while the old one runs): both would resume
    # from one checkpoint and interleave their rows and saves. The second is refused, naming
    # the first, before it writes anything.
    repo = pathlib.Path(__file__).resolve().parents[1]
    workdir = tmp_path / "run"
    with files.workdir_lock(workdir):
        assert f"pid {os.getpid()} on " in (workdir / files.WORKDIR_LOCK).read_text()
        with pytest.raises(
            files.WorkdirBusy, match=f"in use by another r1jax run \\(pid {os.getpid()} "
        ):
            with files.workdir_lock(workdir):
                pass
        second = subprocess.run(
            [sys.executable, "-m", "r1jax.main", f"--config={repo}/configs/sft.py:tiny"]
            + [f"--workdir={workdir}"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 1, second.stderr[-2000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(
            f"r1jax: --workdir {workdir} is in use by another r1jax run (pid "
        ), last
        assert sorted(p.name for p in workdir.iterdir()) == [files.WORKDIR_LOCK]  # untouched
    # The kernel's lock goes with its process, however it ends: a SIGKILLed run frees it.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from r1jax import files\n"
            "with files.workdir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(300)",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(files.WorkdirBusy, match=f"pid {holder.pid} "):
        with files.workdir_lock(workdir):
            pass
    holder.kill()
    holder.wait()
    with files.workdir_lock(workdir):
        assert f"pid {os.getpid()} " in (workdir / files.WORKDIR_LOCK).read_text()


def test_a_filesystem_without_locks_lets_the_run_go_on(tmp_path, monkeypatch):
    # Lustre without -o flock (ENOSYS), FUSE or NFS mounts without a lock manager (ENOLCK...):
    # the run goes on with a warning instead of failing at its start.
    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(files.fcntl, "flock", no_locks)
    ran = False
    with files.workdir_lock(tmp_path / "run"):
        ran = True
    assert ran

    def denied(fd, operation):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.fcntl, "flock", denied)
    with pytest.raises(PermissionError):  # any other error is not hidden
        with files.workdir_lock(tmp_path / "run"):
            pass
