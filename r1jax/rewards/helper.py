"""Helper processes of the rewards (the scoring workers, the math checker): started as plain
subprocesses (not multiprocessing's spawn, so the caller's __main__ is not re-imported) that
talk over two pipes, and that a terminal's Ctrl-C or a preemption's SIGTERM does not kill.

A Ctrl-C reaches the whole process group, and SLURM and a preempted VM send SIGTERM to every
process: the trainer finishes its step and saves (`trainer.Preemption`), so its helpers must go
on scoring that step. They ignore SIGINT and SIGTERM (they end when their requests pipe closes,
at their parent's end however it ends), and from the moment they exist: the parent blocks both
in its calling thread while it starts one (the mask is inherited across fork and exec; the
parent's other threads still take the signals), and the child ignores them, which drops one
that arrived meanwhile, before it imports anything (its imports take seconds, sympy's above
all).
"""

import multiprocessing.connection
import os
import signal
import subprocess
import sys

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_IGNORE_STOP_SIGNALS = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM]); "
)


def start(module: str, main: str):
    """Runs `module.main(read_fd, write_fd)` in a new process; returns (Popen, requests
    Connection, replies Connection)."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    code = f"{_IGNORE_STOP_SIGNALS}from {module} import {main}; {main}({req_r}, {rep_w})"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([_PACKAGE_ROOT] + sys.path))
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=(req_r, rep_w), env=env, close_fds=True
        )
    except BaseException:
        os.close(req_w)
        os.close(rep_r)
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(req_r)
        os.close(rep_w)
    requests = multiprocessing.connection.Connection(req_w, readable=False)
    replies = multiprocessing.connection.Connection(rep_r, writable=False)
    return proc, requests, replies
