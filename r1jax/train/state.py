"""Training state and optimizer construction."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from r1jax import configlib


@flax.struct.dataclass
class TrainState:
    """Everything that must resume: step, params, optimizer state and the root key."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # root key of the run; a step's key is fold_in(rng, step), never stored


def learning_rate_schedule(optim_cfg, total_steps: int, lr: float = 0.0) -> optax.Schedule:
    """Linear warmup, then 'constant', 'cosine' or 'linear' decay to lr * min_lr_ratio; `lr` > 0
    replaces optim.lr as the peak (PPO's rl.critic_lr), the schedule's shape kept."""
    lr, warmup = float(lr or optim_cfg.lr), configlib.warmup_steps(optim_cfg, total_steps)
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
    optim_cfg, total_steps: int, critic_lr: float = 0.0
) -> optax.GradientTransformation:
    """AdamW with global-norm clipping and the configured schedule over `total_steps` training
    steps. Apply it with `update_at_step`, which reads the schedule at the training step.

    `critic_lr` > 0 (PPO's rl.critic_lr) optimizes the critic's params, the RL layout's
    top-level CRITIC_KEYS, apart from the policy's, as OpenRLHF's two optimizers: clipped by
    their own global norm, and at that peak rate on the same schedule (AdamW's update scaled
    by critic_lr / lr: the schedule is linear in its peak). The optimizer state is the same
    tree either way. 0 keeps one clip over every param (TRL's PPOTrainer)."""
    schedule = learning_rate_schedule(optim_cfg, total_steps)
    parts = []
    if optim_cfg.grad_clip and optim_cfg.grad_clip > 0:
        max_norm = float(optim_cfg.grad_clip)
        parts.append(
            _clip_apart(max_norm) if critic_lr > 0 else optax.clip_by_global_norm(max_norm)
        )
    weight_decay = float(optim_cfg.weight_decay)
    adamw = optax.adamw(
        schedule,
        b1=float(optim_cfg.b1),
        b2=float(optim_cfg.b2),
        eps=float(optim_cfg.eps),
        weight_decay=weight_decay,
        # Without decay no mask, so the optimizer state keeps the structure it always had.
        mask=decay_mask if weight_decay else None,
    )
    if critic_lr > 0:
        adamw = _critic_scaled(adamw, critic_lr / float(optim_cfg.lr))
    parts.append(adamw)
    return optax.chain(*parts)


CRITIC_KEYS = ("value_head", "critic")  # the critic's params in the RL layout (rl/steps.py)


def _clip_apart(max_norm: float) -> optax.GradientTransformation:
    """clip_by_global_norm of the critic's params (CRITIC_KEYS) and of the rest, each by its own
    norm; the same (empty) state."""
    clip = optax.clip_by_global_norm(max_norm)

    def update(updates, state, params=None):
        del params
        critic = {k: v for k, v in updates.items() if k in CRITIC_KEYS}
        policy = {k: v for k, v in updates.items() if k not in CRITIC_KEYS}
        out = {**clip.update(policy, state)[0], **clip.update(critic, state)[0]}
        return {k: out[k] for k in updates}, state

    return optax.GradientTransformation(clip.init, update)


def _critic_scaled(inner: optax.GradientTransformation, scale: float):
    """`inner` (its state unchanged) with its updates of the critic's params times `scale`."""

    def update(updates, state, params=None):
        updates, state = inner.update(updates, state, params)
        scaled = lambda k, v: jax.tree.map(lambda u: u * scale, v) if k in CRITIC_KEYS else v  # noqa: E731
        return {k: scaled(k, v) for k, v in updates.items()}, state

    return optax.GradientTransformation(inner.init, update)


def decay_mask(params):
    """Which params weight decay applies to: weight matrices and embeddings, not norm scales or
    biases (as Hugging Face's Trainer, so TRL recipes' weight_decay means the same here)."""

    def decays(path, _):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return not any("norm" in n for n in names) and not names[-1].endswith("bias")

    return jax.tree_util.tree_map_with_path(decays, params)


def update_at_step(optimizer, grads, opt_state, params, step):
    """`optimizer.update` with the learning-rate schedule read at training step `step`.

    optax counts the schedule in updates it applied. Indexed by step instead, the learning rate
    logged for a step is the one it applied, also after a skipped (non-finite) step, which
    keeps the old optimizer state but uses up its step as it does its step number; every update
    of an RL step (epochs x minibatches) takes the step's rate; and a resume with another
    number of updates a step stays on schedule. Adam's own count (bias correction) still
    counts the updates applied.
    """
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    at_step = lambda x: (  # noqa: E731
        x._replace(count=jnp.asarray(step, x.count.dtype)) if is_schedule(x) else x
    )
    opt_state = jax.tree.map(at_step, opt_state, is_leaf=is_schedule)
    return optimizer.update(grads, opt_state, params)


def create(params, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    """A fresh state at step 0."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng
    )
