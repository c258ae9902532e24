"""Orbax checkpoints: the train state (params, optimizer, step, RNG) and the data iterator."""

import contextlib
import errno
import functools
import gc
import json
import logging as std_logging
import pathlib
import re
import shutil
import time
import warnings
import weakref
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from r1jax import distributed


class _IteratorSnapshot:
    """The iterator's state at save time (async saves must not read a moving iterator)."""

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state())

    def get_state(self) -> bytes:
        return self._state.encode()


# Orbax splits the write of a replicated array over its replicas with one eager slice per
# device, each a compile of its own: seconds per save of a small model on 8 host devices, more
# than the write. Arrays whose per-replica slice is smaller than this are written whole by one
# replica; a real model's large arrays are still split.
_MIN_REPLICA_SLICE_BYTES = 1 << 20


def _write_small_arrays_whole() -> None:
    default = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(default, "_min_slice_bytes_for_replica_parallel", None) == _MIN_REPLICA_SLICE_BYTES:
        return
    try:
        handler = ocp.type_handlers.ArrayHandler(
            array_metadata_store=getattr(default, "_array_metadata_store", None),
            min_slice_bytes_for_replica_parallel=_MIN_REPLICA_SLICE_BYTES,
        )
    except TypeError:  # an orbax without the option: keep its default handler (slower saves)
        return
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def manager(
    directory: str | pathlib.Path, *, max_to_keep: int = 3, writer: bool = False
) -> ocp.CheckpointManager:
    """A checkpoint manager over `directory` itself (a run's WORKDIR/checkpoints, not WORKDIR)
    with items 'state' and (optionally) 'data' and 'extra' (`save`).

    writer: the run that saves here; it removes the unfinished saves a kill left (a step's
    .orbax-checkpoint-tmp folder, the size of a checkpoint, which stays when that step is not
    saved again). Readers (export, init_from, evaluation) leave them: they may belong to a run
    saving now."""
    _write_small_arrays_whole()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=writer
    )
    mngr = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)
    # orbax removes the unfinished saves in a background thread and waits for it only before its
    # first save: a run that stopped before then (checkpoints refused, a config error) printed
    # that thread's traceback after its one-line error, as the interpreter shut down under it.
    # Wait here (it lists the folder; process 0 alone deletes, with no barrier to wait on).
    wait = getattr(mngr, "_maybe_await_cleanup_tmp_directory", None)
    if writer and wait is not None:
        wait()
    return mngr


def _everywhere() -> jax.sharding.NamedSharding:
    """Replicated over every device of every process."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("all",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _is_process_local(x) -> bool:
    return (
        jax.process_count() > 1
        and isinstance(x, jax.Array)
        and len(x.sharding.device_set) < jax.device_count()
        and x.is_fully_addressable
    )


def _globalize(tree):
    """In a multi-process run, puts arrays that live on one process's devices (host scalars such
    as a KL coefficient) on every device, so that the collective save accepts them."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(
        lambda x: jax.device_put(np.asarray(x), _everywhere()) if _is_process_local(x) else x, tree
    )


class SaveError(RuntimeError):
    """A checkpoint could not be written for want of disk space (a full device, a quota); the
    message names the step, the folder, the space free and needed, and the checkpoint a rerun
    of the same command resumes from."""


