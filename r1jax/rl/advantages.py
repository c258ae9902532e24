"""Advantages: group-relative (GRPO, Dr. GRPO), RLOO, GAE, whitening, GRPO process supervision.

N sequences, T completion tokens, B prompts, G samples per prompt, M steps per sequence.
Rows of an N-shaped array are prompt-major (N = B * G, row b * G + g), as `reshape(B * G, ...)`.
"""

import jax
import jax.numpy as jnp

STD_NORMALIZE_MODES = ("group", "batch", "none")
# rl.advantage: the outcome-reward estimators `of_groups` computes (PPO uses `gae` instead).
ESTIMATORS = ("grpo", "rloo")


def _sample_std(x, mask, axis):
    """Masked mean and sample standard deviation (ddof=1, as torch.std in TRL and verl).

    The mean gets one correction pass, mean + mean(x - mean): sum / count alone is off by an
    ulp for equal values such as 7 x 0.7 in float32, and (x - mean) / (std + eps) then turned
    a tie into advantages of ~0.06 instead of 0. Corrected, equal values give exactly 0.
    """
    count = jnp.sum(mask, axis=axis, keepdims=True)
    safe_count = jnp.maximum(count, 1.0)
    mean = jnp.sum(x * mask, axis=axis, keepdims=True) / safe_count
    mean = mean + jnp.sum((x - mean) * mask, axis=axis, keepdims=True) / safe_count
    sq = jnp.sum(jnp.square(x - mean) * mask, axis=axis, keepdims=True)
    return mean, jnp.sqrt(sq / jnp.maximum(count - 1.0, 1.0))


def group_relative(rewards_BxG, *, std_normalize="group", eps=1e-6):
    """GRPO outcome advantages: (r - group mean) / (std + eps); std over group, batch or none.

    The std is the sample std (ddof=1), matching TRL's and verl's `torch.std`; with "batch"
    the mean stays per group and only the scale is shared (TRL's `scale_rewards="batch"`).
    "none" is Dr. GRPO (no std division; pair it with aggregation="seq-mean-token-sum-norm").
    """
    if rewards_BxG.ndim != 2:
        raise ValueError(f"rewards_BxG must be [B, G], got shape {rewards_BxG.shape}")
    if std_normalize not in STD_NORMALIZE_MODES:
        raise ValueError(f"std_normalize={std_normalize!r} not in {STD_NORMALIZE_MODES}")
    r = rewards_BxG.astype(jnp.result_type(rewards_BxG, jnp.float32))
    ones = jnp.ones_like(r)
    mean_Bx1, std_Bx1 = _sample_std(r, ones, axis=1)
    centered_BxG = r - mean_Bx1
    if std_normalize == "group":
        if r.shape[1] < 2:
            raise ValueError("std_normalize='group' needs G >= 2 samples per prompt")
        return centered_BxG / (std_Bx1 + eps)
    if std_normalize == "batch":
        _, std_1x1 = _sample_std(r.reshape(1, -1), ones.reshape(1, -1), axis=1)
        return centered_BxG / (std_1x1 + eps)
    return centered_BxG


def rloo(rewards_BxG):
    """RLOO: a sample's reward minus the mean reward of the other G - 1 samples of its prompt."""
    if rewards_BxG.ndim != 2 or rewards_BxG.shape[1] < 2:
        raise ValueError(f"rewards_BxG must be [B, G] with G >= 2, got {rewards_BxG.shape}")
    r = rewards_BxG.astype(jnp.result_type(rewards_BxG, jnp.float32))
    g = r.shape[1]
    # r - (sum - r) / (G - 1) = G / (G - 1) * (r - mean), with the corrected mean: the float32
    # sum minus r left an ulp for ties (3 x 0.7 gave -6e-8, not 0: a gradient from a group
    # with no signal, which Adam's normalised update can magnify).
    mean_Bx1, _ = _sample_std(r, jnp.ones_like(r), axis=1)
    return g / (g - 1) * (r - mean_Bx1)


def of_groups(estimator: str, rewards_BxG, *, std_normalize: str = "group"):
    """Advantages [B, G] of `estimator` (one of ESTIMATORS) from rewards [B, G]; std_normalize
    applies to "grpo" (RLOO's leave-one-out baseline is not scaled)."""
    if estimator == "grpo":
        return group_relative(rewards_BxG, std_normalize=std_normalize)
    if estimator == "rloo":
        return rloo(rewards_BxG)
    raise ValueError(f"advantage estimator {estimator!r} not in {ESTIMATORS}")


def broadcast_to_tokens(adv_N, mask_NxT):
    """Sequence advantages to per-token advantages, zero on padding."""
    if adv_N.ndim != 1 or adv_N.shape[0] != mask_NxT.shape[0]:
        raise ValueError(f"adv_N {adv_N.shape} does not match mask_NxT {mask_NxT.shape}")
    return jnp.where(mask_NxT > 0, adv_N[:, None], 0.0).astype(adv_N.dtype)


