"""RL update steps (GRPO family and PPO): completion log-probs, values, minibatched updates.

N sequences, P prompt length, T completion tokens, L = P + T, M minibatches, D model.

Every step here is a module-level, unjitted, pure function `(state, batch, ...) -> (state,
metrics)`; the trainer jits it once with shardings and donation. `state.params` always has the
RL layout {"policy": decoder params, ["value_head": ...], ["critic": decoder params]}, so the
sampler reads `params["policy"]` whatever the algorithm.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from r1jax.model import heads, logprobs, transformer
from r1jax.rl import advantages, losses
from r1jax.train import state as state_lib
from r1jax.train import trainer

PPO_FORMS = ("clip", "kl_penalty")
CRITICS = ("shared", "separate")
ALGORITHMS = ("grpo", "ppo")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Loss settings of an RL update; frozen and hashable so jit takes it as a static argument."""

    clip_low: float = 0.2  # ratio clip below 1
    clip_high: float = 0.2  # ratio clip above 1 (DAPO clip-higher: 0.28)
    dual_clip: float | None = None  # dual-clip constant c > 1 for negative advantages
    aggregation: str = "seq-mean-token-mean"  # | "token-mean" | "seq-mean-token-sum-norm"
    ratio_level: str = "token"  # | "sequence" (GSPO)
    kl_coef: float = 0.0  # KL-to-reference weight in the loss (GRPO); 0 skips the reference
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    tis_cap: float | None = None  # truncated importance sampling vs the sampler; None = off
    temperature: float = 1.0  # sampling temperature: log-probs of the scaled distribution
    max_len: int | None = None  # Dr. GRPO's constant length normaliser (default T)
    value_clip: float | None = 0.2  # PPO value clipping; None or <= 0 = plain squared error
    vf_coef: float = 0.1  # PPO value-loss weight
    whiten_advantages: bool = False  # PPO only: whiten the rollout's advantages in the update
    ppo_form: str = "clip"  # PPO policy loss: "clip" | "kl_penalty" (coefficient from the batch)

    def __post_init__(self):
        checks = (
            ("aggregation", losses.AGGREGATIONS),
            ("ratio_level", losses.RATIO_LEVELS),
            ("kl_estimator", losses.KL_ESTIMATORS),
            ("ppo_form", PPO_FORMS),
        )
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"LossConfig.{name}={getattr(self, name)!r} not in {allowed}")
        if self.temperature <= 0:
            raise ValueError(f"LossConfig.temperature must be positive, got {self.temperature}")


def _prompt_len(batch) -> int:
    """P = L - T from the static shapes; at least one prompt token predicts the first answer."""
    seq_len, t = batch["input_ids_NxL"].shape[1], batch["completion_mask_NxT"].shape[1]
    if seq_len <= t:
        raise ValueError(f"input_ids_NxL has L={seq_len}, need L > T={t} (one prompt token)")
    return seq_len - t


def _completion_hidden(model_cfg, decoder_params, batch):
    """Hidden states h_NxTxD that predict each completion token (position P - 1 + t)."""
    p = _prompt_len(batch)
    h_NxLxD = transformer.hidden_states(
        model_cfg,
        decoder_params,
        batch["input_ids_NxL"],
        positions_BxT=batch["positions_NxL"],
        segment_ids_BxT=batch["segment_ids_NxL"],
    )
    return h_NxLxD[:, p - 1 : -1]


def _logprobs_from_hidden(model_cfg, decoder_params, h_NxTxD, batch, temperature):
    p = _prompt_len(batch)
    targets_NxT = batch["input_ids_NxL"][:, p:]
    return logprobs.token_logprobs(
        model_cfg, decoder_params, h_NxTxD, targets_NxT, temperature=temperature
    )


def completion_logprobs(model_cfg, params, batch, *, temperature):
    """(logp_NxT, entropy_NxT) of the completion tokens under decoder `params` at `temperature`."""
    h_NxTxD = _completion_hidden(model_cfg, params, batch)
    return _logprobs_from_hidden(model_cfg, params, h_NxTxD, batch, temperature)


def _check_critic(params, critic):
    if critic not in CRITICS:
        raise ValueError(f"critic={critic!r} not in {CRITICS}")
    if critic == "separate" and "critic" not in params:
        raise ValueError("critic='separate' needs params['critic'] (see init_rl_params)")


