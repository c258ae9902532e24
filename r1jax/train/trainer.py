"""Where steps are jitted (shardings, donation), states are built on the mesh, and loops run."""

import contextlib
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from r1jax import distributed, memory, sharding
from r1jax.model import transformer
from r1jax.train import checkpoint
from r1jax.train import metrics as metrics_lib
from r1jax.train import state as state_lib


def state_shardings(logical_params, abstract_params, optimizer, mesh, rules):
    """NamedShardings for every leaf of a TrainState: params (and their moments) by logical axes."""
    param_sh = sharding.param_shardings(logical_params, mesh, rules, shapes=abstract_params)
    repl = sharding.replicated(mesh)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    opt_sh = optax.tree_map_params(
        optimizer, lambda _, s: s, abstract_opt, param_sh, transform_non_params=lambda _: repl
    )
    return state_lib.TrainState(step=repl, params=param_sh, opt_state=opt_sh, rng=repl)


def model_shardings(model_cfg, optimizer, mesh, rules):
    """State shardings when the params are one decoder's params."""
    abstract = jax.eval_shape(lambda k: transformer.init_params(model_cfg, k), jax.random.key(0))
    return state_shardings(transformer.logical_axes(model_cfg), abstract, optimizer, mesh, rules)


def state_from_params(params, shardings, optimizer, rng):
    """A step-0 TrainState around existing params, placed on the mesh (params donated)."""
    create = lambda p: state_lib.create(p, optimizer, rng)
    _check_state_fits(jax.eval_shape(create, params), shardings)
    params = jax.device_put(params, shardings.params)
    return jax.jit(create, out_shardings=shardings, donate_argnums=0)(params)


def init_sharded_state(init_params, logical_params, optimizer, mesh, rules, init_key, rng):
    """A step-0 TrainState from `init_params(key)`, created directly sharded.

    The params' shapes come from `jax.eval_shape`; one jitted init with output shardings then
    makes params and optimizer state, each device computing only its own shards (the RNG is
    partitionable), so no device or host ever holds the whole model.
    """
    abstract = jax.eval_shape(init_params, init_key)
    shardings = state_shardings(logical_params, abstract, optimizer, mesh, rules)
    make = lambda key: state_lib.create(init_params(key), optimizer, rng)
    _check_state_fits(jax.eval_shape(make, init_key), shardings)
    return jax.jit(make, out_shardings=shardings)(init_key), shardings


def _check_state_fits(abstract_state, shardings) -> None:
    """memory.OutOfMemory when the training state alone cannot fit in the mesh's devices (an
    init program whose outputs XLA:CPU cannot allocate waits forever instead of failing)."""
    n_params = sum(x.size for x in jax.tree.leaves(abstract_state.params))
    devices = jax.tree.leaves(shardings)[0].device_set
    memory.check_fits(
        memory.sharded_bytes(abstract_state, shardings),
        devices,
        f"the training state of {n_params:,} parameters (params and optimizer moments, as laid "
        "out on the mesh)",
        "a smaller model, or more devices with the params split over them (mesh.fsdp)",
    )


def init_state(model_cfg, optimizer, rng, mesh, rules, params=None):
    """A step-0 TrainState created directly sharded (params from `params` when given)."""
    init_key, _ = jax.random.split(rng)
    if params is not None:
        shardings = model_shardings(model_cfg, optimizer, mesh, rules)
        return state_from_params(params, shardings, optimizer, rng), shardings
    return init_sharded_state(
        lambda key: transformer.init_params(model_cfg, key),
        transformer.logical_axes(model_cfg),
        optimizer,
        mesh,
        rules,
        init_key,
        rng,
    )


def jit_step(
    step_fn: Callable,
    shardings,
    mesh,
    *,
    batch_sharded=True,
    rules=sharding.DEFAULT_RULES,
    **static,
):
    """Jits step_fn(state, batch, **static) once, with shardings and the state donated.

    batch_sharded=False lets the batch keep the shardings it arrives with (RL batches mix
    per-row arrays, placed by sharding.put_batch, with replicated scalars). The step is traced
    in `sharding.activation_layout(mesh, rules)`: activations split like the batch.
    """
    repl = sharding.replicated(mesh)
    step = lambda state, batch: step_fn(state, batch, **static)
    return jax.jit(
        sharding.laid_out(step, mesh, rules),
        in_shardings=(shardings, sharding.batch_sharding(mesh) if batch_sharded else None),
        out_shardings=(shardings, repl),
        donate_argnums=(0,),
    )


