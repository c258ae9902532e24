"""Losses against NumPy references written from the formulas (loops over sequences and tokens).

N sequences, T completion tokens, D features, V vocabulary of the tiny linear policy.
Gradients are checked against central finite differences of the float64 NumPy reference on a
linear policy logits = x @ W, and gradient accumulation against the one-batch gradient.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import losses

N, T, D, V = 8, 6, 3, 5
AGGREGATIONS = ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]
MAX_LEN = 9
GARBAGE = 1e4  # exp(GARBAGE) is inf in float32: padding must never reach an exp unmasked


def _batch(seed=0):
    """Inputs of a tiny linear policy, with right padding, a mid gap and an empty row."""
    rng = np.random.default_rng(seed)
    mask = np.ones((N, T), np.float32)
    for i, length in enumerate([6, 4, 1, 0, 5, 3, 6, 2]):
        mask[i, length:] = 0
    mask[6, 2] = 0  # padding in the middle must be transparent too
    x = rng.normal(size=(N, T, D)).astype(np.float32)
    w = (0.7 * rng.normal(size=(D, V))).astype(np.float32)
    tokens = rng.integers(0, V, size=(N, T))
    logp, _ = _np_logp(w.astype(np.float64), x, tokens)
    old = (logp + 0.35 * rng.normal(size=(N, T))).astype(np.float32)  # some ratios clip
    ref = (logp + 0.3 * rng.normal(size=(N, T))).astype(np.float32)
    tis = (old + 0.4 * rng.normal(size=(N, T))).astype(np.float32)
    adv_n = rng.normal(size=(N,)).astype(np.float32)
    adv_n[1] = -0.8  # row 1's sequence ratio is > 1.1 (seed 0), so the dual clip binds for GSPO
    adv_nxt = rng.normal(size=(N, T)).astype(np.float32)
    return dict(x=x, w=w, tokens=tokens, mask=mask, old=old, ref=ref, tis=tis, adv_n=adv_n,
                adv_nxt=adv_nxt)  # fmt: skip


def _np_logp(w, x, tokens):
    logits = np.einsum("ntd,dv->ntv", x.astype(np.float64), w)
    logits = logits - logits.max(-1, keepdims=True)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.take_along_axis(lp, tokens[..., None], -1)[..., 0], lp


def _np_entropy(w, x):
    _, lp = _np_logp(w, x, np.zeros(x.shape[:2], int))
    return -(np.exp(lp) * lp).sum(-1)


def _jax_policy(w, x, tokens):
    lp_NxTxV = jax.nn.log_softmax(jnp.einsum("ntd,dv->ntv", x, w), axis=-1)
    logp_NxT = jnp.take_along_axis(lp_NxTxV, tokens[..., None], axis=-1)[..., 0]
    entropy_NxT = -jnp.sum(jnp.exp(lp_NxTxV) * lp_NxTxV, axis=-1)
    return logp_NxT, entropy_NxT


def _np_kl(lp, ref, estimator):
    if estimator == "k1":
        return lp - ref
    if estimator == "k2":
        return 0.5 * (lp - ref) ** 2
    return np.exp(ref - lp) - (ref - lp) - 1.0


def _np_aggregate(per_token, mask, mode, max_len):
    """per_token: dict (i, t) -> value over valid tokens only."""
    rows = [[per_token[i, t] for t in range(T) if mask[i, t]] for i in range(N)]
    rows = [r for r in rows if r]
    if mode == "token-mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    return sum(sum(r) / max_len for r in rows) / len(rows)


def _ref_policy_loss(w, b, cfg, w_frozen=None):
    """The clipped objective from its definition, token by token; returns (loss, metrics).

    For the sequence ratio, `w_frozen` gives the GSPO-token surrogate: the stop-gradient parts
    of log s_it = sg(log s_i) + logp_t - sg(logp_t) are evaluated at w_frozen, the rest at w.
    """
    lp, _ = _np_logp(w, b["x"], b["tokens"])
    lp_sg = lp if w_frozen is None else _np_logp(w_frozen, b["x"], b["tokens"])[0]
    ent = _np_entropy(w, b["x"])
    mask, old = b["mask"], b["old"].astype(np.float64)
    adv = b["adv_nxt"] if cfg["adv_per_token"] else b["adv_n"]
    lo, hi, dual = cfg["clip_low"], cfg["clip_high"], cfg["dual_clip"]
    per_token, m = {}, {"low": 0, "high": 0, "dual": 0, "ratios": [], "kl": [], "ak": [], "e": []}
    for i in range(N):
        idx = [t for t in range(T) if mask[i, t]]
        seq_lr = np.mean([lp_sg[i, t] - old[i, t] for t in idx]) if idx else 0.0
        for t in idx:
            a = adv[i, t] if cfg["adv_per_token"] else adv[i]
            r = np.exp(lp[i, t] - old[i, t])
            if cfg["ratio_level"] == "sequence":
                r = np.exp(seq_lr + lp[i, t] - lp_sg[i, t])
            pg = max(-a * r, -a * min(max(r, 1 - lo), 1 + hi))
            m["low"] += r < 1 - lo and a < 0
            m["high"] += r > 1 + hi and a > 0
            if dual is not None and a < 0:
                m["dual"] += pg > -dual * a
                pg = min(pg, -dual * a)
            if cfg["tis_cap"] is not None:
                pg *= min(np.exp(old[i, t] - b["tis"][i, t]), cfg["tis_cap"])
            k = _np_kl(lp[i, t], b["ref"][i, t], cfg["kl_estimator"])
            per_token[i, t] = pg + cfg["kl_coef"] * k - cfg["entropy_coef"] * ent[i, t]
            m["ratios"].append(r)
            m["kl"].append(k)
            m["ak"].append(
                np.exp(lp[i, t] - old[i, t]) - (lp[i, t] - old[i, t]) - 1
            )  # KL(old||new)
            m["e"].append(ent[i, t])
    n = len(m["ratios"])
    metrics = {
        "clip_frac_low": m["low"] / n,
        "clip_frac_high": m["high"] / n,
        "dual_clip_frac": m["dual"] / n,
        "approx_kl": np.mean(m["ak"]),
        "kl_ref": np.mean(m["kl"]),
        "entropy": np.mean(m["e"]),
        "ratio_mean": np.mean(m["ratios"]),
        "ratio_max": np.max(m["ratios"]),
    }
    return _np_aggregate(per_token, mask, cfg["aggregation"], MAX_LEN), metrics


MODES = [(agg, level) for agg in AGGREGATIONS for level in ["token", "sequence"]]


def _arrays(b, cfg, rows=slice(None)):
    adv = b["adv_nxt"] if cfg["adv_per_token"] else b["adv_n"]
    keys = ["x", "tokens", "old", "mask", "ref", "tis"]
    return tuple(b[k][rows] for k in keys) + (adv[rows],)


def _all_mode_losses(w, arrays, dens_M, cfg):
    """Policy losses of the linear policy in every (aggregation, ratio level) mode, stacked."""
    x, tokens, old, mask, ref, tis, adv = arrays
    logp_NxT, entropy_NxT = _jax_policy(w, x, tokens)
    out = [
        losses.policy_loss(
            logp_NxT,
            old,
            adv,
            mask,
            clip_low=cfg["clip_low"],
            clip_high=cfg["clip_high"],
            aggregation=aggregation,
            ratio_level=ratio_level,
            ref_logp_NxT=ref,
            kl_coef=cfg["kl_coef"],
            kl_estimator=cfg["kl_estimator"],
            max_len=MAX_LEN,
            dual_clip=cfg["dual_clip"],
            tis_logp_NxT=None if cfg["tis_cap"] is None else tis,
            tis_cap=cfg["tis_cap"],
            entropy_NxT=entropy_NxT,
            entropy_coef=cfg["entropy_coef"],
            denominator=None if dens_M is None else dens_M[k],
        )
        for k, (aggregation, ratio_level) in enumerate(MODES)
    ]
    return jnp.stack([loss for loss, _ in out]), [metrics for _, metrics in out]


@functools.cache
def _compiled(cfg_items):
    """One jit per variant (compiles dominate this file's time): losses, metrics, d loss / d W."""
    cfg = dict(cfg_items)

    def fn(w, arrays, dens_M):
        loss_M, metrics = _all_mode_losses(w, arrays, dens_M, cfg)
        grad_MxDxV = jax.jacrev(lambda w: _all_mode_losses(w, arrays, dens_M, cfg)[0])(w)
        return loss_M, metrics, grad_MxDxV

    return jax.jit(fn)


def _jax_policy_loss(b, cfg, rows=slice(None), dens_M=None):
    """(loss_M, metrics per mode, grad_MxDxV) over the rows of the batch, for every mode."""
    items = tuple(sorted((k, v) for k, v in cfg.items() if k not in ("aggregation", "ratio_level")))
    return _compiled(items)(b["w"], _arrays(b, cfg, rows), dens_M)


def _cfg(variant, aggregation=None, ratio_level=None):
    base = dict(aggregation=aggregation, ratio_level=ratio_level, clip_low=0.2, clip_high=0.28,
                dual_clip=None, tis_cap=None, kl_coef=0.0, kl_estimator="k3", entropy_coef=0.0,
                adv_per_token=False)  # fmt: skip
    extras = {
        "plain": {},
        "k1-dual-tis": dict(kl_coef=0.1, kl_estimator="k1", dual_clip=1.1, tis_cap=1.3),
        "k2-entropy": dict(kl_coef=0.3, kl_estimator="k2", entropy_coef=0.05),
        "k3-token-adv": dict(kl_coef=0.04, dual_clip=2.0, adv_per_token=True, entropy_coef=0.01),
    }
    return {**base, **extras[variant]}


VARIANTS = ["plain", "k1-dual-tis", "k2-entropy", "k3-token-adv"]


def _fd_grad(f, w, h=1e-6):
    g = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        e = np.zeros_like(w)
        e[idx] = h
        g[idx] = (f(w + e) - f(w - e)) / (2 * h)
    return g


@pytest.mark.parametrize("variant", VARIANTS)
def test_policy_loss_value_metrics_and_gradient(variant):
    b = _batch()
    w64 = b["w"].astype(np.float64)
    loss_M, metrics_M, grad_M = _jax_policy_loss(b, _cfg(variant))
    for k, (aggregation, ratio_level) in enumerate(MODES):
        cfg = _cfg(variant, aggregation, ratio_level)
        msg = f"{aggregation} {ratio_level}"
        want_loss, want_metrics = _ref_policy_loss(w64, b, cfg)
        np.testing.assert_allclose(loss_M[k], want_loss, rtol=2e-5, atol=2e-6, err_msg=msg)
        assert set(metrics_M[k]) == set(want_metrics)
        for name, v in want_metrics.items():
            got = metrics_M[k][name]
            np.testing.assert_allclose(got, v, rtol=2e-5, atol=2e-6, err_msg=f"{msg} {name}")
        assert 0 < want_metrics["clip_frac_low"] + want_metrics["clip_frac_high"] < 1  # both
        if variant == "k1-dual-tis":
            assert 0 < want_metrics["dual_clip_frac"] < 1
        surrogate = lambda w, cfg=cfg: _ref_policy_loss(w, b, cfg, w_frozen=w64)[0]
        want_grad = _fd_grad(surrogate, w64)
        np.testing.assert_allclose(grad_M[k], want_grad, rtol=2e-4, atol=2e-6, err_msg=msg)
        if ratio_level == "sequence" and not cfg["adv_per_token"] and cfg["tis_cap"] is None:
            # one weight per sequence: GSPO-token's gradient is the GSPO objective's gradient
            objective = lambda w, cfg=cfg: _ref_policy_loss(w, b, cfg)[0]
            want_grad = _fd_grad(objective, w64)
            np.testing.assert_allclose(grad_M[k], want_grad, rtol=2e-4, atol=2e-6, err_msg=msg)


def test_gradient_accumulation_is_exact():
    b, cfg = _batch(1), _cfg("k1-dual-tis")
    cfg.update(kl_estimator="k3", entropy_coef=0.02)
    micro = [slice(k, k + 2) for k in range(0, N, 2)]
    global_den_M = jnp.array(
        [sum(losses.aggregation_denominator(b["mask"][s], agg) for s in micro) for agg, _ in MODES]
    )
    full_loss_M, _, full_grad_M = _jax_policy_loss(b, cfg)
    parts = [_jax_policy_loss(b, cfg, s, global_den_M) for s in micro]
    np.testing.assert_allclose(sum(p[0] for p in parts), full_loss_M, atol=1e-6)
    np.testing.assert_allclose(sum(p[2] for p in parts), full_grad_M, atol=1e-6)
    assert np.all(np.abs(full_grad_M).max(axis=(1, 2)) > 1e-3)  # not a comparison of zeros
    # dividing by each micro-batch's own denominator would not be exact
    own_M = sum(
        _jax_policy_loss(b, cfg, s, jnp.array([losses.aggregation_denominator(b["mask"][s], agg)
                                               for agg, _ in MODES]))[0]
        for s in micro
    )  # fmt: skip
    assert np.all(np.abs(own_M - full_loss_M) > 1e-4)


def test_policy_loss_terms_and_metric_sums_combine():
    b = _batch(2)
    logp_NxT, entropy_NxT = _jax_policy(b["w"], b["x"], b["tokens"])

    @jax.jit
    def run(logp_NxT, entropy_NxT):
        def terms(rows):
            return losses.policy_loss_terms(
                logp_NxT[rows], b["old"][rows], b["adv_n"][rows], b["mask"][rows],
                ref_logp_NxT=b["ref"][rows], kl_coef=0.1, entropy_NxT=entropy_NxT[rows],
            )  # fmt: skip

        full = losses.policy_loss(
            logp_NxT, b["old"], b["adv_n"], b["mask"], ref_logp_NxT=b["ref"], kl_coef=0.1,
            entropy_NxT=entropy_NxT,
        )  # fmt: skip
        return terms(slice(0, 3)), terms(slice(3, N)), full

    (num1, den1, s1), (num2, den2, s2), (full_loss, full_metrics) = run(logp_NxT, entropy_NxT)
    np.testing.assert_allclose((num1 + num2) / (den1 + den2), full_loss, rtol=1e-6)
    combined = losses.metrics_from_sums(losses.combine_metric_sums(s1, s2))
    assert set(combined) == set(full_metrics)
    for k in full_metrics:
        np.testing.assert_allclose(combined[k], full_metrics[k], rtol=1e-6, err_msg=k)


def test_padding_contributes_nothing():
    b = _batch(3)
    mask = b["mask"]
    logp, _ = _np_logp(b["w"].astype(np.float64), b["x"], b["tokens"])
    logp = logp.astype(np.float32)
    pad = lambda x, v: np.where(mask > 0, x, v).astype(np.float32)

    def all_modes(logp_NxT, others):
        old, ref, tis, ent, adv = others
        out = [
            losses.policy_loss(
                logp_NxT,
                old,
                adv,
                mask,
                aggregation=agg,
                ratio_level=level,
                ref_logp_NxT=ref,
                kl_coef=0.1,
                max_len=MAX_LEN,
                dual_clip=3.0,
                tis_logp_NxT=tis,
                tis_cap=2.0,
                entropy_NxT=ent,
                entropy_coef=0.01,
            )  # fmt: skip
            for agg, level in MODES
        ]
        return jnp.stack([loss for loss, _ in out]), [m for _, m in out]

    fn = jax.jit(lambda lp, o: (all_modes(lp, o), jax.jacrev(lambda lp: all_modes(lp, o)[0])(lp)))
    clean = (b["old"], b["ref"], b["tis"], np.ones((N, T), np.float32), b["adv_nxt"])
    dirty = tuple(pad(x, s * GARBAGE) for x, s in zip(clean, [-1, 1, -1, 1, 1], strict=True))
    (l_clean, m_clean), g_clean = fn(logp, clean)
    (l_dirty, m_dirty), g_dirty = fn(pad(logp, GARBAGE), dirty)
    assert np.all(np.isfinite(l_dirty)) and np.all(np.isfinite(g_dirty))
    np.testing.assert_array_equal(l_dirty, l_clean)
    np.testing.assert_array_equal(g_dirty, g_clean)
    np.testing.assert_array_equal(np.where(mask[None] > 0, 0.0, g_dirty), 0.0)
    assert np.abs(g_clean).max() > 1e-3
    for k in range(len(MODES)):
        for name in m_clean[k]:
            np.testing.assert_array_equal(m_dirty[k][name], m_clean[k][name], err_msg=name)


def test_aggregate_terms_hand_values():
    v = jnp.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [7.0, 7.0, 7.0]])
    mask = jnp.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)
    num, den = losses.aggregate_terms(v, mask, "seq-mean-token-mean")
    np.testing.assert_allclose([num, den], [2.0 + 4.0, 2.0])
    num, den = losses.aggregate_terms(v, mask, "token-mean")
    np.testing.assert_allclose([num, den], [10.0, 4.0])
    num, den = losses.aggregate_terms(v, mask, "seq-mean-token-sum-norm", max_len=5)
    np.testing.assert_allclose([num, den], [10.0 / 5, 2.0])
    np.testing.assert_allclose(losses.aggregate(v, mask, "seq-mean-token-sum-norm"), 10 / 3 / 2)
    assert losses.aggregate(v, jnp.zeros_like(mask), "token-mean") == 0.0
    with pytest.raises(ValueError):
        losses.aggregate_terms(v, mask, "sum")


