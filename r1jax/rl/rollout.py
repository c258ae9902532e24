"""The experience maker: prompts -> G completions each -> rewards -> advantages -> one RL batch.

Shapes: B prompts, G samples per prompt, N = B*G sequences, P prompt bucket, T new tokens, L = P+T.
"""

import dataclasses
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from absl import logging

from r1jax import distributed, sampler, text
from r1jax.data import pipeline
from r1jax.rewards import preference, registry
from r1jax.rl import advantages as adv_lib


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How one rollout is made; built once from config.rl."""

    prompts_per_step: int  # B
    num_samples: int  # G
    max_prompt_len: int  # longer prompts are cut from the left (keeping the question's end)
    max_new_tokens: int  # T
    template: str = "r1_zero"
    advantage: str = "grpo"  # grpo | rloo
    std_normalize: str = "group"  # group | batch | none (none = Dr. GRPO)
    # False for PPO: the trainer takes its advantages from GAE, and one sample per prompt (which
    # PPO allows) has no group to compare with.
    group_advantages: bool = True
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, refill
    max_sampling_rounds: int = 3  # cap on sampling rounds per step, the first one included
    mask_truncated: bool = False  # completions without EOS get no loss
    overlong_buffer: int = 0  # DAPO soft overlong penalty over the last N tokens (0 = off)
    overlong_penalty: float = 1.0  # the penalty at the hard limit
    # All-domain RL: rule rewards general prompts get too, added to the reward models' score
    # (R1 in Nature, equations 8-10: format for general prompts, language for every prompt).
    general_rule_rewards: tuple[str, ...] = ()
    # All-domain RL: subtracted from a general response's reward when it has no stop token
    # (cut at max_new_tokens), which the reward models read as if finished (TRL's option).
    missing_eos_penalty: float = 0.0


def prompt_bucket(length: int, max_len: int) -> int:
    """The sampler's bucket for `length`, capped at max_len (a handful of compiled programs)."""
    return min(sampler.prompt_bucket(length), max(max_len, length))


def encode_prompts(records: list[dict], tokenizer, template: str, max_len: int) -> list[list[int]]:
    """Token ids of each record's templated prompt (BOS first when the tokenizer has one).

    A prompt longer than max_len keeps its end, and its BOS, as SFT rows keep theirs
    (`pipeline.tokenize_sft`): the model is not prompted without the BOS it was trained with."""
    bos = text.bos_ids(tokenizer)
    out = []
    for r in records:
        ids = text.prompt_ids(tokenizer, template, r["prompt"])
        keep = max_len - len(bos)  # prompt tokens that fit beside the BOS
        out.append(bos + ids[max(0, len(ids) - keep) :] if keep > 0 else (bos + ids)[-max_len:])
    return out


def long_prompts(
    records: list[dict], tokenizer, template: str, max_len: int, limit: int = 2000
) -> tuple[int, int, int]:
    """(longer, checked, longest): how many of up to `limit` records, evenly spaced, have a
    templated prompt (with its BOS) longer than max_len tokens, which `encode_prompts` cuts
    from the left, and the longest one's length."""
    sample = pipeline.spaced_sample(records, limit)
    bos = len(text.bos_ids(tokenizer))
    lens = [bos + len(text.prompt_ids(tokenizer, template, r["prompt"])) for r in sample]
    return sum(n > max_len for n in lens), len(lens), max(lens, default=0)


