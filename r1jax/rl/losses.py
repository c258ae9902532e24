"""Policy losses (PPO clip, clip-higher, dual clip, GSPO, TIS), KL, value loss, aggregation.

N sequences, T completion tokens.

Every loss is split into a numerator and a denominator (`*_terms`) so a trainer can sum both
over micro-batches and divide once, or pass the global `denominator` to each micro-batch: the
accumulated gradient then equals the one-batch gradient exactly.
"""

import jax
import jax.numpy as jnp

AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
RATIO_LEVELS = ("token", "sequence")


def kl(logp_NxT, ref_logp_NxT, estimator):
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman's k1, k2, k3)."""
    log_r = ref_logp_NxT - logp_NxT  # log(ref / pi)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * jnp.square(log_r)
    if estimator == "k3":
        # exp(x) - x - 1 with expm1: exp(x) rounded near 1 left nothing of the value below
        # |x| ~ 1e-4 in float32 (logged KL 0 or negative early in a run); the gradient is alike.
        return jnp.expm1(log_r) - log_r
    raise ValueError(f"kl estimator {estimator!r} not in {KL_ESTIMATORS}")


def aggregation_denominator(mask_NxT, mode):
    """The denominator of `aggregate_terms`; sum it over micro-batches for the global one."""
    valid_NxT = (mask_NxT > 0).astype(jnp.float32)
    if mode == "token-mean":
        return jnp.sum(valid_NxT)
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum-norm"):
        return jnp.sum(jnp.any(valid_NxT > 0, axis=1).astype(jnp.float32))  # non-empty rows
    raise ValueError(f"aggregation {mode!r} not in {AGGREGATIONS}")


def aggregate_terms(values_NxT, mask_NxT, mode, *, max_len=None):
    """(numerator, denominator) of a masked mean; numerator / denominator is the loss.

    - "seq-mean-token-mean" (GRPO): sum over sequences of the token mean / non-empty sequences;
    - "token-mean" (DAPO): sum over valid tokens / number of valid tokens;
    - "seq-mean-token-sum-norm" (Dr. GRPO): sum over sequences of token sum / max_len, over
      non-empty sequences; max_len (default T) is a constant, so long answers are not diluted.
    Padding contributes nothing, whatever it holds. The seq-mean modes count non-empty rows: a
    row masked out whole (rl.mask_truncated) is not in the denominator (TRL divides by every
    row; the two differ by a factor on the whole step, not in its direction).
    """
    valid_NxT = mask_NxT > 0
    v_NxT = jnp.where(valid_NxT, values_NxT, 0.0)
    den = aggregation_denominator(mask_NxT, mode)
    if mode == "token-mean":
        return jnp.sum(v_NxT), den
    tok_sum_N = jnp.sum(v_NxT, axis=1)
    if mode == "seq-mean-token-mean":
        n_tok_N = jnp.sum(valid_NxT.astype(v_NxT.dtype), axis=1)
        return jnp.sum(tok_sum_N / jnp.maximum(n_tok_N, 1.0)), den
    norm = values_NxT.shape[1] if max_len is None else max_len
    return jnp.sum(tok_sum_N) / norm, den


def _divide(num, den):
    """num / den, and 0 for an empty batch."""
    return jnp.where(den > 0, num / jnp.maximum(den, 1e-30), 0.0)


def aggregate(values_NxT, mask_NxT, mode, *, max_len=None, denominator=None):
    """Masked mean by `mode`; `denominator` overrides the batch's own (global: micro-batches)."""
    num, den = aggregate_terms(values_NxT, mask_NxT, mode, max_len=max_len)
    return _divide(num, den if denominator is None else denominator)


