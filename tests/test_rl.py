"""The RL stage end to end: GRPO and PPO raise a rule reward; a killed run resumes exactly."""

import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from r1jax import configlib, sharding
from r1jax.data import sources
from r1jax.rl import rollout
from r1jax.train import checkpoint, rl
from r1jax.train import metrics as metrics_lib
from r1jax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("_s", "tokens_per_s", "mfu", "rewards/seconds")


def _cfg(spec, **overrides):
    # One device: the 8 simulated ones only slow a 2-core machine (sharding has its own tests).
    base = dict(
        metrics__tensorboard=False,
        metrics__peak_flops=1e9,
        rl__log_samples_every=0,
        mesh__num_devices=1,
    )
    return configlib.load_config(os.path.join(REPO, spec), **{**base, **overrides})


def _rows(workdir):
    return [
        r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if "reward" in r
    ]


def _rise(rows, k=5):
    rewards = [r["reward"] for r in rows]
    return np.mean(rewards[:k]), np.mean(rewards[-k:])


def test_grpo_raises_the_reward(tmp_path, shared_data):
    cfg = _cfg("configs/grpo.py:tiny", train__steps=30)
    rl.run(cfg, tmp_path)
    rows = _rows(tmp_path)
    assert len(rows) == 30
    schedule = state_lib.learning_rate_schedule(cfg.optim, 30)  # the rate each step applied
    np.testing.assert_allclose([r["lr"] for r in rows], [schedule(s) for s in range(30)])
    first, last = _rise(rows)
    assert last > first + 0.25, (first, last)
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert rows[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # one on-policy update a step


def test_ppo_raises_the_reward(tmp_path, shared_data):
    rl.run(_cfg("configs/ppo.py:tiny", train__steps=30), tmp_path)
    rows = _rows(tmp_path)
    first, last = _rise(rows)
    assert last > first + 0.2, (first, last)
    # The critic learns to predict the returns: its explained variance on the rollout rises.
    fit = [r["value/explained_variance"] for r in rows if "value/explained_variance" in r]
    assert len(fit) >= len(rows) - 2 and np.mean(fit[-5:]) > np.mean(fit[:5]) + 0.2, fit


def test_ppo_critic_lr_trains_the_critic_on_an_optimizer_of_its_own(tmp_path, shared_data):
    # The parts' arithmetic is test_steps.py's; here the run builds, shards and logs it.
    cfg = _cfg("configs/ppo.py:tiny", train__steps=2, rl__critic_lr=1e-2)
    rl.run(cfg, tmp_path)
    rows = _rows(tmp_path)
    critic = state_lib.learning_rate_schedule(cfg.optim, 2, 1e-2)
    np.testing.assert_allclose([r["value/lr"] for r in rows], [critic(0), critic(1)], rtol=1e-6)
    assert rows[1]["value/lr"] > rows[1]["lr"] > 0


def test_critic_fit_is_the_explained_variance_of_the_returns_over_completion_tokens():
    rng = np.random.default_rng(0)
    g, v = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    mask = (rng.random((4, 6)) < 0.7).astype(np.float32)
    g_pad = np.where(mask > 0, g, np.inf)  # padding holds anything
    batch = {"old_values_NxT": jnp.asarray(v), "returns_NxT": jnp.asarray(g_pad, jnp.float32)}
    fit = rl._critic_fit(batch, mask)
    gv, vv = g[mask > 0].astype(np.float32).astype(np.float64), v[mask > 0]
    assert fit["value/explained_variance"] == pytest.approx(1 - np.var(gv - vv) / np.var(gv))
    assert fit["value/return_mean"] == pytest.approx(np.mean(gv))
    batch["returns_NxT"] = jnp.ones((4, 6))  # returns that do not vary: nothing to explain
    assert set(rl._critic_fit(batch, mask)) == {"value/return_mean"}


def test_ppo_kl_penalty_adapts_its_coefficient_to_the_updates_kl(tmp_path, shared_data):
    # PPO §4: d = KL(pi_old || pi) after the update (not the drift from the reference) halves or
    # doubles beta toward rl.kl_target. Recomputed here from the policy before and after.
    cfg = _cfg("configs/ppo.py:tiny,kl_penalty", train__steps=2)
    r = rl.RLRun(cfg, tmp_path)
    try:
        before = jax.tree.map(jnp.copy, r.state.params["policy"])
        metrics, _ = r.step_once()
        batch = sharding.put_batch(r.last_host_batch, r.mesh)
        old = np.asarray(r.jitted.logprobs(before, batch))
        new = np.asarray(r.jitted.logprobs(r.state.params["policy"], batch))
    finally:
        r.close()
    mask = r.last_host_batch["completion_mask_NxT"]
    log_ratio = np.where(mask > 0, new - old, 0.0)
    d = float(((np.exp(log_ratio) - log_ratio - 1.0) * mask).sum() / mask.sum())
    assert d > 0 and metrics["kl_old_new"] == pytest.approx(d, rel=1e-4)
    beta = float(np.float32(cfg.rl.kl_coef))
    want = (
        beta / 2 if d < cfg.rl.kl_target / 1.5 else beta * 2 if d > cfg.rl.kl_target * 1.5 else beta
    )
    assert r.kl_coef == pytest.approx(want, rel=1e-6)


def test_ppo_kl_horizon_adapts_the_reward_kl_as_ziegler_et_al(tmp_path, shared_data):
    # Ziegler et al. 2019 §2.2 (TRL's AdaptiveKLController): e = clip(KL / target - 1, +-0.2),
    # beta *= 1 + e * N / horizon, KL = the rollout's k1 KL(old || ref) summed per sample.
    cfg = _cfg("configs/ppo.py:tiny", rl__kl_horizon=100, rl__kl_target=1e-3, train__steps=2)
    r = rl.RLRun(cfg, tmp_path)
    try:
        r.step_once()  # the policy moves away from the reference
        beta = r.kl_coef
        before = jax.tree.map(jnp.copy, r.state.params["policy"])
        metrics, _ = r.step_once()
        batch = sharding.put_batch(r.last_host_batch, r.mesh)
        old = np.asarray(r.jitted.logprobs(before, batch), np.float64)
        ref = np.asarray(r.jitted.logprobs(r.ref, batch), np.float64)
    finally:
        r.close()
    mask = r.last_host_batch["completion_mask_NxT"]
    kl = float(((old - ref) * mask).sum(axis=1).mean())
    assert kl > 0 and metrics["kl_ref_per_sample"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    n = mask.shape[0]
    want = beta * (1 + float(np.clip(kl / 1e-3 - 1, -0.2, 0.2)) * n / 100)
    assert r.kl_coef == pytest.approx(want, rel=1e-6) and r.kl_coef != beta


def test_ppo_score_gets_dapo_overlong_shaping(tmp_path, shared_data):
    # With gamma = lambda = 1 and no KL in the reward, the return at the first completion token
    # is the sequence's score: the task reward plus the soft overlong penalty.
    cfg = _cfg(
        "configs/ppo.py:tiny", rl__lam=1.0, rl__kl_coef=0.0, rl__overlong_buffer=12, train__steps=1
    )
    r = rl.RLRun(cfg, tmp_path)
    try:
        _, samples = r.step_once()
        batch = sharding.put_batch(r.last_host_batch, r.mesh)
        batch["old_logp_NxT"] = r.jitted.logprobs(r.state.params["policy"], batch)
        batch["ref_logp_NxT"] = jnp.zeros_like(batch["old_logp_NxT"])  # unused: no KL
        r._ppo_targets(batch, samples)
        returns_N = np.asarray(batch["returns_NxT"])[:, 0]
    finally:
        r.close()
    shaping_N = rollout.overlong_shaping(samples.lengths_N, cfg.rl.max_new_tokens, 12, 1.0)
    assert np.any(shaping_N < 0)
    np.testing.assert_allclose(returns_N, samples.rewards_N + shaping_N, atol=1e-5)


class _Killed(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, shared_data, monkeypatch):
    spec, steps = "configs/grpo.py:tiny", dict(train__steps=6, train__checkpoint_every=3)
    rl.run(_cfg(spec, **steps), tmp_path / "full")
    original = rl.RLRun.step_once
    calls = {"n": 0}

    def dies_at_step_5(self):
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Killed()
        return original(self)

    monkeypatch.setattr(rl.RLRun, "step_once", dies_at_step_5)
    with pytest.raises(_Killed):
        rl.run(_cfg(spec, **steps), tmp_path / "resumed")
    monkeypatch.setattr(rl.RLRun, "step_once", original)
    rl.run(_cfg(spec, **steps), tmp_path / "resumed")

    def stable(rows):
        return [{k: v for k, v in r.items() if not any(t in k for t in TIMING_KEYS)} for r in rows]

    full, resumed = stable(_rows(tmp_path / "full")), stable(_rows(tmp_path / "resumed"))
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert resumed == full


def test_a_resume_takes_the_configs_kl_coef_unless_it_adapts(tmp_path, shared_data):
    # Turning the KL on at a resume (trained with kl_coef 0) used the checkpoint's 0 to skip the
    # reference pass while the loss took the config's 0.001: k3 against zeros, kl_ref ~800.
    spec = "configs/grpo.py:tiny"
    rl.run(_cfg(spec, rl__kl_coef=0.0, train__steps=1, train__checkpoint_every=1), tmp_path)
    r = rl.RLRun(_cfg(spec, rl__kl_coef=0.001, train__steps=2), tmp_path)
    try:
        assert int(r.state.step) == 1 and r.kl_coef == pytest.approx(0.001)
        metrics, _ = r.step_once()
    finally:
        r.close()
    assert 0 <= metrics["kl_ref"] < 0.1, metrics["kl_ref"]


def test_kl_coef_zero_holds_and_checkpoints_no_reference(tmp_path, shared_data):
    """DAPO / GSPO train without a KL term: no reference policy on the devices or on disk. A
    reference-holding checkpoint resumes with the KL off and drops it."""
    spec = "configs/grpo.py:tiny"
    rl.run(_cfg(spec, train__steps=1, train__checkpoint_every=1), tmp_path / "kl")
    r = rl.RLRun(_cfg(spec, rl__kl_coef=0.0, train__steps=3), tmp_path / "kl")
    try:
        assert int(r.state.step) == 1 and r.ref is None
        metrics, _ = r.step_once()
        r.save(force=True)
        r.ckpt.wait_until_finished()
        assert "kl_ref" not in metrics and np.isfinite(metrics["loss"])
        assert checkpoint.saved_keys(r.ckpt, 1, "extra") == {"flops", "kl_coef", "ref"}
        assert checkpoint.saved_keys(r.ckpt, 2, "extra") == {"flops", "kl_coef"}
    finally:
        r.close()
    assert checkpoint.saved_keys(r.ckpt, 3, "extra") is None  # no such step


def test_a_kl_turned_on_after_a_reference_reset_stops_with_the_way_out(tmp_path, shared_data):
    spec = "configs/grpo.py:tiny"
    steps = dict(train__steps=2, train__checkpoint_every=1)
    rl.run(_cfg(spec, rl__kl_coef=0.0, rl__ref_reset_every=2, **steps), tmp_path)
    with pytest.raises(configlib.ConfigError, match="ref_reset_every=2 replaced.*kl_coef=0"):
        rl.RLRun(_cfg(spec, rl__ref_reset_every=2, train__steps=3), tmp_path)


def test_rollouts_sample_in_calls_of_sample_prompts_per_call(tmp_path, shared_data):
    """3 prompts a call for 4 prompts: two calls of one program (the last padded), and every
    prompt keeps the draws it has in one call of all four: the same samples as one call."""
    from r1jax import sampler

    cfg = _cfg("configs/grpo.py:tiny", rl__sample_prompts_per_call=3, train__steps=1)
    r = rl.RLRun(cfg, tmp_path)
    try:
        rs = np.random.RandomState(0)
        prompt_BxP = rs.randint(1, 100, (4, 16)).astype(np.int32)
        lens_B = np.asarray([16, 9, 12, 5], np.int32)
        r.step = 0  # set by step_once
        before = sampler._generate_jit._cache_size()
        out = r._sample(prompt_BxP, lens_B, round_index=1)
        assert sampler._generate_jit._cache_size() - before == 1
        assert out["tokens"].shape == (4 * cfg.rl.num_samples, cfg.rl.max_new_tokens)
        key = jax.random.fold_in(jax.random.fold_in(r.sample_key, 0), 1)
        whole = r._sample_call(prompt_BxP, lens_B, key, None)
        np.testing.assert_array_equal(out["tokens"], whole["tokens"])
        np.testing.assert_array_equal(out["lengths"], whole["lengths"])
        np.testing.assert_allclose(out["logprobs"], whole["logprobs"], atol=1e-5)
        metrics, _ = r.step_once()
    finally:
        r.close()
    assert np.isfinite(metrics["loss"]) and metrics["reward"] >= 0


def test_rl_config_mistakes_name_the_field(shared_data):
    with pytest.raises(configlib.ConfigError, match=r"config\.rl\.num_samples"):
        configlib.validate(_cfg("configs/grpo.py:tiny", rl__num_samples=1), num_devices=1)
    with pytest.raises(configlib.ConfigError, match=r"config\.rl\.prompts_per_step"):
        bad = _cfg(
            "configs/grpo.py:tiny", rl__prompts_per_step=3, rl__num_samples=3, mesh__num_devices=0
        )
        configlib.validate(bad, num_devices=8)
    with pytest.raises(configlib.ConfigError, match=r"config\.rl\.aggregation"):
        configlib.validate(_cfg("configs/grpo.py:tiny", rl__aggregation="mean"), num_devices=1)


def test_records_the_rewards_cannot_grade_stop_the_run_before_training(tmp_path):
    # Without the check, every completion of the second record would score 0 (a crash count).
    data = tmp_path / "train.jsonl"
    rows = [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg("configs/grpo.py:tiny", data__train=str(data), data__format="jsonl", data__eval="")
    cfg.rl.rewards = ml_collections.ConfigDict({"accuracy": 1.0, "format": 0.5})
    with pytest.raises(sources.DataError, match=r"train\.jsonl\): record 2: no 'answer' field"):
        rl.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "spec",
    [
        "configs/grpo.py:tiny",
        "configs/grpo.py:qwen2.5-1.5b",
        "configs/grpo.py:qwen2.5-1.5b,dapo",
        "configs/grpo.py:dr_grpo",
        "configs/grpo.py:gspo",
        "configs/grpo.py:rloo",
        "configs/grpo.py:qwen2.5-7b-tpu",
        "configs/ppo.py:tiny",
        "configs/ppo.py:qwen2.5-1.5b,separate,kl_penalty",
    ],
)
def test_rl_variants_load_and_give_loss_configs(spec):
    cfg = _cfg(spec)
    assert cfg.stage == "rl"
    lcfg = rl.loss_config(cfg)
    assert lcfg.aggregation == cfg.rl.aggregation
    rcfg = rl.rollout_config(cfg)
    assert rcfg.num_samples == cfg.rl.num_samples
    # PPO's per-token KL in the reward is k1 (logp - ref); GRPO's in the loss is k3.
    assert cfg.rl.kl_estimator == ("k1" if cfg.rl.algorithm == "ppo" else "k3")


def test_compute_counts_every_sampling_round(tmp_path, shared_data, monkeypatch):
    # Dynamic sampling drops groups and samples again: those tokens were generated (and timed)
    # too. Here the first group of each step's first round is dropped, forcing a second round.
    generated, sample_round = [], rollout.ExperienceMaker._sample_round
    informative = rollout.informative_groups

    def counted(self, round_index):
        s = sample_round(self, round_index)
        generated.append((round_index, int(s.lengths_N.sum())))
        return s

    def drop_first(rewards_BxG):
        keep = informative(rewards_BxG) | True
        if generated[-1][0] == 0:
            keep[0] = False
        return keep

    monkeypatch.setattr(rollout.ExperienceMaker, "_sample_round", counted)
    monkeypatch.setattr(rollout, "informative_groups", drop_first)
    rl.run(_cfg("configs/grpo.py:tiny", train__steps=2, rl__dynamic_sampling=True), tmp_path)
    rows = _rows(tmp_path)
    assert [r["sampling_rounds"] for r in rows] == [2, 2]
    per_step = [a + b for (_, a), (_, b) in zip(generated[::2], generated[1::2], strict=True)]
    assert [r["generated_tokens"] for r in rows] == per_step
    for row in rows:
        assert row["gen_tokens_per_s"] == pytest.approx(
            row["generated_tokens"] / row["step_time_s"]
        )


def test_non_finite_updates_in_a_row_stop_the_run_and_save_the_rollout(
    tmp_path, shared_data, monkeypatch
):
    make = rollout.ExperienceMaker.make

    def poisoned(self):
        batch, metrics, samples = make(self)
        batch["advantages_N"] = np.full_like(batch["advantages_N"], np.nan)
        return batch, metrics, samples

    monkeypatch.setattr(rollout.ExperienceMaker, "make", poisoned)
    cfg = _cfg("configs/grpo.py:tiny", train__steps=5, train__max_bad_steps=2)
    with pytest.raises(rl.trainer.BadStepsError, match="bad_batch_step2"):
        rl.run(cfg, tmp_path)
    saved = np.load(tmp_path / "bad_batch_step2.npz")
    assert np.isnan(saved["advantages_N"]).all() and saved["input_ids_NxL"].shape[0] == 32
    rows = _rows(tmp_path)
    assert rows[0]["skipped_updates"] == 1.0


def test_dynamic_sampling_pads_the_batch_to_every_rounds_prompt_width():
    # Rounds are global (each one's prompt bucket agreed by every process), but each process
    # picks its own groups: one whose picks all came from a round of short prompts made a
    # narrower batch than another's, and the processes compiled the update for other shapes.
    def round_of(width, rewards):
        b, g, t = 2, 2, 3
        return rollout.Samples(
            records=[{"prompt": f"p{width}-{i}"} for i in range(b)],
            prompt_BxP=np.ones((b, width), np.int32),
            prompt_lens_B=np.full((b,), width, np.int32),
            completion_NxT=np.ones((b * g, t), np.int32),
            lengths_N=np.full((b * g,), t, np.int32),
            truncated_N=np.zeros((b * g,), bool),
            sampler_logp_NxT=np.zeros((b * g, t), np.float32),
            texts=["x"] * (b * g),
            rewards_N=np.asarray(rewards, np.float32),
            per_fn={},
        )

    short = round_of(16, [1.0, 0.0, 1.0, 0.0])  # both groups informative
    long = round_of(32, [1.0, 1.0, 0.0, 0.0])  # neither
    kept = [(short, np.array([True, True])), (long, np.array([False, False]))]
    samples = rollout._select_groups(kept, 2, 2, pad_id=0)
    assert [r["prompt"] for r in samples.records] == ["p16-0", "p16-1"]
    assert samples.prompt_BxP.shape == (2, 32)
    assert (samples.prompt_BxP[:, :16] == 0).all() and (samples.prompt_BxP[:, 16:] == 1).all()


def test_steps_whose_groups_all_score_alike_are_warned_once(caplog):
    # A reward that cannot pay (an answer field the data lacks) gave every group the same
    # scores: GRPO's advantages were all 0 and the run trained on the KL alone, silently.
    grpo = _cfg("configs/grpo.py:tiny")
    alike, mixed = {"zero_std_groups": 1.0, "reward": 0.0}, {"zero_std_groups": 0.75}
    count = 0
    with caplog.at_level("WARNING"):
        for step in range(1, 2 * rl.NO_SIGNAL_STEPS + 1):
            count = rl._watch_learning_signal(grpo, mixed if step == 3 else alike, step, count)
    warned = [r.getMessage() for r in caplog.records if "scored alike" in r.getMessage()]
    assert warned == [warned[0]] and warned[0].startswith(f"steps 4-{3 + rl.NO_SIGNAL_STEPS}:")
    assert "mean reward 0.000" in warned[0] and "config.rl.rewards" in warned[0]
    ppo = _cfg("configs/ppo.py:tiny")  # its critic's advantages need no spread in the rewards
    assert rl._watch_learning_signal(ppo, alike, 1, rl.NO_SIGNAL_STEPS - 1) == 0


def test_a_rollout_beyond_memory_is_refused_before_the_base_evaluation(tmp_path):
    from r1jax import memory

    # The world's R1-Zero run evaluates its base model first (hours for a real benchmark); a
    # rollout that cannot fit failed only after it.
    cfg = _cfg("configs/r1_zero.py:tiny", rl__max_new_tokens=2**40)
    with pytest.raises(
        memory.OutOfMemory,
        match=r"a rollout sampler call of 16 prompts x 8 samples x 1099511627776 new tokens .* "
        r"needs at least [0-9.]+ GiB, more than this host's",
    ):
        rl.run(cfg, tmp_path)
    assert not list(tmp_path.glob("eval_before*"))


class _CharTokenizer:
    vocab_size, bos_id, eos_id, pad_id = 128, None, 3, 0

    def encode(self, s):
        return [min(ord(c), 127) for c in s]

    def decode(self, ids):
        return "".join(chr(int(i)) for i in ids)


def _one_reward_pool():
    score = lambda texts, records, names: (np.ones(len(texts), np.float32), {}, {})
    return types.SimpleNamespace(names=["target_chars"], score=score)


def _same_samples(group_size, *, truncated: bool):
    """A sampler giving every one of group_size() samples per prompt the tokens "AAAAA"."""

    def sample_fn(prompt_BxP, lens_B, round_index):
        n, t = prompt_BxP.shape[0] * group_size(), 5
        return {
            "tokens": np.full((n, t), 65, np.int32),
            "lengths": np.full((n,), t, np.int32),
            "truncated": np.full((n,), truncated),
            "logprobs": np.zeros((n, t), np.float32),
        }

    return sample_fn


def test_ppo_rolls_out_one_sample_per_prompt():
    # validate admits rl.num_samples=1 for PPO (its advantages are GAE's), but the rollout
    # computed GRPO's group advantages anyway and raised "needs G >= 2" at the first step.
    sample_fn = _same_samples(lambda: maker.cfg.num_samples, truncated=True)
    records = iter([{"prompt": f"question {i}", "answer": "1"} for i in range(64)])
    for spec, group in (("configs/ppo.py:tiny", 1), ("configs/grpo.py:tiny", 2)):
        cfg = rl.rollout_config(_cfg(spec, rl__num_samples=group))
        maker = rollout.ExperienceMaker(
            cfg, _CharTokenizer(), _one_reward_pool(), sample_fn, records
        )
        batch, metrics, _ = maker.make()
        assert batch["completion_mask_NxT"].shape == (cfg.prompts_per_step * group, 5)
        assert ("advantages_N" in batch) == (group == 2)  # PPO's come from GAE in the trainer
        assert metrics["reward"] == 1.0
        assert metrics.get("zero_std_groups") == (None if group == 1 else 1.0)  # no groups


def test_reward_errors_of_every_sampling_round_are_counted():
    # Dynamic sampling scores several rounds a step; the last round's timeouts and crashes
    # alone were logged (here 1 of 3), those of the rounds before it went uncounted.
    sample_fn = _same_samples(lambda: maker.cfg.num_samples, truncated=True)

    def score(texts, records, names):  # all alike: no group is informative, 3 rounds
        metrics = {"rewards/crashes/target_chars": 1.0, "rewards/worker_restarts": 5.0}
        return np.ones(len(texts), np.float32), {}, metrics

    pool = types.SimpleNamespace(names=["target_chars"], score=score)
    records = iter([{"prompt": f"question {i}", "answer": "1"} for i in range(64)])
    cfg = rl.rollout_config(
        _cfg("configs/grpo.py:tiny", rl__dynamic_sampling=True, rl__max_sampling_rounds=3)
    )
    maker = rollout.ExperienceMaker(cfg, _CharTokenizer(), pool, sample_fn, records)
    _, metrics, _ = maker.make()
    assert metrics["sampling_rounds"] == 3
    assert metrics["rewards/crashes/target_chars"] == 3.0
    assert metrics["rewards/worker_restarts"] == 5.0  # the pool's running total
    _, metrics, _ = maker.make()
    assert metrics["rewards/crashes/target_chars"] == 3.0  # each step its own


def test_samples_jsonl_shows_a_general_prompt_of_an_all_domain_step(tmp_path):
    # General prompts come last in a step's batch and samples.jsonl showed the first 4 prompts:
    # an all-domain run never showed one of its general completions.
    records = [{"prompt": f"q{i}"} for i in range(6)] + [{"prompt": "hi", "domain": "general"}] * 2
    samples = types.SimpleNamespace(
        records=records,
        texts=[f"t{i}" for i in range(16)],
        rewards_N=np.arange(16, dtype=np.float32),
    )
    rl._log_sample(3, samples, 3, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["q0", "q1", "q2", "hi"]
    assert rows[3] == {
        "step": 3,
        "prompt": "hi",
        "completion": "t12",
        "reward": 12.0,
        "domain": "general",
    }
    assert "domain" not in rows[0]
    samples.records = records[:6] + [{"prompt": "q6"}, {"prompt": "q7"}]  # no general prompt
    rl._log_sample(6, samples, 3, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows[4:]] == ["q0", "q1", "q2", "q3"]


def test_all_domain_steps_log_each_kinds_mean_reward():
    # `reward` mixes the rules' and the reward models' scales, and jumped when general prompts
    # joined: each kind's mean is logged, and with the share they make up `reward`.
    sample_fn = _same_samples(lambda: maker.cfg.num_samples, truncated=False)

    class Scorer:
        scope = "response"

        def score(self, prompts, responses, *, opens_think):
            return np.full(len(prompts), 3.0, np.float32)

    records = iter([{"prompt": "q", "answer": "1"}] * 3 + [{"prompt": "g", "domain": "general"}])
    cfg = rl.rollout_config(_cfg("configs/grpo.py:tiny"))  # 4 prompts x 8 samples
    maker = rollout.ExperienceMaker(
        cfg, _CharTokenizer(), _one_reward_pool(), sample_fn, records, [("rm", Scorer(), 1.0)]
    )
    _, metrics, _ = maker.make()
    assert (metrics["reward_reasoning"], metrics["reward_general"]) == (1.0, 3.0)
    share = metrics["general_prompt_share"]
    assert share == 0.25 and metrics["reward"] == (1 - share) * 1.0 + share * 3.0
    assert metrics["reward/rm"] == 3.0


def test_general_rows_without_a_reward_model_are_refused_at_start(tmp_path):
    # A data.train row of domain "general" is scored by a reward model. Without one the rollout
    # raised a ValueError traceback at the step that drew it (hours in; under several processes
    # on that process alone, the others waiting in the step's collectives). Now at start.
    rows = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(6)]
    rows[4]["domain"] = "general"
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg("configs/grpo.py:tiny", data__format="jsonl", data__train=str(path))
    with pytest.raises(sources.DataError, match=r"record 5 is of domain 'general'.*reward_model"):
        rl.RLRun(cfg, tmp_path / "run")