def apply_if_finite(state, new_state, loss, grad_norm):
    """Keeps the old params and optimizer state when the loss or gradient is not finite."""
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(ok, new, old)
    params = jax.tree.map(keep, new_state.params, state.params)
    opt_state = jax.tree.map(keep, new_state.opt_state, state.opt_state)
    return new_state.replace(params=params, opt_state=opt_state), ok


def micro_batches(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B/k, ...]; micro-batch j takes rows j, j+k, ... (devices keep their rows)."""
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch
    )


def add_trees(a, b):
    """Leafwise a + b (`accumulate`'s default combine)."""
    return jax.tree.map(jnp.add, a, b)


def sum_replicas(tree):
    """Leafwise sum over the leading (replica) axis (`accumulate`'s default reduce)."""
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), tree)


def accumulate(fn, params, micro, init, *, combine=add_trees, reduce=sum_replicas):
    """`init` combined with fn(params, mb) for each micro-batch mb of `micro` (their leading
    axis, `micro_batches`), in a scan: gradients and loss sums, exact under accumulation.

    `init` must be an identity of `combine` (zeros for sums, -inf for maxima). On a mesh whose
    "data" axis holds whole copies of the params (`sharding.replica_ways`, e.g. the default
    rules with data > 1), each replica combines its own rows' outputs through the loop
    (`fn` vmapped over the replicas, [R, ...] outputs pinned to "data") and `reduce` merges the
    replicas' results once at the end (`combine` over the leading axis): one all-reduce of the
    gradients over the data axis a step, not one a micro-batch. Elsewhere the plain scan.
    """
    replicas = sharding.replica_ways()
    rows = jax.tree.leaves(micro)[0].shape
    if replicas == 1 or rows[0] == 1 or rows[1] % replicas:

        def body(carry, mb):
            return combine(carry, fn(params, mb)), None

        return jax.lax.scan(body, init, micro)[0]

    def one_replica(mb):
        with sharding.per_replica_layout():
            return fn(params, mb)

    per_replica = jax.vmap(one_replica, spmd_axis_name="data")
    split = lambda x: x.reshape(x.shape[0], replicas, x.shape[1] // replicas, *x.shape[2:])
    pin = lambda tree: jax.tree.map(sharding.pin_replicas, tree)

    def body(carry, mb):
        return pin(combine(carry, per_replica(mb))), None

    init = pin(jax.tree.map(lambda x: jnp.broadcast_to(x, (replicas, *jnp.shape(x))), init))
    return reduce(jax.lax.scan(body, init, jax.tree.map(split, micro))[0])


PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a SIGTERM death


class Preemption:
    """SIGTERM, the notice SLURM and Cloud TPU / GCE preemption send before they kill, asks a
    training loop to finish its step, save a checkpoint and exit (code 143); the same command
    then resumes from that step to the same numbers. A first Ctrl-C (SIGINT) does the same
    (exit code 130); a second one stops at once, unless SIGINT was ignored when the process
    started (a job put in the background by a non-interactive shell, `nohup`-style launchers):
    then it stays ignored, as Python leaves it. A context manager around the loop (the
    handlers are installed from the main thread only; the old ones are put back on exit)."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGTERM
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:
                    continue
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old = {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint
        if signum == signal.SIGINT:
            logging.warning("Ctrl-C: saving after this step (Ctrl-C again to stop at once)")
        self.requested, self.signum = True, signum

    def should_stop(self) -> bool:
        """Whether any process got the signal: every process stops after the same step (the
        checkpoint save is collective)."""
        return distributed.global_max(int(self.requested)) > 0

    def exit(self, step: int, workdir) -> None:
        name = signal.Signals(self.signum).name
        logging.warning(
            "%s: stopped after step %d with its checkpoint saved; rerun the same command "
            "(--workdir=%s) to resume",
            name,
            step,
            workdir,
        )
        # Another process's signal stopped this one: report SIGTERM's code (a preemption).
        sys.exit(128 + int(self.signum) if self.requested else PREEMPTED_EXIT_CODE)


def bad_batch_path(workdir, step: int) -> pathlib.Path:
    """Where a stopped run saves its last batch: one file per process (its own rows)."""
    suffix = f"_process{jax.process_index()}" if jax.process_count() > 1 else ""
    return pathlib.Path(workdir) / f"bad_batch_step{step}{suffix}.npz"


class BadStepsError(RuntimeError):
    """Too many non-finite steps in a row; the offending batch was saved."""


class Loop:
    """The shared training loop: dispatch step t, then log step t-1; checkpoints; bad-step guard."""

    def __init__(
        self, *, workdir, cfg, total_steps: int, start_step: int, ckpt_manager, peak_flops
    ):
        self.workdir = pathlib.Path(workdir)
        self.cfg = cfg
        self.total_steps = total_steps
        self.ckpt = ckpt_manager
        self.peak_flops = peak_flops
        self.writer = metrics_lib.MetricsWriter(
            workdir,
            total_steps=total_steps,
            start_step=start_step,
            tensorboard=cfg.metrics.tensorboard,
        )
        self.bad_in_row = 0
        self.last_logged = start_step  # rates in a row are over the steps since this one

    def run(
        self,
        state,
        step_fn,
        batches: Iterator,
        *,
        iterator=None,
        flops_per_step=0.0,
        eval_fn: Callable | None = None,
    ):
        """Runs until total_steps (or a SIGTERM, `Preemption`); returns the final state. The
        writer is closed however the loop ends (an error's message then starts on its own line,
        not after the progress bar)."""
        with contextlib.closing(self.writer), Preemption() as preemption:
            return self._run(state, step_fn, batches, iterator, flops_per_step, eval_fn, preemption)

    def _run(self, state, step_fn, batches, iterator, flops_per_step, eval_fn, preemption):
        pending, t_last = None, time.perf_counter()
        step = int(jax.device_get(state.step))
        if self.ckpt is not None and step < self.total_steps:
            checkpoint.ensure_room(self.ckpt, state, step)
        while step < self.total_steps:
            # A batch one process cannot make (its shard has nothing to train, a data file it
            # cannot read) stops every process, not that one alone before the step's collectives.
            with distributed.shared_errors():
                host_batch = next(batches)
            state, metrics = step_fn(state, host_batch)
            step += 1
            if self.ckpt is not None:  # a background save that failed stops the run now
                checkpoint.check(self.ckpt)
            if pending is not None:
                t_last = self._log(*pending, t_last, flops_per_step)
            pending = (step, metrics, host_batch)
            if step % self.cfg.train.log_every == 0 or step == self.total_steps:
                t_last = self._log(*pending, t_last, flops_per_step, force=True)
                pending = None
            every = self.cfg.train.eval_every  # 0: at the last step only
            evaluates = eval_fn is not None and (
                (every and step % every == 0) or step == self.total_steps
            )
            saved = step % self.cfg.train.checkpoint_every == 0 or step == self.total_steps
            if evaluates or (self.ckpt is not None and saved):
                # Their time is not the steps': the next row's step_time_s leaves it out.
                jax.block_until_ready(state)
                t_aside = time.perf_counter()
                if evaluates:
                    self.writer.write(step, eval_fn(state))
                if self.ckpt is not None and saved:
                    checkpoint.save(self.ckpt, state, iterator, force=True)
                t_last += time.perf_counter() - t_aside
            if self.ckpt is not None and step < self.total_steps and preemption.should_stop():
                if not saved:  # (rows are written at log steps only, as in a run not stopped)
                    checkpoint.save(self.ckpt, state, iterator, force=True)
                checkpoint.wait(self.ckpt)
                self.writer.close()
                preemption.exit(step, self.workdir)
        if self.ckpt is not None:
            checkpoint.wait(self.ckpt)
        self.writer.close()
        return state

    def _log(self, step, metrics, host_batch, t_last, flops_per_step, force=False):
        metrics = jax.device_get(metrics)
        if not bool(metrics.get("finite", True)):
            self._bad_step(step, host_batch)
        else:
            self.bad_in_row = 0
        if not force:
            return t_last
        now = time.perf_counter()
        # The steps since the last row: log_every, fewer at the end or after a resume.
        steps_done = max(1, step - self.last_logged)
        self.last_logged = step
        dt = (now - t_last) / steps_done
        row = {k: float(np.asarray(v)) for k, v in metrics.items()}
        row["step_time_s"] = dt
        if "tokens" in row and dt > 0:
            row["tokens_per_s"] = row["tokens"] / dt
        if flops_per_step and dt > 0:
            row["mfu"] = flops_per_step / dt / (self.peak_flops * metrics_lib.peak_units())
        self.writer.write(step, row)
        return now

    def _bad_step(self, step, host_batch):
        """Counts a non-finite step; after max_bad_steps in a row saves the batch and stops."""
        self.bad_in_row += 1
        if self.bad_in_row >= self.cfg.train.max_bad_steps:
            path = bad_batch_path(self.workdir, step)
            # This process's rows (a global batch cannot be fetched whole by one process).
            rows = jax.tree.map(
                lambda x: sharding.local_rows(x) if isinstance(x, jax.Array) else np.asarray(x),
                host_batch,
            )
            np.savez(path, **rows)
            raise BadStepsError(
                f"{self.bad_in_row} non-finite steps in a row (last: step {step}); "
                f"its batch is saved in {path}"
            )
