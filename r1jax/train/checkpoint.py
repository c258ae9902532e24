"""Orbax checkpoints: the train state (params, optimizer, step, RNG) and the data iterator."""

import json
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


class _IteratorSnapshot:
    """The iterator's state at save time (async saves must not read a moving iterator)."""

    def __init__(self, iterator):
        self._state = json.dumps(iterator.get_state())

    def get_state(self) -> bytes:
        return self._state.encode()


def manager(directory: str | pathlib.Path, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
    """A checkpoint manager over DIR/checkpoints with items 'state' and (optionally) 'data'."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def save(mngr, state, iterator=None, *, extra=None, force: bool = False) -> bool:
    """Saves state, the data iterator's position and `extra` arrays at state.step (async)."""
    step = int(jax.device_get(state.step))
    items = {"state": ocp.args.StandardSave(state)}
    if extra is not None:
        items["extra"] = ocp.args.StandardSave(extra)
    if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator))
    return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def abstract_like(tree) -> Any:
    """ShapeDtypeStructs (with shardings) describing where restored arrays should land."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def restore_latest(mngr: ocp.CheckpointManager, target_state, iterator=None, *, extra=None):
    """Restores the newest checkpoint onto target_state's (and extra's) shapes and shardings.

    Returns (state, iterator, extra) or None when the directory holds no checkpoint. The
    iterator, when given, is moved to the position it had at save time.
    """
    step = mngr.latest_step()
    if step is None:
        return None
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


def restore_params(directory: str | pathlib.Path, target_params, *, step: int | None = None):
    """Restores only the params of a run's checkpoint (e.g. to start a later stage from it)."""
    directory = pathlib.Path(directory)
    if (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {directory}")
    mngr = manager(directory)
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    # RL runs keep the decoder under params["policy"]; supervised runs keep it at params.
    layouts = (
        {"params": abstract_like(target_params)},
        {"params": {"policy": abstract_like(target_params)}},
    )
    errors = []
    for abstract in layouts:
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=abstract,
                        restore_args=jax.tree.map(_restore_arg, abstract),
                        partial_restore=True,
                    )
                ),
            )
        except (ValueError, KeyError, TypeError) as e:
            errors.append(e)
            continue
        params = restored["state"]["params"]
        return params["policy"] if "policy" in abstract["params"] else params
    raise ValueError(f"{directory} step {step}: params do not match the model config: {errors}")


def _restore_arg(x):
    return (
        ocp.ArrayRestoreArgs(sharding=x.sharding) if x.sharding is not None else ocp.RestoreArgs()
    )