def _log_ratio(logp_NxT, old_logp_NxT, valid_NxT, ratio_level):
    """log importance ratio per token; GSPO-token form for ratio_level="sequence".

    GSPO-token: log s_it = sg(log s_i) + logp_t - sg(logp_t), whose value is the sequence
    ratio log s_i = mean_t(logp - old_logp) and whose gradient is s_i * grad logp_t, so with a
    sequence-level advantage it equals the gradient of the GSPO sequence objective.
    """
    lr_NxT = jnp.where(valid_NxT, logp_NxT - old_logp_NxT, 0.0)
    if ratio_level == "token":
        return lr_NxT
    if ratio_level != "sequence":
        raise ValueError(f"ratio_level {ratio_level!r} not in {RATIO_LEVELS}")
    n_tok_N = jnp.sum(valid_NxT.astype(lr_NxT.dtype), axis=1)
    seq_lr_N = jnp.sum(lr_NxT, axis=1) / jnp.maximum(n_tok_N, 1.0)
    sg = jax.lax.stop_gradient
    return sg(seq_lr_N)[:, None] + logp_NxT - sg(logp_NxT)


def _check_shapes(logp_NxT, others):
    for name, x in others.items():
        if x is not None and x.shape != logp_NxT.shape:
            raise ValueError(f"{name} has shape {x.shape}, expected {logp_NxT.shape}")


def _token_adv(adv_N_or_NxT, logp_NxT):
    if adv_N_or_NxT.ndim == 1 and adv_N_or_NxT.shape[0] == logp_NxT.shape[0]:
        return jnp.broadcast_to(adv_N_or_NxT[:, None], logp_NxT.shape)
    if adv_N_or_NxT.shape == logp_NxT.shape:
        return adv_N_or_NxT
    raise ValueError(f"advantages {adv_N_or_NxT.shape} fit neither [N] nor {logp_NxT.shape}")


def _clipped_surrogate(ratio_NxT, adv_NxT, clip_low, clip_high, dual_clip):
    """PPO clip with separate bounds, dual clip for A < 0; returns loss and which bound binds."""
    pg1_NxT = -adv_NxT * ratio_NxT
    pg2_NxT = -adv_NxT * jnp.clip(ratio_NxT, 1.0 - clip_low, 1.0 + clip_high)
    pg_NxT = jnp.maximum(pg1_NxT, pg2_NxT)
    r = jax.lax.stop_gradient(ratio_NxT)
    flags = {
        "clip_frac_low": (r < 1.0 - clip_low) & (adv_NxT < 0),
        "clip_frac_high": (r > 1.0 + clip_high) & (adv_NxT > 0),
    }
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        cap_NxT = -dual_clip * adv_NxT
        flags["dual_clip_frac"] = (adv_NxT < 0) & (jax.lax.stop_gradient(pg_NxT) > cap_NxT)
        pg_NxT = jnp.where(adv_NxT < 0, jnp.minimum(pg_NxT, cap_NxT), pg_NxT)
    else:
        flags["dual_clip_frac"] = jnp.zeros_like(adv_NxT, dtype=bool)
    return pg_NxT, flags


