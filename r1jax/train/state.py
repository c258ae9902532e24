"""Training state and optimizer construction."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything that must resume: step, params, optimizer state and the root key."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # root key of the run; a step's key is fold_in(rng, step), never stored


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup, then 'constant', 'cosine' or 'linear' decay to lr * min_lr_ratio."""
    lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
    end = lr * float(optim_cfg.min_lr_ratio)
    decay_steps = max(1, total_steps - warmup)
    if optim_cfg.schedule == "constant":
        decay = optax.constant_schedule(lr)
    elif optim_cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    elif optim_cfg.schedule == "linear":
        decay = optax.linear_schedule(lr, end, decay_steps)
    else:
        raise ValueError(
            f"config.optim.schedule: unknown schedule {optim_cfg.schedule!r} "
            "(expected 'constant', 'cosine' or 'linear')"
        )
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(
    optim_cfg, total_steps: int, *, updates_per_step: int = 1
) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and the configured schedule over `total_steps` training
    steps. A step of `updates_per_step` optimizer updates (RL: epochs x minibatches) keeps one
    learning rate: the schedule is indexed by step, not by update, so warmup_steps and the decay
    count steps as train.steps does."""
    schedule = learning_rate_schedule(optim_cfg, total_steps)
    if updates_per_step > 1:
        by_step = schedule
        schedule = lambda count: by_step(count // updates_per_step)  # noqa: E731
    parts = []
    if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip)))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(optim_cfg.b1),
            b2=float(optim_cfg.b2),
            eps=float(optim_cfg.eps),
            weight_decay=float(optim_cfg.weight_decay),
        )
    )
    return optax.chain(*parts)


def create(params, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A fresh state at step 0."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng
    )