def test_metrics_with_every_token_masked_are_zero():
    # rl.mask_truncated with every response cut: no token counts; ratio_max logged -inf.
    logp = jnp.full((2, 3), -1.0)
    _, metrics = losses.policy_loss(logp, logp, jnp.ones(2), jnp.zeros((2, 3), bool))
    assert {k: float(v) for k, v in metrics.items()} == dict.fromkeys(metrics, 0.0)


def test_policy_loss_rejects_bad_arguments():
    lp, mask = jnp.zeros((2, 3)), jnp.ones((2, 3))
    with pytest.raises(ValueError):
        losses.policy_loss(lp, lp, jnp.zeros((3,)), mask)  # advantages fit neither [N] nor [N, T]
    with pytest.raises(ValueError):
        losses.policy_loss(lp, jnp.zeros((2, 4)), jnp.zeros((2,)), mask)
    with pytest.raises(ValueError):
        losses.policy_loss(lp, lp, jnp.zeros((2,)), mask, ratio_level="sentence")
    with pytest.raises(ValueError):
        losses.policy_loss(lp, lp, jnp.zeros((2,)), mask, dual_clip=0.5)
    with pytest.raises(ValueError):
        losses.policy_loss(lp, lp, jnp.zeros((2,)), mask, aggregation="token-sum")


