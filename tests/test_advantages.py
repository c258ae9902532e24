"""Advantages against NumPy references written from the formulas (loops, not the JAX code).

N sequences, T completion tokens, B prompts, G samples per prompt, M steps per sequence.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import advantages, rollout

GARBAGE = 1e6  # large but finite values in padded positions; they must change nothing


def _rewards_BxG():
    return np.array(
        [[1.0, 0.0, 0.0, 1.0, 0.5], [2.0, -1.0, 0.3, 0.3, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]],
        np.float32,
    )


def _ref_group_relative(r, mode, eps):
    b, g = r.shape
    out = np.zeros_like(r, np.float64)
    flat = r.reshape(-1).astype(np.float64)
    flat_mean = sum(flat) / len(flat)
    batch_std = np.sqrt(sum((x - flat_mean) ** 2 for x in flat) / (len(flat) - 1))
    for i in range(b):
        mean = sum(r[i]) / g
        std = np.sqrt(sum((x - mean) ** 2 for x in r[i]) / (g - 1))
        scale = {"group": std + eps, "batch": batch_std + eps, "none": 1.0}[mode]
        for j in range(g):
            out[i, j] = (r[i, j] - mean) / scale
    return out


@pytest.mark.parametrize("mode", ["group", "batch", "none"])
def test_group_relative_matches_reference(mode):
    r = _rewards_BxG()
    got = jax.jit(advantages.group_relative, static_argnames="std_normalize")(
        jnp.asarray(r), std_normalize=mode
    )
    np.testing.assert_allclose(got, _ref_group_relative(r, mode, 1e-6), rtol=1e-5, atol=1e-6)


def test_group_relative_uses_sample_std_and_zero_for_ties():
    # mean 0.25, sample std (ddof=1) = 0.5, so +1.5 / -0.5; population std would give sqrt(3).
    got = advantages.group_relative(jnp.array([[1.0, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]]))
    np.testing.assert_allclose(got[0], [1.5, -0.5, -0.5, -0.5], rtol=1e-5)
    np.testing.assert_array_equal(got[1], np.zeros(4))
    with pytest.raises(ValueError):
        advantages.group_relative(jnp.ones((2, 1)))
    with pytest.raises(ValueError):
        advantages.group_relative(jnp.ones((2, 3)), std_normalize="batchnorm")


def test_ties_give_exactly_zero_in_float32():
    # float32 sum / count of 7 x 0.7 is an ulp off 0.7: (r - mean) / (std + eps) was 0.056.
    r = jnp.full((2, 7), 0.7, jnp.float32).at[1].set(0.9)
    for mode in ("group", "batch", "none"):
        np.testing.assert_array_equal(advantages.group_relative(r, std_normalize=mode), 0.0)
    np.testing.assert_array_equal(advantages.whiten(r[:1], jnp.ones_like(r[:1])), 0.0)


def test_rloo_gives_exactly_zero_for_ties_in_float32():
    # (sum - r) / (G - 1) of 3 x 0.7 in float32 is an ulp off 0.7: the advantage was -6e-8.
    for g in (2, 3, 7, 16):
        for value in (0.7, 0.1, 1.0 / 3.0, 1e6 + 0.1):
            r = jnp.full((2, g), value, jnp.float32)
            np.testing.assert_array_equal(advantages.rloo(r), 0.0, err_msg=f"{g} x {value}")


def test_dynamic_sampling_drops_float32_ties():
    # np.std of 7 x 0.7 in float32 is 6e-8 > 0: the all-equal group counted as informative.
    r = np.array([[0.7] * 7, [0.9] * 3 + [0.0] * 4, [1.1] * 7], np.float32)
    np.testing.assert_array_equal(rollout.informative_groups(r), [False, True, False])


def test_rloo_matches_leave_one_out():
    r = _rewards_BxG()
    want = np.zeros_like(r)
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            others = [r[i, k] for k in range(r.shape[1]) if k != j]
            want[i, j] = r[i, j] - sum(others) / len(others)
    np.testing.assert_allclose(advantages.rloo(jnp.asarray(r)), want, rtol=1e-5, atol=1e-6)


def test_every_configured_estimator_is_computed_and_no_other_name():
    # rl.advantage reaches the rollout through of_groups; an unknown name was GRPO before.
    r = jnp.asarray(np.random.RandomState(1).rand(3, 4), jnp.float32)
    for mode in advantages.STD_NORMALIZE_MODES:
        np.testing.assert_array_equal(
            advantages.of_groups("grpo", r, std_normalize=mode),
            advantages.group_relative(r, std_normalize=mode),
        )
    np.testing.assert_array_equal(advantages.of_groups("rloo", r), advantages.rloo(r))
    assert advantages.ESTIMATORS == ("grpo", "rloo")
    with pytest.raises(ValueError, match="'reinforce' not in"):
        advantages.of_groups("reinforce", r)


def test_broadcast_to_tokens():
    mask = jnp.array([[1, 1, 0], [0, 0, 0], [1, 1, 1]], bool)
    got = advantages.broadcast_to_tokens(jnp.array([2.0, 5.0, -1.0]), mask)
    np.testing.assert_array_equal(got, [[2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])


def test_whiten_masked_ignores_padding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6)).astype(np.float32) * 3 + 2
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]], np.float32)
    x_garbage = np.where(mask > 0, x, GARBAGE).astype(np.float32)
    vals = [x[i, t] for i in range(3) for t in range(6) if mask[i, t]]
    mean = sum(vals) / len(vals)
    std = np.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    want = np.where(mask > 0, (x - mean) / (std + 1e-8), 0.0)
    np.testing.assert_allclose(advantages.whiten(x_garbage, mask), want, rtol=1e-5, atol=1e-5)
    kept = advantages.whiten(x_garbage, mask, shift_mean=False)
    np.testing.assert_allclose(kept, np.where(mask > 0, want + mean, 0.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(advantages.whiten(jnp.asarray(x)).std(ddof=1), 1.0, rtol=1e-5)


def _ref_gae(rewards, values, mask, gamma, lam):
    """Standard GAE on each sequence's valid tokens, with V = 0 after the last one."""
    n, t = rewards.shape
    adv = np.zeros((n, t))
    for i in range(n):
        idx = [k for k in range(t) if mask[i, k]]
        last = 0.0
        for pos in reversed(range(len(idx))):
            k = idx[pos]
            next_v = values[i, idx[pos + 1]] if pos + 1 < len(idx) else 0.0
            delta = rewards[i, k] + gamma * next_v - values[i, k]
            last = delta + gamma * lam * last
            adv[i, k] = last
    returns = np.where(mask > 0, adv + values, 0.0)
    return adv, returns