# The step each manager is writing in the background (its error, if any, is raised by the
# manager's next save or wait).
_SAVING: "weakref.WeakKeyDictionary[ocp.CheckpointManager, int]" = weakref.WeakKeyDictionary()
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How TensorStore (orbax's writer) words them: "... No space left on device [os_error_code='28']"
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded")


def is_out_of_space(error: BaseException) -> bool:
    """True when `error`, or an error it was raised from, is a write refused for want of space."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
            return True
        if any(text in str(error) for text in _NO_SPACE_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _complete_steps(directory: pathlib.Path) -> list[int]:
    """The steps with a finished checkpoint folder (not an .orbax-checkpoint-tmp one)."""
    try:
        return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:
        return []


def _folder_bytes(folder: pathlib.Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:  # removed meanwhile (an old checkpoint being deleted)
            pass
    return total


def _free_bytes(directory: pathlib.Path) -> int | None:
    """The bytes free where `directory` is, or None when its filesystem does not say (some FUSE
    mounts of object stores report no capacity at all: their saves are not checked)."""
    try:
        usage = shutil.disk_usage(directory)
    except OSError:
        return None
    return usage.free if usage.total > 0 else None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 10e6 else f"{n / 1e6:,.0f} MB"


def _out_of_space(
    mngr, step: int, error=None, needed: int | None = None, *, what: str = ""
) -> SaveError:
    directory = pathlib.Path(mngr.directory)
    free = _free_bytes(directory)
    newest = [s for s in _complete_steps(directory) if s != step]
    sizes = f"{_mb(free)} free there" if free is not None else "its space"
    if newest:
        needed = needed or _folder_bytes(directory / str(newest[-1]))
        sizes += f", a checkpoint of this run takes {_mb(needed)}"
    elif needed:
        sizes += f", a checkpoint of this run takes at least {_mb(needed)}"
    resume = (
        f"the newest complete checkpoint is step {newest[-1]}" if newest else "none is complete"
    )
    said = [text for text in _NO_SPACE_TEXT if error is not None and text in str(error)]
    cause = f" ({said[0] if said else error})" if error is not None else ""
    return SaveError(
        f"{directory}: no space left {what or f'to save the checkpoint of step {step}'} "
        f"({sizes}); "
        f"{resume}. Free space on that disk (or copy the run folder to a larger one and use it as "
        f"--workdir) and run the same command again to resume from it{cause}"
    )


def wait(mngr) -> None:
    """Waits for the manager's background save; one that ran out of space is a SaveError."""
    step = _SAVING.pop(mngr, None)
    try:
        mngr.wait_until_finished()
    except Exception as e:
        if step is not None and is_out_of_space(e):
            raise _out_of_space(mngr, step, e) from e
        raise


def check(mngr) -> None:
    """Raises the error of a background save that has already failed (a SaveError when it ran
    out of space) instead of at the run's next save: the steps in between could not be kept.
    Cheap; called after every training step. Not in a multi-process run, where orbax's own
    finalizing waits for every process (see `save`)."""
    in_progress = getattr(mngr, "is_saving_in_progress", None)
    if jax.process_count() == 1 and mngr in _SAVING and in_progress and not in_progress():
        wait(mngr)


def _require_room(mngr, trees, step: int, what: str = "") -> None:
    """Raises a SaveError unless a checkpoint fits: the newest checkpoint's size on disk (all
    processes' parts), or before the first one half the arrays' bytes (orbax compresses them,
    floats by a few percent), against the space free where it goes. Every process takes the
    same decision (a collective save is made by all processes or none)."""
    directory = pathlib.Path(mngr.directory)
    steps = _complete_steps(directory)
    if steps:
        needed = _folder_bytes(directory / str(steps[-1]))
    else:
        needed = sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(trees)) // 2
    free = _free_bytes(directory)
    fits = free is None or free >= needed
    if distributed.global_min(int(fits)) == 0:
        elsewhere = "another process found too little space" if fits else None
        raise _out_of_space(mngr, step, elsewhere, needed=needed, what=what)


def ensure_room(mngr, trees, step: int) -> None:
    """Refuses to start training from `step` when its checkpoints cannot fit on the disk (see
    `save`): the run would otherwise train until its first save and stop there."""
    _require_room(
        mngr, trees, step, f"for this run's checkpoints before it trains from step {step}"
    )


def save(mngr, state, iterator=None, *, extra=None, force: bool = False) -> bool:
    """Saves state, the data iterator's position and `extra` arrays at state.step (async).

    In a multi-process run every process calls it: each writes the shards it holds (one copy
    of each), process 0 the metadata, and each its own iterator position.

    The previous save is waited for first; its failure for want of space, or this save's not
    fitting on the disk (`_require_room`), is a SaveError raised before anything is written.
    (In a multi-process run a background write that fails on one process leaves orbax's
    finalizing barrier waiting for it on every process until its timeout.)
    """
    step = int(jax.device_get(state.step))
    wait(mngr)  # the previous save's failure for want of space is raised here
    _require_room(mngr, (state, extra), step)
    items = {"state": ocp.args.StandardSave(_globalize(state))}
    if extra is not None:
        items["extra"] = ocp.args.StandardSave(_globalize(extra))
    if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator))
    _SAVING[mngr] = step
    try:
        saved = mngr.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:
        _SAVING.pop(mngr, None)
        if is_out_of_space(e):
            raise _out_of_space(mngr, step, e) from e
        raise
    if not saved:
        _SAVING.pop(mngr, None)
    return saved