def pad_left(prompts: list[list[int]], bucket: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads prompts into [B, P] and returns their lengths [B]."""
    tokens_BxP = np.full((len(prompts), bucket), pad_id, np.int32)
    lens_B = np.zeros((len(prompts),), np.int32)
    for i, ids in enumerate(prompts):
        tokens_BxP[i, bucket - len(ids) :] = ids
        lens_B[i] = len(ids)
    return tokens_BxP, lens_B


def overlong_shaping(lengths_N: np.ndarray, max_new_tokens: int, buffer: int, penalty: float):
    """DAPO soft overlong punishment: 0 up to max-buffer, then linear down to -penalty."""
    if buffer <= 0:
        return np.zeros_like(lengths_N, np.float32)
    start = max_new_tokens - buffer
    return (-penalty * np.clip((lengths_N - start) / buffer, 0.0, 1.0)).astype(np.float32)


def informative_groups(rewards_BxG: np.ndarray) -> np.ndarray:
    """[B] bool: the group's rewards are not all equal (DAPO's dynamic-sampling filter).

    Compares the values, not std > 0: a float32 std of 7 x 0.7 is 6e-8, which kept all-equal
    groups (zero advantage, no signal) as informative.
    """
    return np.ptp(rewards_BxG, axis=1) > 0


def training_arrays(prompt_BxP, prompt_lens_B, completion_NxT, lengths_N, num_samples, pad_id):
    """input_ids/positions/segment_ids [N, L] and completion_mask [N, T] (EOS inside the mask)."""
    prompt_NxP = np.repeat(prompt_BxP, num_samples, axis=0)
    plen_N = np.repeat(prompt_lens_B, num_samples, axis=0)
    n, p = prompt_NxP.shape
    t = completion_NxT.shape[1]
    comp_mask_NxT = (np.arange(t)[None, :] < lengths_N[:, None]).astype(np.float32)
    completion_NxT = np.where(comp_mask_NxT > 0, completion_NxT, pad_id).astype(np.int32)
    input_ids_NxL = np.concatenate([prompt_NxP, completion_NxT], axis=1)
    prompt_real_NxP = np.arange(p)[None, :] >= (p - plen_N)[:, None]
    segment_ids_NxL = np.concatenate([prompt_real_NxP, comp_mask_NxT > 0], axis=1).astype(np.int32)
    positions_NxL = np.maximum(np.cumsum(segment_ids_NxL, axis=1) - 1, 0).astype(np.int32)
    return {
        "input_ids_NxL": input_ids_NxL,
        "positions_NxL": positions_NxL,
        "segment_ids_NxL": segment_ids_NxL,
        "completion_mask_NxT": comp_mask_NxT,
    }


@dataclasses.dataclass
class Samples:
    """One sampling round: prompts, completions and their scores (host arrays)."""

    records: list[dict]
    prompt_BxP: np.ndarray
    prompt_lens_B: np.ndarray
    completion_NxT: np.ndarray
    lengths_N: np.ndarray
    truncated_N: np.ndarray
    sampler_logp_NxT: np.ndarray
    texts: list[str]
    rewards_N: np.ndarray
    per_fn: dict


def _floor_unfinished(rm_N, idx, texts, opens, group_size: int, spread: float | None) -> None:
    """A general response with no summary to judge (cut inside its thought, or nothing after
    </think>) scores, in place, one spread (the model's score std: 1 when normalized) below the
    lowest finished response of its group (else of the call). A summary-scope reward model
    judged it as an empty reply, often above real answers: never finishing was rewarded; tied
    with the worst answer, a group with one finished answer had no advantage at all."""
    unfinished = [
        i
        for i, o in zip(idx, opens, strict=True)
        if not preference.has_summary(texts[i], prompt_opens_think=o)
    ]
    finished = np.setdiff1d(idx, unfinished)
    if not unfinished or not finished.size:
        return
    if spread is None:  # a model with no recorded statistics: its scores in this call
        spread = float(np.std(rm_N[finished])) if finished.size > 1 else 1.0
    for i in unfinished:
        mates = finished[finished // group_size == i // group_size]
        rm_N[i] = rm_N[mates if mates.size else finished].min() - (spread or 1.0)


class ExperienceMaker:
    """Turns a stream of prompt records into RL batches, one call per step.

    1. Take B prompt records; template and tokenize them; left-pad into a bucket.
    2. Sample G completions per prompt (prompt prefilled once, its cache shared; samples adjacent).
    3. Decode and score them with the weighted reward functions in the host worker pool.
    4. Dynamic sampling (optional): keep groups with unequal rewards, refill up to a cap.
    5. Shape rewards (overlong penalty), compute group-relative advantages.
    6. Build the training arrays (EOS inside the loss mask; truncated rows masked if asked).
    """

    def __init__(
        self,
        cfg: RolloutConfig,
        tokenizer,
        reward_pool,
        sample_fn: Callable,
        prompts: Iterator[dict],
        reward_models=(),
    ):
        self.cfg, self.tokenizer, self.pool = cfg, tokenizer, reward_pool
        self.sample_fn = sample_fn  # (prompt_BxP, prompt_lens_B, round) -> dict of host arrays
        self.prompts = prompts
        # All-domain RL: (name, scorer, weight) of each reward model scoring records of domain
        # "general" (a scorer: .scope and .score(prompts, responses, opens_think=) -> [N]).
        self.reward_models = list(reward_models)

    def _route(self, texts, group_records, rewards_N, per_fn, truncated_N=None):
        """All-domain RL: general prompts are scored by the reward models (their weighted sum,
        plus the rule rewards of cfg.general_rule_rewards, less cfg.missing_eos_penalty where
        truncated_N: cut without a stop token), reasoning prompts by the rule rewards; each
        per-function score is NaN outside its domain."""
        general_N = np.array([r.get("domain") == "general" for r in group_records], bool)
        if not self.reward_models:
            if general_N.any():
                raise ValueError(
                    "a prompt of domain 'general' needs a reward model "
                    "(config.rl.reward_model.path)"
                )
            return rewards_N, per_fn
        idx = np.flatnonzero(general_N)
        both = set(self.cfg.general_rule_rewards)  # graded on general rows by `_score_rules`
        per_fn = {
            k: v if k in both else np.where(general_N, np.nan, v).astype(np.float32)
            for k, v in per_fn.items()
        }
        opens = [bool(group_records[i].get("prompt_opens_think")) for i in idx]
        total_N = np.zeros(len(texts), np.float32)
        if both:  # general rows' rule rewards (`_score_rules` graded them by these alone)
            total_N = np.where(general_N, rewards_N, 0.0).astype(np.float32)
        for name, scorer, weight in self.reward_models:
            rm_N = np.full(len(texts), np.nan, np.float32)
            if idx.size or jax.process_count() > 1:  # a collective call: every process makes it
                rm_N[idx] = scorer.score(
                    [group_records[i]["prompt"] for i in idx],
                    [texts[i] for i in idx],
                    opens_think=opens,
                )
            # NaN only marks other domains' rows; here it is a broken model's score: 0, as
            # the total counts it, in the logged score too (and before a floor reads it).
            broken = ~np.isfinite(rm_N[idx])
            rm_N[idx[broken]] = 0.0
            if hasattr(self, "last_pool_metrics"):  # counted as a rule reward's crash is
                self.last_pool_metrics[f"rewards/crashes/{name}"] = float(broken.sum())
            if broken.any():
                logging.warning(
                    "reward model %s scored %d of %d general responses NaN or inf; they count "
                    "as 0 (its params or its input are broken)",
                    name,
                    int(broken.sum()),
                    idx.size,
                )
            if scorer.scope == "summary":
                spread = scorer.score_spread()
                _floor_unfinished(rm_N, idx, texts, opens, self.cfg.num_samples, spread)
            per_fn[name] = rm_N
            total_N += weight * np.where(general_N, rm_N, 0.0).astype(np.float32)
        if self.cfg.missing_eos_penalty and truncated_N is not None:
            total_N -= np.float32(self.cfg.missing_eos_penalty) * np.asarray(truncated_N, bool)
        rewards_N = np.where(general_N, total_N, rewards_N)
        return rewards_N.astype(np.float32), per_fn

    def _score_rules(self, texts, group_records):
        """The rule rewards (the pool) of the rows they grade: with a reward model, rows of
        domain "general" are left to it (`_route`) rather than graded, and counted as crashes,
        by rewards that need an answer they do not have; they get only the rewards of
        cfg.general_rule_rewards."""
        n, every = len(texts), list(self.pool.names)
        names = [every] * n
        if self.reward_models:
            rules = [name for name in every if name in self.cfg.general_rule_rewards]
            names = [rules if r.get("domain") == "general" else every for r in group_records]
        rows = np.flatnonzero([bool(item) for item in names])
        scored_N, per_rows, self.last_pool_metrics = self.pool.score(
            [texts[i] for i in rows], [group_records[i] for i in rows], [names[i] for i in rows]
        )
        rewards_N = np.zeros(n, np.float32)
        rewards_N[rows] = scored_N
        per_fn = {}
        for name, values in per_rows.items():
            per_fn[name] = np.full(n, np.nan, np.float32)
            graded = [i for i, item in enumerate(names[j] for j in rows) if name in item]
            per_fn[name][rows[graded]] = values[graded]
        return rewards_N, per_fn

    def _sample_round(self, round_index: int) -> Samples:
        cfg = self.cfg
        # (1)
        records = [next(self.prompts) for _ in range(cfg.prompts_per_step)]
        records = [
            registry.opened_thought(r, text.apply_template(cfg.template, r["prompt"]))
            for r in records
        ]
        ids = encode_prompts(records, self.tokenizer, cfg.template, cfg.max_prompt_len)
        # Processes sample one global batch: they agree on its prompt length.
        longest = distributed.global_max(max(len(i) for i in ids))
        bucket = prompt_bucket(longest, cfg.max_prompt_len)
        prompt_BxP, lens_B = pad_left(ids, bucket, self.tokenizer.pad_id)
        # (2)
        t0 = time.perf_counter()
        out = self.sample_fn(prompt_BxP, lens_B, round_index)
        self.timings["generate_s"] += time.perf_counter() - t0
        # The stop token ends the text, it is not part of it (an HF EOS such as <|endoftext|>
        # would otherwise break the strict format reward); it stays in the loss mask.
        text_lens = out["lengths"] - (~out["truncated"]).astype(out["lengths"].dtype)
        texts = [self.tokenizer.decode(row[:n]) for row, n in zip(out["tokens"], text_lens)]
        # (3)
        t0 = time.perf_counter()
        group_records = [r for r in records for _ in range(cfg.num_samples)]
        rewards_N, per_fn = self._score_rules(texts, group_records)
        rewards_N, per_fn = self._route(texts, group_records, rewards_N, per_fn, out["truncated"])
        self.timings["reward_s"] += time.perf_counter() - t0
        self._add_reward_counts(getattr(self, "last_pool_metrics", {}))
        return Samples(
            records,
            prompt_BxP,
            lens_B,
            out["tokens"],
            out["lengths"],
            out["truncated"],
            out["logprobs"],
            texts,
            rewards_N,
            per_fn,
        )

    def _add_reward_counts(self, round_metrics: dict) -> None:
        """Adds a sampling round's reward timeouts, crashes and seconds to the step's (the
        last round's alone were logged: dynamic sampling's earlier rounds went uncounted)."""
        for name, value in round_metrics.items():
            if name.startswith("rewards/mean/"):  # logged as reward/<name>
                continue
            summed = name.startswith(("rewards/timeouts/", "rewards/crashes/", "rewards/seconds"))
            self.reward_counts[name] = value + (self.reward_counts.get(name, 0.0) if summed else 0)

    def make(self) -> tuple[dict, dict, Samples]:
        """One RL batch (host arrays), its metrics, and the raw samples for logging."""
        cfg = self.cfg
        self.timings = {"generate_s": 0.0, "reward_s": 0.0}
        self.reward_counts = {}  # the step's reward errors, every sampling round's
        kept, dropped, rounds, generated = [], [], 0, 0
        while True:
            s = self._sample_round(rounds)
            rounds += 1
            # Every round's tokens were sampled, those of groups dropped below too (compute).
            generated += int(distributed.gather_rows(s.lengths_N).sum())
            # (4)
            informative = informative_groups(
                s.rewards_N.reshape(cfg.prompts_per_step, cfg.num_samples)
            )
            kept.append((s, informative if cfg.dynamic_sampling else np.ones_like(informative)))
            dropped.append(int((~informative).sum()))
            # Every process samples the same number of rounds (each round is one global batch).
            have = distributed.global_min(sum(int(m.sum()) for _, m in kept))
            if have >= cfg.prompts_per_step or rounds >= max(1, cfg.max_sampling_rounds):
                break
            if not cfg.dynamic_sampling:
                break
        samples = _select_groups(kept, cfg.prompts_per_step, cfg.num_samples, self.tokenizer.pad_id)
        batch, metrics = self._finish(samples)
        metrics.update(self.timings)
        metrics.update(sampling_rounds=rounds, generated_tokens=float(generated))  # all of them
        if cfg.num_samples > 1:  # one sample a prompt (PPO) is no group: its std is always 0
            zero_std = distributed.gather_rows(np.asarray([dropped[0]]))  # a count a process
            metrics["zero_std_groups"] = zero_std.mean() / cfg.prompts_per_step
        return batch, metrics, samples

    def _finish(self, s: Samples) -> tuple[dict, dict]:
        cfg = self.cfg
        # (5) over every process's rows (batch-level std, metrics), then this process's share.
        everyone = distributed.gather_rows
        shaped_N = everyone(s.rewards_N) + overlong_shaping(
            everyone(s.lengths_N), cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty
        )
        adv_N = None
        if cfg.group_advantages:
            rewards_BxG = shaped_N.reshape(-1, cfg.num_samples)
            adv_BxG = adv_lib.of_groups(cfg.advantage, rewards_BxG, std_normalize=cfg.std_normalize)
            mine = distributed.local_slice(len(s.rewards_N))
            adv_N = np.asarray(adv_BxG, np.float32).reshape(-1)[mine]
        # (6)
        batch = training_arrays(
            s.prompt_BxP,
            s.prompt_lens_B,
            s.completion_NxT,
            s.lengths_N,
            cfg.num_samples,
            self.tokenizer.pad_id,
        )
        if cfg.mask_truncated:
            batch["completion_mask_NxT"] *= (~s.truncated_N)[:, None].astype(np.float32)
        if adv_N is not None:
            batch["advantages_N"] = adv_N
        t = s.completion_NxT.shape[1]
        batch["sampler_logp_NxT"] = np.where(
            np.arange(t)[None, :] < s.lengths_N[:, None], s.sampler_logp_NxT, 0.0
        ).astype(np.float32)
        rewards_N, lengths_N = everyone(s.rewards_N), everyone(s.lengths_N)
        metrics = {
            "reward": float(rewards_N.mean()),
            "reward_std": float(rewards_N.std()),
            "completion_len_mean": float(lengths_N.mean()),
            "completion_len_max": float(lengths_N.max()),
            "truncation_ratio": float(everyone(s.truncated_N).mean()),
        }
        for name in sorted(s.per_fn):  # over the rows of the function's domain (NaN elsewhere)
            values = everyone(np.asarray(s.per_fn[name]))
            values = values[~np.isnan(values)]
            if values.size:  # a function with no row of its domain in the batch logs nothing
                metrics[f"reward/{name}"] = float(np.mean(values))
                metrics[f"reward/{name}_std"] = float(np.std(values))
        if self.reward_models:
            general = np.array([r.get("domain") == "general" for r in s.records], np.float32)
            metrics["general_prompt_share"] = float(everyone(general).mean())
            # Each kind's mean reward: `reward` mixes the scales of the rules and the reward
            # models, and jumps when general prompts join (rl.general_from_step).
            general_N = everyone(np.repeat(general, cfg.num_samples)) > 0
            for kind, rows_N in (("general", general_N), ("reasoning", ~general_N)):
                if rows_N.any():
                    metrics[f"reward_{kind}"] = float(rewards_N[rows_N].mean())
        for name, value in getattr(self, "reward_counts", {}).items():
            metrics[name] = float(value)
        return batch, metrics


def _select_groups(kept: list, num_prompts: int, num_samples: int, pad_id: int) -> Samples:
    """Fills a batch of num_prompts groups: informative groups first, then the others."""
    chosen = [(s, b) for s, m in kept for b in range(num_prompts) if m[b]]
    chosen += [(s, b) for s, m in kept for b in range(num_prompts) if not m[b]]
    chosen = chosen[:num_prompts]
    # Every round's width, not only the chosen groups': rounds are global (each bucket agreed
    # by all processes), the choice is each process's own, and the batch's shape must agree.
    p = max(s.prompt_BxP.shape[1] for s, _ in kept)
    rows = lambda s, b: slice(b * num_samples, (b + 1) * num_samples)
    prompts = [
        np.pad(s.prompt_BxP[b], (p - s.prompt_BxP.shape[1], 0), constant_values=pad_id)
        for s, b in chosen
    ]
    cat = lambda f: np.concatenate([f(s)[rows(s, b)] for s, b in chosen])
    return Samples(
        records=[s.records[b] for s, b in chosen],
        prompt_BxP=np.stack(prompts).astype(np.int32),
        prompt_lens_B=np.array([s.prompt_lens_B[b] for s, b in chosen], np.int32),
        completion_NxT=cat(lambda s: s.completion_NxT),
        lengths_N=cat(lambda s: s.lengths_N),
        truncated_N=cat(lambda s: s.truncated_N),
        sampler_logp_NxT=cat(lambda s: s.sampler_logp_NxT),
        texts=[t for s, b in chosen for t in s.texts[rows(s, b)]],
        rewards_N=cat(lambda s: s.rewards_N),
        per_fn={
            k: np.concatenate([s.per_fn[k][rows(s, b)] for s, b in chosen])
            for k in chosen[0][0].per_fn
        },
    )