def test_kl_estimators_formulas_and_monte_carlo():
    lp, ref = jnp.array([[-1.0, -2.0]]), jnp.array([[-1.5, -0.5]])
    np.testing.assert_allclose(losses.kl(lp, ref, "k1"), [[0.5, -1.5]])
    np.testing.assert_allclose(losses.kl(lp, ref, "k2"), [[0.125, 1.125]])
    k3 = [np.exp(-0.5) + 0.5 - 1, np.exp(1.5) - 1.5 - 1]
    np.testing.assert_allclose(losses.kl(lp, ref, "k3"), [k3], rtol=1e-6)
    with pytest.raises(ValueError):
        losses.kl(lp, ref, "k4")
    # k1 and k3 are unbiased for KL(p || q) on samples from p; k3 is never negative.
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
    true_kl = float(np.sum(p * np.log(p / q)))
    y = rng.choice(6, size=(1, 200_000), p=p)
    lp_s, lq_s = jnp.asarray(np.log(p)[y], jnp.float32), jnp.asarray(np.log(q)[y], jnp.float32)
    for est in ["k1", "k3"]:
        np.testing.assert_allclose(jnp.mean(losses.kl(lp_s, lq_s, est)), true_kl, rtol=0.03)
    assert jnp.min(losses.kl(lp_s, lq_s, "k3")) >= 0.0
    # Near the reference (early in a run) k3 ~ x^2 / 2 keeps its digits in float32: computed as
    # exp(x) - x - 1 it read 0 or below for |x| < 1e-4 (the logged kl_ref and PPO's kl_ref_k3).
    lp = jnp.full((1, 6), -2.0, jnp.float32)
    ref = lp + jnp.asarray([[5e-5, -2e-5, 1e-4, -4e-4, 2e-3, -1e-2]], jnp.float32)
    x = np.asarray(ref, np.float64) - np.asarray(lp, np.float64)  # the float32 inputs' log ratio
    np.testing.assert_allclose(losses.kl(lp, ref, "k3"), np.expm1(x) - x, rtol=2e-2)