def newest_step(path: str | pathlib.Path) -> int | None:
    """The newest finished save's step in a run folder or its checkpoints folder, read from the
    step folders' names (no manager: a reader writes nothing); None where there is none (a
    Hugging Face folder)."""
    path = pathlib.Path(path)
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    try:
        return max((int(p.name) for p in folder.iterdir() if p.name.isdigit()), default=None)
    except OSError:
        return None


def abstract_like(tree) -> Any:
    """ShapeDtypeStructs (with shardings) describing where restored arrays should land.

    The shardings may be on another mesh than the one that saved: orbax reads each device's
    slice of the saved arrays, so a checkpoint restores on any mesh shape.
    """

    def abstract(x):
        sharding = _everywhere() if _is_process_local(x) else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(abstract, tree)


class ParamsError(ValueError):
    """A checkpoint's params that this model config cannot take (other shapes, params it has no
    place for) or that cannot be read (a damaged step); the message names the step and why."""


class RestoreError(RuntimeError):
    """No checkpoint of a run folder can be restored by this run; the message says why."""


def restore_latest(mngr: ocp.CheckpointManager, target_state, iterator=None, *, extra=None):
    """Restores the newest checkpoint onto target_state's (and extra's) shapes and shardings.

    Returns (state, iterator, extra) or None when the directory holds no checkpoint. The
    iterator, when given, is moved to the position it had at save time. `extra` may be a
    function of the step that returns its target (what a step holds can depend on the run
    that saved it: `saved_keys`).

    A checkpoint that cannot be read (cut short or damaged on disk) is moved out of the way, to
    DIR/../corrupt_checkpoints/STEP-TIME, with a warning naming the error, and the next older
    one is restored: the run resumes from there to the same numbers. When none can be read, the
    error says so and names the newest one's problem.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        return None
    if iterator is not None:
        _check_process_count(mngr, steps[0])
    errors = []
    for step in steps:
        # Every process resumes from the same step. The files only this process reads (its
        # iterator position) are checked and agreed on before orbax's restore, whose own
        # cross-process sync would otherwise meet a process that gave up on the step.
        error = _own_files_problem(mngr, step) if iterator is not None else None
        if distributed.global_min(int(error is None)) == 0:
            errors.append((step, error or RuntimeError("another process could not read it")))
            continue
        try:
            restored, error = _restore(mngr, step, target_state, iterator, extra), None
        except Exception as e:  # noqa: BLE001 - orbax, TensorStore and grain raise many kinds
            restored, error = None, e
        if distributed.global_min(int(error is None)) == 0:
            errors.append((step, error or RuntimeError("another process could not restore it")))
            continue
        if errors:
            _set_aside(mngr, [s for s, _ in errors], restored_step=step, error=errors[0][1])
        return restored
    step, error = errors[0]
    others = "; ".join(f"step {s}: {type(e).__name__}: {str(e)[-200:]}" for s, e in errors[1:])
    raise RestoreError(
        f"{mngr.directory}: no checkpoint could be restored ({len(steps)} tried, steps "
        f"{steps}); the newest, step {step}, failed with {type(error).__name__}: "
        f"{str(error)[-500:]}{' (' + others + ')' if others else ''}. If the config changed "
        "since they were saved, use the old one or another --workdir; if they are damaged, move "
        "them away to start over"
    ) from error


def _check_process_count(mngr, step: int) -> None:
    """Refuses, in one line, checkpoints whose data-iterator positions were saved by another
    number of processes (grain keeps one file per process): every step would fail to restore."""
    folder = pathlib.Path(mngr.directory) / str(step) / "data"
    counts = {
        int(m.group(1))
        for f in (folder.iterdir() if folder.is_dir() else ())
        if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", f.name))
    }
    if counts and jax.process_count() not in counts:
        raise RestoreError(
            f"{mngr.directory}: its checkpoints were saved by {sorted(counts)[0]} processes and "
            f"this run has {jax.process_count()}: resume with {sorted(counts)[0]} processes, or "
            f"start a new --workdir from these weights with --config.model.init_from="
            f"{pathlib.Path(mngr.directory).parent}"
        )


def _own_files_problem(mngr, step: int) -> Exception | None:
    """Why this process's data-iterator file of `step` cannot be read, or None (also when it
    is not where grain's handler puts it today: orbax's restore then has the last word)."""
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    path = pathlib.Path(mngr.directory) / str(step) / "data" / name
    if not path.exists():
        return None
    try:
        json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return e
    return None


def saved_keys(mngr: ocp.CheckpointManager, step: int, item: str) -> set[str] | None:
    """The top-level keys of a dict saved as `item` of `step` (from orbax's tree metadata, no
    array read); None when the item is absent or its metadata unreadable."""
    path = pathlib.Path(mngr.directory) / str(step) / item
    if not path.is_dir():
        return None
    try:
        with _quiet_logs():  # orbax warns that an item folder has no step metadata of its own
            metadata = ocp.StandardCheckpointer().metadata(path)
        tree = getattr(metadata, "item_metadata", metadata)  # a StepMetadata since orbax 0.11.x
        return {str(k) for k in tree.keys()}
    except Exception:  # noqa: BLE001 - a format this orbax does not read: the caller decides
        return None


def _saved_params(step_dir: pathlib.Path, policy: bool) -> set[str]:
    """The key paths of a step's saved params (params["policy"] where `policy`), from orbax's
    tree metadata (no array read); empty when it cannot be read."""
    try:
        with _quiet_logs():
            metadata = ocp.StandardCheckpointer().metadata(step_dir / "state")
        params = getattr(metadata, "item_metadata", metadata)["params"]
        params = params["policy"] if policy else params
        return {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)}
    except Exception:  # noqa: BLE001 - a format this orbax does not read: the restore decided
        return set()


def _restore(mngr, step, target_state, iterator, extra):
    extra = extra(step) if callable(extra) else extra
    items = {"state": ocp.args.StandardRestore(abstract_like(target_state))}
    if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    if extra is not None:
        items["extra"] = ocp.args.StandardRestore(abstract_like(extra))
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    return (
        restored["state"],
        restored["data"] if iterator is not None else None,
        restored["extra"] if extra is not None else None,
    )


def _set_aside(mngr, bad_steps, *, restored_step: int, error: Exception) -> None:
    """Moves unreadable checkpoints out of the manager's directory (a later save of the same
    step would collide with them) and makes every process's manager forget them."""
    directory = pathlib.Path(mngr.directory)
    aside = directory.parent / "corrupt_checkpoints"
    logging.warning(
        "checkpoints %s in %s could not be restored (%s: %s); resuming from step %d, moving "
        "them to %s",
        bad_steps,
        directory,
        type(error).__name__,
        str(error)[-300:],
        restored_step,
        aside,
    )
    with distributed.shared_errors():  # process 0's moves (the others' barrier)
        if distributed.is_primary():
            aside.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in bad_steps:
                source = directory / str(step)
                if source.exists():
                    source.rename(aside / f"{step}-{stamp}")
    mngr.reload()


