"""r1jax entry point: `r1jax --config=configs/<stage>.py:<variant> --workdir=DIR [--config.x=y]`."""

import difflib
import logging as std_logging
import os
import pathlib
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from r1jax import configlib, distributed, files, hostmem, memory, sharding, text
from r1jax.data import sources

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "configs/<stage>.py:<variant> (the stages and their variants: README 'Stages and configs'); "
    "any field is then set with --config.<field>=<value>, e.g. --config.train.steps=10",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config, metrics, checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-process runs (jax.distributed); --coordinator_address, --num_processes, --process_id and
# --local_device_ids each fall back to R1JAX_<FLAG NAME> in the environment (not --distributed).
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    list(distributed.MODES),
    "auto: join a multi-process run when a coordinator is given or SLURM/MPI/a TPU pod is "
    "detected; on: always call jax.distributed.initialize (JAX finds the coordinator); off",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0's coordinator service"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "processes in the run (0 = detect)")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "this process's index (-1 = detect)")
_LOCAL_DEVICES = flags.DEFINE_string(
    "local_device_ids", "", "comma-separated devices this process owns (e.g. one GPU each)"
)
_HOST_MALLOC = flags.DEFINE_enum(
    "host_malloc",
    "auto",
    list(hostmem.MODES),
    "hugepages: malloc asks for transparent huge pages (glibc.malloc.hugetlb=1; the command "
    "restarts itself once to set it); reuse: keep freed host memory for the next step instead "
    "of unmapping it; system: glibc defaults; auto: hugepages where glibc and the kernel allow, "
    "else reuse, and system when JAX will run on an accelerator (see r1jax/hostmem.py)",
)


def main(argv) -> None:
    if len(argv) > 1:  # e.g. --config.model.init_from= DIR: absl's usage text hid the argument
        sys.exit(
            f"r1jax: unexpected arguments {argv[1:]}: settings are --flag=value, with no space "
            "after '=' (flags: r1jax --helpshort)"
        )
    if not _WORKDIR.value.strip():  # e.g. --workdir=$RUN with RUN unset: not the current folder
        sys.exit("r1jax: --workdir is empty; name the run folder")
    # Before anything touches a JAX device (XLA's CPU threads take their malloc arenas at start).
    restarted = os.environ.get("R1JAX_RESTARTED") == "1"  # once: never a loop, whatever glibc did
    if hostmem.needs_restart(_HOST_MALLOC.value) and _started_as_command() and not restarted:
        # A glibc tunable is read when a process starts: run this command again with it.
        env = {**hostmem.environ_for(_HOST_MALLOC.value), "R1JAX_RESTARTED": "1"}
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    hostmem.configure(_HOST_MALLOC.value)
    try:
        distributed.initialize(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            mode=_DISTRIBUTED.value,
            local_device_ids=_LOCAL_DEVICES.value,
        )
    except ValueError as e:  # jax's "coordinator_address should be defined", a bad id list
        sys.exit(f"r1jax: --distributed={_DISTRIBUTED.value}: {e}")
    cfg = _CONFIG.value
    logging.info("stage %s, workdir %s", cfg.stage, _WORKDIR.value)
    from r1jax.model import hf_io  # a Hugging Face folder's problems are one line too
    from r1jax.train import checkpoint  # its Restore, Params and Save errors: one line too

    try:
        from r1jax import pipeline  # the stage dispatch (imports each stage's module lazily)

        with distributed.shared_errors():  # a folder one host cannot write stops them all
            configlib.check_workdir(_WORKDIR.value)
        pipeline.run_stage(cfg, _WORKDIR.value)
    except (
        configlib.ConfigError,
        sources.DataError,
        text.TokenizerError,
        FileNotFoundError,
        IsADirectoryError,  # a run's file a folder is in the way of (the message names it)
        NotADirectoryError,
        PermissionError,  # a workdir or file this user cannot write
        checkpoint.RestoreError,
        checkpoint.ParamsError,
        sharding.ShardingError,
        hf_io.HFError,
        memory.OutOfMemory,
        checkpoint.SaveError,
        files.WorkdirBusy,
        distributed.PeerError,  # another process's error, first named in its own log
    ) as e:
        sys.exit(f"r1jax: {e}")
    except Exception as e:  # a full disk under another file than a checkpoint (metrics, journals)
        if not checkpoint.is_out_of_space(e):
            raise
        sys.exit(
            f"r1jax: {e} (a run in --workdir={_WORKDIR.value}): free space on that disk and run "
            "the same command again (a run resumes from its newest checkpoint)"
        )


def _started_as_command() -> bool:
    """True when this process is the `r1jax` command (or `python -m r1jax.main`) itself, so that
    its command line can be run again; not when main() was called from another program."""
    args = sys.argv[1:]
    replayable = sys.orig_argv[len(sys.orig_argv) - len(args) :] == args
    script = pathlib.Path(sys.argv[0])
    return replayable and (script.name == "r1jax" or script.parts[-2:] == ("r1jax", "main.py"))