def policy_loss_terms(
    logp_NxT,
    old_logp_NxT,
    adv_N_or_NxT,
    mask_NxT,
    *,
    clip_low=0.2,
    clip_high=0.2,
    aggregation="seq-mean-token-mean",
    ratio_level="token",
    ref_logp_NxT=None,
    kl_coef=0.0,
    kl_estimator="k3",
    max_len=None,
    dual_clip=None,
    tis_logp_NxT=None,
    tis_cap=None,
    entropy_NxT=None,
    entropy_coef=0.0,
):
    """Clipped policy loss as (numerator, denominator, metric sums); see `policy_loss`.

    Per valid token, with A the advantage:
      (1) padding is zeroed in every input first, so garbage there cannot reach a gradient;
      (2) ratio r = exp(logp - old_logp) per token, or GSPO's sequence ratio (GSPO-token form);
      (3) pg = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high));
      (4) dual clip, for A < 0 only: pg = min(pg, -dual_clip * A);
      (5) truncated importance sampling: pg *= sg(min(exp(old_logp - tis_logp), tis_cap));
      (6) loss_t = pg + kl_coef * kl(logp, ref_logp) - entropy_coef * entropy;
      (7) aggregate loss_t by `aggregation` into (numerator, denominator).
    """
    _check_shapes(
        logp_NxT,
        {
            "old_logp_NxT": old_logp_NxT,
            "mask_NxT": mask_NxT,
            "ref_logp_NxT": ref_logp_NxT,
            "tis_logp_NxT": tis_logp_NxT,
            "entropy_NxT": entropy_NxT,
        },
    )
    valid_NxT = mask_NxT > 0
    clean = lambda x: None if x is None else jnp.where(valid_NxT, x, 0.0)  # (1)
    logp_NxT, old_logp_NxT = clean(logp_NxT), clean(old_logp_NxT)
    ref_logp_NxT, tis_logp_NxT, entropy_NxT = map(clean, (ref_logp_NxT, tis_logp_NxT, entropy_NxT))
    adv_NxT = clean(_token_adv(adv_N_or_NxT, logp_NxT))

    ratio_NxT = jnp.exp(_log_ratio(logp_NxT, old_logp_NxT, valid_NxT, ratio_level))  # (2)
    pg_NxT, flags = _clipped_surrogate(ratio_NxT, adv_NxT, clip_low, clip_high, dual_clip)  # (3, 4)
    if tis_logp_NxT is not None:  # (5)
        w_NxT = jnp.exp(old_logp_NxT - tis_logp_NxT)
        if tis_cap is not None:
            w_NxT = jnp.minimum(w_NxT, tis_cap)
        pg_NxT = pg_NxT * jax.lax.stop_gradient(w_NxT)
    loss_NxT = pg_NxT  # (6)
    sums = {k: jnp.sum((v & valid_NxT).astype(jnp.float32)) for k, v in flags.items()}
    if ref_logp_NxT is not None:
        kl_NxT = kl(logp_NxT, ref_logp_NxT, kl_estimator)
        loss_NxT = loss_NxT + kl_coef * kl_NxT
        sums["kl_ref"] = jnp.sum(jnp.where(valid_NxT, jax.lax.stop_gradient(kl_NxT), 0.0))
    if entropy_NxT is not None:
        loss_NxT = loss_NxT - entropy_coef * entropy_NxT
        sums["entropy"] = jnp.sum(jax.lax.stop_gradient(entropy_NxT))
    num, den = aggregate_terms(loss_NxT, valid_NxT, aggregation, max_len=max_len)  # (7)

    return num, den, {**sums, **_ratio_metric_sums(logp_NxT, old_logp_NxT, ratio_NxT, valid_NxT)}


def _ratio_metric_sums(logp_NxT, old_logp_NxT, ratio_NxT, valid_NxT):
    """Sums over valid tokens of KL(old || new) and of the ratio; the ratio's max.

    The tokens were sampled from the old policy, so KL(old || new) is the one k3 estimates
    without bias here: (r - 1) - log r with r = pi / pi_old per token (Schulman's blog, TRL).
    """
    r_NxT = jax.lax.stop_gradient(ratio_NxT)
    approx_kl_NxT = kl(old_logp_NxT, jax.lax.stop_gradient(logp_NxT), "k3")
    return {
        "approx_kl": jnp.sum(jnp.where(valid_NxT, approx_kl_NxT, 0.0)),
        "ratio_mean": jnp.sum(jnp.where(valid_NxT, r_NxT, 0.0)),
        "ratio_max": jnp.max(jnp.where(valid_NxT, r_NxT, -jnp.inf)),
        "n_tokens": jnp.sum(valid_NxT.astype(jnp.float32)),
    }


def combine_metric_sums(a, b):
    """Merge two micro-batches' metric sums: `*_max` keys take the max, the rest add."""
    return {k: jnp.maximum(a[k], b[k]) if k.endswith("_max") else a[k] + b[k] for k in a}


def reduce_metric_sums(sums, axis=0):
    """combine_metric_sums over an axis (data replicas): `*_max` keys take the max, the rest add."""
    reduce = lambda k, v: jnp.max(v, axis) if k.endswith("_max") else jnp.sum(v, axis)
    return {k: reduce(k, v) for k, v in sums.items()}