def restore_params(directory: str | pathlib.Path, target_params, *, step: int | None = None):
    """Restores only the params of a run's checkpoint (e.g. to start a later stage from it)."""
    try:
        return _restore_params(directory, target_params, step=step)
    finally:
        # A layout that does not match leaves orbax read coroutines unfinished; collected here
        # rather than at some later moment (inside CPython 3.11's ast.parse, a finalizer run
        # by the garbage collector broke the AST recursion counter: a SystemError).
        gc.collect()


def _restore_params(directory, target_params, *, step):
    directory = pathlib.Path(directory)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    mngr = manager(directory)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    if step not in mngr.all_steps():
        raise FileNotFoundError(
            f"{directory}: no checkpoint of step {step} (has {mngr.all_steps()})"
        )
    # RL runs keep the decoder under params["policy"]; supervised runs keep it at params.
    layouts = (
        {"params": abstract_like(target_params)},
        {"params": {"policy": abstract_like(target_params)}},
    )
    # Leaves without a sharding restore as they were saved; where that names devices this
    # machine does not have (a run trained on 8 devices, exported on 1), onto this one's.
    errors = []
    for elsewhere in (False, True):
        for abstract in layouts:
            restore_args = jax.tree.map(
                functools.partial(_restore_arg, elsewhere=elsewhere), abstract
            )
            try:
                # The first pass's failures are expected on other devices (orbax logs each
                # leaf's at ERROR, before the pass that works); they stay in `errors`.
                with (
                    _quiet_logs() if not elsewhere else contextlib.nullcontext(),
                    warnings.catch_warnings(),
                ):
                    # Restoring as saved is the intent of this pass; a topology where that
                    # fails is the next pass's (orbax warns of it at every such restore).
                    warnings.filterwarnings("ignore", message="Sharding info not provided")
                    restored = mngr.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.PyTreeRestore(
                                item=abstract, restore_args=restore_args, partial_restore=True
                            )
                        ),
                    )
            except (ValueError, KeyError, TypeError) as e:
                errors.append(e)
                continue
            params = restored["state"]["params"]
            params = params["policy"] if "policy" in abstract["params"] else params
            # A partial restore leaves entries missing from the checkpoint as placeholders.
            if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params)):
                errors.append(
                    KeyError(f"layout {jax.tree.structure(abstract)} not in the checkpoint")
                )
                continue
            # Arrays restore in their saved shapes whatever the target's: another model shape
            # is named here, not by the first step that runs on them.
            wrong = [
                f"{jax.tree_util.keystr(key)} is {x.shape} there, {want.shape} in this config"
                for (key, x), want in zip(
                    jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(target_params)
                )
                if x.shape != want.shape
            ]
            # A partial restore also leaves out saved params the config has no place for (an
            # untied lm_head, q/k/v biases): a model that computes something else.
            policy = "policy" in abstract["params"]
            saved = _saved_params(directory / str(step), policy)
            ours = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(params)}
            wrong += [f"{key} is there, not in this config" for key in sorted(saved - ours)]
            if wrong:
                raise ParamsError(
                    f"{directory} step {step}: params do not match the model config: "
                    f"{'; '.join(wrong[:3])}{f' (and {len(wrong) - 3} more)' if wrong[3:] else ''}"
                )
            return params
        if not any("sharding" in str(e) for e in errors):
            break
    # Every layout failed: another model (a structure this config does not have), or files of
    # the step that cannot be read; the other steps may restore (--step, or a resume).
    others = [s for s in mngr.all_steps() if s != step]
    raise ParamsError(
        f"{directory} step {step}: params do not match the model config, or the checkpoint is "
        f"damaged{f' (other steps here: {others})' if others else ''}: "
        + "; ".join(f"{type(e).__name__}: {str(e)[:300]}" for e in errors)
    )


@contextlib.contextmanager
def _quiet_logs():
    """Python logging at ERROR and below off for the block."""
    previous = std_logging.root.manager.disable
    std_logging.disable(std_logging.ERROR)
    try:
        yield
    finally:
        std_logging.disable(previous)


def _restore_arg(x, elsewhere: bool = False):
    """In the target's dtype (a run saved in bfloat16 started from in float32 trains float32
    master weights, as a Hugging Face folder's load casts them). Placed as the target says;
    else as saved, or (`elsewhere`: saved on other devices) whole on this process's first
    device (every device when there are several processes)."""
    if x.sharding is not None:
        return ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype)
    if not elsewhere:
        return ocp.RestoreArgs(dtype=x.dtype)
    if jax.process_count() == 1:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return ocp.ArrayRestoreArgs(sharding=device, dtype=x.dtype)
    return ocp.ArrayRestoreArgs(sharding=_everywhere(), dtype=x.dtype)