def whiten(x, mask=None, *, shift_mean=True, eps=1e-8):
    """(x - mean) / std over the valid entries (sample std, ddof=1); padding returns 0.

    With shift_mean=False the mean is added back (only rescaled), as TRL's `masked_whiten`.
    """
    m = jnp.ones_like(x) if mask is None else (mask > 0).astype(x.dtype)
    xs = jnp.where(m > 0, x, 0.0)  # padding may hold garbage; keep it out of every sum
    axes = tuple(range(x.ndim))
    mean, std = _sample_std(xs, m, axis=axes)
    out = (xs - mean) / (std + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(m > 0, out, 0.0)


def gae(rewards_NxT, values_NxT, mask_NxT, *, gamma, lam):
    """Generalised advantage estimation (Schulman et al. 2016) over the valid tokens only.

    Steps, a reverse scan over t = T-1 .. 0 that skips padding (a masked token passes the carry
    through unchanged, so padding anywhere, not only at the right, is transparent):
      (1) delta_t = r_t + gamma * V_next - V_t, with V_next the value of the next valid token
          (0 after the last valid token: the completion ends there);
      (2) A_t = delta_t + gamma * lam * A_next;
      (3) returns_t = A_t + V_t; both are 0 on padding.
    """
    if not rewards_NxT.shape == values_NxT.shape == mask_NxT.shape or rewards_NxT.ndim != 2:
        raise ValueError(
            f"shapes differ: rewards {rewards_NxT.shape}, values {values_NxT.shape}, "
            f"mask {mask_NxT.shape}"
        )
    dtype = jnp.result_type(rewards_NxT, values_NxT, jnp.float32)
    valid_NxT = mask_NxT > 0
    r_NxT = jnp.where(valid_NxT, rewards_NxT, 0.0).astype(dtype)
    v_NxT = jnp.where(valid_NxT, values_NxT, 0.0).astype(dtype)

    def step(carry, xs):
        next_value_N, next_adv_N = carry
        r_N, v_N, valid_N = xs
        delta_N = r_N + gamma * next_value_N - v_N  # (1)
        adv_N = delta_N + gamma * lam * next_adv_N  # (2)
        adv_N = jnp.where(valid_N, adv_N, 0.0)
        carry = (
            jnp.where(valid_N, v_N, next_value_N),
            jnp.where(valid_N, adv_N, next_adv_N),
        )
        return carry, adv_N

    n = rewards_NxT.shape[0]
    init = (jnp.zeros((n,), dtype), jnp.zeros((n,), dtype))
    _, adv_TxN = jax.lax.scan(step, init, (r_NxT.T, v_NxT.T, valid_NxT.T), reverse=True)
    adv_NxT = adv_TxN.T
    returns_NxT = jnp.where(valid_NxT, adv_NxT + v_NxT, 0.0)  # (3)
    return adv_NxT, returns_NxT


def process_supervision(
    step_rewards_NxM, step_end_NxM, step_mask_NxM, mask_NxT, *, group_size, eps=1e-6
):
    """GRPO with process supervision (DeepSeekMath §4.1.3) for step-level reward functions.

    Layout: sequence n has up to M reasoning steps; step j ends at token index
    `step_end_NxM[n, j]` (inclusive, in [0, T)), earns `step_rewards_NxM[n, j]` and is real
    where `step_mask_NxM[n, j]`. Rows are prompt-major in groups of `group_size` samples.
    Steps:
      (1) normalise every valid step reward by the mean and sample std (ddof=1) of ALL valid
          step rewards of the G samples of its prompt: r~ = (r - mean) / (std + eps);
      (2) a token's advantage is the sum of r~ over the steps that end at or after it;
      (3) padding tokens get 0.
    """
    n, m = step_rewards_NxM.shape
    if step_end_NxM.shape != (n, m) or step_mask_NxM.shape != (n, m) or mask_NxT.shape[0] != n:
        raise ValueError("step arrays must be [N, M] and mask_NxT [N, T] with the same N")
    if n % group_size:
        raise ValueError(f"N={n} is not a multiple of group_size={group_size}")
    dtype = jnp.result_type(step_rewards_NxM, jnp.float32)
    valid_NxM = (step_mask_NxM > 0).astype(dtype)
    r_NxM = jnp.where(valid_NxM > 0, step_rewards_NxM, 0.0).astype(dtype)
    b = n // group_size
    mean_Bx1, std_Bx1 = _sample_std(
        r_NxM.reshape(b, group_size * m), valid_NxM.reshape(b, group_size * m), axis=1
    )
    norm_BxGM = (r_NxM.reshape(b, -1) - mean_Bx1) / (std_Bx1 + eps)  # (1)
    norm_NxM = norm_BxGM.reshape(n, m) * valid_NxM
    t_T = jnp.arange(mask_NxT.shape[1])
    later_NxMxT = (step_end_NxM[:, :, None] >= t_T[None, None, :]).astype(dtype)
    adv_NxT = jnp.einsum("nm,nmt->nt", norm_NxM, later_NxMxT)  # (2)
    return jnp.where(mask_NxT > 0, adv_NxT, 0.0)  # (3)