def _ref_value_loss(v, old, ret, mask, clip):
    per = {}
    for i in range(v.shape[0]):
        for t in range(v.shape[1]):
            if mask[i, t]:
                vc = old[i, t] + min(max(v[i, t] - old[i, t], -clip), clip)
                per[i, t] = 0.5 * max((v[i, t] - ret[i, t]) ** 2, (vc - ret[i, t]) ** 2)
    return sum(per.values()) / len(per)


def test_value_loss_matches_reference_and_gradient():
    b = _batch(4)
    rng = np.random.default_rng(4)
    v, old, ret = (rng.normal(size=(N, T)).astype(np.float32) for _ in range(3))
    mask = b["mask"]
    pad = lambda x: np.where(mask > 0, x, GARBAGE).astype(np.float32)
    fn = jax.jit(lambda v: losses.value_loss(v, pad(old), pad(ret), mask, clip=0.3))
    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(pad(v))
    want = _ref_value_loss(v.astype(np.float64), old, ret, mask, 0.3)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert 0 < metrics["vf_clip_frac"] < 1
    f = lambda w: _ref_value_loss(w, old, ret, mask, 0.3)
    np.testing.assert_allclose(grad, _fd_grad(f, v.astype(np.float64)), rtol=1e-4, atol=1e-6)
    plain, _ = losses.value_loss(v, old, ret, mask, clip=None)
    np.testing.assert_allclose(plain, _ref_value_loss(v, old, ret, mask, np.inf), rtol=1e-5)