def metrics_from_sums(sums):
    """Token means from (combined) metric sums; `*_max` keys pass through. With no token (every
    response masked: rl.mask_truncated with all of them cut) each is 0, the max too (-inf was
    logged, which JSON readers other than Python's refuse)."""
    n = jnp.maximum(sums["n_tokens"], 1.0)
    some = sums["n_tokens"] > 0
    return {
        k: jnp.where(some, v, 0.0) if k.endswith("_max") else v / n
        for k, v in sums.items()
        if k != "n_tokens"
    }


def policy_loss(
    logp_NxT,
    old_logp_NxT,
    adv_N_or_NxT,
    mask_NxT,
    *,
    clip_low=0.2,
    clip_high=0.2,
    aggregation="seq-mean-token-mean",
    ratio_level="token",
    ref_logp_NxT=None,
    kl_coef=0.0,
    kl_estimator="k3",
    max_len=None,
    dual_clip=None,
    tis_logp_NxT=None,
    tis_cap=None,
    entropy_NxT=None,
    entropy_coef=0.0,
    denominator=None,
):
    """Clipped policy loss (PPO / GRPO / DAPO / Dr. GRPO / GSPO) -> (loss, metrics).

    `denominator` (from `aggregation_denominator` summed over all micro-batches) makes the sum
    of micro-batch losses equal the one-batch loss. Metrics, token means over valid tokens:
    clip_frac_low/high, dual_clip_frac, approx_kl (k3 of KL(old || new)), ratio_mean, ratio_max,
    and kl_ref / entropy when those inputs are given.
    """
    num, den, sums = policy_loss_terms(
        logp_NxT,
        old_logp_NxT,
        adv_N_or_NxT,
        mask_NxT,
        clip_low=clip_low,
        clip_high=clip_high,
        aggregation=aggregation,
        ratio_level=ratio_level,
        ref_logp_NxT=ref_logp_NxT,
        kl_coef=kl_coef,
        kl_estimator=kl_estimator,
        max_len=max_len,
        dual_clip=dual_clip,
        tis_logp_NxT=tis_logp_NxT,
        tis_cap=tis_cap,
        entropy_NxT=entropy_NxT,
        entropy_coef=entropy_coef,
    )
    return _divide(num, den if denominator is None else denominator), metrics_from_sums(sums)


def kl_penalty_policy_loss(
    logp_NxT,
    old_logp_NxT,
    adv_N_or_NxT,
    mask_NxT,
    *,
    kl_coef,
    kl_estimator="k3",
    aggregation="token-mean",
    max_len=None,
    denominator=None,
):
    """PPO's KL-penalty form (Schulman et al. 2017 §4) -> (loss, metrics).

    (1) r = exp(logp - old_logp);
    (2) loss_t = -r * A + kl_coef * KL(old || new)_t, KL estimated on the tokens sampled
        from the old policy (`kl(old_logp, logp, kl_estimator)`);
    (3) aggregate; adapt kl_coef between updates with `adaptive_kl_coef` (from KL(old ||
        new) measured after the update).
    """
    _check_shapes(logp_NxT, {"old_logp_NxT": old_logp_NxT, "mask_NxT": mask_NxT})
    valid_NxT = mask_NxT > 0
    logp_NxT = jnp.where(valid_NxT, logp_NxT, 0.0)
    old_logp_NxT = jnp.where(valid_NxT, old_logp_NxT, 0.0)
    adv_NxT = jnp.where(valid_NxT, _token_adv(adv_N_or_NxT, logp_NxT), 0.0)
    ratio_NxT = jnp.exp(logp_NxT - old_logp_NxT)  # (1)
    kl_NxT = kl(old_logp_NxT, logp_NxT, kl_estimator)
    loss_NxT = -ratio_NxT * adv_NxT + kl_coef * kl_NxT  # (2)
    loss = aggregate(loss_NxT, valid_NxT, aggregation, max_len=max_len, denominator=denominator)
    n = jnp.maximum(jnp.sum(valid_NxT.astype(jnp.float32)), 1.0)
    metrics = {"kl_old": jnp.sum(jnp.where(valid_NxT, jax.lax.stop_gradient(kl_NxT), 0.0)) / n}
    return loss, metrics  # (3)