def compute_values(model_cfg, params, batch, *, critic="shared"):
    """values_NxT: the critic's value of the state before each completion token (0 on padding)."""
    _check_critic(params, critic)
    trunk = params["policy"] if critic == "shared" else params["critic"]
    h_NxTxD = _completion_hidden(model_cfg, trunk, batch)
    v_NxT = heads.values(model_cfg, params["value_head"], h_NxTxD)
    return jnp.where(batch["completion_mask_NxT"] > 0, v_NxT, 0.0)


def ppo_advantages(rewards_NxT, values_NxT, mask_NxT, *, gamma, lam, whiten):
    """(advantages_NxT, returns_NxT) by GAE; advantages optionally whitened over valid tokens.

    Returns are computed from the raw advantages, so whitening never moves the value target.
    """
    adv_NxT, returns_NxT = advantages.gae(rewards_NxT, values_NxT, mask_NxT, gamma=gamma, lam=lam)
    if whiten:
        adv_NxT = advantages.whiten(adv_NxT, mask_NxT)
    return adv_NxT, returns_NxT


def init_rl_params(
    model_cfg, policy_params, rng, *, algorithm="grpo", critic="shared", critic_params=None
):
    """The RL params layout: {"policy"} (GRPO), + {"value_head"} (PPO), + {"critic"} (separate)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} not in {ALGORITHMS}")
    params = {"policy": policy_params}
    if algorithm == "grpo":
        return params
    if critic not in CRITICS:
        raise ValueError(f"critic={critic!r} not in {CRITICS}")
    params["value_head"] = heads.init_value_head(model_cfg, rng)
    if critic == "separate":
        # A copy of the policy is the usual critic start (OpenRLHF, TRL); a fresh init otherwise
        # would be a critic that knows nothing about the text.
        if critic_params is None:
            critic_params = jax.tree.map(jnp.copy, policy_params)
        params["critic"] = critic_params
    return params


# ---------------------------------------------------------------------------------------------
# Losses of one micro-batch. Each returns (loss, metric sums); the loss is already divided by
# the minibatch's global denominators, so summing micro-batch losses and gradients is exact.


def _sg_unless(x, keep_grad):
    return x if keep_grad else jax.lax.stop_gradient(x)


def _policy_terms(loss_cfg, logp_NxT, entropy_NxT, micro, adv_key, policy_den):
    """Clipped policy loss of a micro-batch / policy_den, and its metric sums."""
    use_ref = loss_cfg.kl_coef > 0  # zeros stand in for ref log-probs when the KL is off
    use_tis = loss_cfg.tis_cap is not None
    # A batch without old log-probs is on-policy (one update per rollout): the old policy is the
    # current one, so no separate forward pass is spent on it (as TRL with num_iterations=1).
    old_logp_NxT = micro.get("old_logp_NxT")
    if old_logp_NxT is None:
        old_logp_NxT = jax.lax.stop_gradient(logp_NxT)
    num, _, sums = losses.policy_loss_terms(
        logp_NxT,
        old_logp_NxT,
        micro[adv_key],
        micro["completion_mask_NxT"],
        clip_low=loss_cfg.clip_low,
        clip_high=loss_cfg.clip_high,
        aggregation=loss_cfg.aggregation,
        ratio_level=loss_cfg.ratio_level,
        ref_logp_NxT=micro["ref_logp_NxT"] if use_ref else None,
        kl_coef=loss_cfg.kl_coef,
        kl_estimator=loss_cfg.kl_estimator,
        max_len=loss_cfg.max_len,
        dual_clip=loss_cfg.dual_clip,
        tis_logp_NxT=micro["sampler_logp_NxT"] if use_tis else None,
        tis_cap=loss_cfg.tis_cap,
        # Without an entropy bonus its gradient is dead weight (and 0 * nan = nan).
        entropy_NxT=_sg_unless(entropy_NxT, loss_cfg.entropy_coef != 0),
        entropy_coef=loss_cfg.entropy_coef,
    )
    if "sampler_logp_NxT" in micro:  # how far the sampler's numbers are from the trainer's
        gap_NxT = jnp.abs(jax.lax.stop_gradient(logp_NxT) - micro["sampler_logp_NxT"])
        sums["logp_gap_sampler_trainer"] = jnp.sum(gap_NxT * micro["completion_mask_NxT"])
    return num / jnp.maximum(policy_den, 1.0), sums


def _grpo_micro_loss(params, micro, dens, *, model_cfg, loss_cfg, adv_key):
    logp_NxT, entropy_NxT = completion_logprobs(
        model_cfg, params["policy"], micro, temperature=loss_cfg.temperature
    )
    pg_loss, sums = _policy_terms(loss_cfg, logp_NxT, entropy_NxT, micro, adv_key, dens["policy"])
    return pg_loss, {**sums, "pg_loss": pg_loss}


def _kl_penalty_terms(loss_cfg, logp_NxT, entropy_NxT, micro, policy_den):
    """PPO's KL-penalty loss of a micro-batch, with the clip form's metric sums for comparison."""
    mask_NxT = micro["completion_mask_NxT"]
    pg_loss, m = losses.kl_penalty_policy_loss(
        logp_NxT,
        micro["old_logp_NxT"],
        micro["advantages_NxT"],
        mask_NxT,
        kl_coef=micro["kl_coef"],
        kl_estimator=loss_cfg.kl_estimator,
        aggregation=loss_cfg.aggregation,
        max_len=loss_cfg.max_len,
        denominator=jnp.maximum(policy_den, 1.0),
    )
    sg = jax.lax.stop_gradient
    _, sums = _policy_terms(
        dataclasses.replace(loss_cfg, kl_coef=0.0, entropy_coef=0.0),
        sg(logp_NxT),
        sg(entropy_NxT),
        micro,
        "advantages_NxT",
        policy_den,
    )
    return pg_loss, {**sums, "kl_old": m["kl_old"] * sums["n_tokens"]}


def _ppo_micro_loss(params, micro, dens, *, model_cfg, loss_cfg, critic):
    policy = params["policy"]
    h_NxTxD = _completion_hidden(model_cfg, policy, micro)
    logp_NxT, entropy_NxT = _logprobs_from_hidden(
        model_cfg, policy, h_NxTxD, micro, loss_cfg.temperature
    )
    if loss_cfg.ppo_form == "clip":
        pg_loss, sums = _policy_terms(
            loss_cfg, logp_NxT, entropy_NxT, micro, "advantages_NxT", dens["policy"]
        )
    else:
        pg_loss, sums = _kl_penalty_terms(loss_cfg, logp_NxT, entropy_NxT, micro, dens["policy"])
    if critic == "separate":
        h_NxTxD = _completion_hidden(model_cfg, params["critic"], micro)
    values_NxT = heads.values(model_cfg, params["value_head"], h_NxTxD)
    clip = loss_cfg.value_clip if loss_cfg.value_clip and loss_cfg.value_clip > 0 else None
    vf_loss, vm = losses.value_loss(
        values_NxT,
        micro["old_values_NxT"],
        micro["returns_NxT"],
        micro["completion_mask_NxT"],
        clip=clip,
        aggregation="token-mean",  # the critic regresses every token equally (OpenRLHF, TRL)
        denominator=jnp.maximum(dens["value"], 1.0),
    )
    n = sums["n_tokens"]  # value_loss reports micro-batch means; sums make them combinable
    sums = {**sums, "pg_loss": pg_loss, "vf_loss": vf_loss}
    sums.update(vf_clip_frac=vm["vf_clip_frac"] * n, value_mean=vm["value_mean"] * n)
    return pg_loss + loss_cfg.vf_coef * vf_loss, sums


# ---------------------------------------------------------------------------------------------
# The shared update driver: epochs x minibatches of exact, accumulated optimizer updates.

_LOSS_KEYS = ("pg_loss", "vf_loss")  # summed over micro-batches, not token means


def _minibatch_indices(state, n, num_minibatches, epochs):
    """Row indices [epochs * M, N / M] of every update's minibatch, freshly shuffled per epoch."""
    key = jax.random.fold_in(state.rng, state.step)
    perms = [jax.random.permutation(jax.random.fold_in(key, e), n) for e in range(epochs)]
    return jnp.stack(perms).reshape(epochs * num_minibatches, n // num_minibatches)


def _check_split(n, num_minibatches, grad_accum, epochs):
    if epochs < 1 or num_minibatches < 1 or grad_accum < 1:
        raise ValueError(
            f"epochs={epochs}, num_minibatches={num_minibatches}, grad_accum="
            f"{grad_accum}: all must be >= 1"
        )
    if n % (num_minibatches * grad_accum):
        raise ValueError(
            f"N={n} sequences do not split into num_minibatches={num_minibatches} x "
            f"grad_accum={grad_accum} equal micro-batches"
        )


def _one_update(state, minibatch, *, micro_loss, optimizer, grad_accum, aggregation):
    """One optimizer update on a minibatch: accumulate exactly over micro-batches, then apply."""
    mask_NxT = minibatch["completion_mask_NxT"]
    dens = {  # global over the minibatch, so every micro-batch divides by the same numbers
        "policy": losses.aggregation_denominator(mask_NxT, aggregation),
        "value": losses.aggregation_denominator(mask_NxT, "token-mean"),
    }
    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def grads_loss_sums(params, micro):
        (loss, sums), grads = grad_fn(params, micro, dens)
        return grads, loss, sums

    def combine(a, b):  # (grads, loss, metric sums) of two micro-batches (or replicas)
        return trainer.add_trees(a[0], b[0]), a[1] + b[1], losses.combine_metric_sums(a[2], b[2])

    def reduce(out):  # combine over the replicas' leading axis
        grads, loss, sums = out
        return trainer.sum_replicas(grads), jnp.sum(loss, 0), losses.reduce_metric_sums(sums)

    micro = trainer.micro_batches(minibatch, grad_accum)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    first = jax.tree.map(lambda x: x[0], micro)
    (_, sums_shape), _ = jax.eval_shape(grad_fn, state.params, first, dens)
    # Identities of combine_metric_sums: -inf for the maxima, 0 for the sums.
    sums = {
        k: jnp.full(v.shape, -jnp.inf if k.endswith("_max") else 0.0, v.dtype)
        for k, v in sums_shape.items()
    }
    init = (zeros, jnp.zeros((), jnp.float32), sums)
    grads, loss, sums = trainer.accumulate(
        grads_loss_sums, state.params, micro, init, combine=combine, reduce=reduce
    )
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = state_lib.update_at_step(
        optimizer, grads, state.opt_state, state.params, state.step
    )
    new_state = state.replace(
        params=optax.apply_updates(state.params, updates), opt_state=opt_state
    )
    new_state, finite = trainer.apply_if_finite(state, new_state, loss, grad_norm)
    metrics = losses.metrics_from_sums({k: v for k, v in sums.items() if k not in _LOSS_KEYS})
    metrics.update({k: sums[k] for k in _LOSS_KEYS if k in sums})
    metrics.update(loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
    return new_state, metrics


def _run_updates(
    state, rows, *, micro_loss, optimizer, num_minibatches, epochs, grad_accum, aggregation
):
    """epochs x num_minibatches updates in one `lax.scan`; metrics averaged over updates."""
    n = rows["completion_mask_NxT"].shape[0]
    _check_split(n, num_minibatches, grad_accum, epochs)
    if num_minibatches == 1:
        # One minibatch holds every row: order is irrelevant, and not gathering keeps each row
        # on the device that holds it.
        xs_U = jnp.arange(epochs)
        take = lambda _: rows
    else:
        xs_U = _minibatch_indices(state, n, num_minibatches, epochs)
        take = lambda idx_B: jax.tree.map(lambda x: x[idx_B], rows)

    def update(st, x):
        minibatch = take(x)
        return _one_update(
            st,
            minibatch,
            micro_loss=micro_loss,
            optimizer=optimizer,
            grad_accum=grad_accum,
            aggregation=aggregation,
        )

    new_state, per_update = jax.lax.scan(update, state, xs_U)
    metrics = {k: jnp.max(v) if k.endswith("_max") else jnp.mean(v) for k, v in per_update.items()}
    metrics["skipped_updates"] = jnp.sum(1.0 - per_update["finite"])
    metrics["finite"] = jnp.min(per_update["finite"])
    metrics["updates"] = jnp.asarray(xs_U.shape[0], jnp.float32)
    return new_state.replace(step=state.step + 1), metrics


def _rows(batch, loss_cfg, extra_keys):
    """The per-row arrays the loss reads; reference and sampler log-probs only when used."""
    keys = ["input_ids_NxL", "positions_NxL", "segment_ids_NxL", "completion_mask_NxT"]
    keys += list(extra_keys)
    if loss_cfg.kl_coef > 0:
        keys.append("ref_logp_NxT")
    if loss_cfg.tis_cap is not None:
        keys.append("sampler_logp_NxT")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"RL batch lacks {missing}; it has {sorted(batch)}")
    # Optional: without old log-probs the single update is on-policy; sampler log-probs feed
    # the sampler-vs-trainer gap metric.
    optional = [k for k in ("old_logp_NxT", "sampler_logp_NxT") if k in batch and k not in keys]
    return {k: batch[k] for k in keys + optional}


def _check_on_policy(rows, num_minibatches, epochs):
    if "old_logp_NxT" not in rows and num_minibatches * epochs != 1:
        raise ValueError(
            f"{epochs} epochs x {num_minibatches} minibatches update the policy several times "
            "per rollout: the batch needs old_logp_NxT (the sampling policy's log-probs)"
        )


def grpo_update(
    state, batch, *, model_cfg, optimizer, loss_cfg, num_minibatches=1, epochs=1, grad_accum=1
):
    """GRPO-family update on one rollout: `epochs` shuffled passes of `num_minibatches` updates.

    1. Take the per-row arrays; the advantages are `advantages_NxT` when the batch has them
       (process supervision), else `advantages_N` (outcome rewards).
    2. Per epoch, permute the rows with fold_in(fold_in(rng, step), epoch); cut M minibatches
       (M = 1: no permutation, every update sees the whole rollout in place).
    3. Per minibatch, accumulate the clipped policy loss over `grad_accum` micro-batches, each
       divided by the minibatch's global denominator (exact accumulation), then one optimizer
       update, skipped when the loss or gradient is not finite.
    4. Advance `state.step` once (it counts rollouts); average metrics over the updates.
    """
    # (1)
    adv_key = "advantages_NxT" if "advantages_NxT" in batch else "advantages_N"
    rows = _rows(batch, loss_cfg, (adv_key,))
    _check_on_policy(rows, num_minibatches, epochs)
    micro_loss = lambda p, mb, dens: _grpo_micro_loss(
        p, mb, dens, model_cfg=model_cfg, loss_cfg=loss_cfg, adv_key=adv_key
    )
    # (2, 3, 4)
    return _run_updates(
        state,
        rows,
        micro_loss=micro_loss,
        optimizer=optimizer,
        num_minibatches=num_minibatches,
        epochs=epochs,
        grad_accum=grad_accum,
        aggregation=loss_cfg.aggregation,
    )


def ppo_update(
    state,
    batch,
    *,
    model_cfg,
    optimizer,
    loss_cfg,
    num_minibatches=1,
    epochs=1,
    grad_accum=1,
    critic="shared",
):
    """PPO update on one rollout: policy loss + vf_coef * clipped value loss, minibatched.

    1. Take the per-row arrays (GAE advantages and returns, old values, computed by the
       trainer); whiten the advantages over the whole rollout when configured.
    2. With ppo_form="kl_penalty", broadcast the batch's scalar `kl_coef` to the rows (a traced
       value: the adaptive coefficient changes without recompiling).
    3. As GRPO: shuffled minibatches per epoch, exact accumulation, one guarded update each;
       the value comes from the policy's hidden states (shared) or the critic model (separate).
    4. Advance `state.step` once; average metrics over the updates.
    """
    _check_critic(state.params, critic)
    rows = _rows(batch, loss_cfg, ("advantages_NxT", "old_values_NxT", "returns_NxT"))  # (1)
    _check_on_policy(rows, num_minibatches, epochs)
    if loss_cfg.whiten_advantages:
        rows["advantages_NxT"] = advantages.whiten(
            rows["advantages_NxT"], rows["completion_mask_NxT"]
        )
    if loss_cfg.ppo_form == "kl_penalty":  # (2)
        if "kl_coef" not in batch:
            raise ValueError("ppo_form='kl_penalty' needs the scalar batch['kl_coef']")
        n = rows["completion_mask_NxT"].shape[0]
        rows["kl_coef"] = jnp.broadcast_to(jnp.asarray(batch["kl_coef"], jnp.float32), (n, 1))
    micro_loss = lambda p, mb, dens: _ppo_micro_loss(
        p, mb, dens, model_cfg=model_cfg, loss_cfg=loss_cfg, critic=critic
    )
    # (3, 4)
    return _run_updates(
        state,
        rows,
        micro_loss=micro_loss,
        optimizer=optimizer,
        num_minibatches=num_minibatches,
        epochs=epochs,
        grad_accum=grad_accum,
        aggregation=loss_cfg.aggregation,
    )