def _ref_kl_penalty(w, b, beta):
    lp, _ = _np_logp(w, b["x"], b["tokens"])
    per = {}
    for i in range(N):
        for t in range(T):
            if b["mask"][i, t]:
                r = np.exp(lp[i, t] - b["old"][i, t])
                # KL(old || new) with samples from old: k3 with log(new / old)
                lr = lp[i, t] - b["old"][i, t]
                per[i, t] = -r * b["adv_n"][i] + beta * (np.exp(lr) - lr - 1)
    return _np_aggregate(per, b["mask"], "token-mean", MAX_LEN)


def test_kl_penalty_policy_loss_matches_reference_and_gradient():
    b = _batch(5)

    def fn(w):
        logp_NxT, _ = _jax_policy(w, b["x"], b["tokens"])
        return losses.kl_penalty_policy_loss(logp_NxT, b["old"], b["adv_n"], b["mask"], kl_coef=0.5)

    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(b["w"])
    w64 = b["w"].astype(np.float64)
    np.testing.assert_allclose(loss, _ref_kl_penalty(w64, b, 0.5), rtol=2e-5)
    assert metrics["kl_old"] > 0
    want = _fd_grad(functools.partial(_ref_kl_penalty, b=b, beta=0.5), w64)
    np.testing.assert_allclose(grad, want, rtol=2e-4, atol=2e-6)