def adaptive_kl_coef(coef, observed_kl, *, target):
    """PPO's adaptive KL penalty coefficient (Schulman et al. 2017 §4).

    `observed_kl` is d = KL(pi_old || pi) after an update, the KL the penalty weighs:
    (1) d < target / 1.5: coef <- coef / 2;
    (2) d > target * 1.5: coef <- coef * 2; otherwise unchanged.
    """
    if observed_kl < target / 1.5:  # (1)
        return coef / 2.0
    if observed_kl > target * 1.5:  # (2)
        return coef * 2.0
    return coef


def proportional_kl_coef(coef, observed_kl, *, target, n_samples, horizon):
    """The adaptive KL controller of Ziegler et al. 2019 §2.2 (TRL's and OpenRLHF's
    AdaptiveKLController) for a KL in the reward.

    `observed_kl` is the rollout's KL(pi || ref) per sample (summed over its tokens, averaged
    over the `n_samples` samples of the step):
    (1) e = clip(observed_kl / target - 1, -0.2, 0.2);
    (2) coef <- coef * (1 + e * n_samples / horizon).
    """
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)  # (1)
    return coef * (1.0 + error * n_samples / horizon)  # (2)


def kl_in_reward(score_N, logp_NxT, ref_logp_NxT, mask_NxT, *, kl_coef, estimator="k1"):
    """PPO per-token rewards: -kl_coef * kl(logp, ref), plus the score at the last valid token.

    A sequence with no valid token gets nothing; padding gets 0.
    """
    _check_shapes(logp_NxT, {"ref_logp_NxT": ref_logp_NxT, "mask_NxT": mask_NxT})
    valid_NxT = mask_NxT > 0
    kl_NxT = kl(
        jnp.where(valid_NxT, logp_NxT, 0.0), jnp.where(valid_NxT, ref_logp_NxT, 0.0), estimator
    )
    t = logp_NxT.shape[1]
    last_N = t - 1 - jnp.argmax(valid_NxT[:, ::-1], axis=1)
    is_last_NxT = (jnp.arange(t)[None, :] == last_N[:, None]) & valid_NxT
    rewards_NxT = jnp.where(valid_NxT, -kl_coef * kl_NxT, 0.0)
    return rewards_NxT + jnp.where(is_last_NxT, score_N[:, None], 0.0)


def value_loss(
    values_NxT,
    old_values_NxT,
    returns_NxT,
    mask_NxT,
    *,
    clip=0.2,
    aggregation="token-mean",
    max_len=None,
    denominator=None,
):
    """PPO clipped value loss 0.5 max((v - R)^2, (clip(v, v_old +- clip) - R)^2) -> (loss, metrics).

    clip=None gives the plain squared error.
    """
    _check_shapes(values_NxT, {"old_values_NxT": old_values_NxT, "returns_NxT": returns_NxT})
    valid_NxT = mask_NxT > 0
    v_NxT = jnp.where(valid_NxT, values_NxT, 0.0)
    ret_NxT = jnp.where(valid_NxT, returns_NxT, 0.0)
    sq_NxT = jnp.square(v_NxT - ret_NxT)
    if clip is None:
        loss_NxT = 0.5 * sq_NxT
        clipped_NxT = jnp.zeros_like(valid_NxT)
    else:
        old_NxT = jnp.where(valid_NxT, old_values_NxT, 0.0)
        v_clip_NxT = old_NxT + jnp.clip(v_NxT - old_NxT, -clip, clip)
        sq_clip_NxT = jnp.square(v_clip_NxT - ret_NxT)
        loss_NxT = 0.5 * jnp.maximum(sq_NxT, sq_clip_NxT)
        clipped_NxT = sq_clip_NxT > sq_NxT
    loss = aggregate(loss_NxT, valid_NxT, aggregation, max_len=max_len, denominator=denominator)
    n = jnp.maximum(jnp.sum(valid_NxT.astype(jnp.float32)), 1.0)
    metrics = {
        "vf_clip_frac": jnp.sum((clipped_NxT & valid_NxT).astype(jnp.float32)) / n,
        "value_mean": jnp.sum(jax.lax.stop_gradient(v_NxT)) / n,
    }
    return loss, metrics