def _gae_batch():
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(4, 7)).astype(np.float32)
    values = rng.normal(size=(4, 7)).astype(np.float32)
    # right padding, a gap in the middle, an empty row, a full row
    mask = np.array(
        [
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1, 1],
        ],
        np.float32,
    )
    return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_matches_reference_with_padding(gamma, lam):
    rewards, values, mask = _gae_batch()
    r_garbage = np.where(mask > 0, rewards, GARBAGE).astype(np.float32)
    v_garbage = np.where(mask > 0, values, -GARBAGE).astype(np.float32)
    fn = jax.jit(advantages.gae, static_argnames=("gamma", "lam"))
    adv, ret = fn(r_garbage, v_garbage, mask > 0, gamma=gamma, lam=lam)
    want_adv, want_ret = _ref_gae(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)


def test_gae_hand_values():
    # gamma = lam = 1, V = 0: advantages are the sums of future rewards.
    adv, ret = advantages.gae(
        jnp.array([[1.0, 2.0, 3.0, 9.0]]),
        jnp.zeros((1, 4)),
        jnp.array([[1.0, 1.0, 1.0, 0.0]]),
        gamma=1.0,
        lam=1.0,
    )
    np.testing.assert_allclose(adv, [[6.0, 5.0, 3.0, 0.0]])
    np.testing.assert_allclose(ret, [[6.0, 5.0, 3.0, 0.0]])
    # lam = 0: one-step TD error r_t + gamma V_{t+1} - V_t.
    adv, _ = advantages.gae(
        jnp.array([[0.0, 1.0]]), jnp.array([[0.5, 2.0]]), jnp.ones((1, 2)), gamma=0.5, lam=0.0
    )
    np.testing.assert_allclose(adv, [[0.0 + 0.5 * 2.0 - 0.5, 1.0 - 2.0]])