def test_adaptive_kl_coef():
    # PPO §4: halve below target / 1.5, double above target * 1.5, keep in between (edges kept).
    assert losses.adaptive_kl_coef(0.1, 0.005, target=0.01) == 0.05
    assert losses.adaptive_kl_coef(0.1, 0.016, target=0.01) == 0.2
    for d in (0.01 / 1.5, 0.007, 0.01, 0.014, 0.015):
        assert losses.adaptive_kl_coef(0.1, d, target=0.01) == 0.1


def test_proportional_kl_coef():
    # Ziegler et al. 2019 §2.2: e clipped to +-0.2, beta *= 1 + e * n / horizon.
    f = lambda d: losses.proportional_kl_coef(0.1, d, target=6.0, n_samples=256, horizon=10000)  # noqa: E731
    assert f(6.6) == pytest.approx(0.1 * (1 + 0.1 * 256 / 10000))
    assert f(60.0) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))  # the error is clipped
    assert f(0.0) == pytest.approx(0.1 * (1 - 0.2 * 256 / 10000))
    assert f(6.0) == 0.1


def test_kl_in_reward():
    lp = jnp.array([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]])
    ref = jnp.array([[-1.5, -2.0, GARBAGE], [-0.5, -1.0, -2.0], [0.0, 0.0, 0.0]])
    mask = jnp.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], bool)
    got = losses.kl_in_reward(jnp.array([1.0, 2.0, 3.0]), lp, ref, mask, kl_coef=0.1)
    want = [[-0.05, 1.0, 0.0], [0.05, 0.0, 2.0 - 0.1], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