def config_spec(argv: list[str]) -> str:
    """The value of --config in `argv`, given as --config=SPEC or --config SPEC ('' if none)."""
    pairs = zip(argv, argv[1:] + [""])
    return next(
        (
            a.split("=", 1)[1] if "=" in a else b
            for a, b in pairs
            if a in ("--config", "-config") or a.startswith(("--config=", "-config="))
        ),
        "",
    )


def config_problem(argv: list[str]) -> str:
    """Why the --config flags of `argv` cannot be loaded: a missing config file, or the first
    --config.<field> override that names no field (with the closest field name)."""
    spec = config_spec(argv)
    path = spec.split(":", 1)[0]
    if not spec:
        return "--config is required: --config=configs/<stage>.py:<variant>"
    if not pathlib.Path(path).is_file():
        return f"--config={spec}: no such config file {path!r}"
    try:
        cfg = configlib.load_config(spec)
    except Exception as e:  # the config file's own error, e.g. an unknown variant
        return f"--config={spec}: {type(e).__name__}: {e}"
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        parts = arg[2:].split("=", 1)[0].split(".")
        node = cfg
        for depth, name in enumerate(parts[1:], start=1):
            section = ".".join(parts[:depth])
            if not isinstance(node, ml_collections.ConfigDict):
                return f"{arg}: {section} is a value, not a section with fields"
            if name not in node:
                close = difflib.get_close_matches(name, list(node.keys()), n=1)
                hint = f" (did you mean {section}.{close[0]}?)" if close else ""
                return f"{arg}: {section} has no field {name!r}{hint}"
            node = node[name]
    return ""


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad --config ends the run with one line naming the problem
    (ml_collections raises a KeyError from deep inside flag parsing, or an IOError later)."""
    try:
        args = flags.FLAGS(argv)
        _CONFIG.value.get("stage")  # a config file that failed to load raises on first use
        return args
    except flags.Error as e:  # e.g. the config file's own error (an unknown variant)
        sys.exit(f"r1jax: {config_problem(argv) or e} (flags: r1jax --helpshort)")
    # SyntaxError, ImportError: --config names a file that is not Python (README.md) or a config
    # whose imports fail; config_problem's line names the file and line, or the module.
    except (KeyError, AttributeError, OSError, SyntaxError, ImportError) as e:
        sys.exit(f"r1jax: {config_problem(argv) or e}")


def _out_of_space(record) -> bool:
    """True for a log record about a write refused for want of space (orbax logs each of its
    threads' errors, with their tracebacks, before the save's error reaches the run)."""
    from r1jax.train import checkpoint

    error = record.exc_info[1] if record.exc_info else None
    return checkpoint.is_out_of_space(RuntimeError(record.getMessage())) or (
        error is not None and checkpoint.is_out_of_space(error)
    )


class _QuietLibraries:
    """Drops the per-file INFO chatter of orbax and grain (their warnings still show), and two
    lines every run printed that say nothing about it: JAX's INFO that it found no libtpu on a
    machine without one, and orbax's warning that it registered its jax.Array handler again.
    Also orbax's errors about a full disk: the run ends with a SaveError's one line instead."""

    def filter(self, record) -> bool:
        path = record.pathname.replace("\\", "/")
        quiet = record.levelno < std_logging.WARNING
        if quiet and ("/orbax/" in path or "/grain/" in path):
            return False
        if "/orbax/" in path and _out_of_space(record):
            return False  # the run ends with one line that says so (checkpoint.SaveError)
        message = record.getMessage()
        if "/orbax/" in path and message.startswith("Type handler registry type"):
            return False
        return not (quiet and path.endswith("xla_bridge.py") and "open libtpu.so" in message)


def _late_callback_to_a_closed_loop(unraisable) -> bool:
    """True for TensorStore's writes that finish after orbax closed their event loop (orbax
    gives up a save at its first failed write, e.g. on a full disk): each printed a traceback
    of asyncio's "Event loop is closed" while the save's own error was being raised."""
    error = unraisable.exc_value
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _install_unraisable_filter() -> None:
    default = sys.unraisablehook

    def hook(unraisable):
        if not _late_callback_to_a_closed_loop(unraisable):
            default(unraisable)

    sys.unraisablehook = hook


def run() -> None:
    """Console-script entry: lets config files import their siblings, then runs the absl app."""
    _install_unraisable_filter()
    spec = config_spec(sys.argv[1:])
    if spec:  # --config=SPEC or --config SPEC, as absl reads both
        configlib.add_config_root_to_path(spec.split(":", 1)[0])
    logging.get_absl_handler().addFilter(_QuietLibraries())
    # --helpshort lists the main module's key flags; as a console script that is bin/r1jax.
    for flag in (_CONFIG, _WORKDIR, _DISTRIBUTED, _COORDINATOR, _NUM_PROCESSES, _PROCESS_ID):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[flag.name])
    for flag in (_LOCAL_DEVICES, _HOST_MALLOC):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[flag.name])
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