def _ref_process(step_r, step_end, step_mask, mask, group_size, eps):
    n, m = step_r.shape
    t = mask.shape[1]
    out = np.zeros((n, t))
    for b in range(n // group_size):
        rows = range(b * group_size, (b + 1) * group_size)
        vals = [step_r[i, j] for i in rows for j in range(m) if step_mask[i, j]]
        mean = sum(vals) / len(vals)
        std = np.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        for i in rows:
            for k in range(t):
                if not mask[i, k]:
                    continue
                out[i, k] = sum(
                    (step_r[i, j] - mean) / (std + eps)
                    for j in range(m)
                    if step_mask[i, j] and step_end[i, j] >= k
                )
    return out


def test_process_supervision_matches_reference():
    rng = np.random.default_rng(2)
    n, m, t, g = 6, 3, 8, 3
    step_r = rng.normal(size=(n, m)).astype(np.float32)
    step_end = np.array(
        [[1, 4, 7], [2, 5, 0], [7, 0, 0], [0, 3, 5], [3, 6, 7], [1, 2, 3]], np.int32
    )
    step_mask = np.array(
        [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], np.float32
    )
    mask = np.ones((n, t), np.float32)
    mask[1, 6:] = 0
    mask[5, 4:] = 0
    garbage_r = np.where(step_mask > 0, step_r, GARBAGE).astype(np.float32)
    got = jax.jit(advantages.process_supervision, static_argnames="group_size")(
        garbage_r, step_end, step_mask, mask, group_size=g
    )
    want = _ref_process(step_r, step_end, step_mask, mask, g, 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_process_supervision_hand_values():
    # One prompt, two samples, step rewards (1, 0) and (0, 1): pooled mean 0.5, sample std
    # sqrt(1/3), so each step is +-0.5 * sqrt(3); a token sums the steps ending at or after it.
    s = 0.5 * np.sqrt(3.0)
    got = advantages.process_supervision(
        jnp.array([[1.0, 0.0], [0.0, 1.0]]),
        jnp.array([[0, 2], [1, 2]]),
        jnp.ones((2, 2)),
        jnp.ones((2, 3)),
        group_size=2,
        eps=0.0,
    )
    np.testing.assert_allclose(got, [[0.0, -s, -s], [0.0, 0.0, s]], atol=1e-5)


def test_process_supervision_with_one_final_step_is_outcome_supervision():
    # One step per sample ending at its last valid token: DeepSeekMath's outcome supervision.
    rewards_BxG = _rewards_BxG()[:2]
    b, g = rewards_BxG.shape
    lengths = np.array([4, 2, 5, 1, 3, 5, 2, 4, 3, 1])
    mask = (np.arange(5)[None, :] < lengths[:, None]).astype(np.float32)
    got = advantages.process_supervision(
        rewards_BxG.reshape(b * g, 1), (lengths - 1)[:, None], np.ones((b * g, 1)), mask,
        group_size=g,
    )  # fmt: skip
    outcome = advantages.group_relative(jnp.asarray(rewards_BxG)).reshape(-1)
    want = advantages.broadcast_to_tokens(outcome, mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
